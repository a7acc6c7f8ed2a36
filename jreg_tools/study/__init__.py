"""``cli.py study``: paired baseline / JREG runs, resumable, and the report written from them."""
