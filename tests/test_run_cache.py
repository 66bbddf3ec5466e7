"""Runs trained once: reuse of a finished run, resume of an unfinished one, retraining on a changed config, runs
trained in parallel processes equal to runs trained one after another, and the --jobs refusals."""
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from diffprop.checkpoint import list_checkpoints
from diffprop.cli import main
from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.run_cache import RECORD, finished, train_all, train_or_reuse

TINY = ["model.width=16", "model.depth=1", "model.time_dim=8", "diffusion.T=10", "train.batch_size=32",
        "train.warmup_steps=0", "data.num_samples=256"]


def _cfg(*extra):
    return load_config(None, [*TINY, "train.steps=6", "train.checkpoint_every=3", *extra])


def _weights(run_dir):
    return load_file(list_checkpoints(run_dir)[-1] / "model.safetensors")


def test_a_finished_run_is_reused_an_unfinished_one_resumed_a_changed_one_retrained(tmp_path):
    cfg, d = _cfg(), tmp_path / "run"
    first = train_or_reuse(cfg, d, progress=False)
    assert not first["reused"] and first["steps"] == 6 and (d / RECORD).is_file() and finished(d, cfg)
    again = train_or_reuse(cfg, d, progress=False)
    assert again["reused"] and again["steps"] == 6
    # a run stopped after its first checkpoint (no record) resumes to the same weights
    (d / RECORD).unlink()
    for ckpt in list_checkpoints(d)[1:]:
        shutil.rmtree(ckpt)
    assert not finished(d, cfg)
    resumed = train_or_reuse(cfg, d, progress=False)
    assert not resumed["reused"]
    fresh = tmp_path / "fresh"
    train_or_reuse(cfg, fresh, progress=False)
    assert all(torch.equal(a, _weights(fresh)[k]) for k, a in _weights(d).items())
    # another config in the same folder starts over
    other = _cfg("train.lr=5e-4")
    assert not finished(d, other) and not train_or_reuse(other, d, progress=False)["reused"]
    # a folder from before the record: finished when its last checkpoint is the last step
    (d / RECORD).unlink()
    assert finished(d, other)


def test_a_section_added_since_at_its_defaults_is_no_difference_a_key_is(tmp_path):
    """A run made before a section existed (its config.toml lacks it) is still a run of today's config while that
    section holds its defaults; a missing key inside a section, or the section changed, is a difference."""
    import tomllib

    import tomli_w

    cfg, d = _cfg(), tmp_path / "run"
    train_or_reuse(cfg, d, progress=False)
    saved = tomllib.loads((d / "config.toml").read_text())
    assert "chain_denoise" in saved and finished(d, cfg)
    write = lambda data: (d / "config.toml").write_text(tomli_w.dumps(data))  # noqa: E731
    write({k: v for k, v in saved.items() if k != "chain_denoise"})
    assert finished(d, cfg) and not finished(d, _cfg("chain_denoise.reference=10"))
    write({**saved, "train": {k: v for k, v in saved["train"].items() if k != "log_grad_norms"}})
    assert not finished(d, cfg)


def test_a_fine_tune_is_reused_only_from_the_same_weights(tmp_path):
    base_a, base_b, cfg, d = tmp_path / "a", tmp_path / "b", _cfg(), tmp_path / "ft"
    train_or_reuse(cfg, base_a, progress=False)
    train_or_reuse(_cfg("seed=1"), base_b, progress=False)
    first = train_or_reuse(cfg, d, progress=False, init_from=base_a)
    assert not first["reused"] and finished(d, cfg, base_a)
    assert not finished(d, cfg) and not finished(d, cfg, base_b)  # same config, other weights: not this run
    assert train_or_reuse(cfg, d, progress=False, init_from=base_a)["reused"]
    # from other weights it trains again, and ends elsewhere than from base_a
    again = train_or_reuse(cfg, d, progress=False, init_from=base_b)
    assert not again["reused"] and finished(d, cfg, base_b)
    ref = tmp_path / "ref"
    train_or_reuse(cfg, ref, progress=False, init_from=base_a)
    assert any(not torch.equal(a, _weights(ref)[k]) for k, a in _weights(d).items())
    # parallel processes carry the weights to start from
    par = tmp_path / "par"
    train_all([(cfg, par, base_a), (_cfg("seed=1"), tmp_path / "other")], jobs=2, progress=False)
    assert finished(par, cfg, base_a) and all(torch.equal(a, _weights(ref)[k]) for k, a in _weights(par).items())


def test_runs_trained_in_parallel_processes_equal_runs_trained_in_turn(tmp_path):
    todo = [(_cfg(f"seed={s}"), tmp_path / "par" / f"s{s}") for s in (0, 1)]
    records = train_all(todo, jobs=2, progress=False)
    assert [r["dir"] for r in records] == [str(d) for _, d in todo]
    for cfg, d in todo:
        ref = tmp_path / "seq" / d.name
        train_or_reuse(cfg, ref, progress=False)
        assert all(torch.equal(a, _weights(ref)[k]) for k, a in _weights(d).items())
    with pytest.raises(DiffpropError, match="--jobs must be at least 1"):
        train_all(todo, jobs=0)


@pytest.mark.parametrize("name, message", [
    ("smd-grid", r"smd-grid does not take --jobs \(it trains its runs one after another\)"),
    ("epdm-quick", r"epdm-quick trains each run for 3 s of wall clock, which runs in parallel would share: run it "
                   r"with --jobs 1"),
])
def test_jobs_refusals(tmp_path, capsys, name, message):
    code = main(["reproduce", name, "--scale", "tiny", "--jobs", "2", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
