"""Held-out evaluation during fit (``evaluation.*``): logged beside val/loss, rank-correct.

The held-out set is the run's own val split, read whole, so at the steps where
both run its loss must equal ``val/loss`` and it must count every val token
once: under 2-rank FSDP2 too, where each rank scores its share.
"""

from __future__ import annotations

import pytest

from jreg_lightning.errors import ConfigError
from jreg_tools.evaluation.in_training import HeldOutEvaluation
from tests.cli_run import REPO, fit_tiny, logged_metric, tiny_override

VAL_TOKENS = 8 * 330 // 33 * 32  # tests/shards.py: 8 val documents of 330 tokens, seq_len 32


def _fit(tmp_path, token_shards, *extra: str):
    run = tmp_path / "run"
    override = tiny_override(
        run, token_shards, max_steps=4, val_check_interval=2, limit_val_batches=1.0
    )
    fit_tiny(
        override,
        *extra,
        "--evaluation.every_n_steps",
        "2",
        "--evaluation.perplexity",
        f"{{heldout: {token_shards}}}",
        "--evaluation.batch_size",
        "4",
        "--evaluation.max_batches",
        "64",
    )
    return run / "logs" / "version_0" / "metrics.csv"


def _check(metrics_csv) -> None:
    loss = logged_metric(metrics_csv, "eval/heldout/loss")
    val = logged_metric(metrics_csv, "val/loss")
    assert sorted(loss) == [1, 3]
    for step, value in loss.items():
        assert value == pytest.approx(val[step], rel=1e-5)
    assert set(logged_metric(metrics_csv, "eval/heldout/tokens").values()) == {VAL_TOKENS}
    ppl = logged_metric(metrics_csv, "eval/heldout/ppl")
    assert ppl[3] == pytest.approx(2.718281828 ** loss[3], rel=1e-5)
    assert all(v > 0 for v in logged_metric(metrics_csv, "eval/heldout/jump_strength").values())


@pytest.mark.slow
def test_held_out_loss_equals_val_loss_on_the_same_split(tmp_path, token_shards):
    _check(_fit(tmp_path, token_shards))


@pytest.mark.slow
def test_held_out_evaluation_is_rank_correct_under_two_rank_fsdp2(tmp_path, token_shards):
    _check(_fit(tmp_path, token_shards, "--config", str(REPO / "configs/strategy/fsdp_cpu.yaml")))


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="evaluation.every_n_steps"):
        HeldOutEvaluation(every_n_steps=-1)
    with pytest.raises(ConfigError, match="evaluation.batch_size"):
        HeldOutEvaluation(batch_size=0)
    assert not HeldOutEvaluation(every_n_steps=100).enabled, "nothing named: off"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [[], ["--config", "configs/strategy/fsdp_cpu.yaml"]],
                         ids=["one-process", "fsdp2-two-ranks"])  # fmt: skip
def test_tasks_are_scored_during_training_and_logged(tmp_path, strategy):
    from tests.corpora import prepare_small, write_corpus

    write_corpus(tmp_path / "docs.jsonl", documents=60)
    prepare_small(tmp_path / "docs.jsonl", tmp_path / "data", num_workers=1)
    run = tmp_path / "run"
    override = tiny_override(run, tmp_path / "data", max_steps=4, val_check_interval=4)
    task = REPO / "tests" / "data" / "tiny_mc.yaml"
    fit_tiny(
        override,
        "--model.llama.vocab_size=300",
        "--evaluation.every_n_steps=2",
        f"--evaluation.tasks=[{task}]",
        "--evaluation.task_backend=builtin",
        "--evaluation.batch_size=4",
        *strategy,
    )
    metrics = run / "logs" / "version_0" / "metrics.csv"
    acc, acc_norm = (logged_metric(metrics, f"eval/tiny_mc/{k}") for k in ("acc", "acc_norm"))
    # Two evaluations (after steps 2 and 4); 12 four-way questions: multiples of 1/12.
    assert len(acc) == len(acc_norm) == 2
    for value in [*acc.values(), *acc_norm.values()]:
        assert 0 <= value <= 1 and round(value * 12, 6) == round(value * 12)
