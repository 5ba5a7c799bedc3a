"""Full-size throughput: 224-px ViT-B/16 (``timm:vit_base_patch16_224``, random weights,
inputs in [0, 1] as the SEMA/PILOT recipes feed them) on generated images, for naive,
simplecil, sema, prompt and aper through ``clplatform.run``, against a plain timm training
loop of the same model measured in the same script; fp32 and bf16.

For every strategy and precision, one run of two experiences, one epoch (SEMA: one
functional and one descriptor epoch; APER: one adapter epoch). From the run's records of the
second experience (the first pays for warm-up: kernel selection, allocator growth):

- train img/s: the experience's images / its training seconds (everything the strategy
  does to learn it: caches, scans, prototype passes, epochs);
- eval img/s: test images / the seconds of one evaluation pass over the whole test stream;
- MFU: training FLOPs (the evaluator's exact count) / training seconds / the device's bf16
  dense peak (:data:`BF16_PEAK`, on CUDA only);
- GPU memory: the run's peak allocated bytes (CUDA).

The plain loop: ``timm.create_model`` with a linear head, SGD, cross-entropy, the same batch
size, random batches already on the device, ``torch.autocast`` for bf16; its img/s is
``naive``'s reference (ratio printed; the issue's target: >= 0.9 on a GPU in bf16), and
SEMA's per-experience training time is compared with naive's (target <= 1.5x).

    PYTHONPATH=. python benchmarks/fullsize.py    # CUDA if present: 2048 images
    python benchmarks/fullsize.py --quick         # a CPU in a few minutes
    python benchmarks/fullsize.py --images 512 --test-images 128 --strategies naive,sema

Prints one line per (strategy, precision) and a summary; ``--json FILE`` also writes them.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

import clplatform
from clplatform.compute import FlopCount
from clplatform.streams import from_arrays

MODEL = "vit_base_patch16_224"
#: bf16 dense (no sparsity) tensor-core peak in FLOP/s by CUDA device name (substring),
#: from NVIDIA's datasheets (the sparsity figures halved): H100/H200 SXM 1,979 TFLOP/s sparse,
#: H100 PCIe 1,513, A100 624 sparse (312 dense), L40S 733 sparse
BF16_PEAK = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
             ("L40S", 362e12))
STRATEGIES = ("naive", "simplecil", "sema", "prompt", "aper")


def bf16_peak(device: str) -> tuple[float | None, str]:
    if device != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name()
    for key, peak in BF16_PEAK:
        if key in name:
            return peak, name
    return None, name


def images(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 224, 224), generator=g, dtype=torch.uint8)
    return x, torch.arange(n) % classes


def stream(n_train: int, n_test: int, classes: int):
    x, y = images(n_train, classes, 0)
    xt, yt = images(n_test, classes, 1)
    return from_arrays(x, y, test=(xt, yt), experiences=2, name="noise224")


def options(strategy: str, batch: int) -> dict:
    """One epoch of everything a strategy trains, at batch size ``batch``."""
    if strategy == "sema":
        return {"strategy_options": {"functional_epochs": 1, "rd_epochs": 1,
                                     "batch_size": batch}}
    if strategy == "aper":
        return {"strategy_options": {"epochs": 1, "batch_size": batch}}
    if strategy == "simplecil":
        return {"batch_size": batch}
    return {"epochs": 1, "batch_size": batch}


def run_strategy(strategy: str, precision: str, benchmark, args, out: str) -> dict:
    run = clplatform.run(strategy, benchmark, seed=0, out=out, device=args.device,
                         precision=precision, flops=args.flops,
                         backbone=f"timm:{MODEL}",
                         backbone_options={"pretrained": False, "normalize": False},
                         **options(strategy, args.batch_size))
    row = run.experiences.iloc[-1]
    n_test = int(run.accuracy[run.accuracy["train_exp"] == row["train_exp"]]["n_samples"].sum())
    flops = row["train_flops"]
    return {"strategy": strategy, "precision": precision,
            "train_images": int(row["experience_size"]),
            "train_seconds": float(row["train_seconds"]),
            "train_img_s": row["experience_size"] / row["train_seconds"],
            "eval_img_s": n_test / row["eval_seconds"],
            "train_flops": None if flops != flops or flops is None else float(flops),
            "peak_memory_gib": (row["peak_memory_bytes"] / 2 ** 30 if args.device == "cuda"
                                else float("nan"))}


def plain_loop(precision: str, args, classes: int) -> dict:
    """A bare timm training loop: the reference for naive."""
    import timm
    device = args.device
    model = timm.create_model(MODEL, pretrained=False, num_classes=classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    x = torch.rand(args.batch_size, 3, 224, 224, device=device)
    y = torch.randint(0, classes, (args.batch_size,), device=device)
    cast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
            if precision == "bf16" else torch.autocast(torch.device(device).type,
                                                       enabled=False))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with cast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    with FlopCount() as counted:  # the same exact count as the runs' records
        step()
    _sync(device)
    steps = max(1, args.images // 2 // args.batch_size)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - started
    memory = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else float("nan")
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"strategy": "plain-timm", "precision": precision,
            "train_images": steps * args.batch_size, "train_seconds": seconds,
            "train_img_s": steps * args.batch_size / seconds, "eval_img_s": float("nan"),
            "train_flops": float(counted.total * steps), "peak_memory_gib": memory}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--images", type=int, help="training images, two experiences "
                        "(default: 2048 on CUDA, 32 on a CPU)")
    parser.add_argument("--test-images", type=int, help="test images (default: images / 4)")
    parser.add_argument("--batch-size", type=int, help="default: 64 on CUDA, 8 on a CPU")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--flops", default="sampled", choices=("sampled", "full", "off"),
                        help="the runs' FLOP counting (sampled: the platform's default)")
    parser.add_argument("--warmup", type=int, default=3, help="plain-loop warm-up steps")
    parser.add_argument("--quick", action="store_true",
                        help="16 images, batch 4, test 4: a CPU run in a few minutes")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    if args.quick:
        args.images, args.test_images, args.batch_size = (args.images or 16,
                                                          args.test_images or 4,
                                                          args.batch_size or 4)
        args.warmup = min(args.warmup, 1)
    args.images = args.images or (2048 if gpu else 32)
    args.test_images = args.test_images or max(args.images // 4, 2)
    args.batch_size = args.batch_size or (64 if gpu else 8)
    args.classes = min(args.classes, args.test_images)  # every class in the test set
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs: TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    peak, device_name = bf16_peak(args.device)
    print(f"device: {device_name}; bf16 dense peak: "
          f"{peak / 1e12:.0f} TFLOP/s" if peak else f"device: {device_name}; bf16 peak: "
          "unknown (MFU not printed)")
    print(f"{args.images} training images in 2 experiences, {args.test_images} test images, "
          f"batch {args.batch_size}, {MODEL} random weights, 224 px, inputs in [0, 1]")
    benchmark = stream(args.images, args.test_images, args.classes)
    rows = []
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    with tempfile.TemporaryDirectory() as out:
        for precision in precisions:
            rows.append(plain_loop(precision, args, args.classes))
            _print(rows[-1], peak)
            for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
                rows.append(run_strategy(strategy, precision, benchmark, args, out))
                _print(rows[-1], peak)
    print("summary:")
    by = {(r["strategy"], r["precision"]): r for r in rows}
    for precision in precisions:
        naive, plain = by.get(("naive", precision)), by.get(("plain-timm", precision))
        if naive and plain:
            print(f"  {precision}: naive / plain timm loop = "
                  f"{naive['train_img_s'] / plain['train_img_s']:.2f} (target >= 0.9 in bf16 "
                  "on a GPU)")
        sema = by.get(("sema", precision))
        if naive and sema:
            print(f"  {precision}: sema / naive training seconds per experience = "
                  f"{sema['train_seconds'] / naive['train_seconds']:.2f} (target <= 1.5)")
    if "fp32" in precisions and "bf16" in precisions:
        for strategy in ["plain-timm", *args.strategies.split(",")]:
            a, b = by.get((strategy, "fp32")), by.get((strategy, "bf16"))
            if a and b:
                print(f"  {strategy}: bf16 speed-up {b['train_img_s'] / a['train_img_s']:.2f}x "
                      "training" + (f", {b['eval_img_s'] / a['eval_img_s']:.2f}x evaluation"
                                    if a["eval_img_s"] == a["eval_img_s"] else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name, "bf16_peak": peak, "args": vars(args),
                       "rows": rows}, fh, indent=1)


def _print(row: dict, peak: float | None) -> None:
    mfu = ""
    if peak and row["train_flops"]:
        mfu = f"  MFU {row['train_flops'] / row['train_seconds'] / peak:6.1%}"
    memory = (f"  GPU memory {row['peak_memory_gib']:.1f} GiB"
              if row["peak_memory_gib"] == row["peak_memory_gib"] else "")
    print(f"{row['strategy']:>10} {row['precision']}: train {row['train_img_s']:8.1f} img/s "
          f"({row['train_images']} images, {row['train_seconds']:.1f} s), eval "
          f"{row['eval_img_s']:8.1f} img/s{mfu}{memory}", flush=True)


if __name__ == "__main__":
    main()
