"""The project's error types, and how the command line reports them in one line."""

from __future__ import annotations

import pickle

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
    FileNotFoundError,
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
    is the one at the bottom of the ``__cause__`` chain.
    """
    best = error
    seen = {id(error)}
    current = error.__cause__ or error.__context__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, REPORTED_ERRORS):
            best = current
        current = current.__cause__ or current.__context__
    return best


def one_line(error: BaseException) -> str:
    """``error: <message>`` on one line, the message of the error's root cause."""
    cause = root_cause(error)
    message = " ".join(str(cause).split()) or type(cause).__name__
    return f"error: {message}"
