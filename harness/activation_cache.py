"""Frozen-prefix activation cache: the hidden states that enter the first trained block, per example.

A frozen prefix in eval mode (`harness.tiers.FrozenPrefix`) maps each example to the same hidden
states in every epoch, and in every run of this process that has the same prefix weights and the
same tokenized split. The cache computes them once and hands them back as a padded batch.

Each entry stores the hidden states of the real (unpadded) tokens of every example of one split in
one flat tensor of shape (tokens, hidden size), on the training device, filled as batches arrive.
Entries are keyed on a hash of the prefix weights and the model config, the prefix length and the
split's datasets fingerprint. All entries of the process together stay within a byte budget; the
least recently used entries are dropped to make room.

The stored rows are the real tokens of a right-padded batch, so the cache needs right padding:
with left padding, absolute positions shift with the padded length.
"""

import hashlib
import logging
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)

# Process-wide entries, least recently used first.
_ENTRIES: OrderedDict = OrderedDict()


class CacheEntry:
    """The prefix hidden states of one split: a flat tensor of real tokens and each example's row range."""

    def __init__(self, lengths: list[int], hidden_size: int, dtype: torch.dtype, device: torch.device):
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
        self.offsets = offsets
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self.values = torch.empty(int(offsets[-1]), hidden_size, dtype=dtype, device=device)
        self.filled = torch.zeros(len(lengths), dtype=torch.bool)

    @property
    def num_bytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def _rows(self, indices: torch.Tensor) -> torch.Tensor:
        # The flat row numbers of the examples `indices`, in order.
        starts = self.offsets[indices]
        counts = self.lengths[indices]
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return torch.repeat_interleave(starts, counts) + within

    def lookup(self, indices: list[int], attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Return the padded hidden states (batch, length, hidden) of `indices`, or None if any is missing."""
        index = torch.tensor(indices, dtype=torch.long)
        if not bool(self.filled[index].all()):
            return None

        mask = attention_mask.bool()
        hidden = self.values.new_zeros(*mask.shape, self.values.shape[1])
        hidden[mask] = self.values[self._rows(index).to(self.values.device)]
        return hidden

    def store(self, indices: list[int], attention_mask: torch.Tensor, hidden_states: torch.Tensor) -> None:
        """Store the real-token rows of `hidden_states`, the prefix output of a right-padded batch.

        Examples stored before keep their values, so each example keeps those of the first batch
        that held it, whatever ran in between.
        """
        index = torch.tensor(indices, dtype=torch.long)
        mask = attention_mask.bool()
        counts = mask.sum(1).cpu()
        if not torch.equal(counts, self.lengths[index]):
            raise RuntimeError(
                "activation cache: the attention mask does not match the tokenized lengths of the examples, "
                "so the loader and the dataset of this split disagree"
            )

        new = ~self.filled[index]
        if not bool(new.any()):
            return
        rows = hidden_states[new.to(mask.device)]
        self.values[self._rows(index[new]).to(self.values.device)] = rows[mask[new.to(mask.device)]].to(self.values.dtype)
        self.filled[index[new]] = True


def prefix_key(model, prefix, param_depth: dict) -> str:
    """Hash the model class, its config and the weights of every depth in the prefix."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__name__.encode())
    digest.update(model.config.to_json_string().encode())
    digest.update(str(prefix.start).encode())
    for name, param in model.named_parameters():
        if param_depth[name] <= prefix.start:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset) -> str | None:
    """Return the fingerprint that `datasets` gives a split, or None for other datasets."""
    return getattr(dataset, "_fingerprint", None)


def get_entry(key: tuple, lengths: list[int], hidden_size: int, dtype, device, max_bytes: int) -> CacheEntry | None:
    """Return the entry for `key`, creating it within `max_bytes` for all entries, or None if it cannot fit."""
    if key in _ENTRIES:
        _ENTRIES.move_to_end(key)
        return _ENTRIES[key]

    needed = sum(lengths) * hidden_size * torch.empty((), dtype=dtype).element_size()
    if needed > max_bytes:
        logger.info(
            "Activation cache off for this split: it needs %.1f MB, more than train.activation_cache_max_mb=%.0f. "
            "Raise the limit to cache it.", needed / 2**20, max_bytes / 2**20,
        )
        return None

    while _ENTRIES and cached_bytes() + needed > max_bytes:
        _, dropped = _ENTRIES.popitem(last=False)
        logger.info("Activation cache: dropped a least recently used entry of %.1f MB", dropped.num_bytes / 2**20)

    entry = CacheEntry(lengths, hidden_size, dtype, device)
    _ENTRIES[key] = entry
    logger.info(
        "Activation cache: new entry for %d examples, %d tokens, %.1f MB on %s (%.1f MB in all entries)",
        len(lengths), sum(lengths), entry.num_bytes / 2**20, device, cached_bytes() / 2**20,
    )
    return entry


def cached_bytes() -> int:
    """Return the bytes held by all entries of this process."""
    return sum(entry.num_bytes for entry in _ENTRIES.values())


def clear() -> None:
    """Drop every entry."""
    _ENTRIES.clear()
