"""LayerProfileMetric: sums and counts, merged exactly across ranks."""

from __future__ import annotations

import pytest
import torch

from jreg_lightning import jump_layer, jump_strength, jump_strength_late, layer_profile
from jreg_lightning.displacement import displacement, masked_sum_and_count
from jreg_lightning.metrics import LayerProfileMetric


def _batch_sums(states, mask):
    sums, count = [], None
    for index in range(len(states) - 1):
        total, count = masked_sum_and_count(displacement(states[index], states[index + 1]), mask)
        sums.append(total)
    return torch.stack(sums), count


def _random_batch(seed, batch, seq, num_layers=5):
    generator = torch.Generator().manual_seed(seed)
    states = [torch.randn(batch, seq, 8, generator=generator) for _ in range(num_layers + 1)]
    mask = (torch.rand(batch, seq, generator=generator) > 0.3).long()
    return states, mask


def test_two_simulated_ranks_merge_to_the_union():
    # Rank 0 sees two batches, rank 1 one batch of another size: unequal counts, so a
    # mean of means would differ from the true mean.
    batches = [_random_batch(0, 2, 7), _random_batch(1, 3, 5), _random_batch(2, 1, 11)]
    rank0, rank1, single = LayerProfileMetric(5), LayerProfileMetric(5), LayerProfileMetric(5)
    for states, mask in batches[:2]:
        rank0.update(*_batch_sums(states, mask))
    rank1.update(*_batch_sums(*batches[2]))
    for states, mask in batches:
        single.update(*_batch_sums(states, mask))
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), single.compute()
    torch.testing.assert_close(merged["profile"], expected["profile"])
    assert merged["jump_strength"].item() == pytest.approx(expected["jump_strength"].item())

    # And the union equals layer_profile over all positions at once.
    union_sum = torch.zeros(5)
    union_count = 0.0
    for states, mask in batches:
        profile = layer_profile(states, mask)
        union_sum += profile * mask.sum()
        union_count += mask.sum().item()
    torch.testing.assert_close(merged["profile"], union_sum / union_count)
    means_of_means = torch.stack([layer_profile(states, mask) for states, mask in batches]).mean(0)
    assert not torch.allclose(merged["profile"], means_of_means)


def test_compute_reports_j_j_late_and_argmax():
    metric = LayerProfileMetric(5)
    profile = torch.tensor([0.5, 0.01, 0.02, 0.03, 0.12])
    metric.update(profile * 10, torch.tensor(10.0))
    result = metric.compute()
    torch.testing.assert_close(result["profile"], profile)
    assert result["jump_strength"].item() == pytest.approx(jump_strength(profile).item())
    assert result["jump_strength_late"].item() == pytest.approx(jump_strength_late(profile).item())
    assert result["jump_layer"].item() == jump_layer(profile).item() == 5


def test_single_state_tensor_and_reset():
    metric = LayerProfileMetric(3)
    assert list(metric._defaults) == ["sums_counts"]
    metric.update(torch.ones(3), torch.tensor(4.0))
    metric.reset()
    assert metric.sums_counts.abs().sum() == 0
