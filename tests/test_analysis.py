"""Analysis of local models: same profile as training, early-exit and skip losses, series, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jreg_lightning.displacement import layer_sums_and_counts
from jreg_lightning.metrics import LayerProfileMetric
from jreg_lightning.module import JregLightningModule
from jreg_lightning.profile_report import format_profile_table, write_profile_report
from jreg_tools.analysis.command import AnalyzeOptions, analyze
from jreg_tools.analysis.loading import classify, load_hf_model, series_in_order
from jreg_tools.analysis.measure import measure_model
from jreg_tools.analysis.run_logs import read_logged_series
from jreg_tools.analysis.text import text_batches
from tests.conftest import TINY_LLAMA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _module(final_state: str = "post_norm", seed: int = 0) -> JregLightningModule:
    torch.manual_seed(seed)
    module = JregLightningModule(llama=dict(TINY_LLAMA), jreg={"final_state": final_state})
    module.configure_model()
    return module.eval()


def _batch(seed: int = 1, rows: int = 2, seq_len: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_LLAMA["vocab_size"], (rows, seq_len + 1), generator=generator)


def _save_checkpoint(module: JregLightningModule, path: Path, step: int) -> None:
    """What Lightning writes, reduced to what the analysis reads."""
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "global_step": step,
        },
        path,
    )


@pytest.mark.parametrize("final_state", ["post_norm", "pre_norm"])
def test_profile_of_saved_hf_model_equals_training_metric(tmp_path, final_state):
    module = _module(final_state)
    batch = _batch()
    with torch.no_grad():
        _, states = module.forward_with_states(batch[:, :-1])
        metric = LayerProfileMetric(TINY_LLAMA["num_layers"])
        metric.update(*layer_sums_and_counts(states))
    expected = metric.compute()["profile"]

    module.model.save_pretrained(tmp_path / "hf")
    model, causal = load_hf_model(tmp_path / "hf")
    report = measure_model(model, [batch], progress=False)

    assert causal
    assert report["tokens"] == batch[:, :-1].numel()
    torch.testing.assert_close(
        torch.tensor(report["profiles"][final_state]), expected, rtol=1e-5, atol=1e-6
    )


def test_last_early_exit_loss_equals_model_loss():
    module = _module()
    batch = _batch()
    report = measure_model(module.model, [batch], skip_blocks=False, progress=False)
    with torch.no_grad():
        logits = module.model(input_ids=batch[:, :-1]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    early = report["early_exit_loss"]
    assert len(early) == TINY_LLAMA["num_layers"]
    # The lens of block L goes through norm + head on the captured raw stream,
    # not through the model's logits: equal only if the lens is right.
    assert early[-1] == pytest.approx(float(loss), rel=1e-5)
    assert report["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert early[0] != pytest.approx(early[-1], rel=1e-4)


def test_skipping_an_identity_block_changes_nothing():
    module = _module()
    block = module.model.model.layers[1]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    report = measure_model(module.model, [_batch()], early_exit=False, progress=False)
    increase = report["skip_loss_increase"]
    assert increase[1] == pytest.approx(0.0, abs=1e-5)
    assert report["profiles"]["post_norm"][1] == pytest.approx(0.0, abs=1e-6)
    # The other blocks do something, so skipping them must show.
    assert max(abs(v) for i, v in enumerate(increase) if i != 1) > 1e-4


def test_encoder_gives_a_profile_without_losses(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=TINY_LLAMA["vocab_size"],
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(tmp_path / "bert")
    model, causal = load_hf_model(tmp_path / "bert")
    report = measure_model(model, [_batch()], progress=False)
    assert not causal
    assert len(report["profiles"]["post_norm"]) == 3
    assert report["loss"] is None and report["early_exit_loss"] is None
    assert report["skip_loss_increase"] is None


def test_series_of_three_checkpoints_is_ordered_by_step(tmp_path, token_shards):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    # File names sort differently from the steps; last.ckpt repeats step 30.
    for name, step, seed in (("a.ckpt", 30, 3), ("b.ckpt", 10, 1), ("c.ckpt", 20, 2)):
        _save_checkpoint(_module(seed=seed), folder / name, step)
    _save_checkpoint(_module(seed=3), folder / "last.ckpt", 30)

    assert [(s, p.name) for s, p in series_in_order(folder)] == [
        (10, "b.ckpt"),
        (20, "c.ckpt"),
        (30, "a.ckpt"),
    ]
    result = analyze(
        AnalyzeOptions(
            models=[str(folder)],
            names=["run"],
            data_dir=str(token_shards),
            seq_len=32,
            batch_size=2,
            max_batches=1,
            skip_blocks=False,
            output_dir=str(tmp_path / "out"),
            progress=False,
        )
    )
    series = result["series"]["run"]
    assert series["steps"] == [10, 20, 30]
    # Each point is the checkpoint of that step: seeds 1, 2, 3 built different weights.
    batch = next(iter(_shard_batch(token_shards)))
    for step, seed, profile in zip(series["steps"], (1, 2, 3), series["profiles"], strict=True):
        direct = measure_model(_module(seed=seed).model, [batch], False, False, progress=False)
        assert profile == pytest.approx(direct["profiles"]["post_norm"], rel=1e-5), step
    rows = (tmp_path / "out" / "series_run.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["10", "20", "30"]


def _shard_batch(token_shards: Path):
    from jreg_tools.analysis.text import shard_batches

    return shard_batches(token_shards, "val", seq_len=32, batch_size=2, max_batches=1)


def _write_metrics_csv(run_dir: Path) -> None:
    log_dir = run_dir / "logs" / "version_0"
    log_dir.mkdir(parents=True)
    header = ["step", "train/ce", "train/jump_strength", "train/jump_strength_late"]
    header += ["train/jump_layer"] + [f"train/psi/layer_{i:02d}" for i in range(1, 5)]
    lines = [",".join(header)]
    # Logged out of order and with a row of other metrics between: both must be handled.
    for step, last in ((20, 0.30), (0, 0.10), (10, 0.20)):
        values = [step, 5.0, last / 0.05, last / 0.05, 4, 0.4, 0.05, 0.05, last]
        lines.append(",".join(str(v) for v in values))
    lines.append("15,4.0,,,,,,,")
    (log_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_run_logs_give_the_logged_series(tmp_path):
    _write_metrics_csv(tmp_path / "run")
    assert classify(tmp_path / "run").kind == "run_logs"
    series = read_logged_series(tmp_path / "run", stage="train")
    assert series["steps"] == [0, 10, 20]
    assert [p[-1] for p in series["profiles"]] == pytest.approx([0.10, 0.20, 0.30])
    with pytest.raises(ValueError, match="val/psi"):
        read_logged_series(tmp_path / "run", stage="val")


def test_every_plot_is_a_real_png(tmp_path, token_shards):
    hf = tmp_path / "hf"
    _module(seed=0).model.save_pretrained(hf)
    _write_metrics_csv(tmp_path / "run")
    result = analyze(
        AnalyzeOptions(
            models=[str(hf), str(tmp_path / "run")],
            names=["model", "logged"],
            data_dir=str(token_shards),
            seq_len=32,
            batch_size=2,
            max_batches=1,
            stage="train",
            output_dir=str(tmp_path / "out"),
            progress=False,
        )
    )
    pngs = sorted(Path(p).name for p in result["files"] if p.endswith(".png"))
    assert pngs == [
        "early_exit_loss.png",
        "heatmap_logged.png",
        "jump_vs_step.png",
        "profiles.png",
        "skip_loss_increase.png",
    ]
    for name in pngs:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert 5_000 < len(data) < 150_000, (name, len(data))
    written = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert written["models"][0]["name"] == "model"
    assert len(written["models"][0]["early_exit_loss"]) == TINY_LLAMA["num_layers"]


def test_text_file_batches_have_the_training_layout(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat\n" * 200)
    encode = lambda s: [len(word) for word in s.split()]  # noqa: E731  (a stand-in tokenizer)
    batches = list(text_batches(text, encode, seq_len=7, batch_size=3, max_batches=2))
    assert len(batches) == 2
    assert all(b.shape == (3, 8) and b.dtype == torch.long for b in batches)
    assert batches[0][0].tolist() == [3, 3, 3, 2, 3, 3, 3, 3]


def test_bad_inputs_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analyze(
            AnalyzeOptions(models=[str(tmp_path / "missing")], output_dir=str(tmp_path / "out"))
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell what"):
        analyze(AnalyzeOptions(models=[str(tmp_path / "empty")], output_dir=str(tmp_path / "out")))
    hf = tmp_path / "hf"
    _module().model.save_pretrained(hf)
    with pytest.raises(ValueError, match="--data"):
        analyze(AnalyzeOptions(models=[str(hf)], output_dir=str(tmp_path / "out"), progress=False))
    assert not (tmp_path / "out").exists()


def test_validation_table_and_files_carry_early_exit_losses(tmp_path):
    report = {
        "profile": [0.4, 0.01, 0.02, 0.05],
        "early_exit_loss": [7.5, 6.25, 5.125, 4.0],
        "jump_strength": 3.33,
        "jump_strength_late": 3.33,
        "jump_layer": 4,
        "loss": 4.0,
        "ppl": 54.6,
        "final_state": "post_norm",
    }
    table = format_profile_table(report)
    assert "early-exit loss" in table
    assert "5.1250" in table and "J = 3.330" in table
    json_path, csv_path = write_profile_report(report, tmp_path / "run", "validation")
    assert json.loads(json_path.read_text())["early_exit_loss"] == report["early_exit_loss"]
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "layer,psi,early_exit_loss"
    assert rows[3] == "3,0.02,5.125"


def test_text_and_tokenizer_json_feed_a_model(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog sat on the log\n" * 50)
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train([str(corpus)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    hf = tmp_path / "hf"
    _module().model.save_pretrained(hf)

    result = analyze(
        AnalyzeOptions(
            models=[str(hf)],
            text=str(corpus),
            tokenizer=str(tmp_path / "tokenizer.json"),
            seq_len=16,
            batch_size=2,
            max_batches=2,
            skip_blocks=False,
            output_dir=str(tmp_path / "out"),
            progress=False,
        )
    )
    [model] = result["models"]
    assert model["batches"] == 2 and model["tokens"] == 2 * 2 * 16


def test_metrics_files_read_a_study_archive_like_the_run(tmp_path):
    from jreg_tools.analysis.loading import metrics_files

    for version in (0, 1, 10):
        (tmp_path / "run" / "logs" / f"version_{version}").mkdir(parents=True)
        (tmp_path / "run" / "logs" / f"version_{version}" / "metrics.csv").write_text("step\n")
        (tmp_path / "archive").mkdir(exist_ok=True)
        (tmp_path / "archive" / f"metrics_version_{version}.csv").write_text("step\n")
    run = [p.parent.name for p in metrics_files(tmp_path / "run")]
    archive = [p.stem for p in metrics_files(tmp_path / "archive")]
    assert run == ["version_0", "version_1", "version_10"]
    assert archive == ["metrics_version_0", "metrics_version_1", "metrics_version_10"]
