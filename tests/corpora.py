"""Small corpora and shard readers shared by the data tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

SENTENCE = (
    "the model reads a sentence and predicts the next word from what came before it "
    "each layer turns the hidden state a little while the last one turns it sharply"
)
WORDS = SENTENCE.split(" ")


def write_corpus(path: Path, documents: int = 60, seed: int = 0, words=(20, 60)) -> list[str]:
    """A JSONL file of pseudo-English documents ``{"id", "text"}``; returns the texts."""
    rng = random.Random(seed)
    texts = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(documents)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for index, text in enumerate(texts):
            handle.write(json.dumps({"id": index, "text": text}) + "\n")
    return texts


def prepare_small(corpus: Path, out: Path, **kwargs) -> dict:
    """``prepare`` with the small settings the tests use (vocab 300, blocks of 33)."""
    from jreg_tools.data.prepare import PrepareOptions, prepare

    settings = {
        "vocab_size": 300,
        "seq_len": 32,
        "chunk_blocks": 8,
        "val_documents": 6,
        "num_workers": 2,
    }
    settings.update(kwargs)
    return prepare(PrepareOptions(inputs=[str(corpus)], output_dir=str(out), **settings))


def split_tokens(folder: Path) -> list[int]:
    """Every token of a split, in order."""
    from litdata import StreamingDataset, TokensLoader

    dataset = StreamingDataset(str(folder), item_loader=TokensLoader(block_size=1), shuffle=False)
    return [int(dataset[i][0]) for i in range(len(dataset))]


def documents_of(tokens: list[int], eos: int) -> list[tuple[int, ...]]:
    """The token stream cut at each EOS: one tuple per document."""
    documents, current = [], []
    for token in tokens:
        if token == eos:
            documents.append(tuple(current))
            current = []
        else:
            current.append(token)
    assert not current, "the stream must end with EOS"
    return documents
