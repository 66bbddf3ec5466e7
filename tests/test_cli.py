"""Every command end to end through the CLI, and every bad input as one line with a non-zero exit."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from diffprop.cli import main
from diffprop.demo_recipes import METHODS

from .conftest import TINY


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


@pytest.fixture
def trained(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[train]\nsteps = 30\n")
    code, out, err = run(["train", cfg, "--out", tmp_path / "run", "--quiet", *_sets(TINY)], capsys)
    assert code == 0, err
    return tmp_path / "run"


def test_train_sample_evaluate(trained, tmp_path, capsys):
    assert {"config.toml", "data.json", "log.jsonl", "loss.png", "checkpoints"} <= {p.name for p in trained.iterdir()}
    code, out, err = run(["sample", trained, "--num", 64, "--sampler", "ddim", "--steps", 10, "--seed", 1], capsys)
    assert code == 0, err
    path = trained / "samples" / "ddim-10-seed1.npz"
    with np.load(path, allow_pickle=False) as f:
        x, meta = f["samples"], json.loads(str(f["meta"]))
    assert x.shape == (64, 2) and x.dtype == np.float32
    assert meta["sampler"] == "ddim" and meta["steps"] == 10 and meta["seed"] == 1 and meta["ema"] is True
    assert path.with_suffix(".png").is_file()
    code, out, err = run(["evaluate", path, "--dataset", "gmm-grid"], capsys)
    assert code == 0, err
    m = json.loads(path.with_suffix(".metrics.json").read_text())
    assert {"mode_coverage", "high_quality_fraction", "mmd_rbf"} <= m.keys()
    # same seed, same samples; --no-ema gives different ones
    run(["sample", trained, "--num", 64, "--sampler", "ddim", "--steps", 10, "--seed", 1, "--out", tmp_path / "b.npz"],
        capsys)
    run(["sample", trained, "--num", 64, "--sampler", "ddim", "--steps", 10, "--seed", 1, "--no-ema",
         "--out", tmp_path / "c.npz"], capsys)
    assert np.array_equal(np.load(tmp_path / "b.npz")["samples"], x)
    assert not np.array_equal(np.load(tmp_path / "c.npz")["samples"], x)


def test_sample_and_evaluate_the_oracle(tmp_path, capsys):
    out_file = tmp_path / "o.npz"
    code, _, err = run(["sample", "--oracle", "gmm-grid", "--num", 500, "--sampler", "ddim", "--steps", 50,
                        "--out", out_file], capsys)
    assert code == 0, err
    code, out, err = run(["evaluate", out_file, "--dataset", "gmm-grid", "--out", tmp_path / "m.json"], capsys)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["mode_coverage"] == 1.0 and m["high_quality_fraction"] > 0.95
    assert "high_quality_fraction" in out


def test_digits_unet_trains_and_samples_an_image_grid(tmp_path, capsys):
    cfg = tmp_path / "digits.toml"
    cfg.write_text('[data]\nname = "digits"\n[model]\nkind = "unet"\npreset = "tiny"\n'
                   '[train]\nsteps = 4\nbatch_size = 16\nlog_every = 2\ncheckpoint_every = 4\n'
                   '[diffusion]\nT = 50\n')
    code, _, err = run(["train", cfg, "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run(["sample", tmp_path / "run", "--num", 9, "--steps", 5, "--out", tmp_path / "d.npz"], capsys)
    assert code == 0, err
    x = np.load(tmp_path / "d.npz")["samples"]
    assert x.shape == (9, 1, 8, 8) and x.min() >= -1 and x.max() <= 1  # images clipped to the data range
    assert (tmp_path / "d.png").is_file()
    code, out, err = run(["evaluate", tmp_path / "d.npz", "--dataset", "digits"], capsys)
    assert code == 0 and "mmd_rbf" in out


def test_csv_samples_come_back_in_data_units(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = np.c_[rng.normal(1000, 10, 400), rng.normal(-5, 0.1, 400)]
    (tmp_path / "d.csv").write_text("price,temp\n" + "\n".join(f"{a},{b}" for a, b in rows))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nname = "csv:{tmp_path / "d.csv"}"\n')
    code, _, err = run(["train", cfg, "--out", tmp_path / "run", "--quiet", *_sets(TINY + ["data.num_samples=1"])],
                       capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run/data.json").read_text())["scaler"]["columns"] == ["price", "temp"]
    run(["sample", tmp_path / "run", "--num", 200, "--steps", 20, "--out", tmp_path / "s.npz"], capsys)
    x = np.load(tmp_path / "s.npz")["samples"]
    # 30 training steps leave samples ~100 data std wide (medians 1008-1135 over seeds), while standardized units
    # would sit near 0: the medians say which units came back
    assert abs(np.median(x[:, 0]) - 1000) < 200 and abs(np.median(x[:, 1]) + 5) < 0.5


def test_demo_quick(tmp_path, capsys):
    """The quick demo's promise: a good vanilla model (>= 90 % of samples near a mode), the headline figure, and the
    report as Markdown and self-contained HTML."""
    code, out, err = run(["demo", "--quick", "--out", tmp_path / "demo", "--quiet"], capsys)
    assert code == 0, err
    report = (tmp_path / "demo/report.md").read_text()
    for name in ("oracle", *METHODS):
        assert f"| {name} |" in report and f"| {name} | rbf@0.1 |" in report
    assert "chain-rule bound" in report  # the corrected propagation check, with its verdict
    verdict = re.search(r"\*\*Verdict:\*\* (.*)\n", report).group(1)
    assert verdict.endswith("in this run (one training seed; `diffprop reproduce reduce` compares the methods over "
                            "3 seeds).")
    for name in set(METHODS) - {"ddpm"}:  # each method's line against ddpm, in numbers
        assert re.search(rf"- `{name}`: exact E_1\^cumu [-\d.e]+ \+- [\d.e-]+ nats against ddpm's", report)
    summary = json.loads((tmp_path / "demo/metrics.json").read_text())
    metrics = summary["metrics"]
    assert metrics["ddpm"]["high_quality_fraction"] >= 0.9, metrics["ddpm"]
    assert metrics["oracle"]["high_quality_fraction"] > 0.95 and metrics["oracle"]["mode_coverage"] == 1.0
    assert summary["configs"]["epdm"]["objective"]["regularizers"] == ["epdm"]
    assert summary["configs"]["ddpm"]["objective"]["regularizers"] == []
    assert summary["verdict"] in verdict
    # every fine-tune starts from the base run, and the regularized ones really trained with their terms
    assert all(json.loads((tmp_path / f"demo/{m}/init.json").read_text())["init_from"].endswith("base")
               for m in METHODS)
    for name, (extra, _) in METHODS.items():
        log = [json.loads(line) for line in (tmp_path / f"demo/{name}/log.jsonl").read_text().splitlines()]
        for term in extra.get("objective", {}).get("regularizers", []):
            assert all(any(k.startswith(f"{term}.") for k in rec) for rec in log), (name, log[0].keys())
        for f in (f"{name}/loss.png", f"measure/{name}/summary.json"):
            assert (tmp_path / "demo" / f).is_file(), f
    for f in ("samples.png", "propagation.png", "base/loss.png"):
        assert (tmp_path / "demo" / f).is_file(), f
    html = (tmp_path / "demo/report.html").read_text()
    assert html.count('src="data:image/png;base64,') == report.count("![")  # every figure embedded
    # the trained model's exact error leaves the estimator's noise near t = 1, the oracle's does not
    ddpm, oracle = summary["propagation"]["ddpm"]["exact"], summary["propagation"]["oracle"]["exact"]
    assert ddpm["E_1"] > 3 * ddpm["E_1_se"], ddpm
    assert abs(oracle["E_1"]) < 3 * oracle["E_1_se"] + 0.02, oracle


@pytest.mark.parametrize("argv, message", [
    (["train", "{tmp}/nope.toml"], "nope.toml: config file not found"),
    (["train", "{cfg}", "--set", "diffusion.T=0"], "diffusion.T must be >= 1, got 0"),
    (["train", "{cfg}", "--set", "diffusion.beta_end=1.2"], "diffusion.beta_end must be < 1.0, got 1.2"),
    (["train", "{cfg}", "--set", "data.name=imagenet"], "data.name = 'imagenet' is not a dataset"),
    (["train", "{cfg}", "--set", "train.stepz=3"], "unknown key 'train.stepz' in section [train]"),
    (["train", "{cfg}", "--set", "sample.sampler=dpm"], "sample.sampler = 'dpm' is not allowed; allowed: ddpm, ddim, em"),
    (["train", "{cfg}", "--set", "data.name=csv:{tmp}/missing.csv"], "missing.csv"),
    (["sample", "--oracle", "gmm-grid", "--steps", "-3"], "argument --steps: must be >= 1, got -3"),
    (["sample", "--oracle", "gmm-grid", "--sampler", "dpm"], "argument --sampler: invalid choice: 'dpm'"),
    (["sample", "--oracle", "gmm-grid", "--steps", "5000"], "steps must be in 1..1000"),
    (["sample", "--oracle", "digits"], "the oracle needs a Gaussian-mixture dataset"),
    (["sample", "--oracle", "nonsense"], "nonsense"),
    (["sample", "{tmp}"], "not a diffprop run folder (no config.toml)"),
    (["sample"], "give exactly one model: a run folder, --oracle DATASET or --diffusers DIR"),
    (["sample", "--oracle", "gmm-grid", "--diffusers", "{tmp}"], "give exactly one model"),
    (["sample", "--oracle", "gmm-grid", "--eta", "0.5"], "--eta and --clipped-eps apply to --sampler ddim, not ddpm"),
    (["sample", "--oracle", "gmm-grid", "--sampler", "ddpm", "--clipped-eps"], "apply to --sampler ddim, not ddpm"),
    (["sample", "--oracle", "gmm-grid", "--sampler", "ddim", "--clipped-eps"],
     "--clipped-eps needs x0 clipping, and this model samples without it"),
    (["measure", "--diffusers", "{tmp}"], "--diffusers needs --dataset"),
    (["measure", "--diffusers", "{tmp}", "--dataset", "digits"], "no .safetensors weights"),
    (["measure", "--oracle", "gmm-grid", "--kernels", "rbf,gauss"], "unknown kernel 'gauss'"),
    (["measure", "--oracle", "gmm-grid", "--kernels", "rbf@-1"], "bandwidth must be > 0"),
    (["measure", "--oracle", "gmm-grid", "--grid", "0,10,2000"], "timesteps must lie in 1..1000 (the model's T), got [0, 2000]"),
    (["measure", "--oracle", "gmm-grid", "--grid", "ten"], "expected a number of points or a comma list"),
    (["measure", "--oracle", "gmm-grid", "--dataset", "digits"], "data of shape (1, 8, 8) but the model expects (2,)"),
    (["measure", "{tmp}"], "not a diffprop run folder"),
    (["train", "{cfg}", "--set", "train.mixed_precision=fp16", "--set", "train.device=cpu"], "'fp16' needs a GPU"),
    (["evaluate", "{tmp}/none.npz", "--dataset", "gmm-grid"], "none.npz: samples file not found"),
    (["evaluate", "{cfg}", "--dataset", "gmm-grid"], "cannot read samples"),
    (["bench", "nothing"], "unknown benchmark 'nothing'"),
])
def test_bad_input_gives_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("[train]\nsteps = 1\n")
    monkeypatch.chdir(tmp_path)
    try:
        code, _, err = run([a.format(tmp=tmp_path, cfg=cfg) for a in argv], capsys)
    except SystemExit as e:  # argparse's usage errors leave through exit()
        code, err = e.code, capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("diffprop: error:") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err, err


@pytest.mark.parametrize("argv, message", [
    (["sample", "--oracle", "gmm-grid", "--steps", "-3"], "argument --steps: must be >= 1, got -3"),
    (["train", "ok.toml", "--set", "diffusion.T=0"], "diffusion.T must be >= 1, got 0"),
    (["evaluate", "none.npz", "--dataset", "gmm-grid"], "none.npz: samples file not found"),
])
def test_bad_input_from_a_real_process_has_no_traceback(argv, message, tmp_path):
    (tmp_path / "ok.toml").write_text("[train]\nsteps = 1\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "diffprop.cli", *argv], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("diffprop: error:") and p.stderr.count("\n") == 1, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr


def test_train_refuses_to_overwrite_a_run(trained, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    code, _, err = run(["train", cfg, "--out", trained, "--quiet", *_sets(TINY)], capsys)
    assert code == 2 and "already holds a run; use --resume latest" in err


def test_measure_a_trained_run(trained, capsys):
    code, out, err = run(["measure", trained, "--num", 64, "--grid", "1,50,100", "--kernels", "rbf,imq",
                          "--permutations", 10, "--quiet"], capsys)
    assert code == 0, err
    rows = (trained / "measure" / "propagation.csv").read_text().splitlines()
    assert rows[0].startswith("t,kernel,cumulative,modular,amplification") and "cumulative_kl" in rows[0]
    assert len(rows) == 1 + 2 * 3  # header + kernels x grid
    assert (trained / "measure" / "reference.csv").is_file()  # the exact oracle's curve, for gmm-grid data
    assert "points above the floor" in out and "exact KL: E_1^cumu = " in out and "Thm 3.1" in out
