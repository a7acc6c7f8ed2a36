"""``cli.py consolidate``: a sharded FSDP2 checkpoint folder into one single-file checkpoint."""

from __future__ import annotations

from pathlib import Path

from jreg_lightning.checkpoints import atomic_torch_save, load_full_state_dict, read_checkpoint_meta
from jreg_lightning.errors import ConfigError, OutputExistsError


def consolidate(checkpoint: Path, output: Path, overwrite: bool = False) -> Path:
    """Merge a sharded FSDP2 checkpoint folder into one single-file checkpoint.

    The file holds the full weights under ``state_dict`` plus the run's metadata
    (hyperparameters, step counters), so it loads with
    ``torch.load(..., weights_only=True)``, ``load_full_state_dict``,
    ``JregLightningModule.load_from_checkpoint`` and ``cli.py validate --ckpt_path``.
    Optimizer state is left out: resume training from the sharded folder itself.

    Args:
        checkpoint: the distributed-checkpoint folder (e.g. ``runs/x/checkpoints/last.ckpt``).
        output: the single file to write (atomically, see ``atomic_torch_save``).
        overwrite: replace ``output`` if it exists.

    Returns:
        ``output``.
    """
    checkpoint, out = Path(checkpoint), Path(output)
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"output: {out} already exists; choose another --output or pass --overwrite"
        )
    if checkpoint.resolve() == out.resolve():
        raise ConfigError("output: must differ from --checkpoint: the sharded folder is the input")
    state_dict = load_full_state_dict(checkpoint)
    metadata = read_checkpoint_meta(checkpoint, field="checkpoint")
    contents = {k: v for k, v in metadata.items() if k not in ("optimizer_states", "state_dict")}
    contents["state_dict"] = state_dict
    atomic_torch_save(contents, out)
    print(f"wrote {out} ({len(state_dict)} tensors, step {contents.get('global_step', '?')})")
    return out
