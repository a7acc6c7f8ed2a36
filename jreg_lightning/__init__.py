"""jreg-lightning: pretrain Llama-style models with JREG, the final-layer jump regularizer.

The plain-torch API (``displacement``, ``layer_profile``, ``jump_strength``, ...) is
imported on first use, so that ``import jreg_lightning`` (and ``cli.py --help``)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "displacement",
    "jump_layer",
    "jump_strength",
    "jump_strength_late",
    "layer_profile",
    "layer_weights",
    "profile_spread",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("jreg_lightning.displacement"), name)
    raise AttributeError(f"module 'jreg_lightning' has no attribute {name!r}")
