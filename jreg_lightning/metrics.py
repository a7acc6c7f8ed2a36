"""A torchmetrics Metric for the layer profile and the jump strength."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from jreg_lightning.displacement import jump_layer, jump_strength, jump_strength_late


class LayerProfileMetric(Metric):
    """Accumulates per-layer Psi sums and position counts in one state tensor.

    The state ``sums_counts`` has shape ``(2, L)``: row 0 the Psi sums, row 1
    the position counts. Ranks are merged by summing it (one collective for all
    layers), and the profile is sum of sums over sum of counts, never a mean of
    means.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    sums_counts: Tensor

    def __init__(self, num_layers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.add_state(
            "sums_counts",
            default=torch.zeros(2, num_layers, dtype=torch.float64),
            dist_reduce_fx="sum",
        )

    def update(self, layer_sums: Tensor, layer_counts: Tensor) -> None:
        """Add one batch.

        Args:
            layer_sums: ``(L,)`` sum of Psi over the counted positions, per layer.
            layer_counts: ``(L,)`` (or scalar) number of counted positions.
        """
        counts = torch.as_tensor(layer_counts, device=self.sums_counts.device)
        counts = counts.expand(self.num_layers) if counts.dim() == 0 else counts
        self.sums_counts[0] += layer_sums.detach().to(self.sums_counts)
        self.sums_counts[1] += counts.to(self.sums_counts)

    def compute(self) -> dict[str, Tensor]:
        """Profile ``(L,)``, J, J_late (NaN below 4 layers) and the 1-based argmax layer."""
        return profile_summary((self.sums_counts[0] / self.sums_counts[1].clamp_min(1.0)).float())


def profile_summary(profile: Tensor) -> dict[str, Tensor]:
    """``{"profile", "jump_strength", "jump_strength_late", "jump_layer"}`` of a ``(L,)`` profile.

    J is NaN below 3 layers and J_late below 4.
    """
    num_layers = profile.shape[0]
    result = {"profile": profile, "jump_layer": jump_layer(profile)}
    nan = torch.tensor(float("nan"), device=profile.device)
    result["jump_strength"] = jump_strength(profile) if num_layers >= 3 else nan
    result["jump_strength_late"] = jump_strength_late(profile) if num_layers >= 4 else nan
    return result
