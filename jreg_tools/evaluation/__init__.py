"""Downstream evaluation of a trained model: tasks, perplexity, baseline-vs-JREG comparison.

- ``models``: load an exported HF folder or a project checkpoint for evaluation.
- ``tasks``: multiple-choice tasks in lm-evaluation-harness's YAML + JSONL format.
- ``scorer``: the built-in zero-shot scorer (log-likelihood of each choice; acc, acc_norm).
- ``harness``: the same tasks through lm-evaluation-harness (optional extra ``eval``).
- ``perplexity``: token-weighted perplexity and the layer profile on shards or a text file.
- ``compare``: several models on the same tasks and data, one side-by-side table.
"""
