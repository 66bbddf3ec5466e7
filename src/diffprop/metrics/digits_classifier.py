"""An in-domain classifier of scikit-learn's 8x8 digits whose penultimate layer is the feature space of the
Fréchet distance and KID on ``digits`` (what MNIST-scale papers report where Inception does not fit).

Split: ``data/`` has none, so the classifier holds out scikit-learn's last 20 % (the last 359 of 1797 images, in
the library's order) as its test split and trains on the first 1438. Training is seeded and deterministic on CPU.

Run cache: ``$DIFFPROP_CACHE``, else ``~/.cache/diffprop``. The weights go to
``digits-classifier-<config hash>.safetensors`` beside a JSON with the config, test accuracy and the file's
SHA-256; a reload re-hashes the file and refuses one that does not match. Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import load_tensors, read_json
from ..errors import DiffpropError
from .features import FeatureExtractor

TEST_FRACTION = 0.2
# Bump "version" whenever the architecture, the data split or the training loop changes: it names the cache file.
CONFIG = {"version": 1, "seed": 0, "epochs": 30, "batch_size": 64, "lr": 4e-3, "weight_decay": 1e-4,
          "widths": [32, 64], "hidden": 128, "max_shift": 1}


def default_cache_dir() -> Path:
    """The run cache: ``$DIFFPROP_CACHE`` or ``~/.cache/diffprop``."""
    return Path(os.environ.get("DIFFPROP_CACHE") or Path.home() / ".cache" / "diffprop").expanduser()


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class DigitsCNN(nn.Module):
    """Three 3x3 conv-BN-ReLU layers (pooling 8 -> 4 -> 2), a ReLU hidden layer (the features), a linear head."""

    def __init__(self, widths=(32, 64), hidden: int = 128):
        super().__init__()
        w1, w2 = widths
        self.body = nn.Sequential(*_conv(1, w1), *_conv(w1, w2), nn.MaxPool2d(2), *_conv(w2, w2), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(4 * w2, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: images in [-1, 1] as ``data.load_dataset("digits")``; the last
    ``TEST_FRACTION`` of scikit-learn's order is the test split."""
    from sklearn.datasets import load_digits as sk_load_digits

    from ..data import load_dataset

    x = load_dataset("digits").x
    y = torch.from_numpy(sk_load_digits().target).long()
    n_test = int(len(x) * TEST_FRACTION)
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Each image translated by up to ``max_shift`` pixels in each direction, background (-1) filled in."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def train_digits_classifier(seed: int = 0, epochs: int = CONFIG["epochs"], batch_size: int = CONFIG["batch_size"],
                            lr: float = CONFIG["lr"], weight_decay: float = CONFIG["weight_decay"],
                            widths=tuple(CONFIG["widths"]), hidden: int = CONFIG["hidden"],
                            max_shift: int = CONFIG["max_shift"]) -> tuple[DigitsCNN, float]:
    """Train :class:`DigitsCNN` on the training split (AdamW, one-cycle learning rate, random shifts of up to
    ``max_shift`` pixels); returns the model in eval mode and its test accuracy."""
    x_tr, y_tr, x_te, y_te = digits_split()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(widths, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x_tr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_tr), generator=g).split(batch_size):
            loss = F.cross_entropy(model(_shift(x_tr[idx], max_shift, g)), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model, accuracy(model, x_te, y_te)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_digits_classifier(root: str | Path | None = None, progress: bool = True) -> tuple[DigitsCNN, dict]:
    """The classifier of :data:`CONFIG` from the run cache, trained and cached first if absent.

    Returns the model (eval mode) and its record: ``config``, ``test_accuracy``, ``sha256``, ``train_seconds``,
    ``path``. A cached file whose SHA-256 differs from its record is refused.
    """
    root = Path(root) if root is not None else default_cache_dir()
    key = hashlib.sha256(json.dumps(CONFIG, sort_keys=True).encode()).hexdigest()[:12]
    path, record_path = root / f"digits-classifier-{key}.safetensors", root / f"digits-classifier-{key}.json"
    model = DigitsCNN(CONFIG["widths"], CONFIG["hidden"])
    if path.is_file() and record_path.is_file():
        record = read_json(record_path, "classifier's record")
        sha = _file_sha256(path)
        if sha != record.get("sha256"):
            raise DiffpropError(f"{path}: SHA-256 {sha[:12]}... differs from {str(record.get('sha256'))[:12]}... "
                                f"recorded in {record_path.name}; delete both files to retrain")
        model.load_state_dict(load_tensors(path))
        return model.eval(), {**record, "path": str(path)}
    if progress:
        print(f"training the digits classifier (cached in {root})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    trained, acc = train_digits_classifier(**{k: v for k, v in CONFIG.items() if k != "version"})
    seconds = time.perf_counter() - t0
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp)
    sha = _file_sha256(tmp)
    record = {"config": CONFIG, "test_accuracy": acc, "sha256": sha, "train_seconds": round(seconds, 2),
              "split": f"test = the last {TEST_FRACTION:.0%} of scikit-learn's digits"}
    tmp_record = record_path.with_name(f".{record_path.name}.{os.getpid()}.tmp")
    tmp_record.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)  # weights first: a record never names a file that is not there
    os.replace(tmp_record, record_path)
    return trained.eval(), {**record, "path": str(path)}


def digits_classifier_extractor(data_shape: tuple[int, ...], cache_dir: str | Path | None = None,
                                device: str = "cpu", progress: bool = True) -> FeatureExtractor:
    """Penultimate-layer features of the cached digits classifier, for 1x8x8 images in [-1, 1]."""
    if tuple(data_shape) != (1, 8, 8):
        raise DiffpropError(f"digits-classifier features take 1x8x8 digits images, got shape {tuple(data_shape)}; "
                            "use --features inception, pixels or random-projection")
    model, record = load_digits_classifier(cache_dir, progress)
    model = model.to(device)
    return FeatureExtractor("digits-classifier", record["sha256"],
                            f"none (1x8x8 digits in [-1, 1], as trained); penultimate ReLU layer, "
                            f"{CONFIG['hidden']}-d; test accuracy {record['test_accuracy']:.4f}",
                            CONFIG["hidden"], model.features)


__all__ = ["CONFIG", "DigitsCNN", "default_cache_dir", "digits_classifier_extractor", "digits_split",
           "load_digits_classifier", "train_digits_classifier"]
