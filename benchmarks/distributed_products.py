"""What a split-independent statistics product would cost: one product over a batch vs each image's alone.

The statistics add (x − s)ᵀ(x − s) of every batch in float32 (``snp_engine.statistics``); over
several processes a batch holds other images than in one process, and a float32 product over other
rows rounds differently (~1e-7 relative). Taking each image's product alone and summing those in
float64 would make the sums independent of how images are split. This times both on random
activations of typical shapes (the best of ``--repeats``):

    product over the batch      Xᵀ X, X of (B·R) × n, float32
    per image (batched)         Σ_b (X_bᵀ X_b) in float64, X_b of R × n (one bmm, then the float64 sum)

    python benchmarks/distributed_products.py      # writes docs/benchmarks/distributed_products.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/distributed_products.py``

from benchmarks.common import add_run_args, default_out, log, run_header, write_json

# name: (images per batch B, rows per image R, units n)
SHAPES = {
    "conv 64 channels, 56x56": (32, 56 * 56, 64),
    "conv 256 channels, 14x14": (32, 14 * 14, 256),
    "tokens 768 channels, 197 tokens": (16, 197, 768),
}
QUICK_SHAPES = {"conv 16 channels, 8x8": (8, 64, 16)}


def best_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(images: int, rows: int, units: int, repeats: int, device: str) -> dict:
    """Seconds of the batch product and of the per-image products summed in float64."""
    x = torch.randn(images * rows, units, device=device)
    per_image = x.reshape(images, rows, units)

    def sync():
        if x.is_cuda:
            torch.cuda.synchronize()

    def batch():
        x.T @ x
        sync()

    def each():
        torch.bmm(per_image.transpose(1, 2), per_image).double().sum(0)
        sync()

    batch(), each()  # warm-up
    one, alone = best_seconds(batch, repeats), best_seconds(each, repeats)
    return {
        "images": images,
        "rows_per_image": rows,
        "units": units,
        "float64_rule_per_image": rows < 2 * units,  # statistics.update would take float64 products
        "batch_product_s": one,
        "per_image_s": alone,
        "ratio": alone / one,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    default_out(args, "distributed_products")
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    data = run_header("distributed_products", args, args.device)
    data["shapes"] = {}
    for name, (images, rows, units) in shapes.items():
        row = measure(images, rows, units, 2 if args.quick else args.repeats, args.device)
        data["shapes"][name] = row
        log(
            f"{name}: batch {row['batch_product_s'] * 1e3:.1f} ms, per image {row['per_image_s'] * 1e3:.1f} ms "
            f"({row['ratio']:.2f}x)"
        )
    write_json(args.out, data)
    log(f"written {args.out}")
    return data


if __name__ == "__main__":
    main()
