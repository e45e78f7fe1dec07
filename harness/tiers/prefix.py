"""The frozen prefix of a tier plan: a forward pass split at the first block that trains.

When the bottom tiers, the embeddings included, stay frozen for the whole run, the hidden states
that enter the first trained block depend only on the input. The forward pass then splits in two:

- the prefix runs the model under `torch.no_grad` and stops when the hidden states reach the
  first trained block, so it builds no autograd graph;
- the rest runs the model's own forward with its block list cut to the trained blocks, and a
  forward pre-hook on the first of them swaps in the prefix's hidden states. The embeddings run
  again in the rest (frozen, so without a graph), which costs little next to a block.

Since the rest is the model's own forward, its head, pooling and loss stay the model's.
"""

from contextlib import contextmanager

import torch
from torch import nn

# Model types whose block loop passes the hidden states from block to block and depends neither on
# the block index nor on the block count (transformers 5.x modeling code). DeBERTa-v2 applies a
# convolution after block 0 and Qwen2 reads its attention type by block index, so they are not
# here. tests/test_performance.py checks every family listed here against the unsplit forward.
SPLIT_FAMILIES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "distilbert", "gpt2", "llama"})


class _PrefixDone(Exception):
    """Stops the prefix forward at the first trained block and carries its input."""

    def __init__(self, hidden_states):
        super().__init__()
        self.hidden_states = hidden_states


def _hidden_states_argument(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _replace_hidden_states(args, kwargs, hidden_states):
    if args:
        return (hidden_states, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden_states}


class FrozenPrefix:
    """The embeddings and blocks `0 .. start - 1` of a model, frozen and in eval mode for the whole run."""

    def __init__(self, model: nn.Module, stack_path: str, start: int):
        self.model = model
        self.start = start
        parent_path, _, self._attribute = stack_path.rpartition(".")
        self._parent = model.get_submodule(parent_path)
        self._blocks = getattr(self._parent, self._attribute)

    @classmethod
    def from_plan(cls, model: nn.Module, plan) -> tuple["FrozenPrefix | None", str]:
        """Return the frozen prefix of `plan` on `model`, or None and the reason why there is none."""
        depth = plan.frozen_prefix_depth
        if depth is None or depth == 0:
            return None, "no block is frozen together with the embeddings"
        if len(plan.stacks) != 1:
            return None, f"the model has {len(plan.stacks)} block stacks and the split forward supports one"
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in SPLIT_FAMILIES:
            return None, f"model type {model_type!r} is not one of the split-forward families {sorted(SPLIT_FAMILIES)}"

        # Depth d + 1 is block d, so depths 0..depth freeze blocks 0..depth - 1. With every block
        # frozen, the last block still runs in the rest: some block must take the hidden states.
        # NOTE: that last block then runs at every step (without a graph) and is not cached.
        start = min(depth, plan.num_blocks - 1)
        return cls(model, plan.stacks[0].path, start), ""

    @torch.no_grad()
    def hidden_states(self, batch: dict) -> torch.Tensor:
        """Run the embeddings and the frozen blocks on `batch` and return the input of block `start`."""
        def stop(module, args, kwargs):
            raise _PrefixDone(_hidden_states_argument(args, kwargs))

        inputs = {key: value for key, value in batch.items() if key != "labels"}
        handle = self._blocks[self.start].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.model(**inputs)
        except _PrefixDone as done:
            return done.hidden_states
        finally:
            handle.remove()
        raise RuntimeError(f"the forward pass of {type(self.model).__name__} never reached block {self.start}")

    @contextmanager
    def rest(self, hidden_states: torch.Tensor):
        """Within this context, the model's forward starts at block `start` from `hidden_states`."""
        def swap(module, args, kwargs):
            return _replace_hidden_states(args, kwargs, hidden_states)

        handle = self._blocks[self.start].register_forward_pre_hook(swap, with_kwargs=True)
        setattr(self._parent, self._attribute, self._blocks[self.start:])
        try:
            yield
        finally:
            setattr(self._parent, self._attribute, self._blocks)
            handle.remove()
