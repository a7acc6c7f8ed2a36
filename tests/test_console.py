"""A quiet console: ``cli.py fit`` prints nothing that asks no action of the user."""

from __future__ import annotations

import sys
import warnings
from unittest import mock

import pytest

from jreg_lightning.console import WARNING_FILTERS, quiet_console
from jreg_tools.cli import JregToolsCLI as JregCLI
from tests.cli_run import run_cli, tiny_override

# Each was printed by a short fit before jreg_lightning/console.py (issues 14 and 15).
NOISE = (
    "Epoch 0/-2",
    "v_num",
    "Total FLOPs: 0",
    "LeafSpec",
    "`IterableDataset` has `__len__` defined",
    "Create an account on https://lightning.ai",
    "litlogger",
    "litmodels",
    "args parameter is intended to run from within Python",
    "sync_dist=True",
    "returned a view tensor",
)


def _assert_quiet(output: str) -> None:
    found = [message for message in NOISE if message in output]
    assert not found, f"{found} in:\n{output[-4000:]}"


def test_each_filter_matches_its_message_only():
    """The filters hide their own message from their own module, and nothing beside it."""
    hidden = [
        ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, 0),
        ("Your `IterableDataset` has `__len__` defined. In ...", UserWarning, 1),
        ("It is recommended to use `self.log('val/loss', ..., sync_dist=True)`", UserWarning, 2),
        ("FSDP2-wrapped module (FSDPLlamaForCausalLM) returned a view tensor. An", UserWarning, 3),
    ]
    shown = [
        # A training metric logged per epoch without a reduction would be a real problem.
        ("It is recommended to use `self.log('train/loss', ..., sync_dist=True)` when", 2),
        # A decoder block returning a view is not the known case.
        ("FSDP2-wrapped module (FSDPLlamaDecoderLayer) returned a view tensor. An", 3),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console()
        for message, category, index in hidden:
            module = WARNING_FILTERS[index][2].replace("\\", "")
            warnings.warn_explicit(message, category, "x.py", 1, module=module)
        for message, index in shown:
            module = WARNING_FILTERS[index][2].replace("\\", "")
            warnings.warn_explicit(message, UserWarning, "x.py", 1, module=module)
        # The same message from our own code is not hidden.
        warnings.warn_explicit(hidden[0][0], FutureWarning, "x.py", 1, module="jreg_lightning.x")
    assert [str(w.message) for w in caught] == [message for message, _ in shown] + [hidden[0][0]]


def test_args_given_in_python_do_not_warn_about_sys_argv():
    """``main(argv)`` from the demo or a test: no warning quoting the caller's command line."""

    class ParseOnly(JregCLI):
        def instantiate_classes(self) -> None:
            pass

    with (
        mock.patch.object(sys, "argv", ["cli.py", "demo", "--full", "true"]),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        ParseOnly(args=["--config", "configs/tiny_jreg.yaml"], run=False)
    assert not [w for w in caught if "sys.argv" in str(w.message)]


@pytest.mark.slow
def test_fit_console_is_quiet(tmp_path, token_shards):
    run_dir = tmp_path / "run"
    override = tiny_override(run_dir, token_shards, max_steps=2)
    fit = run_cli("fit", "--config", "configs/tiny_jreg.yaml", "--config", str(override))
    output = fit.stdout + fit.stderr
    assert fit.returncode == 0, output[-3000:]
    _assert_quiet(output)
    assert "Total params" in output and "Epoch 0" in output  # the summary and bar stay


@pytest.mark.slow
def test_fsdp2_fit_console_is_quiet(tmp_path, token_shards):
    """2 CPU ranks: no sync_dist advice for reduced metrics, no FSDP2 view-tensor warning."""
    run_dir = tmp_path / "run"
    override = tiny_override(run_dir, token_shards, max_steps=2)
    fit = run_cli(
        "fit",
        "--config",
        "configs/tiny_jreg.yaml",
        "--config",
        "configs/strategy/fsdp_cpu.yaml",
        "--config",
        str(override),
    )
    output = fit.stdout + fit.stderr
    assert fit.returncode == 0, output[-3000:]
    _assert_quiet(output)
