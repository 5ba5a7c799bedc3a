"""A custom strategy: fine-tune only the last blocks of the backbone (plus the growing head).

One class deriving from ``clplatform.Strategy`` (Avalanche's ``SupervisedTemplate`` built
from the platform's context, with the platform's optional hooks): Avalanche's own training
loop, extra record columns (``partial-finetune.samples_seen``), and what a resume needs
besides the weights and the optimizer (``resumable=True``: checkpoints after every
experience, ``clplat run --resume``)."""
from dataclasses import dataclass

from clplatform import Strategy, register_strategy
from clplatform.options import opt


@dataclass
class PartialFinetuneOptions:
    blocks: int = opt(2, "last transformer blocks that train (0: only the head)", min=0)


@register_strategy("partial-finetune", options=PartialFinetuneOptions, resumable=True,
                   help="example plugin: fine-tune the last blocks and the head")
class PartialFinetune(Strategy):
    def __init__(self, context, opts: PartialFinetuneOptions):
        model = context.classifier(freeze_backbone=True)  # backbone + growing linear head
        blocks = list(getattr(context.backbone.model, "blocks", []))
        for block in blocks[len(blocks) - opts.blocks:] if opts.blocks else []:
            block.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(context, opts, model=model, optimizer=context.sgd(params))
        self.samples_seen = 0

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        super()._train_exp(experience, eval_streams, **kwargs)  # Avalanche's epochs
        self.samples_seen += len(experience.dataset)

    def experience_extras(self) -> dict:  # columns of the experience records
        return {"samples_seen": self.samples_seen}

    def checkpoint_state(self) -> dict:  # a resume restores it, with weights and optimizer
        return {"samples_seen": self.samples_seen}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        self.samples_seen = state["samples_seen"]
