"""Cost of FLOP counting: training time with counting (sampled, full) against none.

Runs ``naive`` on the default stream (backbone and data cached) with ``flops=off``,
``flops=sampled`` and ``flops=full`` in turn, several rounds, alternating the order so that
machine noise hits all modes alike, and reports the median training seconds of each mode as
a ratio to ``off`` measured in the same process. The target is sampled <= 1.05.

    python benchmarks/flop_overhead.py [--rounds 3] [--strategy naive] [--epochs 3]

The last line reads ``flop_overhead_ratio=1.02`` (sampled / off).
"""
from __future__ import annotations


import argparse
import statistics
import tempfile

import clplatform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategy", default="naive")
    parser.add_argument("--stream", default="glyphs")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--full", action="store_true", help="also time flops=full")
    args = parser.parse_args()
    modes = ["off", "sampled"] + (["full"] if args.full else [])
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        clplatform.run(args.strategy, args.stream, epochs=1, out=out, flops="off")  # warm-up
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for mode in order:
                run = clplatform.run(args.strategy, args.stream, epochs=args.epochs, out=out,
                                     flops=mode, seed=0)
                seconds[mode].append(run.summary["train_seconds"])
                if mode != "off":
                    flops[mode] = run.summary["total_train_flops"]
                print(f"round {r} {mode:>7}: train {run.summary['train_seconds']:.2f} s",
                      flush=True)
    base = statistics.median(seconds["off"])
    for mode in modes:
        print(f"{mode:>7}: median train seconds {statistics.median(seconds[mode]):.2f} "
              f"(ratio {statistics.median(seconds[mode]) / base:.3f})")
    if "full" in flops:
        print(f"sampled/full FLOPs: {flops['sampled'] / flops['full']:.4f}")
    print(f"total train FLOPs: {flops['sampled']:.4g}")
    print(f"flop_overhead_ratio={statistics.median(seconds['sampled']) / base:.3f}")


if __name__ == "__main__":
    main()
