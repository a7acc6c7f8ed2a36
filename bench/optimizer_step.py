"""AdamW step time, fused vs foreach, each after clipping by the total gradient norm.

    .venv/bin/python bench/optimizer_step.py                      # tiny shape, CPU
    .venv/bin/python bench/optimizer_step.py --device cuda --layers 22 --hidden 2048 \
        --intermediate 5632 --heads 32 --vocab 32000              # the 1B shape, one GPU

What the module does between backward and the next forward: the total gradient norm,
the clip (``jreg_lightning.gradients``) and ``AdamW.step`` of
``jreg_lightning.optim.build_optimizer`` (fused, as the configs run it, or foreach, as
it runs under a loss scaler). fp32 parameters, as FSDP2 keeps them; fresh random
gradients each step. The two variants alternate step by step (A B, B A, ...) on two
copies of one model, and the medians of their times are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_options import add_shape_options, add_timing_options, llama_shape, step_clock

from jreg_lightning.gradients import clip_by_total_norm_, parameters_with_grads, total_gradient_norm
from jreg_lightning.model_config import LlamaModelConfig, build_llama
from jreg_lightning.optim import OptimConfig, adamw


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_options(parser, layers=8)
    parser.add_argument("--kv-heads", type=int, help="default: --heads")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--max-norm", type=float, default=1.0)
    add_timing_options(parser)
    return parser.parse_args(argv)


def _step(optimizer: torch.optim.Optimizer, max_norm: float, device: torch.device, clock) -> float:
    params = parameters_with_grads(optimizer)
    for param in params:
        param.grad.normal_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    clip_by_total_norm_(params, max_norm, total_gradient_norm(params))
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def main(argv: list[str] | None = None) -> None:
    """Time the two variants side by side and print their medians and ratio."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = step_clock(args)
    config = LlamaModelConfig(**llama_shape(args))
    torch.manual_seed(0)
    optimizers = {}
    for name, fused in (("fused", True), ("foreach", False)):
        model = build_llama(config).to(device)
        for param in model.parameters():
            param.grad = torch.empty_like(param)
        optimizers[name] = adamw(model, OptimConfig(), fused)
    params = sum(p.numel() for p in model.parameters())
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    order = list(optimizers)
    for step in range(args.warmup + args.steps):
        for name in order if step % 2 == 0 else order[::-1]:
            elapsed = _step(optimizers[name], args.max_norm, device, clock)
            if step >= args.warmup:
                times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"optimizer_step: {params / 1e6:.1f}M parameters on {device} "
        f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
        f"{args.steps} steps each, clip at {args.max_norm}"
    )
    print("| variant | median ms (norm + clip + AdamW step) |")
    print("| --- | --- |")
    for name, value in medians.items():
        print(f"| {name} | {1000 * value:.2f} |")
    print(f"optimizer_step: fused / foreach time ratio {medians['fused'] / medians['foreach']:.3f}")


if __name__ == "__main__":
    main()
