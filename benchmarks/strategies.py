"""Cost of every strategy on the default stream, and how it grows with the number of
experiences.

Part 1 — every registered strategy on the default stream and backbone (``lftl``, which needs
domains, on ``glyphs-domains``): seconds per experience (train, eval), training FLOPs per
experience, inference FLOPs per sample, peak memory, final accuracy.

Part 2 — scaling: the same strategies on the default stream split into 5, 10 and 20
experiences (same data, so fewer samples per experience). Training cost per experience must
not grow with the experience index: ``train_growth`` is the training FLOPs per training
sample of the last third of the experiences over the first third (1.00 = flat); the same in
seconds is printed too. Evaluation sees the whole test stream after every experience, so its
cost per test sample must stay flat: ``eval_growth`` compares seconds per evaluated sample of
the last third with the first third.

    python benchmarks/strategies.py [--strategies naive,ewc,...] [--sizes 5,10,20]
                                    [--scaling naive,replay,sema] [--epochs 1] [--device cpu]

The last line reads ``worst_train_growth=1.02`` (the largest train_growth in part 2).
"""
from __future__ import annotations


import argparse
import tempfile

import pandas as pd

import clplatform
from clplatform.registry import STRATEGIES

DOMAIN_STREAM = {"lftl": "glyphs-domains"}


def _run(strategy: str, out: str, epochs: int | None, device: str, **stream_options):
    reads_epochs = "epochs" not in STRATEGIES.get(strategy).traits.unused_train
    kwargs = {"epochs": epochs} if epochs and reads_epochs else {}
    return clplatform.run(strategy, DOMAIN_STREAM.get(strategy, "glyphs"), out=out,
                          device=device, stream_options=stream_options, **kwargs)


def per_strategy(strategies: list[str], epochs: int | None, device: str) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name in strategies:
            run = _run(name, out, epochs, device)
            e = run.experiences
            rows.append({
                "strategy": name, "experiences": len(e),
                "train_s_per_exp": e["train_seconds"].mean(),
                "eval_s_per_exp": e["eval_seconds"].mean(),
                "train_GFLOPs_per_exp": e["train_flops"].mean() / 1e9,
                "inference_MFLOPs_per_sample": e["inference_flops_per_sample"].iloc[-1] / 1e6,
                "peak_memory_MB": e["peak_memory_bytes"].max() / 2 ** 20,
                "final_accuracy_%": 100 * run.summary["final_accuracy"],
            })
    return pd.DataFrame(rows)


def _thirds(values: pd.Series) -> float:
    k = max(1, len(values) // 3)
    return float(values.iloc[-k:].mean() / values.iloc[:k].mean())


def scaling(strategies: list[str], sizes: list[int], epochs: int | None,
            device: str) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name in strategies:
            for n in sizes:
                run = _run(name, out, epochs, device, experiences=n)
                e = run.experiences
                acc = run.accuracy
                evaluated = acc[acc["train_exp"] >= 0].groupby("train_exp")["n_samples"].sum()
                per_sample = e["train_flops"] / e["experience_size"]
                rows.append({
                    "strategy": name, "experiences": n,
                    "train_s_per_exp": e["train_seconds"].mean(),
                    "train_growth": _thirds(per_sample),
                    "train_s_growth": _thirds(e["train_seconds"] / e["experience_size"]),
                    "eval_ms_per_sample": 1e3 * (e["eval_seconds"].values /
                                                 evaluated.values).mean(),
                    "eval_growth": _thirds(pd.Series(e["eval_seconds"].values /
                                                     evaluated.values)),
                })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES.names()))
    parser.add_argument("--scaling", default="naive,ewc,replay,sema,qprompt,simplecil")
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for the strategies that train with epochs "
                             "(default: each strategy's own)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    pd.set_option("display.float_format", lambda v: f"{v:.3g}")
    names = [s for s in args.strategies.split(",") if s]
    if names:
        print(per_strategy(names, args.epochs, args.device).to_string(index=False))
    table = scaling([s for s in args.scaling.split(",") if s],
                    [int(n) for n in args.sizes.split(",")], args.epochs, args.device)
    print(table.to_string(index=False))
    print(f"worst_eval_growth={table['eval_growth'].max():.2f}")
    print(f"worst_train_growth={table['train_growth'].max():.2f}")


if __name__ == "__main__":
    main()
