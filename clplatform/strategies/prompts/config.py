"""Hyper-parameters of the prompt strategies (``shared/specs/qprompt.md``).

``prompt`` is the full-precision DualPrompt-style baseline; ``qprompt`` the same with
quantization-aware training of the prompts (2 bits, k-means codebooks, constrained adaptive
re-clustering). Every ablation of the spec is one ``--set`` away.
"""
from __future__ import annotations

from dataclasses import dataclass

from clplatform.options import opt

QUANTIZERS = ("none", "kmeans", "uniform")
QUANTIZER_HELP = ("prompt quantizer: none (full precision, stored as fp16), kmeans (normalise "
                  "-> 1-D k-means -> straight-through) or uniform (min-max levels, "
                  "straight-through)")

E_INIT_HELP = ("a new E-prompt: fresh (uniform(-1, 1)) or copy (a copy of the previous "
               "experience's, DualPrompt's shared_prompt_pool; the key is never copied)")
GRAD_CLIP_HELP = ("clip the global gradient norm at this value (0: no clipping; the "
                  "DualPrompt/L2P ports: 1.0)")
INPUT_NORM_HELP = ("backbone: the backbone's mean/std normalisation; unit: the stream's [0, 1] "
                   "pixels as they are (the official codes' input)")
HEAD_INIT_HELP = ("linear head init: torch (nn.Linear's default), trunc_normal (std 0.02, bias "
                  "0: timm's ViT init, the ports) or zeros (JAX)")
PRECISION_HELP = ("finished prompts, keys and head rows not quantized are stored, and used at "
                  "inference, in fp16 or fp32")


@dataclass
class PromptOptions:
    g_layers: int = opt(2, "first blocks that get the shared G-prompt", min=0)
    g_length: int = opt(5, "G-prompt length (prefix tokens per block)", min=1)
    e_layers: int = opt(3, "blocks after the G-prompt blocks that get the experience's E-prompt",
                        min=1)
    e_length: int = opt(5, "E-prompt length (5; 20 for harder data)", min=1)
    key_weight: float = opt(1.0, "weight of the key-matching loss 1 - cos(query, key)", min=0)
    quantizer: str = opt("none", QUANTIZER_HELP, choices=QUANTIZERS)
    bits: int = opt(2, "bits per quantized value (2^bits centroids)", choices=(1, 2, 4))
    schedule: str = opt("qat", "qat: quantize from the first step; ptq: train in full precision "
                        "and quantize once at the end of the experience", choices=("qat", "ptq"))
    refit: str = opt("cac", "cac: re-run k-means only after min_interval steps and when the "
                     "assignment histogram moved by more than kl_threshold; every: each step",
                     choices=("cac", "every"))
    min_interval: int = opt(50, "CAC: training steps between two k-means fits, at least", min=1)
    kl_threshold: float = opt(0.01, "CAC: KL divergence of the assignment histograms that "
                                    "triggers a re-fit", min=0)
    standardize: bool = opt(True, "standardise each tensor by its own mean and std before "
                                  "clustering")
    noise: float = opt(0.0, "std of Gaussian noise added to the prompts in training (an "
                            "ablation: noise instead of quantization error)", min=0)
    quantize_keys: bool = opt(False, "quantize the task keys too")
    quantize_head: bool = opt(False, "quantize the head rows of each experience's classes too")
    # where `prompt` departs from DualPrompt's official code; `dualprompt` sets each one to
    # the official value (shared/specs/prompt-comparators.md, "Where the existing prompt
    # strategy deviates")
    e_init: str = opt("fresh", E_INIT_HELP, choices=("fresh", "copy"))
    grad_clip: float = opt(0.0, GRAD_CLIP_HELP, min=0)
    input_norm: str = opt("backbone", INPUT_NORM_HELP, choices=("backbone", "unit"))
    batchwise_prompt: bool = opt(False, "at test, every sample of a batch uses the E-prompt "
                                        "most samples of the batch chose (ties: lower id); "
                                        "leaks the batch's composition")
    head_init: str = opt("torch", HEAD_INIT_HELP, choices=("torch", "trunc_normal", "zeros"))
    precision: str = opt("fp16", PRECISION_HELP, choices=("fp16", "fp32"))

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        """Parameters created by the first experience (G-prompts, its E-prompt and key, the
        head): the runner checks them against the memory available (``build_within_memory``)."""
        return (2 * width * (self.g_layers * self.g_length + self.e_layers * self.e_length)
                + width + (width + 1) * classes)


@dataclass
class DualPromptOptions(PromptOptions):
    """DualPrompt as the official PyTorch port (JH-LEE-KR/dualprompt-pytorch,
    configs/cifar100_dualprompt.py, engine.py) runs it; the training defaults (batch 24, 5
    epochs, Adam 0.03 x 24 / 256) are the strategy's ``train_defaults``.

    One departure: the inputs keep the backbone's normalisation (``input_norm=backbone``).
    The official codes feed [0, 1] pixels to ViT-B weights trained on [-1, 1] ones, which
    ViT-B tolerates; vit-glyphs (a BatchNorm conv stem) does not: with ``input_norm=unit``
    DualPrompt ends at chance on the default glyphs stream (2.5 %, seed 0)."""
    e_init: str = opt("copy", E_INIT_HELP, choices=("fresh", "copy"))
    grad_clip: float = opt(1.0, GRAD_CLIP_HELP, min=0)
    head_init: str = opt("trunc_normal", HEAD_INIT_HELP,
                         choices=("torch", "trunc_normal", "zeros"))
    precision: str = opt("fp32", PRECISION_HELP, choices=("fp16", "fp32"))


@dataclass
class QPromptOptions(PromptOptions):
    quantizer: str = opt("kmeans", QUANTIZER_HELP, choices=QUANTIZERS)


RLP_INIT_HELP = ("factor init: svd (rank-r truncated SVD of prompt's uniform(-1, 1) draw, "
                 "A = U_r S_r^1/2, B = S_r^1/2 V_r^T: at rank = length it is prompt's init) or "
                 "random (A, B uniform, scaled so that A.B has the draw's variance; ours)")


@dataclass
class RLPOptions(PromptOptions):
    """``rlp``: ``prompt`` with every prefix tensor (per block, key and value: L x d)
    factorised P = A.B at rank r (``shared/specs/low-rank-and-mergeable.md`` section 5).
    Quantizer options (``quantizer``, ``bits``, ...) quantize the factors A and B."""
    rank: int = opt(1, "rank r of each prefix tensor's factorisation (1 .. prompt length; "
                       "factoring stores less only when r < L.d / (L + d))", min=1)
    factor_g: bool = opt(True, "factorise the G-prompt too (false: dense G-prompt)")
    init: str = opt("svd", RLP_INIT_HELP, choices=("svd", "random"))
