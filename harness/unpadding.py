"""Token unpadding: the `nn.Linear` layers of the block stacks compute only the real tokens of a batch.

A dynamically padded batch still spends most of its matrix products on padding when lengths vary
(SST-2 with batch size 32: about 13 real tokens per example, padded to about 40). Inside a
transformer block every linear layer works token by token, so running it on the real tokens only
and writing zeros at the padded positions leaves the real positions unchanged: attention masks
padded keys, so nothing at a padded position reaches a real one, in the forward pass or in the
gradients. Dropout and attention still see the padded shape, so random numbers are drawn as before.

Layers whose input is not (batch, length, features) with the batch's attention mask shape, such as
a pooler or a classifier, run as usual.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class TokenUnpadding:
    """Replace the forward of every `nn.Linear` inside the given modules until `remove()`."""

    def __init__(self, modules):
        self._linears = [m for module in modules for m in module.modules() if type(m) is nn.Linear]
        self._shape = None
        self._index = None
        for linear in self._linears:
            linear.forward = self._unpadded_forward(linear)

    def _unpadded_forward(self, linear):
        def forward(x):
            if self._index is None or x.dim() != 3 or tuple(x.shape[:2]) != self._shape:
                return F.linear(x, linear.weight, linear.bias)
            tokens = x.reshape(-1, x.shape[-1]).index_select(0, self._index)
            y = F.linear(tokens, linear.weight, linear.bias)
            padded = y.new_zeros(x.shape[0] * x.shape[1], y.shape[-1]).index_copy(0, self._index, y)
            return padded.view(*x.shape[:2], y.shape[-1])

        return forward

    @contextmanager
    def tokens(self, attention_mask: torch.Tensor):
        """Within this context, linear layers compute only the positions where `attention_mask` is 1."""
        mask = attention_mask.bool()
        if bool(mask.all()):
            yield
            return
        self._shape = tuple(mask.shape)
        self._index = mask.flatten().nonzero().squeeze(1)
        try:
            yield
        finally:
            self._shape = None
            self._index = None

    def remove(self) -> None:
        """Give every linear layer its own forward back."""
        for linear in self._linears:
            del linear.forward
        self._linears = []
