"""Block stacks and depth: where each parameter and module of a transformer sits.

A model is a sequence of depths. Depth 0 is everything before the block stack, block `i` is
depth `i + 1`, and depth `L + 1` is the head. Encoder-decoder models have two stacks: the
encoder blocks come first, then the decoder blocks, in one numbering (T5 with 6 encoder and 6
decoder blocks has blocks 0-11, and block 6 is decoder block 0).

Stack discovery:

1. A `nn.ModuleList` whose children are all instances of a class named in the model's
   `_no_split_modules` is a stack (Hugging Face models declare their block classes there, such
   as `BertLayer`, `GPT2Block` or `BartEncoderLayer` and `BartDecoderLayer`). Lists inside the
   blocks of another stack are ignored.
2. If the model declares no block class, the outermost `nn.ModuleList` of same-class modules
   with the most parameters is the stack (DistilBERT's `transformer.layer`, ALBERT's
   `encoder.albert_layer_groups`). A runner-up with at least half as many parameters makes the
   choice ambiguous and raises ConfigError.

ALBERT runs every layer on the weights of one layer group, so each group is one block and the
number of blocks is `num_hidden_groups`, not `num_hidden_layers`.

Depth of a parameter or module outside the stacks, by the first rule that matches:

1. Outside the base model (`model.base_model`), that is the task head (classifier, score,
   `lm_head`, DeBERTa's pooler): head.
2. An embedding, either an `nn.Embedding` or a path below the base model with a segment that
   contains "embed" (`embeddings`, `embed_positions`, DeBERTa's `encoder.rel_embeddings`, BART's
   `layernorm_embedding`, ALBERT's `embedding_hidden_mapping_in`): depth 0.
3. A normalisation module registered right after an embedding in the same parent: depth 0.
   DeBERTa's `encoder.LayerNorm` is one, because it normalises `encoder.rel_embeddings`.
4. Otherwise the registration order of `named_modules()` decides. Registered before the first
   stack is depth 0. Registered between two stacks is the depth of the last block of the earlier
   stack (T5's `encoder.final_layer_norm`). Registered after the last stack is the head (pooler,
   final norm).

A parameter registered directly on a module that contains a stack matches none of these rules
(unless it lies outside the base model or its name contains "embed"), so it raises ConfigError.
A tensor shared by several names (tied input and output embeddings, T5's and BART's `shared`)
gets the lowest depth among its names.
"""

import logging
from dataclasses import dataclass

from torch import nn

from harness.errors import ConfigError

logger = logging.getLogger(__name__)

# A runner-up stack with at least this fraction of the largest stack's parameters makes the
# generic search ambiguous.
AMBIGUOUS_FRACTION = 0.5

TORCH_NORM_TYPES = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass(frozen=True)
class BlockStack:
    """One stack of repeated blocks: its module path, block count and block class."""

    path: str
    num_blocks: int
    block_class: str


@dataclass
class ModelDepths:
    """The depth of every named parameter and of every module that lies inside one depth."""

    model_class: str
    stacks: list[BlockStack]
    num_blocks: int
    param_depth: dict[str, int]
    # Module objects, each at the lowest depth among its names. Modules that contain a stack
    # span several depths and are left out.
    module_depth: dict[nn.Module, int]
    # Layers the config declares, when the blocks run more than once (ALBERT), else None.
    num_shared_layers: int | None

    def describe_blocks(self) -> str:
        """Return a sentence naming the model class and its block count, and any weight sharing."""
        plural = "block" if self.num_blocks == 1 else "blocks"
        text = f"{self.model_class} has {self.num_blocks} {plural}"
        if self.num_shared_layers is not None:
            text += (
                f" because its {self.num_shared_layers} layers share the weights of "
                f"{self.num_blocks} {self.stacks[0].block_class}. The shared weights are one unit, "
                "so a split point cannot fall inside them"
            )
        return text


def is_norm(module: nn.Module) -> bool:
    """Return True for a normalisation layer: a torch norm type or a class whose name contains "Norm"."""
    return isinstance(module, TORCH_NORM_TYPES) or "Norm" in type(module).__name__


def find_stacks(model: nn.Module) -> list[BlockStack]:
    """Find the block stacks of `model`, in registration order (encoder before decoder)."""
    module_lists = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]

    stacks = _declared_stacks(model, module_lists)
    if not stacks:
        stacks = [_largest_stack(model, module_lists)]
    return stacks


def _declared_stacks(model, module_lists) -> list[BlockStack]:
    declared = set(getattr(model, "_no_split_modules", None) or ())
    if not declared:
        return []

    found = [
        (path, module_list)
        for path, module_list in module_lists
        if all(_is_declared_block(child, declared) for child in module_list)
    ]
    return [_to_stack(path, module_list) for path, module_list in _outermost(found)]


def _is_declared_block(module, declared) -> bool:
    return any(cls.__name__ in declared for cls in type(module).__mro__)


def _largest_stack(model, module_lists) -> BlockStack:
    candidates = [
        (path, module_list)
        for path, module_list in module_lists
        if len({type(child) for child in module_list}) == 1 and _count_params(module_list) > 0
    ]
    candidates = sorted(_outermost(candidates), key=lambda item: _count_params(item[1]), reverse=True)

    model_class = type(model).__name__
    if not candidates:
        raise ConfigError(
            f"no block stack found in {model_class}: it has no nn.ModuleList of same-class blocks "
            "with parameters, and its `_no_split_modules` names no block class. Use a transformer "
            "with a stack of blocks, or list its block class in `_no_split_modules`."
        )

    largest = _count_params(candidates[0][1])
    if len(candidates) > 1 and _count_params(candidates[1][1]) >= AMBIGUOUS_FRACTION * largest:
        listed = "; ".join(
            f"{path} ({len(module_list)} x {type(module_list[0]).__name__}, "
            f"{_count_params(module_list):,} parameters)"
            for path, module_list in candidates
        )
        raise ConfigError(
            f"ambiguous block stack in {model_class}: candidates are {listed}. List the block "
            f"class in `_no_split_modules` of {model_class} to choose the stack."
        )
    return _to_stack(*candidates[0])


def _outermost(items):
    paths = [path for path, _ in items]
    return [
        (path, module)
        for path, module in items
        if not any(path.startswith(other + ".") for other in paths if other != path)
    ]


def _to_stack(path, module_list) -> BlockStack:
    return BlockStack(path, len(module_list), type(module_list[0]).__name__)


def _count_params(module) -> int:
    return sum(param.numel() for param in module.parameters())


def map_depths(model: nn.Module) -> ModelDepths:
    """Find the block stacks of `model` and give every named parameter and module its depth."""
    stacks = find_stacks(model)
    locator = _DepthLocator(model, stacks)

    module_depth = {}
    for path, module in model.named_modules(remove_duplicate=False):
        depth = locator.module_depth(path, module)
        if depth is not None:
            module_depth[module] = min(depth, module_depth.get(module, depth))

    # A shared tensor gets the lowest depth among its names.
    names_by_tensor = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(param, []).append(name)
    param_depth = {}
    for names in names_by_tensor.values():
        depth = min(locator.param_depth(name) for name in names)
        param_depth.update(dict.fromkeys(names, depth))

    num_blocks = sum(stack.num_blocks for stack in stacks)
    logger.info(
        "%s: %d blocks in %s",
        type(model).__name__, num_blocks, ", ".join(f"{s.path} ({s.num_blocks} x {s.block_class})" for s in stacks),
    )
    return ModelDepths(
        model_class=type(model).__name__,
        stacks=stacks,
        num_blocks=num_blocks,
        param_depth=param_depth,
        module_depth=module_depth,
        num_shared_layers=_num_shared_layers(model, stacks),
    )


def _num_shared_layers(model, stacks) -> int | None:
    # ALBERT declares more layers than it has blocks: every layer reuses a block's weights.
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if len(stacks) == 1 and isinstance(num_layers, int) and num_layers > stacks[0].num_blocks:
        return num_layers
    return None


def _base_model_path(model) -> str:
    # Hugging Face models expose the backbone without the task head as `base_model`.
    base_model = getattr(model, "base_model", model)
    return next(path for path, module in model.named_modules() if module is base_model)


class _DepthLocator:
    """Apply the depth rules of this module's docstring to module paths and parameter names."""

    def __init__(self, model, stacks):
        self.model = model
        self.stacks = stacks
        self.head = sum(stack.num_blocks for stack in stacks) + 1
        self.base_path = _base_model_path(model)

        order = [path for path, _ in model.named_modules(remove_duplicate=False)]
        self.position = {path: index for index, path in enumerate(order)}

        # Each stack's span in registration order, and the depth of its first block.
        self.spans = []
        first_depth = 1
        for stack in stacks:
            inside = [self.position[p] for p in order if p == stack.path or p.startswith(stack.path + ".")]
            self.spans.append((min(inside), max(inside), first_depth))
            first_depth += stack.num_blocks

    def module_depth(self, path, module) -> int | None:
        """Return the depth of a module, or None if it contains a stack and so spans several depths."""
        block_depth = self._block_depth(path)
        if block_depth is not None:
            return block_depth
        if self._contains_stack(path):
            return None
        if not self._inside_base(path):
            return self.head
        if self._is_embedding(path, module) or self._is_norm_after_embedding(path, module):
            return 0
        return self._depth_by_position(path)

    def param_depth(self, name) -> int:
        """Return the depth of a parameter name, before shared tensors are merged."""
        owner_path, _, attribute = name.rpartition(".")
        depth = self.module_depth(owner_path, self.model.get_submodule(owner_path))
        if depth is not None:
            return depth

        # The parameter sits directly on a module that contains a stack.
        if not self._inside_base(owner_path):
            return self.head
        if "embed" in attribute.lower():
            return 0
        raise ConfigError(
            f"cannot place parameter {name} of {type(self.model).__name__} at a depth: it is "
            f"registered directly on {owner_path or 'the model'}, which contains the block stack, "
            "so it is neither before nor after the blocks. Register it in a submodule before or "
            "after the stack."
        )

    def _block_depth(self, path) -> int | None:
        for stack, (_, _, first_depth) in zip(self.stacks, self.spans):
            prefix = stack.path + "."
            if path.startswith(prefix):
                return first_depth + int(path[len(prefix):].split(".")[0])
        return None

    def _contains_stack(self, path) -> bool:
        return path == "" or any(stack.path == path or stack.path.startswith(path + ".") for stack in self.stacks)

    def _inside_base(self, path) -> bool:
        return self.base_path == "" or path == self.base_path or path.startswith(self.base_path + ".")

    def _relative_segments(self, path) -> list[str]:
        relative = path[len(self.base_path):].lstrip(".") if self.base_path else path
        return relative.split(".") if relative else []

    def _is_embedding(self, path, module) -> bool:
        return isinstance(module, nn.Embedding) or any("embed" in s.lower() for s in self._relative_segments(path))

    def _is_norm_after_embedding(self, path, module) -> bool:
        if not is_norm(module):
            return False
        parent_path, _, child_name = path.rpartition(".")
        siblings = list(self.model.get_submodule(parent_path).named_children())
        names = [name for name, _ in siblings]
        if child_name not in names or names.index(child_name) == 0:
            return False
        previous_name, previous = siblings[names.index(child_name) - 1]
        previous_path = f"{parent_path}.{previous_name}" if parent_path else previous_name
        return self._is_embedding(previous_path, previous)

    def _depth_by_position(self, path) -> int:
        # NOTE: registration order approximates execution order here. A module that is
        # registered after a stack but runs before it, and is no embedding, gets too high a depth.
        position = self.position[path]
        if position < self.spans[0][0]:
            return 0
        for (_, end, first_depth), stack, (next_start, _, _) in zip(self.spans, self.stacks, self.spans[1:]):
            if end < position < next_start:
                return first_depth + stack.num_blocks - 1
        return self.head
