"""W&B and MLflow loggers named after the run directory, for ``configs/logger/*.yaml``.

Lightning's own loggers with three defaults a pretraining run wants: the run is
named after its run directory (``runs/tiny_jreg`` -> ``tiny_jreg``, a study run
after its folder), ``tags`` label it (a study tags ``lam``, ``weights`` and
``seed``), and everything stays on the local disk unless the user says otherwise:
W&B writes an offline run (``wandb sync`` uploads it later), MLflow writes to
``MLFLOW_TRACKING_URI`` or else to a sqlite store in the run directory (MLflow 3
refuses its old file store unless told to allow it). The resolved config and the
profile picture reach them through ``jreg_lightning.tracking``.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

from jreg_lightning.errors import ConfigError

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def name_from_run_dir(save_dir: str | Path) -> str:
    """The run's name: the last part of its run directory (``runs/tiny_jreg`` -> ``tiny_jreg``)."""
    return Path(save_dir).resolve().name or "run"


def mlflow_tracking_uri(save_dir: str | Path, tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///SAVE_DIR/mlflow.db``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(save_dir) / MLFLOW_DB).resolve()}"


class RunMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` named after the run directory, local sqlite store by default.

    Args:
        save_dir: the run directory (``"{run}"`` in the configs); the default store
            ``mlflow.db`` and its artifacts (``mlartifacts/``) go there.
        experiment_name: the MLflow experiment (a study puts all its runs in one).
        run_name: the run's name; default: the run directory's name.
        tracking_uri: where to track; default: ``$MLFLOW_TRACKING_URI``, else the
            sqlite store in ``save_dir``.
        tags: run tags (``{"lam": "30.0"}``).
        artifact_location: where a new experiment keeps artifacts; default:
            ``save_dir/mlartifacts`` for the default store, the server's choice otherwise.
    """

    def __init__(
        self,
        save_dir: str = ".",
        experiment_name: str = "jreg",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, str] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        if not experiment_name:
            raise ConfigError(
                "trainer.logger.init_args.experiment_name: empty; name the MLflow experiment"
            )
        uri = mlflow_tracking_uri(save_dir, tracking_uri)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            if artifact_location is None and uri == mlflow_tracking_uri(save_dir, None):
                artifact_location = str((Path(save_dir) / MLFLOW_ARTIFACTS).resolve())
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name or name_from_run_dir(save_dir),
            tracking_uri=uri,
            tags=dict(tags or {}),
            save_dir=str(save_dir),
            artifact_location=artifact_location,
        )


class RunWandbLogger(WandbLogger):
    """``WandbLogger`` named after the run directory, offline by default.

    Args:
        save_dir: the run directory (``"{run}"``); W&B writes ``wandb/`` in it.
        project: the W&B project (a study puts all its runs in one).
        run_name: the run's name; default: the run directory's name (not ``name``:
            a config composed over a CSV logger would carry its ``name: logs`` here).
        offline: write the run to disk only; upload it later with ``wandb sync``.
        tags: run tags, shown as ``key=value`` labels (``lam=30.0``).
        group: a W&B group (a study sets its name).
    """

    def __init__(
        self,
        save_dir: str = ".",
        project: str = "jreg",
        run_name: str | None = None,
        offline: bool = True,
        tags: dict[str, str] | None = None,
        group: str | None = None,
    ) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        labels = [f"{key}={value}" for key, value in (tags or {}).items()]
        super().__init__(
            name=run_name or name_from_run_dir(save_dir),
            save_dir=str(save_dir),
            offline=offline,
            project=project,
            tags=labels or None,
            group=group,
            config={"tags": dict(tags or {})} if tags else None,
        )
        # Private dict of WandbLogger (checked against lightning 2.6.6): it passes
        # anonymous=None to wandb.init, which warns that the setting has no effect.
        self._wandb_init.pop("anonymous", None)
