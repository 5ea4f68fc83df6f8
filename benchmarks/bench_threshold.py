"""Accuracy of the threshold sketch: how far the fraction of values above T strays from quantile.

Streams heavy-tailed values (log-normal, a different scale per unit) through
:class:`dissect.running_stats.TailQuantile` in batches, then counts the values above each unit's T.
Prints ``name: value`` lines: the sampling level, the relative error's standard deviation and its
worst case over the units (the requirement is a worst case within 0.10).

    python benchmarks/bench_threshold.py [--units 256] [--batches 100] [--batch-values 20000]
"""

from __future__ import annotations

import argparse

import torch

from dissect.running_stats import DEFAULT_SKETCH_SIZE, TailQuantile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-values", type=int, default=20000)
    parser.add_argument("--quantile", type=float, default=0.005)
    parser.add_argument("--size", type=int, default=DEFAULT_SKETCH_SIZE)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 4, args.units)[:, None]
    total = args.batches * args.batch_values
    sketch = TailQuantile(args.units, args.quantile, total, args.size, seed=1)
    for _ in range(args.batches):
        sketch.add(torch.randn(args.units, args.batch_values, generator=generator).exp() * scale)
    threshold = torch.from_numpy(sketch.threshold())[:, None]
    generator.manual_seed(0)  # the same stream again, counting the values above T
    above = torch.zeros(args.units, dtype=torch.float64)
    for _ in range(args.batches):
        values = torch.randn(args.units, args.batch_values, generator=generator).exp() * scale
        above += (values > threshold).sum(1)
    relative = above / total / args.quantile - 1
    print(f"values_per_unit: {total}")
    print(f"level: {sketch.level}")
    print(f"tail_kept: {sketch.values.shape[1]}")
    print(f"relative_error_std: {relative.std().item():.4f}")
    print(f"relative_error_worst: {relative.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
