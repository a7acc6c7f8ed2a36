"""The built-in zero-shot multiple-choice scorer: log-likelihood of each choice, acc, acc_norm.

It follows lm-evaluation-harness's ``hf`` model for causal LMs, so both give
the same accuracy on the same task: trailing spaces of the context move to the
continuation, context + continuation are encoded together and split, an empty
context is replaced by the BOS (else EOS) token, inputs longer than the model
are cut from the left, ``acc`` takes the choice of highest log-likelihood and
``acc_norm`` divides it by the choice's length in characters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from jreg_lightning.errors import ConfigError
from jreg_tools.evaluation.tasks import MultipleChoiceTask


@dataclass
class TaskResult:
    """Scores of one task.

    Attributes:
        task: task name.
        acc: fraction of documents whose highest log-likelihood choice is right.
        acc_norm: the same with log-likelihoods divided by the choices' lengths.
        num_docs: documents scored.
        loglikelihoods: per document, the log-likelihood of each choice.
    """

    task: str
    acc: float
    acc_norm: float
    num_docs: int
    loglikelihoods: list[list[float]]


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, as the harness splits them."""
    if context == "":
        prefix = tokenizer.bos_token_id
        prefix = tokenizer.eos_token_id if prefix is None else prefix
        if prefix is None:
            raise ConfigError(
                "tokenizer: an empty context needs a BOS or EOS token; export the model with "
                "--eos_token"
            )
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


@torch.no_grad()
def continuation_loglikelihoods(
    model: PreTrainedModel,
    pairs: list[tuple[list[int], list[int]]],
    max_length: int,
    batch_size: int = 8,
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each ``(context_ids, continuation_ids)``.

    Each input is cut to its last ``max_length + 1`` tokens (the last one is only
    a target); a batch is right-padded, which a causal model never attends to.
    """
    device = next(model.parameters()).device
    results: list[float] = []
    for start in range(0, len(pairs), batch_size):
        rows = []
        for context_ids, continuation_ids in pairs[start : start + batch_size]:
            if not continuation_ids:
                raise ConfigError("a choice encoded to no tokens; check the task's choices")
            rows.append(
                ((context_ids + continuation_ids)[-(max_length + 1) :][:-1], continuation_ids)
            )
        width = max(len(inputs) for inputs, _ in rows)
        batch = torch.zeros((len(rows), width), dtype=torch.long)
        for index, (inputs, _) in enumerate(rows):
            batch[index, : len(inputs)] = torch.tensor(inputs)
        logits = model(input_ids=batch.to(device), use_cache=False).logits
        for index, (inputs, continuation_ids) in enumerate(rows):
            count = len(continuation_ids)
            # logits at position t predict token t + 1: the continuation's are the last `count`.
            scores = F.log_softmax(logits[index, len(inputs) - count : len(inputs)].float(), -1)
            targets = torch.tensor(continuation_ids, device=scores.device)
            results.append(float(scores.gather(1, targets[:, None]).sum()))
    return results


def score_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: MultipleChoiceTask,
    max_length: int,
    batch_size: int = 8,
    limit: int | None = None,
) -> TaskResult:
    """Zero-shot accuracy of ``model`` on ``task`` (acc and acc_norm, as in the harness).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        task: the multiple-choice task.
        max_length: longest input the model takes.
        batch_size: (context, choice) pairs per forward pass.
        limit: score only the first ``limit`` documents.
    """
    docs = task.docs if limit is None else task.docs[:limit]
    if not docs:
        raise ConfigError(f"tasks: {task.yaml_path} has no documents in the evaluated split")
    pairs, choice_lists, targets = [], [], []
    for doc in docs:
        context, choices = task.context(doc), task.choices(doc)
        choice_lists.append(choices)
        targets.append(task.target(doc))
        pairs.extend(encode_pair(tokenizer, context, task.target_delimiter + c) for c in choices)
    flat = continuation_loglikelihoods(model, pairs, max_length, batch_size)
    per_doc, correct, correct_norm, offset = [], 0, 0, 0
    for choices, target in zip(choice_lists, targets):
        scores = torch.tensor(flat[offset : offset + len(choices)], dtype=torch.float64)
        offset += len(choices)
        lengths = torch.tensor([float(len(choice)) for choice in choices], dtype=torch.float64)
        correct += int(scores.argmax()) == target
        correct_norm += int((scores / lengths).argmax()) == target
        per_doc.append(scores.tolist())
    return TaskResult(task.name, correct / len(docs), correct_norm / len(docs), len(docs), per_doc)
