"""The displacement math against hand-computed values and a float64 reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from jreg_lightning import (
    displacement,
    jump_layer,
    jump_strength,
    jump_strength_late,
    layer_profile,
    layer_weights,
    profile_spread,
)


def _reference_psi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return (1 - cos) / 2


def test_parallel_orthogonal_opposite():
    x = torch.tensor([[[1.0, 2.0, 0.0]]])
    orthogonal = torch.tensor([[[-2.0, 1.0, 0.0]]])
    assert displacement(x, 3 * x).item() == pytest.approx(0.0, abs=1e-7)
    assert displacement(x, orthogonal).item() == pytest.approx(0.5, abs=1e-7)
    assert displacement(x, -x).item() == pytest.approx(1.0, abs=1e-7)


def test_shape_and_dtype_and_float64_reference():
    torch.manual_seed(0)
    a, b = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    psi = displacement(a, b)
    assert psi.shape == (3, 5)
    assert psi.dtype == torch.float32
    torch.testing.assert_close(psi.double(), _reference_psi(a, b), atol=1e-6, rtol=0)


def test_bf16_input_gives_float32_psi_close_to_reference():
    torch.manual_seed(1)
    a, b = torch.randn(2, 4, 64), torch.randn(2, 4, 64)
    psi = displacement(a.bfloat16(), b.bfloat16())
    assert psi.dtype == torch.float32
    torch.testing.assert_close(
        psi.double(), _reference_psi(a.bfloat16(), b.bfloat16()), atol=1e-6, rtol=0
    )


def test_gradients_match_autograd_reference_in_both_inputs():
    torch.manual_seed(2)
    a = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, dtype=torch.float64)
    (displacement(a.float(), b.float()) * weights.float()).sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (_reference_psi(a2, b2) * weights).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.grad, b2.grad, atol=1e-5, rtol=1e-4)


def test_gradcheck_in_float64_path():
    torch.manual_seed(3)
    a = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)

    # The function computes in float32; compare its backward to finite differences loosely.
    def f(x, y):
        return displacement(x, y).double()

    assert torch.autograd.gradcheck(f, (a, b), eps=1e-3, atol=1e-3, rtol=1e-2)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same"):
        displacement(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


def test_layer_profile_mask_counts_only_real_tokens():
    torch.manual_seed(4)
    h0, h1 = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    psi = _reference_psi(h0, h1)
    expected = (psi[0, :2].sum() + psi[1, 0]) / 3
    profile = layer_profile([h0, h1], mask)
    assert profile.shape == (1,)
    assert profile.item() == pytest.approx(expected.item(), abs=1e-6)
    # No mask: the mean over every position.
    assert layer_profile([h0, h1]).item() == pytest.approx(psi.mean().item(), abs=1e-6)


def test_layer_profile_has_one_entry_per_block():
    states = [torch.randn(1, 3, 4) for _ in range(6)]
    profile = layer_profile(states)
    assert profile.shape == (5,)
    for index in range(5):
        expected = _reference_psi(states[index], states[index + 1]).mean().item()
        assert profile[index].item() == pytest.approx(expected, abs=1e-6)


def test_layer_profile_needs_two_states():
    with pytest.raises(ValueError, match="h_0"):
        layer_profile([torch.zeros(1, 1, 2)])


def test_jump_strength_known_vectors():
    profile = torch.tensor([0.5, 0.01, 0.02, 0.03, 0.12])
    assert jump_strength(profile).item() == pytest.approx(0.12 / 0.02)
    assert jump_strength_late(profile).item() == pytest.approx(0.12 / 0.015)
    assert jump_layer(profile).item() == 5
    # The jump pushed one block earlier shows in J_late and the argmax, not in J.
    earlier = torch.tensor([0.5, 0.01, 0.02, 0.12, 0.01])
    assert jump_strength(earlier).item() == pytest.approx(0.01 / (0.15 / 3))
    assert jump_strength_late(earlier).item() == pytest.approx(0.12 / 0.015)
    assert jump_layer(earlier).item() == 4
    flat = torch.full((6,), 0.02)
    assert jump_strength(flat).item() == pytest.approx(1.0)


def test_jump_strength_needs_three_layers():
    with pytest.raises(ValueError, match="at least 3 layers"):
        jump_strength(torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="at least 4 layers"):
        jump_strength_late(torch.tensor([0.1, 0.2, 0.3]))


def test_profile_spread():
    spread = profile_spread(torch.tensor([0.9, 0.1, 0.1, 0.4]))
    assert spread["max_over_mean"].item() == pytest.approx(0.4 / 0.2)
    assert spread["std"].item() == pytest.approx(torch.tensor([0.1, 0.1, 0.4]).std(False).item())


@pytest.mark.parametrize(
    ("scheme", "kwargs", "expected"),
    [
        ("final", {}, [0, 0, 0, 1]),
        ("last_k", {"k": 2}, [0, 0, 0.5, 0.5]),
        ("uniform", {}, [0.25] * 4),
        ("linear", {}, [0.1, 0.2, 0.3, 0.4]),
        ("explicit", {"values": [0, 1, 1, 2]}, [0, 0.25, 0.25, 0.5]),
    ],
)
def test_layer_weights_schemes(scheme, kwargs, expected):
    weights = layer_weights(scheme, 4, **kwargs)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32))
    assert weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("cubic", 4), {}, "unknown scheme 'cubic'; use one of"),
        (("uniform", 0), {}, "num_layers must be a positive int"),
        (("last_k", 4), {}, "needs k between 1 and num_layers=4"),
        (("last_k", 4), {"k": 5}, "needs k between 1 and num_layers=4"),
        (("explicit", 4), {}, "one weight per layer"),
        (("explicit", 4), {"values": [1, 2]}, "list 4 numbers"),
        (("explicit", 2), {"values": [1, -1]}, "non-negative"),
        (("explicit", 2), {"values": [0, 0]}, "not all zero"),
    ],
)
def test_layer_weights_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer_weights(*args, **kwargs)


def test_math_imports_without_lightning():
    code = (
        "import sys, jreg_lightning; from jreg_lightning import displacement, layer_profile, "
        "jump_strength, layer_weights; "
        "assert 'lightning' not in sys.modules and 'lightning.pytorch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
