"""The project's error types, and how the command line reports them in one line.

Bad input is checked once, where it enters (a config field, a path, a data
file, a checkpoint, a tokenizer, a corpus file), and raised as a ``JregError``
whose message names the field or file and the fix. ``cli.py`` prints those, and
the argument parser's own ``ArgumentError``, as one ``error: ...`` line; every
other exception is a bug and keeps its traceback. Each subclass also derives
from the builtin it replaces, so ``except ValueError`` / ``FileNotFoundError``
callers keep working.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from argparse import ArgumentError
from collections.abc import Iterable

# The environment variable that makes ``cli.py`` show full tracebacks.
TRACEBACK_ENV = "JREG_TRACEBACK"


class JregError(Exception):
    """Bad input the user can fix; ``cli.py`` prints it as one line naming the field and the fix.

    Raise a subclass where one fits; the base itself for a condition that is
    neither a bad value nor a path (e.g. a study run that failed, see its log).
    """


class ConfigError(JregError, ValueError):
    """A bad value: a config field, a command-line option, or the contents of a file the user named.

    The message names the field (``model.llama.num_heads``, ``data.data_dir``,
    ``ckpt_path``) or the file and says how to fix it.
    """


class InputNotFoundError(JregError, FileNotFoundError):
    """A file or folder named in the config or on the command line does not exist."""


class InputUnreadableError(JregError, PermissionError):
    """A file named as input exists but cannot be read (permissions)."""


class OutputExistsError(JregError, FileExistsError):
    """An output path already holds data; the fix is another path or ``--overwrite``."""


class NonFiniteLossError(JregError, RuntimeError):
    """Training produced a NaN or infinite loss and was stopped (``model.nonfinite: stop``)."""


# What the command line reports as one line: the project's errors and the
# argument parser's. Anything else (a ValueError from a bug, a RuntimeError deep
# in torch) keeps its full traceback.
REPORTED_ERRORS: tuple[type[BaseException], ...] = (JregError, ArgumentError)


def reported_error(error: BaseException) -> BaseException | None:
    """The error ``cli.py`` reports in one line for ``error``, or None (a bug: keep the traceback).

    The outermost ``JregError`` along the ``__cause__`` chain (jsonargparse wraps
    an error raised in a dataclass's ``__post_init__`` in its own ``ValueError``
    with ``raise ... from``), failing that the outermost ``ArgumentError``. An
    implicit ``__context__`` is not followed: an error raised while another was
    being handled is a new error, and a bug there keeps its traceback.
    """
    links: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not link for link in links):
        links.append(current)
        current = current.__cause__
    for kind in REPORTED_ERRORS:
        found = next((link for link in links if isinstance(link, kind)), None)
        if found is not None:
            return found
    return None


def _parser_message(message: str) -> str:
    """jsonargparse's nested report, reduced to ``key.sub: innermost problem``.

    It reads ``Parser key "model.jreg":`` / ``Does not validate ...`` /
    ``Parser key "weights":`` / ``Expected a typing.Literal[...]. Got value: x``.
    """
    lines = [line.strip().lstrip("-").strip() for line in message.splitlines()]
    keys, detail = [], None
    for line in lines:
        match = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if match:
            keys.append(match.group(1))
            detail = match.group(2) or None
        elif keys and detail is None and line and not line.startswith("Problem with given"):
            detail = line
    if not keys:
        return " ".join(message.split())
    detail = re.sub(r"Expected a typing\.Literal\[(.*)\]\.", r"expected one of \1;", detail or "")
    return f"{'.'.join(keys)}: {detail}".strip()


_UNKNOWN_KEY_PATTERNS = (
    re.compile(r"Option '(?P<key>[^']+)' is not accepted"),
    re.compile(r"Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"[Uu]nrecognized arguments: (?P<args>.+)"),
)


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not link for link in chain):
        chain.append(current)
        current = current.__cause__
    return chain


def _accepted_names(class_path: str) -> list[str]:
    """The keyword arguments a class takes (a dataclass's fields), or [] if it cannot be read."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in parameters if p.kind not in kinds]


def unknown_key_message(error: BaseException, known_keys: Iterable[str] = ()) -> str | None:
    """``model.jreg.lamb: unknown key; did you mean 'lam'? ...`` for a parser error, else None.

    jsonargparse reports an unknown key inside a nested config at the outermost
    level as "Does not validate against any of the Union subtypes"; the key itself is
    only in the innermost cause. This finds it, the key path it sits under, and the
    closest accepted name: among the fields of the class the cause names (a nested
    dataclass or a callback's ``class_path``), else among ``known_keys`` (the
    parser's dotted keys).
    """
    chain = _cause_chain(error)
    texts = [str(link) for link in chain]
    found = None
    for text in reversed(texts):  # innermost first
        for pattern in _UNKNOWN_KEY_PATTERNS:
            found = pattern.search(text)
            if found:
                break
        if found:
            break
    if found is None:
        return None
    groups = found.groupdict()
    if groups.get("args"):
        words = [w for w in groups["args"].split() if w.startswith("-")]
        if not words:
            return None
        key = words[0].lstrip("-").split("=", 1)[0]
    else:
        key = groups["key"]
    outer = next((m.group(1) for t in texts if (m := re.match(r'Parser key "([^"]+)"', t))), None)
    class_path = next(
        (m.group(1) for t in reversed(texts) if (m := re.search(r"class_path '([\w.]+)'", t))),
        None,
    )
    prefix = groups.get("group") or outer
    full_key = f"{prefix}.{key}" if prefix and not key.startswith(f"{prefix}.") else key
    if class_path and (accepted := _accepted_names(class_path)):
        best = _closest(key, accepted)
        owner = class_path.rpartition(".")[2]
        hint = f"; did you mean '{best}'?" if best else ""
        return f"{full_key}: unknown key{hint} ({owner} accepts: {', '.join(accepted)})"
    head = full_key.rpartition(".")[0]
    siblings = [k.rpartition(".")[2] for k in known_keys if k.rpartition(".")[0] == head]
    best = _closest(full_key.rpartition(".")[2], siblings)
    if best:
        return f"{full_key}: unknown key; did you mean --{f'{head}.' if head else ''}{best}?"
    if head and 0 < len(siblings) <= 12:
        return f"{full_key}: unknown key ({head} accepts: {', '.join(siblings)})"
    return f"{full_key}: unknown key; see --help for the accepted keys"


def _closest(key: str, candidates: list[str]) -> str | None:
    """The candidate spelled most like ``key``, or the one ``key``'s initials spell
    (``learning_rate`` -> ``lr``); None when nothing is close."""
    best = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if best:
        return best[0]
    initials = "".join(part[0] for part in key.split("_") if part)
    return next((c for c in candidates if c == initials), None)


def one_line(error: BaseException) -> str:
    """``error: <message>`` on one line, for an error that ``reported_error`` finds.

    Raises:
        ValueError: ``error`` holds no project or parser error (a bug; report its traceback).
    """
    reported = reported_error(error)
    if reported is None:
        raise ValueError(f"{type(error).__name__} is not a reported error; keep its traceback")
    if isinstance(reported, ArgumentError):  # the outermost report carries the key path
        unknown = unknown_key_message(reported)
        return f"error: {unknown or _parser_message(str(reported))}"
    message = " ".join(str(reported).split()) or type(reported).__name__
    return f"error: {message}"
