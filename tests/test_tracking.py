"""Experiment trackers on a tiny fit, read back through the real libraries (no mocks).

Each overlay of ``configs/logger/`` is passed as ``cli.py fit`` users pass it;
W&B's offline run file, MLflow's sqlite store (through ``MlflowClient``) and
TensorBoard's event file must hold the per-layer metrics, the profile picture
and the resolved config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jreg_lightning.loggers import mlflow_tracking_uri, name_from_run_dir
from jreg_lightning.tracking import psi_chart_layout, read_baseline_profile
from tests.cli_run import REPO, fit_tiny, tiny_override
from tests.conftest import TINY_LLAMA

LAYERS = TINY_LLAMA["num_layers"]
# Validations after optimizer steps 2 and 4; Lightning logs them at steps 1 and 3.
PSI_KEYS = [f"val/psi/layer_{index:02d}" for index in range(1, LAYERS + 1)]
BASELINE = [0.5, 0.1, 0.1, 0.3]


def _fit_with(overlay: str, tmp_path: Path, token_shards: Path, *extra: str) -> Path:
    run = tmp_path / "tiny_tracked"
    override = tiny_override(run, token_shards, max_steps=4, val_check_interval=2)
    fit_tiny(override, "--config", str(REPO / "configs/logger" / overlay), *extra)
    return run


def _baseline_file(tmp_path: Path) -> Path:
    path = tmp_path / "baseline" / "validation_profile.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"profile": BASELINE, "jump_strength": 3.0}))
    return path


def _check_config(text: str) -> None:
    config = yaml.safe_load(text)
    assert config["model"]["llama"]["num_layers"] == LAYERS
    assert config["trainer"]["max_steps"] == 4


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_profile_picture_table_and_config(token_shards, tmp_path):
    from tests.wandb_records import history_rows, read_records, run_record

    baseline = _baseline_file(tmp_path)
    run = _fit_with("wandb.yaml", tmp_path, token_shards, "--tracking.baseline", str(baseline))
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    records = read_records(run_file)
    assert run_record(records).display_name == "tiny_tracked"
    rows = history_rows(records)
    validations = [row for row in rows if PSI_KEYS[0] in row]
    assert [row["trainer/global_step"] for row in validations] == [1, 3]
    assert all(set(PSI_KEYS) <= set(row) for row in validations)
    images = [row for row in rows if "val/profile/filenames" in row]
    tables = [row for row in rows if "val/profile_table/path" in row]
    assert [row["trainer/global_step"] for row in images] == [1, 3]
    assert len(tables) == 2
    files = run_file.parent / "files"
    for row in images:
        png = files / row["val/profile/filenames"][0]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((files / tables[-1]["val/profile_table/path"]).read_text())
    assert table["columns"] == ["layer", "psi", "baseline_psi"]
    assert [row[0] for row in table["data"]] == list(range(1, LAYERS + 1))
    assert [row[2] for row in table["data"]] == BASELINE
    last = validations[-1]
    assert [row[1] for row in table["data"]] == pytest.approx([last[k] for k in PSI_KEYS])
    _check_config((files / "config.yaml").read_text())


@pytest.mark.slow
def test_mlflow_run_holds_metrics_profile_pictures_and_config(token_shards, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = _fit_with("mlflow.yaml", tmp_path, token_shards)
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("jreg")
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == "tiny_tracked"
    assert tracked.info.status == "FINISHED"
    for key in [*PSI_KEYS, "val/jump_strength", "val/loss"]:
        history = client.get_metric_history(tracked.info.run_id, key)
        assert [metric.step for metric in history] == [1, 3], key
    run_id = tracked.info.run_id
    names = sorted(item.path for item in client.list_artifacts(run_id))
    assert names == ["config.yaml", "profiles"]
    pictures = sorted(item.path for item in client.list_artifacts(run_id, "profiles"))
    assert pictures == ["profiles/profile_step0000002.png", "profiles/profile_step0000004.png"]
    local = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
    _check_config(local.read_text())
    assert (run / "mlartifacts").is_dir(), "artifacts stay in the run directory"


@pytest.mark.slow
def test_tensorboard_run_holds_one_chart_of_every_layer_the_picture_and_config(
    token_shards, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    run = _fit_with("tensorboard.yaml", tmp_path, token_shards)
    (folder,) = run.glob("tensorboard/version_*")
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert set(PSI_KEYS) <= set(tags["scalars"])
    assert [event.step for event in events.Images("val/profile")] == [1, 3]
    assert events.Images("val/profile")[0].encoded_image_string[:4] == b"\x89PNG"
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for c in layout.category for chart in c.chart}
    assert charts["val Psi, every layer"] == [r"^val/psi/layer_\d+$"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    _check_config(text.replace("\n    ", "\n").strip())


def test_mlflow_tracking_uri_comes_from_the_argument_the_environment_or_the_run(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert mlflow_tracking_uri(tmp_path) == "http://tracking:5000"
    assert mlflow_tracking_uri(tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    assert name_from_run_dir(tmp_path / "runs" / "tiny_jreg") == "tiny_jreg"


def test_baseline_profile_is_read_from_a_run_folder_or_a_study_result(tmp_path):
    assert read_baseline_profile(_baseline_file(tmp_path).parent) == BASELINE
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"final": {"profile": BASELINE}}))
    assert read_baseline_profile(result) == BASELINE
    with pytest.raises(FileNotFoundError, match="tracking.baseline"):
        read_baseline_profile(tmp_path / "missing")


def test_tensorboard_layout_puts_every_layer_of_a_stage_in_one_chart():
    layout = psi_chart_layout()["JREG"]
    assert layout["val Psi, every layer"] == ["Multiline", [r"^val/psi/layer_\d+$"]]


def test_study_runs_log_to_one_experiment_tagged_with_lam_weights_and_seed(tmp_path, monkeypatch):
    from jreg_tools.study.runner import run_config
    from jreg_tools.study.spec import load_study
    from tests.studies import tiny_study

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tiny_study(tmp_path)
    settings = yaml.safe_load(path.read_text())
    settings["logger"] = str(REPO / "configs/logger/mlflow.yaml")
    path.write_text(yaml.safe_dump(settings))
    spec = load_study(path)
    stores = set()
    for run in spec.runs:
        csv_logger, tracked = run_config(spec, run)["trainer"]["logger"]
        assert csv_logger["class_path"].endswith("CSVLogger")
        args = tracked["init_args"]
        assert args["experiment_name"] == "runs"
        assert args["tags"] == {
            "lam": str(run.jreg["lam"]),
            "weights": str(run.jreg.get("weights", "default")),
            "seed": str(run.seed),
        }
        stores.add(args["tracking_uri"])
    assert stores == {f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"}
    settings["logger"] = str(tmp_path / "missing.yaml")
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(FileNotFoundError, match="study: logger"):
        load_study(path)
