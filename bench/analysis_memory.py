"""Peak memory of ``analyze`` on CPU against the model's own size plus one batch.

Saves a randomly initialised Llama (default ~110M parameters) as a HF folder,
then, in a fresh process, loads it the way ``analyze`` does and measures it on
a few batches, reading the peak resident set size (``ru_maxrss``) after
loading and after the measurement. Prints the extra memory of the measurement
next to an estimate of one batch's activations.

    python bench/analysis_memory.py                       # ~110M, 4 batches of 2 x 256
    python bench/analysis_memory.py --layers 4 --hidden 256 --batches 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(folder: str, batches: int, batch_size: int, seq_len: int, skip_blocks: bool) -> None:
    """Load and measure in this process; print one JSON line."""
    sys.path.insert(0, str(REPO))
    import torch

    from jreg_tools.analysis.loading import load_hf_model
    from jreg_tools.analysis.measure import measure_model

    torch.set_num_threads(1)
    start = _current_mb()
    model, _ = load_hf_model(Path(folder))
    # safetensors weights are memory-mapped: read them all so that "loaded" is the whole model.
    for parameter in model.parameters():
        parameter.data.sum()
    loaded = _current_mb()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    peaks: list[float] = []

    def stream():
        for _ in range(batches):
            yield torch.randint(0, vocab, (batch_size, seq_len + 1), generator=generator)
            peaks.append(_peak_mb())  # asked for the next batch: this one is done

    measure_model(model, stream(), skip_blocks=skip_blocks, progress=False)
    # The peak after imports can exceed the model's: report it to check the reading.
    print(json.dumps({"start_mb": start, "loaded_mb": loaded, "peaks_mb": peaks}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--skip_blocks", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batches, args.batch_size, args.seq_len, args.skip_blocks)
        return

    sys.path.insert(0, str(REPO))
    from jreg_lightning.model_config import LlamaModelConfig, build_llama

    config = LlamaModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
        num_layers=args.layers,
        num_heads=max(1, args.hidden // 64),
        num_kv_heads=max(1, args.hidden // 64),
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = build_llama(config)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp)
        del model
        command = [sys.executable, __file__, "--child", tmp, *sys.argv[1:]]
        result = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout
        )
    model_mb = params * 4 / 2**20
    tokens = args.batch_size * args.seq_len
    # Hidden states h_0..h_L, plus the full logits and their float32 log-softmax for the CE.
    activations_mb = (
        (args.layers + 1) * tokens * args.hidden * 4 + 3 * tokens * args.vocab * 4
    ) / 2**20
    peaks = result["peaks_mb"]
    extra_first = peaks[0] - result["loaded_mb"]
    extra = peaks[-1] - result["loaded_mb"]
    print(f"model: {params / 1e6:.1f}M parameters = {model_mb:.0f} MB in float32")
    print(f"process before loading: {result['start_mb']:.0f} MB RSS")
    print(f"after loading (weights read): +{result['loaded_mb'] - result['start_mb']:.0f} MB")
    print(
        f"measuring batches of {args.batch_size} x {args.seq_len} (skip_blocks="
        f"{args.skip_blocks}): peak RSS over the loaded process +{extra_first:.0f} MB after "
        f"batch 1, +{extra:.0f} MB after batch {len(peaks)}"
    )
    print(f"one batch's activations (estimate): {activations_mb:.0f} MB")
    print(f"ratio extra / one batch: {extra / activations_mb:.2f}")


if __name__ == "__main__":
    main()
