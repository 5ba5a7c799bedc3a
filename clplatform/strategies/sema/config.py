"""SEMA's hyper-parameters, defaults from the released code (``shared/specs/sema.md``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clplatform.options import opt


@dataclass
class SEMAOptions:
    expand: str = opt("auto", "auto: expand on representation shift (SEMA); every: add "
                      "adapters at every experience (naive expansion); never: adapt in "
                      "the first experience only", choices=("auto", "every", "never"))
    expandable_layers: int = opt(3, "the last N transformer blocks can expand", min=1)
    bottleneck: Optional[int] = opt(None, "adapter bottleneck r (default: 16 x d / 768, "
                                          "at least 2)", min=1)
    rd_hidden: Optional[int] = opt(None, "descriptor autoencoder width (default: 128 x d / "
                                         "768, at least 4)", min=1)
    threshold: float = opt(2.0, "expansion threshold tau on the mean |z| of the batch "
                                "(2: CIFAR-100, ImageNet-R; 1: ImageNet-A, VTAB)", min=0)
    buffer_size: int = opt(500, "losses kept per descriptor for mu and sigma", min=3)
    functional_epochs: int = opt(5, "epochs of the adapter/router/head phase", min=0)
    rd_epochs: int = opt(20, "epochs of the descriptor phase", min=0)
    lr: float = opt(0.005, "learning rate of the functional phase (SGD)", min=0)
    rd_lr: float = opt(0.01, "learning rate of the descriptor phase (SGD)", min=0)
    momentum: float = opt(0.9, "SGD momentum", min=0, max=1)
    weight_decay: float = opt(5e-4, "SGD weight decay", min=0)
    batch_size: int = opt(32, "mini-batch size of both phases", min=1)
    scan_batch_size: int = opt(128, "mini-batch size of the expansion scan", min=1)
    head: str = opt("linear", "prediction head: linear (trained with masked cross-entropy, as "
                    "in the paper and code) or prototype (cosine to class-mean features, a "
                    "variant; the linear head still trains the adapters)",
                    choices=("linear", "prototype"))
    z_mode: str = opt("batch-abs", "novelty statistic: batch mean of |z|, min over "
                      "descriptors (code); or signed per-sample z (paper)",
                      choices=("batch-abs", "signed"))
    router: str = opt("image", "router input: image (token mean, one weight vector per image, "
                      "code) or token (per-token weights, paper)", choices=("image", "token"))
    scan_order: str = opt("shuffled", "batch order of the expansion scan: shuffled (a fresh "
                          "permutation per scan pass, as the released code's detection "
                          "DataLoader) or sequential (stream order: on class-sorted data, "
                          "batches of 2-3 classes; the behaviour before issue 18)",
                          choices=("shuffled", "sequential"))
    lr_schedule: str = opt("epoch", "cosine learning-rate schedule of every phase: epoch "
                           "(T_max = epochs, stepped once per epoch, to 0 after the last "
                           "one, as the released code) or iteration (stepped every "
                           "mini-batch, to 0 at the end; the behaviour before issue 18)",
                           choices=("epoch", "iteration"))
    head_bias: str = opt("zero", "initial bias of the linear head: zero (released code) or "
                         "uniform (PyTorch's Linear default; the behaviour before issue 18)",
                         choices=("zero", "uniform"))
    statistics: str = opt("window", "descriptor loss statistics: window (mu and sigma of the "
                          "last buffer_size training losses, code) or running (over all "
                          "training losses, paper)", choices=("window", "running"))

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        """Parameters created in the first experience (an adapter in every block, a
        descriptor and a router column in each expandable one, the head):
        the runner checks them against the memory available (``build_within_memory``)."""
        bottleneck = self.bottleneck or max(2, round(16 * width / 768))
        hidden = self.rd_hidden or max(4, round(128 * width / 768))
        adapter = 2 * width * bottleneck + bottleneck + width
        descriptor = 2 * width * hidden + hidden + width
        return (depth * adapter + self.expandable_layers * (descriptor + width + 1)
                + (width + 1) * classes)
