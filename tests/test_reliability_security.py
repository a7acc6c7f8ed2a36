"""No loader of the project runs code from a checkpoint or a model folder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml

from jreg_tools.cli import main
from tests.conftest import TINY_LLAMA

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("jreg_lightning", "bench", "scripts")


class Payload:
    """Unpickling it would create ``marker``: the shape of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious(tmp_path, monkeypatch):
    """A checkpoint with a code-running pickle, and the marker it would create.

    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes torch's *default* unsafe, so a
    loader only passes if it asks for ``weights_only=True`` itself.
    """
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {
            "state_dict": {"model.lm_head.weight": torch.zeros(2, 2)},
            "hyper_parameters": {"llama": dict(TINY_LLAMA)},
            "global_step": 1,
            "payload": Payload(marker),
        },
        path,
    )
    return path, marker


def project_loaders():
    from jreg_lightning import checkpoints
    from jreg_tools import consolidate
    from jreg_tools.analysis import loading

    return {
        "safe_torch_load": checkpoints.safe_torch_load,
        "AtomicCheckpointIO.load_checkpoint": checkpoints.AtomicCheckpointIO().load_checkpoint,
        "read_checkpoint_meta": checkpoints.read_checkpoint_meta,
        "read_hyperparameters": checkpoints.read_hyperparameters,
        "load_full_state_dict": checkpoints.load_full_state_dict,
        "load_checkpoint_model": checkpoints.load_checkpoint_model,
        "consolidate": lambda path: consolidate.consolidate(path, path.with_name("out.ckpt")),
        "analysis.checkpoint_step": loading.checkpoint_step,
    }


@pytest.mark.parametrize(
    "name",
    [
        "safe_torch_load",
        "AtomicCheckpointIO.load_checkpoint",
        "read_checkpoint_meta",
        "read_hyperparameters",
        "load_full_state_dict",
        "load_checkpoint_model",
        "consolidate",
        "analysis.checkpoint_step",
    ],
)
def test_every_checkpoint_loader_refuses_a_pickle_payload(name, malicious):
    path, marker = malicious
    with pytest.raises(Exception, match=r"(?i)weights.only|refusing|unsupported global"):
        project_loaders()[name](path)
    assert not marker.exists()


def fit_override(tmp_path: Path, data_dir: Path) -> Path:
    run_dir = tmp_path / "run"
    config = {
        "trainer": {
            "max_steps": 2,
            "enable_progress_bar": False,
            "default_root_dir": str(run_dir),
            "logger": False,
            "callbacks": [],
        },
        "model": {"llama": TINY_LLAMA},
        "data": {"data_dir": str(data_dir), "seq_len": 32, "batch_size": 4},
    }
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_cli_refuses_a_pickle_payload_in_lightnings_own_load(
    subcommand, malicious, tmp_path, token_shards, monkeypatch, capfd
):
    path, marker = malicious
    # Skip the preflight read, so that the load Lightning itself makes is the one tested.
    monkeypatch.setattr("jreg_lightning.cli.read_checkpoint_meta", lambda path: {})
    override = fit_override(tmp_path, token_shards)
    argv = [subcommand, "--config", "configs/tiny_jreg.yaml", "--config", str(override)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--ckpt_path", str(path)])
    assert exit_info.value.code == 1
    assert "ckpt_path: refusing to load" in capfd.readouterr().err
    assert not marker.exists()


def test_cli_defaults_to_weights_only_true():
    for subcommand in ("fit", "validate", "test"):
        help_text = _help(subcommand)
        assert "--weights_only" in help_text
        assert "default: True" in help_text.split("--weights_only {true,false,null}")[-1]


def _help(subcommand: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([subcommand, "--help"])
    return out.getvalue()


def tiny_hf_config(**extra) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        **extra,
    }


def test_hf_folders_with_pickled_weights_are_not_unpickled(tmp_path, monkeypatch):
    from jreg_tools.analysis.loading import load_hf_model
    from jreg_tools.evaluation.models import load_eval_model

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_hf_config()))
    marker = tmp_path / "pwned"
    torch.save({"payload": Payload(marker)}, folder / "pytorch_model.bin")
    for load in (load_hf_model, load_eval_model):
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do; the marker is the test
            load(folder)
        assert not marker.exists()


def test_model_folders_with_custom_code_are_not_imported(tmp_path):
    from jreg_lightning.data.tokenizer import load_hf_tokenizer, load_tokenizer
    from jreg_tools.analysis.loading import load_hf_model
    from jreg_tools.evaluation.models import load_eval_model

    folder = tmp_path / "model"
    folder.mkdir()
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()\n"
    for module in ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py"):
        (folder / module).write_text(code)
    auto_map = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
    }
    (folder / "config.json").write_text(
        json.dumps(tiny_hf_config(model_type="evil", auto_map=auto_map))
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}})
    )
    for load in (load_hf_model, load_eval_model, load_tokenizer, load_hf_tokenizer):
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do; the marker is the test
            load(folder)
        assert not marker.exists(), f"{load.__module__}.{load.__name__} ran the folder's code"


def source_files() -> list[Path]:
    files = [REPO / "cli.py"]
    for folder in SOURCE_FOLDERS:
        files += sorted((REPO / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_source_loads_only_weights_and_never_trusts_remote_code():
    problems = []
    for path in source_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = ast.unparse(func)
                keywords = {k.arg: k.value for k in node.keywords}
                if name == "torch.load" and not _is_true(keywords.get("weights_only")):
                    problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
                if name in ("pickle.load", "pickle.loads"):
                    problems.append(f"{where}:{node.lineno} {name}")
                if "trust_remote_code" in keywords and not (
                    isinstance(keywords["trust_remote_code"], ast.Constant)
                    and keywords["trust_remote_code"].value is False
                ):
                    problems.append(f"{where}:{node.lineno} trust_remote_code is not False")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "trust_remote_code"
                        and not (isinstance(value, ast.Constant) and value.value is False)
                    ):
                        problems.append(f"{where}:{node.lineno} trust_remote_code is not False")
    assert not problems, "\n".join(problems)


def test_distributed_checkpoint_metadata_is_checked_before_torch_unpickles_it(tmp_path):
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    from jreg_lightning.checkpoints import check_distributed_checkpoint

    good = tmp_path / "good.ckpt"
    with warnings.catch_warnings():  # "assuming ... a single process": no process group here
        warnings.simplefilter("ignore")
        dcp.save({"state_dict": {"w": torch.ones(2, 2, dtype=torch.bfloat16)}}, checkpoint_id=good)
    check_distributed_checkpoint(good)

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.mkdir()
    (evil / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="ckpt_path: refusing to load"):
        check_distributed_checkpoint(evil)
    assert not marker.exists()
