"""The built-in backbones (``@register_backbone``), a component of clplatform:

- ``vit-glyphs``: a small timm VisionTransformer whose patch embedding is a
  convolutional stem (timm's ``HybridEmbed``; :func:`clplatform.backbones.build_glyph_vit`),
  pre-trained by ``clplat pretrain`` on the stream ``glyphs-pretrain`` (Greek and Cyrillic
  characters, :mod:`clplatform.models.pretrain`) and cached; built on first use.
- ``vit-mini`` (default, :data:`clplatform.app.spec.DEFAULT_BACKBONE`): the same layout,
  wider and deeper, with a GroupNorm/GELU conv stem
  (:class:`clplatform.backbones.MiniViTArch`), shipped pre-trained in the package
  (``models/weights/vit-mini.safetensors``, rebuilt by ``clplat pretrain --backbone
  vit-mini``) on the stream ``mini-pretrain``.
- ``timm:<model-name>``: any timm model. Its hub weights come from the local Hugging Face
  cache; they are downloaded only with ``download=true``, never implicitly;
  ``--backbone-weights FILE`` loads a local state dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clplatform.backbones import Backbone, GlyphViTArch, build_glyph_vit, load_weights
from clplatform.errors import UserError
from clplatform.options import opt
from clplatform.registry import register_backbone


@dataclass
class InputOptions:
    """The options every built-in backbone has."""
    normalize: bool = opt(True, "normalise inputs with the model's mean/std (false: the "
                                "stream's [0, 1] pixels as they are, as the PILOT/SEMA codes "
                                "feed their ViTs)")


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
class GlyphViTOptions(InputOptions, TokenMergingOptions):
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
                                     img_size=arch.img_size, mean=(0.5,), std=(0.5,),
                                     normalize=opts.normalize), opts)


# --------------------------------------------------------------------------- vit-mini
@dataclass
class MiniViTOptions(GlyphViTOptions):
    weights: Optional[str] = opt(None, "local weights file (default: the shipped pre-trained "
                                       "weights, clplatform/models/weights/vit-mini.safetensors)")


@register_backbone("vit-mini", options=MiniViTOptions,
                   help="ViT (GroupNorm conv stem, d=192, depth 8) shipped pre-trained on "
                        "mini-pretrain: 3,576 non-Latin glyphs + 1,000 fractal categories")
def vit_mini(opts: MiniViTOptions) -> Backbone:
    from clplatform.backbones import MiniViTArch
    arch = MiniViTArch()
    model = build_glyph_vit(arch)
    if opts.weights:
        load_weights(model, opts.weights)
    elif opts.pretrained:
        from .pretrain import shipped_weights_path
        path = shipped_weights_path()
        if not path.is_file():
            raise UserError(f"vit-mini's pre-trained weights are missing ({path}): build them "
                            "with `clplat pretrain --backbone vit-mini` (a ~2 h CPU job), or "
                            "pass --backbone-weights FILE or --backbone-opt pretrained=false")
        load_weights(model, path)
    return merging_backbone(Backbone(model, name="vit-mini", in_chans=arch.in_chans,
                                     img_size=arch.img_size, mean=(0.5,), std=(0.5,),
                                     normalize=opts.normalize), opts)


# --------------------------------------------------------------------------- timm:<name>
@dataclass
class TimmOptions(InputOptions, TokenMergingOptions):
    model_name: str = opt("vit_base_patch16_224", "timm model name (`timm:<model-name>`); "
                                                  "a tag names the weights "
                                                  "(vit_base_patch16_224.augreg2_in21k_ft_in1k)")
    pretrained: bool = opt(True, "the hub's pre-trained weights, read from the local Hugging "
                                 "Face cache (download=true fetches them); ignored when "
                                 "`weights` is given; false: random initialisation")
    download: bool = opt(False, "download the hub's weights when they are not in the local "
                                "cache (needs internet); never implicit")
    weights: Optional[str] = opt(None, "local weights file (.pth/.pt/.safetensors): no download")
    img_size: Optional[int] = opt(None, "input size if the model allows another one", min=8)


def _cached_hub_file(model_name: str) -> str | None:
    """The model's default weights file in the local Hugging Face cache, or None."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors",
                                                               "pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


@register_backbone("timm", options=TimmOptions, display="timm:<model-name>",
                   suffix_option="model_name",
                   help="any timm model as `timm:<model-name>`; cached hub weights, a local "
                        "file, or (download=true) the hub")
def timm_backbone(opts: TimmOptions) -> Backbone:
    import timm
    kwargs: dict = {"num_classes": 0}
    if opts.img_size:
        kwargs["img_size"] = opts.img_size
    hub = opts.pretrained and not opts.weights
    if hub and not opts.download:  # offline: only what the local cache holds
        if not timm.is_model(opts.model_name):
            raise UserError(f"unknown timm model {opts.model_name!r} (see timm.list_models())")
        cached = _cached_hub_file(opts.model_name)
        if cached is None:
            raise UserError(
                f"no local weights for timm:{opts.model_name} (nothing is downloaded "
                "implicitly): pass --backbone-weights FILE, --backbone-opt download=true "
                "(needs internet) or --backbone-opt pretrained=false (random weights)")
        kwargs["pretrained_cfg_overlay"] = {"file": cached}
    try:
        model = timm.create_model(opts.model_name, pretrained=hub, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UserError(f"unknown timm model {opts.model_name!r} "
                            "(see timm.list_models())") from None
        raise
    except TypeError as exc:
        raise UserError(f"timm model {opts.model_name!r} rejects these options: {exc}") from None
    except Exception as exc:  # hub download failed (offline, no such weights, ...)
        if not hub:
            raise
        raise UserError(f"cannot load hub weights for {opts.model_name!r} "
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
        std=tuple(cfg.get("std", (0.5,) * in_chans)), normalize=opts.normalize), opts)
