"""The built-in backbones (``@register_backbone``), a component of clplatform:

- ``vit-glyphs`` (default): a small timm VisionTransformer whose patch embedding is a
  convolutional stem (timm's ``HybridEmbed``; :func:`clplatform.backbones.build_glyph_vit`),
  pre-trained by ``clplat pretrain`` on the stream ``glyphs-pretrain`` (Greek and Cyrillic
  characters, :mod:`clplatform.models.pretrain`) and cached; built on first use.
- ``timm:<model-name>``: any timm model. Hub weights are downloaded only for these names and
  only when no local file is given; ``--backbone-weights FILE`` loads a local state dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clplatform.backbones import Backbone, GlyphViTArch, build_glyph_vit, load_weights
from clplatform.errors import UserError
from clplatform.options import opt
from clplatform.registry import register_backbone


# --------------------------------------------------------------------------- token merging
@dataclass
class TokenMergingOptions:
    """Token merging (ToMe) and PYRA, options of every ViT backbone
    (:mod:`clplatform.models.tome`; ``shared/specs/compute-reduction.md`` A)."""
    merge_tokens: tuple[int, ...] = opt((0,), "ToMe: tokens merged per block, one r for every "
                                              "block or a per-block list (2,2,1,0,...); 0: off",
                                        min=0)
    merge_schedule: str = opt("constant", "constant r, or decreasing (ToMe's inflection -1: r "
                              "falls linearly from 2r in the first block to 0 in the last)",
                              choices=("constant", "decreasing"))
    prop_attn: bool = opt(True, "proportional attention: log(size) added to the logits of "
                                "each key (ToMe)")
    merge_metric: str = opt("keys", "similarity of tokens: keys averaged over heads (ToMe) or "
                            "the tokens themselves (x, ablation)", choices=("keys", "x"))
    merge_match: str = opt("bipartite", "which tokens merge: the r most similar A tokens "
                           "(bipartite, ToMe) or r random A tokens (ablation)",
                           choices=("bipartite", "random"))
    merge_op: str = opt("merge", "merge: size-weighted mean into the match (ToMe); drop: "
                        "discard the r tokens (pruning, ablation)", choices=("merge", "drop"))
    pyra: bool = opt(False, "PYRA: learned modulation of the merged tokens (r + 3d parameters "
                            "per merging block; trained by strategies that train adapters or "
                            "prompts)")
    pyra_train: str = opt("first", "PYRA parameters train in the first experience, then stay "
                          "frozen (first), or train in every experience (all)",
                          choices=("first", "all"))

    def validate(self) -> None:
        if len(self.merge_tokens) > 1 and self.merge_schedule != "constant":
            raise UserError("merge_schedule=decreasing takes one merge_tokens value, not a "
                            "per-block list")
        if self.pyra and not any(self.merge_tokens):
            raise UserError("pyra=true needs merge_tokens > 0")


def merging_backbone(backbone: Backbone, opts: TokenMergingOptions) -> Backbone:
    """``backbone`` with token merging applied to its model as ``opts`` say."""
    if any(opts.merge_tokens):
        from .tome import apply_token_merging
        apply_token_merging(backbone.model, opts, backbone.name)
    return backbone


# --------------------------------------------------------------------------- vit-glyphs
@dataclass
class GlyphViTOptions(TokenMergingOptions):
    pretrained: bool = opt(True, "use the pre-trained weights (false: random initialisation)")
    weights: Optional[str] = opt(None, "local weights file (default: the cached pre-trained "
                                       "backbone, built by `clplat pretrain` on first use)")


@register_backbone("vit-glyphs", options=GlyphViTOptions,
                   help="small ViT (conv stem, d=96, depth 6) pre-trained on Greek/Cyrillic glyphs")
def vit_glyphs(opts: GlyphViTOptions) -> Backbone:
    model = build_glyph_vit()
    if opts.weights:
        load_weights(model, opts.weights)
    elif opts.pretrained:
        from .pretrain import pretrained_glyph_vit_path
        load_weights(model, pretrained_glyph_vit_path())
    arch = GlyphViTArch()
    return merging_backbone(Backbone(model, name="vit-glyphs", in_chans=arch.in_chans,
                                     img_size=arch.img_size, mean=(0.5,), std=(0.5,)), opts)


# --------------------------------------------------------------------------- timm:<name>
@dataclass
class TimmOptions(TokenMergingOptions):
    model_name: str = opt("vit_base_patch16_224", "timm model name (`timm:<model-name>`)")
    pretrained: bool = opt(True, "download the hub's pre-trained weights (needs internet); "
                                 "ignored when `weights` is given")
    weights: Optional[str] = opt(None, "local weights file (.pth/.pt/.safetensors): no download")
    img_size: Optional[int] = opt(None, "input size if the model allows another one", min=8)


@register_backbone("timm", options=TimmOptions, display="timm:<model-name>",
                   suffix_option="model_name",
                   help="any timm model as `timm:<model-name>`; hub weights or a local file")
def timm_backbone(opts: TimmOptions) -> Backbone:
    import timm
    kwargs = {"num_classes": 0}
    if opts.img_size:
        kwargs["img_size"] = opts.img_size
    download = opts.pretrained and not opts.weights
    try:
        model = timm.create_model(opts.model_name, pretrained=download, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UserError(f"unknown timm model {opts.model_name!r} "
                            "(see timm.list_models())") from None
        raise
    except TypeError as exc:
        raise UserError(f"timm model {opts.model_name!r} rejects these options: {exc}") from None
    except Exception as exc:  # hub download failed (offline, no such weights, ...)
        if not download:
            raise
        raise UserError(f"cannot download weights for {opts.model_name!r} "
                        f"({type(exc).__name__}); pass a local file with --backbone-weights"
                        ) from None
    if opts.weights:
        load_weights(model, opts.weights)
    cfg = model.pretrained_cfg or {}
    in_chans = int(cfg.get("input_size", (3,))[0])
    img_size = opts.img_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    return merging_backbone(Backbone(
        model, name=f"timm:{opts.model_name}", in_chans=in_chans, img_size=img_size,
        mean=tuple(cfg.get("mean", (0.5,) * in_chans)),
        std=tuple(cfg.get("std", (0.5,) * in_chans))), opts)
