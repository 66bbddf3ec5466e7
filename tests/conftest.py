"""Shared fixtures. Tests run in parallel workers on few cores: one BLAS/OpenMP thread each, or
threads of different workers spin against each other and everything slows down a hundredfold."""
import os
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")
# the run cache (the digits classifier of `evaluate`) stays out of the user's ~/.cache; shared by xdist workers
os.environ.setdefault("DIFFPROP_CACHE", os.path.join(tempfile.gettempdir(), f"diffprop-test-cache-{os.getuid()}"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# A small but real config: the default gmm-grid MLP, shrunk so a run takes seconds.
TINY = ["model.width=32", "model.depth=2", "model.time_dim=16", "data.num_samples=512", "train.batch_size=64",
        "train.steps=30", "train.log_every=10", "train.checkpoint_every=10", "train.warmup_steps=5",
        "sample.num=64", "diffusion.T=100"]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


def train_error(tmp_path, capsys, overrides: list[str]) -> str:
    """``diffprop train`` on an empty config with ``overrides``, which must fail: its stderr, checked to be one line
    without a traceback."""
    from diffprop.cli import main

    (tmp_path / "c.toml").write_text("")
    argv = ["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--quiet",
            *[a for s in overrides for a in ("--set", s)]]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
