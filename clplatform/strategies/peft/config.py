"""Hyper-parameters of the mergeable methods (``shared/specs/low-rank-and-mergeable.md``).

Defaults from the released code where it exists: ZeroI2V (leexinhao/ZeroI2V,
``configs/recognition/vit_zero_clip/vit_zero_base_clip_k400_16x8x1.py``: adapter_scale 0.5,
num_tadapter 2, AdamW lr 3e-4 wd 0.05 with wd 0 on the norms, 40 epochs, linear warm-up from
0.1x over 2.5 epochs then cosine) and Consolidator (THU-MIG/Consolidator,
``model/vision_transformer_timm.py``: REP_BRANCH_INIT_STD 1e-3, DropPath per branch, channel
shuffle; ``experiments/LoRA/ViT-B_prompt_lora_8.yaml``: LoRA r = 8 on the fused qkv, scale 1).
Epochs and batch size are the platform's training settings (``--epochs``, ``--batch-size``);
the warm-up is a fraction of all iterations (2.5 / 40 epochs for ZeroI2V, 10 / 100 for
Consolidator's recipe) so that it scales with the platform's few epochs.
"""
from __future__ import annotations

from dataclasses import dataclass

from clplatform.options import opt

LINEAR_PLACES = ("qkv_in", "proj_out", "fc1_in", "fc2_out")
LORA_TARGETS = {"qkv": ("attn.qkv",), "qkv+proj": ("attn.qkv", "attn.proj"),
                "all": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}


@dataclass
class MergeableOptions:
    """What the four methods share: the continual-learning form and the optimiser."""
    adapt: str = opt("first", "first: train on experience 1 (temporary linear head), merge, "
                     "then SimpleCIL's prototype head; every: a fresh module per experience "
                     "with a linear head (masked CE), merged after each experience",
                     choices=("first", "every"))
    lr: float = opt(1e-3, "AdamW learning rate (linear warm-up, then cosine to 0)", min=0)
    weight_decay: float = opt(1e-2, "AdamW weight decay of the modules (0 on norms and "
                                     "on the head)", min=0)
    warmup: float = opt(0.1, "fraction of the iterations of linear warm-up", min=0, max=1)
    warmup_start: float = opt(1e-3, "learning-rate factor the warm-up starts from", min=0,
                              max=1)

    def validate(self) -> None:
        """Cross-field checks (none here)."""


@dataclass
class LinearAdapterOptions(MergeableOptions):
    ratio: float = opt(0.25, "adapter hidden width h = ratio x d (ZeroI2V mlp_ratio)", min=0)
    scale: float = opt(0.5, "adapter output scale s (ZeroI2V adapter_scale, K400 config)",
                       min=0)
    dropout: float = opt(0.1, "dropout between the adapter's two linears, training only",
                         min=0, max=1)
    places: str = opt(",".join(LINEAR_PLACES), "comma-separated adapter places in each block: "
                      "qkv_in (before qkv), proj_out (after the attention projection), fc1_in "
                      "(before the MLP), fc2_out (after the MLP)")
    train_norm: bool = opt(True, "also train the final LayerNorm (ZeroI2V's ln_post)")
    merge: bool = opt(True, "fold the adapters into the frozen weights after training; "
                            "false: keep them as side modules (adapt=first only)")
    lr: float = opt(3e-4, "AdamW learning rate (ZeroI2V K400)", min=0)
    weight_decay: float = opt(0.05, "AdamW weight decay (ZeroI2V; 0 on norms and the head)",
                              min=0)
    warmup: float = opt(0.0625, "warm-up fraction (ZeroI2V: 2.5 of 40 epochs)", min=0, max=1)
    warmup_start: float = opt(0.1, "warm-up start factor (ZeroI2V LinearLR start 0.1)",
                              min=0, max=1)

    def place_list(self) -> list[str]:
        from clplatform.errors import UserError
        places = [p.strip() for p in self.places.split(",") if p.strip()]
        bad = [p for p in places if p not in LINEAR_PLACES]
        if bad or not places:
            raise UserError(f"linear-adapter: places={self.places!r}: each must be one of "
                            f"{', '.join(LINEAR_PLACES)}")
        return places

    def validate(self) -> None:
        from clplatform.errors import UserError
        self.place_list()
        if not self.merge and self.adapt != "first":
            raise UserError("linear-adapter: merge=false needs adapt=first (unmerged adapters "
                            "cannot be stacked experience after experience)")


@dataclass
class LoRAOptions(MergeableOptions):
    rank: int = opt(8, "LoRA rank r (Consolidator's LoRA baseline: 8)", min=1)
    alpha: float = opt(8.0, "LoRA alpha: the update is (alpha / r) B A", min=0)
    targets: str = opt("qkv", "layers of every block that get a LoRA branch",
                       choices=tuple(LORA_TARGETS))


@dataclass
class CompLoRAOptions(LoRAOptions):
    protect: float = opt(0.25, "protected directions k = protect x min(out, in) per target "
                               "(ours: not in the abstract)", min=0, max=1)
    side: str = opt("left", "left: project B off the top-k left singular vectors U_k; right: "
                    "A off the top-k right ones V_k; both", choices=("left", "right", "both"))
    subspace: str = opt("pretrained", "SVD of the pre-trained weight (pretrained), of the "
                        "running, merged weight of each experience (current), or the "
                        "pre-trained one plus the column spaces of earlier experiences' "
                        "updates (accumulate: InfLoRA/GPM-like, not in the paper; left side)",
                        choices=("pretrained", "current", "accumulate"))
    protect_minor: bool = opt(False, "protect the bottom-k singular directions instead (a "
                                     "control that should not help)")


@dataclass
class ConsolidatorOptions(MergeableOptions):
    group_divisor: str = opt("2", "g = d / divisor groups per branch; a comma-separated list "
                             "(e.g. 2,4) gives one branch per divisor (Consolidator: g = 384 "
                             "at d = 768)")
    drop: float = opt(0.5, "DropPath rate on each branch (per sample, training only; README "
                           "example 0.5)", min=0, max=1)
    shuffle: bool = opt(True, "channel shuffle before each grouped linear")

    def divisors(self) -> list[int]:
        from clplatform.errors import UserError
        try:
            values = [int(v) for v in str(self.group_divisor).split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or any(v < 1 for v in values):
            raise UserError(f"consolidator: group_divisor={self.group_divisor!r} must be "
                            "positive integers separated by commas")
        return values

    def validate(self) -> None:
        self.divisors()
