"""A small real English corpus from text every Python installation carries.

Documents: for each standard-library module, its module, class and function
docstrings (read from the source with ``ast``: nothing is imported, so no
module's import side effects run), and each topic of ``pydoc_data.topics``
(the language reference pages that ``help()`` shows). Nothing is downloaded
and no third-party text is shipped with the repository.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from jreg_lightning.errors import ConfigError, JregError

# Test suites, the IDE and vendored code: little prose, much code.
SKIPPED_PARTS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "turtledemo",
}


def _module_docstrings(path: Path) -> str:
    """The module's, classes' and functions' docstrings, in source order, as one text."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:
                parts.append(doc.strip())
    return "\n\n".join(parts)


def stdlib_documents() -> Iterator[tuple[str, str]]:
    """``(source, text)`` per standard-library module with docstrings, then per pydoc topic."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if SKIPPED_PARTS.intersection(path.relative_to(stdlib).parts):
            continue
        text = _module_docstrings(path)
        if text:
            yield str(path.relative_to(stdlib)), text
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        return
    for name in sorted(topics):
        yield f"pydoc_data.topics:{name}", topics[name]


def stdlib_source_documents() -> Iterator[tuple[str, str]]:
    """``(source, text)`` per standard-library ``.py`` file (tests, IDE and vendored code left out).

    About 13 MB of Python, 8x the docstring corpus: the study's corpus, large
    enough that a 12-block model keeps learning for thousands of steps.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if SKIPPED_PARTS.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield str(path.relative_to(stdlib)), text


CORPORA = {"docstrings": stdlib_documents, "stdlib_source": stdlib_source_documents}


def write_demo_corpus(
    path: str | Path, max_documents: int | None = None, kind: str = "docstrings"
) -> dict:
    """Write a corpus as JSON lines ``{"source", "text"}``; return documents and characters.

    Args:
        path: the ``.jsonl`` file to write (its folder is created).
        max_documents: keep only the first N documents (for quick tests).
        kind: ``docstrings`` (English prose, the demo's) or ``stdlib_source``
            (the standard library's code, the study's).
    """
    if kind not in CORPORA:
        raise ConfigError(f"corpus: {kind!r} is not one of {sorted(CORPORA)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    documents = characters = 0
    temporary = path.with_suffix(".jsonl.partial")
    with open(temporary, "w", encoding="utf-8") as handle:
        for source, text in CORPORA[kind]():
            if max_documents is not None and documents >= max_documents:
                break
            handle.write(json.dumps({"source": source, "text": text}) + "\n")
            documents += 1
            characters += len(text)
    if documents == 0:
        raise JregError(
            "demo: found no standard-library source or pydoc topics in this Python "
            f"({sysconfig.get_paths()['stdlib']}); pass your own text to `cli.py prepare`"
        )
    temporary.replace(path)
    return {"documents": documents, "characters": characters}
