"""Avalanche's classic benchmarks by name: ``--stream avalanche:SplitMNIST --stream-opt
root=DIR``.

Nothing is downloaded unless ``download=true``: without it the dataset files must already be
under ``root`` in the dataset's own format (checked with torchvision's loader, download off);
a missing dataset is a one-line error saying so. Images stay in [0, 1] (``ToTensor`` only):
the backbone normalises them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clplatform.errors import UserError
from clplatform.options import opt
from clplatform.registry import register_stream

from .common import seed_option

# name -> (torchvision dataset class that holds the files, Avalanche generator)
TENSOR_DATASETS = {"MNIST"}  # Avalanche reads these as [0, 1] tensors already
CLASSIC = {
    "SplitMNIST": ("MNIST", "SplitMNIST"),
    "PermutedMNIST": ("MNIST", "PermutedMNIST"),
    "RotatedMNIST": ("MNIST", "RotatedMNIST"),
    "SplitFMNIST": ("FashionMNIST", "SplitFMNIST"),
    "SplitCIFAR10": ("CIFAR10", "SplitCIFAR10"),
    "SplitCIFAR100": ("CIFAR100", "SplitCIFAR100"),
}
CLASS_INCREMENTAL = {"SplitMNIST", "SplitFMNIST", "SplitCIFAR10", "SplitCIFAR100"}


@dataclass
class AvalancheOptions:
    benchmark: str = opt("SplitMNIST", "Avalanche classic benchmark (given after "
                         "'avalanche:')", choices=tuple(CLASSIC))
    root: str = opt("", "folder holding the dataset files (required)")
    experiences: int = opt(5, "experiences", min=1)
    download: bool = opt(False, "download the dataset into root if it is not there")
    seed: Optional[int] = seed_option("seed of the class order / permutations (default: run "
                                      "seed)")

    def validate(self) -> None:
        if not self.root:
            raise UserError(f"stream 'avalanche:{self.benchmark}' needs --stream-opt root=DIR")


def _class_names(opts: AvalancheOptions, benchmark) -> list[str]:
    """The dataset's class names (torchvision's ``classes``) in the benchmark's labels: a
    class-incremental benchmark renumbers the classes in their order of appearance
    (``class_mapping[original] = label``), the others keep the dataset's labels."""
    import torchvision
    holder = getattr(torchvision.datasets, CLASSIC[opts.benchmark][0])
    names = list(holder(opts.root, train=False, download=False).classes)
    if opts.benchmark not in CLASS_INCREMENTAL:
        return names
    renamed = list(names)
    for original, label in enumerate(benchmark.class_mapping):
        if label >= 0:
            renamed[label] = names[original]
    return renamed


def _check_files(opts: AvalancheOptions) -> None:
    import torchvision
    holder = getattr(torchvision.datasets, CLASSIC[opts.benchmark][0])
    for train in (True, False):
        try:
            holder(opts.root, train=train, download=False)
        except RuntimeError:
            raise UserError(f"{CLASSIC[opts.benchmark][0]} not found under {opts.root} "
                            "(--stream-opt download=true downloads it)") from None


@register_stream("avalanche", options=AvalancheOptions, display="avalanche:<Benchmark>",
                 suffix_option="benchmark",
                 help="Avalanche's classic benchmarks: " + ", ".join(CLASSIC))
def avalanche_classic(opts: AvalancheOptions):
    from avalanche.benchmarks import classic
    from torchvision.transforms import ToTensor

    from .custom import complete_benchmark
    if not opts.download:
        _check_files(opts)
    generator = getattr(classic, CLASSIC[opts.benchmark][1])
    to_tensor = None if CLASSIC[opts.benchmark][0] in TENSOR_DATASETS else ToTensor()
    kwargs = dict(seed=opts.seed, train_transform=to_tensor, eval_transform=to_tensor,
                  dataset_root=opts.root)
    if opts.benchmark in CLASS_INCREMENTAL:
        kwargs["class_ids_from_zero_from_first_exp"] = True
    try:
        benchmark = generator(opts.experiences, **kwargs)
    except ValueError as exc:  # e.g. experiences that do not divide the classes
        raise UserError(f"avalanche:{opts.benchmark}: {exc}") from None
    return complete_benchmark(benchmark, f"avalanche:{opts.benchmark}",
                              classes=_class_names(opts, benchmark))
