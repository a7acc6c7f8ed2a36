"""What JREG costs: step time and peak memory of CE + JREG vs plain CE, at several depths.

    .venv/bin/python bench/jreg_overhead.py

Same model, optimizer and batch for both variants; the JREG variant puts a
weight on every layer (``weights: uniform``, the most work the term can do).
A step is the module's own ``training_step`` (forward with hidden states, CE,
the JREG term) + backward + AdamW step, outside a Trainer and with the
log-step measurements off, as in the steps between two log steps; with
``--compile-loss`` that loss is one compiled graph in both variants, as with
``model.parallel.compile: true`` on one device. The two
variants alternate step by step (A B, B A, A B, ...) and the medians of their
step times are compared; the 95% interval (bootstrap) of the median ratio of
back-to-back pairs says how far this machine's noise lets the ratio be read.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one step; on a
CPU, ``torch.distributed._tools.mem_tracker.MemTracker``, which accounts
every tensor the step allocates (parameters, gradients, optimizer state,
activations saved for backward, temporaries) and reports the peak of their
sum: an exact count of tensor bytes, free of the allocator's caching that
makes peak RSS noisy. Two ratios: of the whole peak, and of the step-transient
peak (the peak minus parameters, buffers and optimizer state, i.e. what
activations, gradients and temporaries add), which is where JREG could add
anything and which dominates at scale.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_options import add_shape_options, add_timing_options, llama_shape, step_clock

from jreg_lightning.model_config import LlamaModelConfig, build_llama
from jreg_lightning.module import JregLightningModule
from jreg_lightning.optim import OptimConfig, build_optimizer
from jreg_lightning.regularizer import JregConfig, JumpRegularizer
from jreg_lightning.throughput import step_flops


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_options(parser, layers=[4, 8, 16])
    parser.add_argument("--kv-heads", type=int, help="default: --heads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    add_timing_options(parser)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument(
        "--compile-term", action="store_true", help="also time the torch.compile-d JREG term"
    )
    parser.add_argument(
        "--compile-loss",
        action="store_true",
        help="both variants with the training loss compiled as one graph "
        "(model.parallel.compile: true on one device)",
    )
    return parser.parse_args(argv)


class Variant:
    """One side of the comparison: a module (sharing the model) and how to run its step."""

    def __init__(self, name: str, module: JregLightningModule, optimizer, autocast) -> None:
        self.name = name
        self.module = module
        self.optimizer = optimizer
        self.autocast = autocast
        self.times: list[float] = []

    def step(self, batch: torch.Tensor) -> None:
        with self.autocast():
            loss = self.module.training_step(batch, 0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_variants(config: LlamaModelConfig, args, device: torch.device) -> list[Variant]:
    """Plain CE and CE + uniform JREG, both driving one model and one optimizer."""
    torch.manual_seed(0)
    plain = JregLightningModule(llama=config, jreg=JregConfig(lam=0.0, weights="uniform"))
    jreg = JregLightningModule(llama=config, jreg=JregConfig(lam=1.0, weights="uniform"))
    with torch.device(device):  # built where it runs (a 1B model inits fast on a GPU)
        plain.model = build_llama(config)
    jreg.model = plain.model
    for module in (plain, jreg):
        module.to(device)
        module._is_log_step = lambda: False  # the steps between two log steps
        if args.compile_loss:
            module.compile_training_loss()
    optimizer, _ = build_optimizer(plain.model, OptimConfig(), max_steps=10**6)

    def autocast():
        if args.bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return [
        Variant("CE", plain, optimizer, autocast),
        Variant("CE+JREG", jreg, optimizer, autocast),
    ]


def time_alternating(variants: list[Variant], batch: torch.Tensor, args, device) -> None:
    for _ in range(args.warmup):
        for variant in variants:
            variant.step(batch)
    clock = step_clock(args)
    for index in range(args.steps):
        for variant in variants if index % 2 == 0 else variants[::-1]:
            synchronize(device)
            start = clock()
            variant.step(batch)
            synchronize(device)
            variant.times.append(clock() - start)


def term_time(layers: int, args, device: torch.device, compile_term: bool) -> float:
    """Median time of the JREG term alone (forward + backward) on random states of the step's shape.

    Steadier than the difference of two step times: it is the term's own cost,
    including the accumulation of its gradients into the states.
    """
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    regularizer = JumpRegularizer(
        JregConfig(lam=1.0, weights="uniform"), layers, compile=compile_term
    ).to(device)
    shape = (args.batch, args.seq, args.hidden)
    states = [
        torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        for _ in range(layers + 1)
    ]
    clock = step_clock(args)
    times = []
    for index in range(args.warmup + 2 * args.steps):
        synchronize(device)
        start = clock()
        torch.autograd.grad(regularizer(states)[0], states)
        synchronize(device)
        if index >= args.warmup:
            times.append(clock() - start)
    return statistics.median(times)


def ratio_interval(numerator: list[float], denominator: list[float], draws: int = 2000):
    """Bootstrap 95% interval of the median of the per-pair ratios (pairs ran back to back)."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    generator = random.Random(0)
    medians = sorted(
        statistics.median(generator.choices(ratios, k=len(ratios))) for _ in range(draws)
    )
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def static_bytes(variant: Variant) -> int:
    """Bytes that live across steps: parameters, buffers and optimizer state."""
    tensors = [*variant.module.model.parameters(), *variant.module.model.buffers()]
    for state in variant.optimizer.state.values():
        tensors += [value for value in state.values() if torch.is_tensor(value)]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_memory(variant: Variant, batch: torch.Tensor, device: torch.device) -> tuple[int, int]:
    """Peak tensor bytes of one step: (everything, above what lives across steps)."""
    static = static_bytes(variant)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        variant.step(batch)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak, peak - static
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(variant.module.model, variant.optimizer)
    with tracker:
        variant.step(batch)
    peak = tracker.get_tracker_snapshot("peak")[device]["Total"]
    return peak, peak - static


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# jreg_overhead: device={device} ({torch.get_num_threads()} threads) "
        f"bf16={args.bf16} d={args.hidden} batch={args.batch}x{args.seq} vocab={args.vocab} "
        f"steps={args.steps} (alternating, medians) clock={args.clock} "
        f"compile_loss={args.compile_loss} torch={torch.__version__}"
    )
    header = (
        "| layers | params | JREG/step FLOPs | CE ms | CE+JREG ms | time ratio "
        "| 95% interval of the pair ratios "
        "| CE peak MiB | CE+JREG peak MiB | peak ratio | step-transient peak ratio "
        "| JREG term alone ms | term / CE step |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for layers in args.layers:
        config = LlamaModelConfig(**llama_shape(args, layers=layers))
        variants = build_variants(config, args, device)
        generator = torch.Generator().manual_seed(layers)
        batch = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=generator)
        batch = batch.to(device)
        time_alternating(variants, batch, args, device)
        plain, jreg = variants
        t_plain = statistics.median(plain.times) * 1e3
        t_jreg = statistics.median(jreg.times) * 1e3
        jreg_flops = 3 * layers * args.batch * args.seq * args.hidden
        flops_share = jreg_flops / step_flops(config, args.batch, args.seq)
        row = (
            f"| {layers} | {config.num_parameters() / 1e6:.1f}M | {flops_share:.2e} "
            f"| {t_plain:.1f} | {t_jreg:.1f} | {t_jreg / t_plain:.3f} "
            "| {:.3f}-{:.3f} ".format(*ratio_interval(jreg.times, plain.times))
        )
        # Inductor allocates its buffers outside the dispatcher, unseen by MemTracker:
        # a compiled step's peak is only measured on CUDA (max_memory_allocated).
        if args.no_memory or (args.compile_loss and device.type != "cuda"):
            row += "| - | - | - | - "
        else:
            (p_total, p_step), (j_total, j_step) = (peak_memory(v, batch, device) for v in variants)
            row += (
                f"| {p_total / 2**20:.1f} | {j_total / 2**20:.1f} | {j_total / p_total:.3f} "
                f"| {j_step / p_step:.3f} "
            )
        term = term_time(layers, args, device, compile_term=False) * 1e3
        row += f"| {term:.1f} | {term / t_plain:.4f} |"
        if args.compile_term:
            compiled = term_time(layers, args, device, compile_term=True) * 1e3
            row += f" compiled term: {compiled:.1f} ms, {compiled / t_plain:.4f} |"
        print(row, flush=True)
        del variants


if __name__ == "__main__":
    main()
