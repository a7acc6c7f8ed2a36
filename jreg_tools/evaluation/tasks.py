"""Multiple-choice tasks in lm-evaluation-harness's format: a task YAML beside JSONL data.

The same YAML runs in the harness (``--backend harness``) and in the built-in
scorer. The scorer reads the subset of keys a zero-shot multiple-choice task
needs::

    task: tiny_mc
    dataset_path: json
    dataset_kwargs: {data_files: {test: tiny_mc.jsonl}}   # relative to the YAML
    output_type: multiple_choice
    test_split: test
    doc_to_text: "{{question}}"      # a field name or a Jinja template
    doc_to_choice: "{{choices}}"     # a field, a template giving a list, or a list
    doc_to_target: answer            # index of the right choice (or its text)
    target_delimiter: " "            # between the text and each choice (default " ")
    description: ""                  # optional prefix of every context
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jreg_lightning.errors import ConfigError, InputNotFoundError
from jreg_tools.data.sources import json_line

_SUPPORTED_SPLITS = ("test_split", "validation_split")


@dataclass
class MultipleChoiceTask:
    """A zero-shot multiple-choice task read from a harness task YAML.

    Attributes:
        name: the YAML's ``task``.
        yaml_path: the task file.
        docs: the documents of the evaluated split, in file order.
        doc_to_text, doc_to_choice, doc_to_target: the harness's fields (see module doc).
        target_delimiter: put between the context and each choice.
        description: prefix of every context.
    """

    name: str
    yaml_path: Path
    docs: list[dict]
    doc_to_text: str
    doc_to_choice: str | list[str]
    doc_to_target: str | int
    target_delimiter: str = " "
    description: str = ""
    config: dict = field(default_factory=dict, repr=False)

    def context(self, doc: dict) -> str:
        """The text the choices continue (description + ``doc_to_text``)."""
        return self.description + str(_field_or_template(self.doc_to_text, doc))

    def choices(self, doc: dict) -> list[str]:
        """The candidate continuations of ``doc``, without the delimiter."""
        spec = self.doc_to_choice
        if isinstance(spec, list):
            return [str(choice) for choice in spec]
        value = doc[spec] if spec in doc else ast.literal_eval(_render(spec, doc))
        if not isinstance(value, list) or not value:
            raise ConfigError(
                f"{self.yaml_path}: doc_to_choice gave {value!r} for a document; it must give "
                "a non-empty list of strings"
            )
        return [str(choice) for choice in value]

    def target(self, doc: dict) -> int:
        """Index of the right choice of ``doc``."""
        value = _field_or_template(self.doc_to_target, doc)
        choices = self.choices(doc)
        if isinstance(value, str):
            value = int(value) if value.strip().isdigit() else _index_of(value, choices, self)
        if not isinstance(value, int) or not 0 <= value < len(choices):
            raise ConfigError(
                f"{self.yaml_path}: doc_to_target gave {value!r}, not an index into the "
                f"{len(choices)} choices"
            )
        return value


def _index_of(value: str, choices: list[str], task: MultipleChoiceTask) -> int:
    if value not in choices:
        raise ConfigError(f"{task.yaml_path}: target {value!r} is not one of the choices")
    return choices.index(value)


def _render(template: str, doc: dict) -> str:
    # The harness renders with Jinja2, StrictUndefined, trailing newlines kept.
    from jinja2 import BaseLoader, Environment, StrictUndefined

    environment = Environment(
        loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True
    )
    return environment.from_string(template).render(**doc)


def _field_or_template(spec: str | int, doc: dict):
    if isinstance(spec, int):
        return spec
    return doc[spec] if spec in doc else _render(spec, doc)


def data_files(config: dict, yaml_path: Path) -> dict[str, list[Path]]:
    """The task's ``dataset_kwargs.data_files`` per split, resolved against the YAML's folder."""
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        raise ConfigError(
            f"{yaml_path}: dataset_kwargs.data_files is missing; name the local JSONL file(s), "
            "e.g. data_files: {test: my_task.jsonl}"
        )
    if isinstance(files, str | list):
        files = {"train": files}  # what datasets' json builder calls a bare file list
    resolved = {}
    for split, names in files.items():
        names = [names] if isinstance(names, str) else list(names)
        resolved[split] = [(yaml_path.parent / name).resolve() for name in names]
    return resolved


def read_task_config(yaml_path: str | Path) -> dict:
    """The task YAML as a dict, checked to be a local JSON multiple-choice task."""
    path = Path(yaml_path)
    if not path.is_file():
        raise InputNotFoundError(f"tasks: {path} does not exist; pass a task YAML file")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict) or "task" not in config:
        raise ConfigError(f"tasks: {path} has no 'task' name; it is not a harness task YAML")
    if config.get("dataset_path") != "json":
        raise ConfigError(
            f"tasks: {path} has dataset_path {config.get('dataset_path')!r}; only local "
            "'json' tasks run offline (dataset_path: json with dataset_kwargs.data_files)"
        )
    if config.get("output_type", "multiple_choice") != "multiple_choice":
        raise ConfigError(
            f"tasks: {path} has output_type {config['output_type']!r}; the evaluation "
            "commands score multiple_choice tasks"
        )
    if config.get("num_fewshot"):
        raise ConfigError(f"tasks: {path} sets num_fewshot; the built-in scorer is zero-shot")
    return config


def evaluated_split(config: dict, yaml_path: Path) -> str:
    """The split the harness evaluates: ``test_split``, else ``validation_split``."""
    for key in _SUPPORTED_SPLITS:
        if config.get(key):
            return str(config[key])
    raise ConfigError(f"tasks: {yaml_path} names no test_split or validation_split")


def load_task(yaml_path: str | Path) -> MultipleChoiceTask:
    """Read a harness task YAML and its JSONL documents.

    Args:
        yaml_path: the task file; its ``data_files`` are relative to its folder.
    """
    path = Path(yaml_path)
    config = read_task_config(path)
    split = evaluated_split(config, path)
    files = data_files(config, path)
    if split not in files:
        raise ConfigError(
            f"tasks: {path} evaluates split {split!r} but data_files names {sorted(files)}"
        )
    docs = []
    for file in files[split]:
        if not file.is_file():
            raise InputNotFoundError(f"tasks: data file {file} of {path} does not exist")
        with file.open() as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                docs.append(json_line(line, file, number, "tasks"))
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        if key not in config:
            raise ConfigError(f"tasks: {path} has no {key}; a multiple-choice task needs it")
    return MultipleChoiceTask(
        name=str(config["task"]),
        yaml_path=path,
        docs=docs,
        doc_to_text=config["doc_to_text"],
        doc_to_choice=config["doc_to_choice"],
        doc_to_target=config["doc_to_target"],
        target_delimiter=config.get("target_delimiter", " "),
        description=config.get("description", ""),
        config=config,
    )
