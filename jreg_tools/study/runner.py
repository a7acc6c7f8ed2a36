"""Train a study's runs: each one a ``cli.py fit`` then a ``cli.py validate``, resumable.

A run's folder holds ``run_config.yaml`` (the full fit config), its logs and
checkpoints, ``attempts.json`` (wall time of every fit attempt) and, once
finished, ``result.json``. A finished run is skipped; a run with checkpoints
but no result resumes from ``checkpoints/last.ckpt`` (Lightning restores the
model, optimizer, schedule and data position), so a study stopped halfway,
by a kill or the end of a session, continues where it was.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import yaml

from jreg_lightning.errors import JregError
from jreg_lightning.loggers import MLFLOW_ARTIFACTS, MLFLOW_DB
from jreg_tools.study.live import RunBoard
from jreg_tools.study.progress import PROGRESS_FILE
from jreg_tools.study.spec import RunSpec, StudySpec

RESULT_FILE = "result.json"
CONFIG_FILE = "run_config.yaml"
ATTEMPTS_FILE = "attempts.json"
FINAL_VALIDATION = "validation_profile.json"
_CLI = "from jreg_tools.cli import main; main()"
PROGRESS_CALLBACK = "jreg_tools.study.progress.ProgressFile"
# Seconds between two polls of the runs' progress files, and between two plain
# progress lines of one run when stdout is not a terminal.
POLL_SECONDS = 1.0
PLAIN_EVERY_SECONDS = 60.0


def run_dir(spec: StudySpec, run: RunSpec) -> Path:
    """The folder of one run."""
    return spec.output_dir / run.name


def _set_dotted(config: dict, key: str, value) -> None:
    """``config[a][b][c] = value`` for ``key = "a.b.c"``; a number indexes a list."""
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def run_config(spec: StudySpec, run: RunSpec, overrides: dict | None = None) -> dict:
    """The base fit config with the study's and the run's overrides, seed, JREG and folders.

    Checkpoints are saved at every validation (``trainer.val_check_interval``),
    so J can be measured again at each of those steps; a ``ProgressFile`` callback
    writes the run's ``progress.json`` for the study's console.
    """
    config = copy.deepcopy(yaml.safe_load(spec.base.read_text()))
    folder = str(run_dir(spec, run))
    config["seed_everything"] = run.seed
    config.setdefault("model", {}).setdefault("jreg", {}).update(run.jreg)
    for key, value in {**spec.overrides, **run.overrides, **(overrides or {})}.items():
        _set_dotted(config, key, value)
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = folder
    if spec.logger is not None:
        trainer["logger"] = tracked_loggers(spec, run)
    logger = trainer.get("logger")
    if isinstance(logger, dict):
        logger.setdefault("init_args", {})["save_dir"] = folder
    for callback in trainer.get("callbacks") or []:
        if callback.get("class_path", "").endswith("ModelCheckpoint"):
            args = callback.setdefault("init_args", {})
            args["dirpath"] = f"{folder}/checkpoints"
            args["every_n_train_steps"] = trainer.get("val_check_interval", trainer["max_steps"])
    callbacks = [
        c for c in trainer.get("callbacks") or [] if c.get("class_path") != PROGRESS_CALLBACK
    ]
    progress = {"class_path": PROGRESS_CALLBACK, "init_args": {"path": f"{folder}/{PROGRESS_FILE}"}}
    trainer["callbacks"] = [*callbacks, progress]
    config.setdefault("data", {})["data_dir"] = spec.data.data_dir
    return config


def run_tags(run: RunSpec) -> dict[str, str]:
    """The tags of a study run in a tracker: ``lam``, ``weights`` and ``seed``."""
    return {
        "lam": str(run.jreg.get("lam", 0.0)),
        "weights": str(run.jreg.get("weights", "default")),
        "seed": str(run.seed),
    }


def tracked_loggers(spec: StudySpec, run: RunSpec) -> list[dict]:
    """The study's logger overlay for one run: one experiment, this run tagged.

    The experiment (MLflow) or project (W&B) is the study's folder name. Without
    ``MLFLOW_TRACKING_URI`` every run writes to one sqlite store in the study folder.
    """
    overlay = yaml.safe_load(spec.logger.read_text())["trainer"]["logger"]
    loggers = copy.deepcopy(overlay if isinstance(overlay, list) else [overlay])
    experiment = spec.output_dir.name
    for logger in loggers:
        args = logger.setdefault("init_args", {})
        if logger["class_path"].endswith("RunMLFlowLogger"):
            args.update(experiment_name=experiment, tags=run_tags(run))
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                study = spec.output_dir.resolve()
                args.setdefault("tracking_uri", f"sqlite:///{study / MLFLOW_DB}")
                args.setdefault("artifact_location", str(study / MLFLOW_ARTIFACTS))
        elif logger["class_path"].endswith("RunWandbLogger"):
            args.update(project=experiment, group=experiment, tags=run_tags(run))
    return loggers


def read_result(spec: StudySpec, run: RunSpec) -> dict | None:
    """The finished run's ``result.json``, or ``None``."""
    path = run_dir(spec, run) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _attempts(folder: Path) -> list[dict]:
    path = folder / ATTEMPTS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def unrecorded_attempts(folder: Path) -> int:
    """Fits of the run that left a log version but no timed attempt (killed mid-fit).

    Each fit writes a new logger version; an attempt is recorded only when its
    fit returns, so a session that ended mid-fit leaves a version without one.
    """
    # TensorBoard's version folders (event files) sit beside the CSV logger's.
    versions = [
        path
        for path in folder.glob("*/version_*")
        if path.is_dir() and not any(path.glob("events.out.tfevents*"))
    ]
    return max(0, len(versions) - len(_attempts(folder)))


def _record_attempt(folder: Path, attempt: dict) -> None:
    attempts = [*_attempts(folder), attempt]
    temporary = folder / f".{ATTEMPTS_FILE}.tmp"
    temporary.write_text(json.dumps(attempts, indent=2) + "\n")
    temporary.replace(folder / ATTEMPTS_FILE)


def _cli(args: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("a") as handle:
        handle.write(f"\n$ cli.py {' '.join(args)}\n")
        handle.flush()
        done = subprocess.run(
            [sys.executable, "-c", _CLI, *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        )
    if done.returncode != 0:
        raise JregError(
            f"study: `cli.py {' '.join(args)}` failed (exit {done.returncode}); see {log}"
        )


def train_run(spec: StudySpec, run: RunSpec, overrides: dict | None = None) -> dict:
    """Fit (or resume) one run, validate its last checkpoint, write and return ``result.json``."""
    folder = run_dir(spec, run)
    folder.mkdir(parents=True, exist_ok=True)
    config = run_config(spec, run, overrides)
    config_path = folder / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = folder / "study.log"
    last = folder / "checkpoints" / "last.ckpt"
    fit = ["fit", "--config", str(config_path)]
    resumed = last.exists()
    if resumed:
        fit += ["--ckpt_path", str(last)]
    (folder / PROGRESS_FILE).unlink(missing_ok=True)  # an earlier attempt's pace is not this one's
    started = time.time()
    _cli(fit, log, spec.threads_per_run)
    _record_attempt(
        folder,
        {"started": started, "seconds": round(time.time() - started, 1), "resumed": resumed},
    )
    # The same validation batches as during fit, early-exit losses included; no
    # logger, so the report lands in the run folder and the fit's metrics stay.
    validate = [
        "validate",
        "--config",
        str(config_path),
        "--ckpt_path",
        str(last),
        "--trainer.logger",
        "false",
    ]
    _cli(validate, log, spec.threads_per_run)
    validation = json.loads((folder / FINAL_VALIDATION).read_text())
    trainer = config["trainer"]
    data = config["data"]
    result = {
        "name": run.name,
        "seed": run.seed,
        "jreg": config["model"]["jreg"],
        "overrides": run.overrides,
        "steps": trainer["max_steps"],
        "tokens": trainer["max_steps"] * data["batch_size"] * data["seq_len"],
        "fit_seconds": round(sum(a["seconds"] for a in _attempts(folder)), 1),
        "attempts": len(_attempts(folder)),
        "final": validation,
        "config": str(config_path),
    }
    temporary = folder / f".{RESULT_FILE}.tmp"
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(folder / RESULT_FILE)
    return result


def train_study(
    spec: StudySpec, names: list[str] | None = None, overrides: dict | None = None
) -> dict[str, dict]:
    """Train every unfinished run (``names``: only those), ``spec.parallel`` at a time.

    ``overrides``: dotted fit-config keys applied to every run (the quick check's).
    """
    runs = [spec.run(name) for name in names] if names else spec.runs
    results: dict[str, dict] = {}
    pending = []
    for run in runs:
        done = read_result(spec, run)
        steps = run_config(spec, run, overrides)["trainer"]["max_steps"]
        if done is not None and done["steps"] >= steps:
            print(f"study: {run.name}: finished earlier, skipped")
            results[run.name] = done
            continue
        if done is not None:  # the study's max_steps grew: go on from last.ckpt
            print(
                f"study: {run.name}: extending from {done['steps']} to {steps} steps "
                "(the same as one longer run only for a constant learning rate)"
            )
        pending.append(run)

    if not pending:
        return results
    board = RunBoard(
        {run.name: run_dir(spec, run) for run in pending}, plain_every=PLAIN_EVERY_SECONDS
    )

    def one(run: RunSpec) -> tuple[str, dict]:
        folder = run_dir(spec, run)
        state = "resuming" if (folder / "checkpoints" / "last.ckpt").exists() else "training"
        board.say(f"study: {run.name}: {state} (log: {folder / 'study.log'})")
        result = train_run(spec, run, overrides)
        final = result["final"]
        board.say(
            f"study: {run.name}: done in {result['fit_seconds']:.0f} s: val loss "
            f"{final['loss']:.4f}, J {final['jump_strength']:.2f}"
        )
        return run.name, result

    with board, ThreadPoolExecutor(max_workers=spec.parallel) as pool:
        futures = [pool.submit(one, run) for run in pending]
        while wait(futures, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION).not_done:
            if any(f.done() and f.exception() for f in futures):
                break
            board.refresh()
        for future in futures:
            name, result = future.result()  # re-raises a failed run's error
            results[name] = result
    return results
