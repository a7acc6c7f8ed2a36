"""What Lightning's loop costs: the module under ``Trainer`` vs a hand-written torch loop.

    .venv/bin/python bench/loop_overhead.py

Both sides train the same model (one ``JregLightningModule``; CE + JREG with
the tiny config's settings) on the same in-memory batches with the same AdamW,
warmup + cosine schedule and gradient clipping at 1.0, and read the loss every
``--log-every`` steps. The Trainer side is a run as the configs make it: fp32,
a CSV logger, the throughput monitor, the learning-rate monitor and the
progress bar (checkpointing off: the hand loop saves nothing either). The
hand loop is the same step written out as in nanoGPT.

A step's time is the wall time from the end of one step to the end of the
next (data fetch, forward, backward, clipping, optimizer and scheduler,
hooks and logging included). The two sides alternate in rounds of
``--steps-per-round`` steps (Trainer, hand, hand, Trainer, ...), the first
step of each round is dropped (it sets the optimizer state up), and the
medians of the rest are compared. The Trainer's one-off start-up (building
the loop, callbacks and logger) is printed apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from bench_options import add_shape_options, add_timing_options, llama_shape, step_clock

from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.module import JregLightningModule
from jreg_lightning.optim import OptimConfig, build_optimizer
from jreg_lightning.regularizer import JregConfig
from jreg_lightning.throughput import TokenThroughputMonitor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_options(parser)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side")
    parser.add_argument("--steps-per-round", type=int, default=11)
    parser.add_argument("--log-every", type=int, default=10)
    add_timing_options(parser)
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser.parse_args(argv)


# time.perf_counter (wall) or time.process_time (CPU), chosen by --clock.
clock = time.perf_counter


class StepClock(Callback):
    """Time (of ``clock``) at the end of every training batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, *_args) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.ends.append(clock())


def trainer_round(module, loader, args, workdir: Path) -> tuple[list[float], float]:
    """One ``Trainer.fit`` of ``steps_per_round`` steps: per-step times and start-up time."""
    step_clock = StepClock()
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision="32-true",
        max_steps=args.steps_per_round,
        log_every_n_steps=args.log_every,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress_bar,
        logger=CSVLogger(workdir, name="logs"),
        callbacks=[
            step_clock,
            TokenThroughputMonitor(),
            LearningRateMonitor(logging_interval="step"),
        ],
    )
    start = clock()
    trainer.fit(module, train_dataloaders=loader)
    ends = step_clock.ends
    return [b - a for a, b in itertools.pairwise(ends)], ends[0] - start


def hand_round(module, loader, args) -> list[float]:
    """The same training written as a plain loop: per-step times."""
    model = module.model
    optimizer, scheduler = build_optimizer(model, module.optim_config, args.steps_per_round)
    model.train()
    ends = []
    batches = iter(loader)
    for step in range(args.steps_per_round):
        batch = next(batches).to(args.device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:].long()
        # The module's own JREG work: Psi_l made inside the forward, block by block.
        jreg = module.regularizer.enabled
        logits, _ = module.forward_with_states(inputs, record_psi=jreg)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        if jreg:
            loss = loss + module.regularizer.term().term
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % args.log_every == 0:
            loss.item()
        if args.device == "cuda":
            torch.cuda.synchronize()
        ends.append(clock())
    return [b - a for a, b in itertools.pairwise(ends)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = step_clock(args)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    config = LlamaModelConfig(**llama_shape(args))
    module = JregLightningModule(
        llama=config,
        jreg=JregConfig(lam=1.0, weights="linear"),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=3),
    )
    module.configure_model()
    tokens = torch.randint(0, args.vocab, (args.batch * args.steps_per_round, args.seq + 1))
    loader = DataLoader(tokens, batch_size=args.batch, shuffle=False, drop_last=True)
    print(
        f"# loop_overhead: device={args.device} ({torch.get_num_threads()} threads) "
        f"layers={args.layers} d={args.hidden} batch={args.batch}x{args.seq} "
        f"rounds={args.rounds}x{args.steps_per_round} steps, first of each dropped, "
        f"log every {args.log_every} clock={args.clock} torch={torch.__version__} "
        f"lightning={L.__version__}",
        flush=True,
    )
    lightning_times: list[float] = []
    hand_times: list[float] = []
    startups: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        for index in range(args.rounds):
            order = ("trainer", "hand") if index % 2 == 0 else ("hand", "trainer")
            for side in order:
                if side == "trainer":
                    times, startup = trainer_round(module, loader, args, Path(workdir))
                    lightning_times += times
                    startups.append(startup)
                else:
                    hand_times += hand_round(module.to(args.device), loader, args)
    t_lightning = statistics.median(lightning_times) * 1e3
    t_hand = statistics.median(hand_times) * 1e3
    print("| side | steps timed | median step ms |")
    print("|---|---|---|")
    print(f"| hand-written loop | {len(hand_times)} | {t_hand:.1f} |")
    print(f"| Lightning Trainer | {len(lightning_times)} | {t_lightning:.1f} |")
    print(f"step-time ratio Trainer / hand loop: {t_lightning / t_hand:.3f}")
    print(
        "Trainer start-up to the end of its first step (median): "
        f"{statistics.median(startups):.2f} s"
    )


if __name__ == "__main__":
    main()
