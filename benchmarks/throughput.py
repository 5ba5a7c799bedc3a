"""Training throughput on the default backbone against the machine's own matrix-multiply peak,
both measured in this run.

- peak: the best GFLOP/s of square fp32 matrix products (1024, 2048, 4096) on the device;
- clplatform: ``naive`` on the default stream and backbone through ``clplatform.run`` with the
  default settings — training FLOPs (the evaluator's default count) over training seconds;
- plain step: the same model's forward + backward + SGD step on one batch in a bare loop
  (what the kernels reach without any platform around them).

The three are measured back to back ``--repeats`` times and each ratio is the median of the
per-repeat ratios: a shared machine's speed drifts by 20 % over minutes, so a peak measured
once at the start would not describe the minutes the platform ran in.

    python benchmarks/throughput.py [--batch-size 32] [--epochs 3] [--repeats 3]
                                    [--device cpu|cuda] [--profile 15]

Prints every figure; the last line reads ``throughput_ratio=0.41`` (clplatform / peak).
"""
from __future__ import annotations


import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import clplatform
from clplatform import create_backbone, create_stream
from clplatform.compute import FlopCount
from clplatform.contract import TrainDefaults
from clplatform.seeding import seed_everything


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, seconds: float = 2.0) -> tuple[float, int]:
    """(best GFLOP/s, size) of fp32 n x n products."""
    best = (0.0, 0)
    for n in (1024, 2048, 4096):
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        a @ b
        _sync(device)
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            a @ b
            reps += 1
            if device == "cuda" and reps % 10 == 0:
                _sync(device)
        _sync(device)
        rate = 2 * n ** 3 * reps / (time.perf_counter() - started) / 1e9
        best = max(best, (rate, n))
    return best


def plain_step(device: str, batch_size: int, seconds: float = 3.0,
               profile: int = 0) -> float:
    """GFLOP/s of a bare training step of the default backbone + linear head; ``profile``:
    also print the operators taking the most time (self time, top ``profile``)."""
    seed_everything(0)
    bm = create_stream("glyphs", seed=0)
    backbone = create_backbone("vit-glyphs")
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features,
                                                          bm.info.num_classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, backbone.in_chans, 32, 32, device=device)
    y = torch.randint(0, bm.info.num_classes, (batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    with FlopCount() as counter:
        step()
    flops = counter.total
    for _ in range(3):
        step()
    _sync(device)
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        reps += 1
    _sync(device)
    rate = flops * reps / (time.perf_counter() - started) / 1e9
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                               if device == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(5):
                step()
            _sync(device)
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=profile))
    return rate


def platform_training(device: str, batch_size: int, epochs: int, out: str) -> float:
    """GFLOP/s of `naive` through clplatform (its default FLOP count: each distinct
    iteration counted once, within 3 % of a full count) over its training seconds."""
    run = clplatform.run("naive", "glyphs", epochs=epochs, batch_size=batch_size,
                         device=device, out=out)
    exps = run.experiences
    return float(exps["train_flops"].sum()) / float(exps["train_seconds"].sum()) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=TrainDefaults.batch_size)
    parser.add_argument("--epochs", type=int, default=TrainDefaults.epochs)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N operators of the plain step taking the most time")
    args = parser.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} "
          f"batch_size={args.batch_size}")
    rows = []  # (peak, plain step, clplatform) of each repeat, measured back to back
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            peak, size = matmul_peak(args.device)
            bare = plain_step(args.device, args.batch_size,
                              profile=args.profile if r == 0 else 0)
            achieved = platform_training(args.device, args.batch_size, args.epochs, out)
            rows.append((peak, bare, achieved))
            print(f"repeat {r}: matmul peak {peak:.1f} GFLOP/s (fp32 {size}x{size}), plain "
                  f"step {bare:.1f} ({bare / peak:.2f}), clplatform {achieved:.1f} "
                  f"({achieved / peak:.2f} of peak)", flush=True)
    peak, bare, achieved = (statistics.median(column) for column in zip(*rows))
    ratio = statistics.median(a / p for p, _, a in rows)
    print(f"matmul_peak_gflops={peak:.1f} (median)")
    print(f"plain_step_gflops={bare:.1f} ({statistics.median(b / p for p, b, _ in rows):.2f} "
          f"of peak)")
    print(f"clplatform_train_gflops={achieved:.1f} "
          f"({statistics.median(a / b for _, b, a in rows):.2f} of the plain step)")
    print(f"throughput_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
