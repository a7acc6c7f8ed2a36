"""jreg-lightning: pretrain Llama-style models with JREG, the final-layer jump regularizer."""

from jreg_lightning.displacement import (
    displacement,
    jump_layer,
    jump_strength,
    jump_strength_late,
    layer_profile,
    layer_weights,
    profile_spread,
)

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
