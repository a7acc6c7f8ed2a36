"""What experiment trackers get besides scalars: the profile picture, its table, the config.

Every logger already receives the per-layer scalars (``val/psi/layer_NN``); a
reader would have to open L charts to see one profile. ``ProfileTracking``
draws the profile at each validation (J in the title, a baseline's profile
beside it when the run names one, ``jreg_tools.analysis.plots``) and sends
it where a logger takes pictures: TensorBoard (an image, and one custom-scalars
chart with every layer), W&B (an image and a Table), MLflow (an artifact).
``ConfigArtifact`` is the CLI's config saver: besides ``config.yaml`` in the
log folder it hands that file to W&B and MLflow as an artifact and to
TensorBoard as text. Loggers without these (CSV) are left alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from jreg_lightning.errors import ConfigError, InputNotFoundError

PROFILE_KEY = "val/profile"
TABLE_KEY = "val/profile_table"
ARTIFACT_FOLDER = "profiles"
# Where a baseline's profile is found in a run folder: validate's report, then a study's result.
BASELINE_FILES = ("validation_profile.json", "result.json")


def read_baseline_profile(path: str | Path) -> list[float]:
    """Psi_1 .. Psi_L of a baseline: a ``validation_profile.json``, a study ``result.json``,
    or a run folder holding one of them."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in BASELINE_FILES if (path / name).is_file()]
        if not found:
            raise InputNotFoundError(
                f"tracking.baseline: {path} holds no {' or '.join(BASELINE_FILES)}; "
                "run `cli.py validate` on the baseline or name its profile file"
            )
        path = found[0]
    if not path.is_file():
        raise InputNotFoundError(
            f"tracking.baseline: {path} does not exist; name a baseline run folder or its "
            "validation_profile.json"
        )
    report = json.loads(path.read_text())
    profile = (report.get("final") or report).get("profile")
    if not profile:
        raise ConfigError(f"tracking.baseline: {path} holds no 'profile'; name a profile file")
    return [float(value) for value in profile]


def logger_step(trainer: L.Trainer) -> int:
    """The step Lightning gives the loggers' scalars now, so a picture sits beside them.

    During ``fit`` that is the count of optimizer steps before the current batch
    (validation at ``global_step`` 100 is logged at 99).
    """
    if trainer.state.fn == "fit":
        # Private counter of the fit loop (checked against lightning 2.6.6): the step
        # Lightning's logger connector passes to log_metrics; no public property holds it.
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    return trainer.global_step


def image_loggers(loggers: list[Logger]) -> list[Logger]:
    """The loggers that take a picture (TensorBoard, W&B, MLflow)."""
    return [lg for lg in loggers if isinstance(lg, TensorBoardLogger | WandbLogger | MLFlowLogger)]


def psi_chart_layout() -> dict:
    """TensorBoard's custom-scalars layout: every layer's Psi in one chart per stage."""
    return {
        "JREG": {
            f"{stage} Psi, every layer": ["Multiline", [rf"^{stage}/psi/layer_\d+$"]]
            for stage in ("val", "train")
        }
        | {"jump strength J": ["Multiline", [r"^(train|val)/jump_strength$"]]}
    }


def log_file(logger: Logger, path: Path, folder: str | None = None) -> None:
    """Attach a file to a W&B run (its files) or an MLflow run (an artifact)."""
    if isinstance(logger, WandbLogger):
        # Files in the run's own folder are part of the run (wandb.save would symlink
        # and warn about it).
        shutil.copy(path, Path(logger.experiment.dir) / path.name)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)


class ProfileTracking(L.Callback):
    """At each validation: the layer profile as a picture (and a W&B Table) for every tracker.

    Rank 0 draws and logs; the numbers are the module's ``last_validation``.

    Args:
        baseline: a baseline run folder, its ``validation_profile.json`` or a study
            ``result.json``; its profile is drawn beside this run's.
        table: also log the profile as a W&B Table (layer, Psi, baseline Psi).
    """

    def __init__(self, baseline: str | None = None, table: bool = True) -> None:
        self.baseline = baseline
        self.table = table
        self._baseline_profile: list[float] | None = None
        self._layout_written: set[int] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Read the baseline once, before anything trains (a bad path stops the run here)."""
        if self.baseline and self._baseline_profile is None:
            self._baseline_profile = read_baseline_profile(self.baseline)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the profile and log it to every logger that takes a picture (rank 0)."""
        last = getattr(pl_module, "last_validation", None)
        loggers = image_loggers(trainer.loggers)
        if trainer.sanity_checking or not trainer.is_global_zero or not last or not loggers:
            return
        step, at = trainer.global_step, logger_step(trainer)
        with tempfile.TemporaryDirectory(prefix="jreg-profile-") as scratch:
            image = self._draw(last, step, Path(scratch) / f"profile_step{step:07d}.png")
            for logger in loggers:
                self._log(logger, image, last["profile"], at)

    def _draw(self, last: dict, step: int, path: Path) -> Path:
        from jreg_lightning.profile_plot import plot_layer_profiles

        profiles = {f"this run (J = {last['jump_strength']:.3f})": last["profile"]}
        if self._baseline_profile is not None:
            profiles["baseline"] = self._baseline_profile
        title = f"Layer profile, step {step}: J = {last['jump_strength']:.3f}"
        return plot_layer_profiles(profiles, path, title=title)

    def _log(self, logger: Logger, image: Path, profile: list[float], step: int) -> None:
        if isinstance(logger, TensorBoardLogger):
            import matplotlib.image

            writer = logger.experiment
            if id(writer) not in self._layout_written:
                writer.add_custom_scalars(psi_chart_layout())
                self._layout_written.add(id(writer))
            pixels = matplotlib.image.imread(image)[..., :3]
            writer.add_image(PROFILE_KEY, pixels, global_step=step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=PROFILE_KEY, images=[str(image)], step=step)
            if self.table:
                columns, rows = self._table(profile)
                logger.log_table(key=TABLE_KEY, columns=columns, data=rows, step=step)
        elif isinstance(logger, MLFlowLogger):
            log_file(logger, image, ARTIFACT_FOLDER)

    def _table(self, profile: list[float]) -> tuple[list[str], list[list]]:
        baseline = self._baseline_profile
        if baseline is None:
            return ["layer", "psi"], [[index, v] for index, v in enumerate(profile, start=1)]
        rows = [
            [index, v, baseline[index - 1] if index <= len(baseline) else None]
            for index, v in enumerate(profile, start=1)
        ]
        return ["layer", "psi", "baseline_psi"], rows


class ConfigArtifact(SaveConfigCallback):
    """LightningCLI's config saver that also gives ``config.yaml`` to every tracker.

    W&B gets it among the run's files, MLflow as an artifact, TensorBoard as text.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """As ``SaveConfigCallback.setup``; the log folder is asked for on every rank first."""
        # trainer.log_dir broadcasts from rank 0, and save_config runs on rank 0 only.
        self._log_dir = trainer.log_dir or trainer.default_root_dir
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Hand the saved ``config.yaml`` (or a fresh dump) to the trackers (rank 0)."""
        loggers = image_loggers(trainer.loggers)
        if not loggers:
            return
        path = Path(self._log_dir) / self.config_filename
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.parser.dump(self.config, skip_none=False))
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                text = "    " + path.read_text().replace("\n", "\n    ")
                logger.experiment.add_text("config", text, global_step=0)
            else:
                log_file(logger, path)
