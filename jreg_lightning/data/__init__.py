"""Data: litdata token shards in, batches of token blocks out."""
