"""Evaluation: multiple-choice scorer, harness on an exported folder, perplexity, compare."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jreg_lightning.data.datamodule import TokenShardDataModule
from jreg_lightning.module import JregLightningModule
from jreg_tools.evaluation.compare import compare
from jreg_tools.evaluation.evaluate import evaluate
from jreg_tools.evaluation.models import load_eval_model
from jreg_tools.evaluation.perplexity import measure_perplexity, perplexity
from jreg_tools.evaluation.scorer import encode_pair, score_task
from jreg_tools.evaluation.tasks import load_task
from jreg_tools.export import export
from tests.conftest import TINY_LLAMA
from tests.exported_model import write_module_checkpoint, write_tokenizer
from tests.tiny_fit import quiet_trainer

TASK = Path(__file__).parent / "data" / "tiny_mc.yaml"


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_module_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.ckpt", seed=1)


@pytest.fixture(scope="module")
def hf_folder(checkpoint, tokenizer_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    return export(str(checkpoint), str(out), tokenizer=str(tokenizer_file))


def test_task_yaml_is_read_like_the_harness():
    task = load_task(TASK)
    doc = task.docs[2]
    assert task.name == "tiny_mc" and len(task.docs) == 12
    assert task.context(doc) == "Paris is the capital of"
    assert task.choices(doc) == ["Italy", "Spain", "France", "Japan"]
    assert task.target(doc) == 2


def test_encode_pair_moves_trailing_spaces_and_handles_empty_context(hf_folder):
    tokenizer = load_eval_model(hf_folder).tokenizer
    context, continuation = encode_pair(tokenizer, "The cat sat on the ", "mat")
    assert continuation == tokenizer.encode("The cat sat on the mat")[len(context) :]
    assert context == tokenizer.encode("The cat sat on the")
    context, continuation = encode_pair(tokenizer, "", " mat")
    assert context == [tokenizer.eos_token_id]
    assert continuation == tokenizer.encode(" mat", add_special_tokens=False)


def test_scorer_loglikelihoods_equal_one_sequence_at_a_time(hf_folder):
    model = load_eval_model(hf_folder)
    task = load_task(TASK)
    result = score_task(model.model, model.tokenizer, task, model.max_length, batch_size=3)
    for index in (0, 1, 10, 11):  # short, empty context, cut from the left
        doc, scores = task.docs[index], result.loglikelihoods[index]
        for choice, score in zip(task.choices(doc), scores):
            context, cont = encode_pair(model.tokenizer, task.context(doc), " " + choice)
            ids = torch.tensor([(context + cont)[-(model.max_length + 1) :]])
            with torch.no_grad():
                logits = model.model(input_ids=ids[:, :-1]).logits[0, -len(cont) :]
            expected = F.log_softmax(logits, -1).gather(1, ids[0, -len(cont) :, None]).sum()
            assert score == pytest.approx(float(expected), abs=1e-4)
    # acc / acc_norm are the argmax of the raw and the length-normalised scores.
    acc = [max(range(len(s)), key=s.__getitem__) == task.target(d) for d, s in
           zip(task.docs, result.loglikelihoods)]  # fmt: skip
    assert result.acc == pytest.approx(sum(acc) / len(acc))
    assert result.num_docs == 12


def test_scorer_finds_the_choice_the_model_prefers(hf_folder, tmp_path):
    # Make each document's answer the model's greedy next token: acc must be 1.
    model = load_eval_model(hf_folder)
    tokenizer = model.tokenizer
    docs = []
    for text in ("The cat sat", "Water is", "Rome", "One plus one"):
        context = tokenizer.encode(text)
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([context])).logits[0, -1]
        # Candidates: single tokens that stay one token after the context.
        ranked = [
            (float(logits[i]), tokenizer.decode([i]))
            for i in range(len(tokenizer))
            if tokenizer.encode(text + tokenizer.decode([i])) == [*context, i]
        ]
        ranked.sort()
        docs.append({"question": text, "choices": [ranked[0][1], ranked[-1][1]], "answer": 1})
    (tmp_path / "greedy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    task_yaml = tmp_path / "greedy.yaml"
    task_yaml.write_text(
        TASK.read_text()
        .replace("tiny_mc.jsonl", "greedy.jsonl")
        .replace("task: tiny_mc", "task: greedy")
        .replace('target_delimiter: " "', 'target_delimiter: ""')
    )
    result = score_task(model.model, tokenizer, load_task(task_yaml), model.max_length)
    assert result.acc == 1.0


@pytest.mark.slow
def test_harness_runs_offline_on_the_exported_folder_and_agrees(hf_folder, tmp_path):
    pytest.importorskip("lm_eval", reason="the optional extra 'eval' is not installed")
    harness = evaluate(str(hf_folder), [str(TASK)], backend="harness", batch_size=4)
    builtin = evaluate(str(hf_folder), [str(TASK)], backend="builtin", batch_size=4)
    assert harness["tasks"]["tiny_mc"]["num_docs"] == 12
    assert harness["tasks"] == builtin["tasks"]
    assert not list(TASK.parent.glob("*.arrow")), "the harness writes nothing beside the task"


def test_perplexity_on_shards_equals_the_modules_validation(checkpoint, token_shards, tmp_path):
    content = torch.load(checkpoint, weights_only=True)
    module = JregLightningModule(**content["hyper_parameters"])
    module.configure_model()
    module.load_state_dict(content["state_dict"])
    trainer = quiet_trainer(default_root_dir=tmp_path)
    trainer.validate(module, TokenShardDataModule(token_shards, seq_len=32, batch_size=4))
    expected = module.last_validation
    result = measure_perplexity(load_eval_model(checkpoint), token_shards, seq_len=32, batch_size=4)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(expected["loss"]), rel=1e-5)
    assert result["profile"] == pytest.approx(expected["profile"], rel=1e-4)
    assert result["jump_strength"] == pytest.approx(expected["jump_strength"], rel=1e-4)
    assert result["jump_layer"] == expected["jump_layer"]


def test_perplexity_of_a_text_file_is_the_cross_entropy_of_its_tokens(hf_folder, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("The sun rises in the east and sets in the west.")
    out = tmp_path / "ppl.json"
    result = perplexity(str(hf_folder), text=str(text), output=str(out))
    model = load_eval_model(hf_folder)
    ids = [*model.tokenizer.encode(text.read_text()), model.tokenizer.eos_token_id]
    batch = torch.tensor([ids])
    with torch.no_grad():
        logits = model.model(input_ids=batch[:, :-1]).logits
    expected = F.cross_entropy(logits[0], batch[0, 1:])
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert json.loads(out.read_text())["loss"] == pytest.approx(result["loss"])


def test_compare_prints_one_side_by_side_table(
    hf_folder, checkpoint, tokenizer_file, token_shards, tmp_path, capsys
):
    results = compare(
        [str(hf_folder), str(checkpoint)],
        names=["exported", "checkpoint"],
        tasks=str(TASK),
        data_dir=str(token_shards),
        tokenizer=str(tokenizer_file),
        seq_len=32,
        max_batches=2,
        limit=6,
        output=str(tmp_path / "compare.json"),
    )
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("metric"))
    assert header.split() == ["metric", "exported", "checkpoint"]
    labels = {line.rsplit(maxsplit=2)[0].strip() for line in table[2:] if line}
    assert {"loss", "ppl", "J", "J_late", "jump layer", "tiny_mc acc", "tiny_mc acc_norm"} <= labels
    # The exported folder and the checkpoint it came from are the same model.
    exported, original = results["exported"], results["checkpoint"]
    assert exported["perplexity"]["loss"] == pytest.approx(original["perplexity"]["loss"], rel=1e-6)
    assert exported["tasks"] == original["tasks"]
    assert exported["tasks"]["tiny_mc"]["num_docs"] == 6
    assert set(json.loads((tmp_path / "compare.json").read_text())) == set(results)


def test_bad_inputs_fail_in_one_line(hf_folder, checkpoint, tmp_path):
    hub_task = tmp_path / "hub.yaml"
    hub_task.write_text("task: x\ndataset_path: hellaswag\n")
    with pytest.raises(ValueError, match="dataset_path"):
        load_task(hub_task)
    missing = tmp_path / "missing.yaml"
    missing.write_text(TASK.read_text().replace("tiny_mc.jsonl", "nowhere.jsonl"))
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_task(missing)
    with pytest.raises(ValueError, match="seq_len"):
        measure_perplexity(load_eval_model(hf_folder), tmp_path, seq_len=10_000)
    text = tmp_path / "t.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="--tokenizer"):
        perplexity(str(checkpoint), text=str(text))
    with pytest.raises(FileNotFoundError, match="index.json"):
        perplexity(str(hf_folder), str(tmp_path))
    with pytest.raises(ValueError, match="two or more"):
        compare([str(hf_folder)], tasks=str(TASK))
    assert TINY_LLAMA["max_position_embeddings"] < 10_000


@pytest.mark.parametrize(
    ("command", "option"),
    [("export", "--checkpoint"), ("evaluate", "--backend"), ("perplexity", "--data"),
     ("compare", "--models")],
)  # fmt: skip
def test_commands_have_help(command, option, capsys):
    from jreg_tools.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert option in capsys.readouterr().out
