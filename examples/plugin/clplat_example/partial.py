"""A custom strategy: fine-tune only the last blocks of the backbone (plus the growing head)
with Avalanche's Naive template. Everything a strategy needs comes from the context: the
backbone, the stream's metadata, the training settings and the platform's plugins."""
from __future__ import annotations

from dataclasses import dataclass

from clplatform.options import opt
from clplatform.registry import register_strategy


@dataclass
class PartialFinetuneOptions:
    blocks: int = opt(2, "last transformer blocks that train (0: only the head)", min=0)


@register_strategy("partial-finetune", options=PartialFinetuneOptions,
                   help="example plugin: fine-tune the last blocks and the head")
def partial_finetune(ctx, opts: PartialFinetuneOptions):
    from avalanche.training import Naive
    from torch import nn
    model = ctx.classifier(freeze_backbone=True)
    blocks = list(getattr(ctx.backbone.model, "blocks", []))
    for block in blocks[len(blocks) - opts.blocks:] if opts.blocks else []:
        block.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    return Naive(model=model, optimizer=ctx.sgd(params), criterion=nn.CrossEntropyLoss(),
                 **ctx.template_kwargs())
