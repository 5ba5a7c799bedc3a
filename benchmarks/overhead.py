"""Platform overhead: `naive` through clplatform against a plain PyTorch loop doing the same
work, alternating the two in one process.

Same model (the default backbone + Avalanche's IncrementalClassifier, same initial weights),
same optimizer (SGD, momentum 0.9, the platform's default lr), same epochs and batch size,
same evaluation after every experience on every test experience. The plain loop reads the
stream's tensors once and slices mini-batches from them. Compared: clplatform's time around
training and evaluation (summary ``wall_seconds``: everything between the first and the last
experience, records included) against the plain loop's.

    python benchmarks/overhead.py [--rounds 3] [--epochs 3]

The last line reads ``overhead_ratio=1.07`` (median clplatform / median plain).
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
from clplatform.contract import StrategyContext, TrainDefaults, TrainSettings
from clplatform.data import dataset_tensors
from clplatform.seeding import seed_everything


def plain_loop(stream: str, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """Seconds of a plain PyTorch continual-learning loop equivalent to `naive`."""
    seed_everything(seed)
    bm = create_stream(stream, seed=seed)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr))
    seed_everything(seed)
    model = ctx.classifier()
    train = [dataset_tensors(e.dataset) for e in bm.train_stream]
    test = [dataset_tensors(e.dataset) for e in bm.test_stream]
    started = time.perf_counter()
    for experience, (x, y) in zip(bm.train_stream, train):
        model.head.adaptation(experience)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                    lr=lr, momentum=0.9)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x))
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                optimizer.step()
        model.eval()
        with torch.inference_mode():
            for tx, ty in test:
                correct = sum(int((model(tx[i:i + 256]).argmax(1) == ty[i:i + 256]).sum())
                              for i in range(0, len(tx), 256))
                _ = correct / len(ty)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", default="glyphs")
    parser.add_argument("--epochs", type=int, default=TrainDefaults.epochs)
    args = parser.parse_args()
    batch, lr = TrainDefaults.batch_size, TrainDefaults.lr
    platform, plain = [], []
    with tempfile.TemporaryDirectory() as out:
        clplatform.run("naive", args.stream, epochs=1, out=out)  # warm-up: caches built
        for r in range(args.rounds):
            for which in (("platform", "plain") if r % 2 == 0 else ("plain", "platform")):
                if which == "platform":
                    run = clplatform.run("naive", args.stream, epochs=args.epochs, out=out,
                                         seed=0)
                    platform.append(run.summary["wall_seconds"])
                else:
                    plain.append(plain_loop(args.stream, args.epochs, batch, lr, seed=0))
                print(f"round {r} {which}: {(platform if which == 'platform' else plain)[-1]:.2f} s",
                      flush=True)
    ratio = statistics.median(platform) / statistics.median(plain)
    print(f"clplatform median {statistics.median(platform):.2f} s, plain PyTorch median "
          f"{statistics.median(plain):.2f} s")
    print(f"overhead_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
