"""Freezing: requires_grad, eval mode for frozen tiers, and gradual unfreezing.

A frozen tier has requires_grad=False and its modules stay in eval mode while the rest of the
model trains, so its dropout is off and its buffers (such as BatchNorm running statistics) do not
change. Gradual unfreezing (ULMFiT, Howard and Ruder 2018) trains only the top tier at first and
unfreezes the next tier down every N epochs or optimizer steps. Tiers frozen by the config never
unfreeze.
"""

from torch import nn


def set_requires_grad(params, requires_grad: bool) -> None:
    for param in params:
        param.requires_grad_(requires_grad)


def set_train_mode(model: nn.Module, frozen_modules) -> None:
    """Put `model` in train mode, then every module in `frozen_modules` back in eval mode."""
    model.train()
    for module in frozen_modules:
        module.eval()


class GradualUnfreezing:
    """The unfreezing order of the tiers that train (top first) and how many have started so far."""

    def __init__(self, unfreeze, tiers):
        self.unit = unfreeze.unit
        self.every = unfreeze.every
        self.order = [tier.name for tier in reversed(tiers) if not tier.frozen]
        self.num_started = 1

    def waiting(self) -> list[str]:
        """Return the tiers that have not started training yet, next first."""
        return self.order[self.num_started:]

    def advance(self, epoch: int, step: int) -> list[str]:
        """Return the tiers due to start at this 0-based epoch and optimizer step, and mark them started."""
        elapsed = epoch if self.unit == "epoch" else step
        target = min(1 + elapsed // self.every, len(self.order))
        due = self.order[self.num_started:target]
        self.num_started = max(self.num_started, target)
        return due
