"""The project's error types, and how the command line reports them in one line."""

from __future__ import annotations

import pickle
import re
from argparse import ArgumentError

# The environment variable that makes ``cli.py`` show full tracebacks.
TRACEBACK_ENV = "JREG_TRACEBACK"


class ConfigError(ValueError):
    """A bad value in a config, a data folder or a checkpoint path.

    The message names the field (``model.llama.num_heads``, ``data.data_dir``,
    ``ckpt_path``) and says how to fix it; ``cli.py`` prints it as one line.
    """


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss and was stopped (``model.nonfinite: stop``)."""


# What the command line reports as one line: bad input, not bugs. Anything else
# (a RuntimeError deep in torch, an AssertionError) keeps its full traceback.
REPORTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    ArgumentError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    NonFiniteLossError,
    pickle.UnpicklingError,
)


def root_cause(error: BaseException) -> BaseException:
    """The innermost reported error behind ``error``.

    jsonargparse wraps a dataclass's ``ValueError`` in its own ``ValueError``
    ("Does not validate against any of the Union subtypes"); the useful message
    is the one at the bottom of the ``__cause__`` chain, unless a ``ConfigError``
    (already written for the user) comes first.
    """
    best = error
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConfigError):  # written for the user: take the outermost
            return current
        if isinstance(current, REPORTED_ERRORS):
            best = current
        current = _cause(current)
    return best


def _cause(error: BaseException) -> BaseException | None:
    # ``raise ... from None`` hides the context: the raiser chose the better message.
    if error.__cause__ is not None:
        return error.__cause__
    return None if error.__suppress_context__ else error.__context__


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


def one_line(error: BaseException) -> str:
    """``error: <message>`` on one line, the message of the error's root cause."""
    if isinstance(error, ArgumentError):  # the outermost report carries the key path
        return f"error: {_parser_message(str(error))}"
    cause = root_cause(error)
    message = " ".join(str(cause).split()) or type(cause).__name__
    return f"error: {message}"
