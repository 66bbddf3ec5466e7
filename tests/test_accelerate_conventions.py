"""accelerate's own settings: ``train.mixed_precision = "auto"`` defers to ``accelerate launch`` / ``accelerate
config`` (``ACCELERATE_MIXED_PRECISION``), ``train.grad_accum`` accumulates micro-batches into the gradient of the
whole batch, ``train.log_with`` adds accelerate's tracker beside log.jsonl."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from accelerate.state import AcceleratorState

from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.training import Trainer, make_accelerator

from .conftest import TINY


@pytest.fixture
def fresh_accelerate(monkeypatch):
    """accelerate keeps one state per process: the first Accelerator's precision sticks unless it is reset."""
    AcceleratorState._reset_state(True)
    yield monkeypatch
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("launcher, configured, expected", [
    (None, "auto", "no"), ("bf16", "auto", "bf16"), ("bf16", "no", "no"), (None, "bf16", "bf16"), ("no", "bf16", "bf16"),
])
def test_mixed_precision_auto_defers_to_accelerate(fresh_accelerate, launcher, configured, expected):
    if launcher:  # what `accelerate launch --mixed_precision X` (or its config file) sets
        fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    else:
        fresh_accelerate.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cfg = load_config(None, ["train.device=cpu", f"train.mixed_precision={configured}"])
    assert make_accelerator(cfg).mixed_precision == expected


def test_auto_is_the_default_and_fp16_from_the_launcher_needs_a_gpu(fresh_accelerate):
    assert load_config().train.mixed_precision == "auto"
    fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(DiffpropError, match=r"^config: accelerate's mixed precision \(train.mixed_precision = 'auto'\) "
                                            r"is fp16 and needs a GPU; use 'bf16' or 'no' on CPU$"):
        make_accelerator(load_config(None, ["train.device=cpu"]))


def _per_example_loss(denoiser, x0, generator):
    """A loss that averages per-example terms and draws nothing: t and the input follow from the example."""
    t = (x0.abs().sum(1) * 37).long() % denoiser.schedule.T + 1
    return ((denoiser.raw(x0 * 0.5, t) - x0) ** 2).mean(1)


def _gradients(tmp_path, grad_accum: int):
    cfg = load_config(None, TINY + ["train.batch_size=64", f"train.grad_accum={grad_accum}", "train.device=cpu",
                                    "train.mixed_precision=no"])
    trainer = Trainer(cfg, tmp_path / f"acc{grad_accum}", progress=False, objective=_per_example_loss)
    grads = []
    trainer.optimizer.optimizer.step = lambda *a, **k: grads.append([p.grad.clone() for p in trainer._params])
    loss, norm, _ = trainer.train_step()
    return grads[0], float(loss), float(norm)


def test_accumulated_micro_batches_equal_one_batch(tmp_path, fresh_accelerate):
    g1, loss1, norm1 = _gradients(tmp_path, 1)
    for n in (2, 4):
        gn, loss_n, norm_n = _gradients(tmp_path, n)
        assert loss_n == pytest.approx(loss1, rel=1e-6) and norm_n == pytest.approx(norm1, rel=1e-5)
        for a, b in zip(gn, g1):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert norm1 > 0.1  # a real gradient


def test_grad_accum_trains_with_the_real_objective_and_checks_the_batch(tmp_path, fresh_accelerate):
    cfg = load_config(None, TINY + ["train.steps=2", "train.grad_accum=4", 'objective.regularizers=["consistency"]',
                                    "consistency.steps=2", "consistency.window=2"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.train()
    assert trainer.step == 2
    with pytest.raises(DiffpropError, match=r"^config: train.batch_size \(64\) must be divisible by the number of "
                                            r"processes \(1\) times train.grad_accum \(3\)$"):
        Trainer(load_config(None, TINY + ["train.grad_accum=3"]), tmp_path / "bad", progress=False)


def test_log_with_tensorboard(tmp_path, fresh_accelerate):
    cfg = load_config(None, TINY + ["train.steps=4", "train.log_every=2", "train.log_with=tensorboard"])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(DiffpropError, match=r"^config: train.log_with = 'tensorboard' needs the package "
                                                r"tensorboard \(pip install tensorboard\), which is not installed$"):
            Trainer(cfg, tmp_path / "run", progress=False)
        return
    Trainer(cfg, tmp_path / "run", progress=False).train()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "trackers" / "run"))  # accelerate's project: the run's name
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [2, 4]
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 2  # beside log.jsonl, not instead of it
