"""Reproductions run end to end at tiny scale through the CLI and write their table, figures and report; `report`
gathers them into Markdown and HTML; bad input fails in one line."""
import csv
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diffprop.cli import main
from diffprop.experiments import EXPERIMENTS, common, epdm_table1
from diffprop.experiments.tables import compare, standing

ONE_SEED = ["epdm-fig2", "epdm-fig3", "epdm-table1", "epdm-fig4", "propagation-theorem"]


def _reproduce(capsys, *args) -> None:
    assert main(["reproduce", *args, "--quiet"]) == 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every new experiment once at tiny scale (table2 with two seeds: the t-test path): name -> folder."""
    root = tmp_path_factory.mktemp("reproduce")
    for name in ONE_SEED:
        assert main(["reproduce", name, "--scale", "tiny", "--out", str(root / name), "--quiet"]) == 0
    assert main(["reproduce", "epdm-table2", "--scale", "tiny", "--seeds", "2", "--out", str(root / "epdm-table2"),
                 "--quiet"]) == 0
    return {name: root / name for name in [*ONE_SEED, "epdm-table2"]}


def _table(folder):
    return list(csv.DictReader((folder / "table.csv").open()))


def _report(folder) -> str:
    text = (folder / "report.md").read_text()
    assert text.count("**Claim.**") == 1 and "**Setup.**" in text and "**Measured.**" in text
    verdict = re.search(r"^\*\*Reproduces\?\*\* (\w+)", text, re.M)
    assert verdict and verdict.group(1) in ("yes", "no", "partly", "undecided"), text
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (folder / image).is_file(), image
    return text


def _finite(rows, columns):
    for r in rows:
        for c in columns:
            assert math.isfinite(float(r[c])), (r["variant"] if "variant" in r else r, c)


def test_list_shows_every_experiment_with_claim_and_times(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name, mod in EXPERIMENTS.items():
        assert name in out and mod.CLAIM in out
    assert "tiny ~" in out and "small ~" in out and "V100-hours on CIFAR-10" in out


def test_unknown_experiment_and_scale(capsys):
    assert main(["reproduce", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "epdm-quick", "--scale", "huge"]) == 2
    assert "scale 'huge' is not available; allowed: tiny, small" in capsys.readouterr().err
    assert main(["reproduce", "propagation-theorem", "--scale", "paper"]) == 2  # exact errors: mixture data only
    assert "allowed: tiny, small" in capsys.readouterr().err


def test_table1_rows_per_variant_and_verdict(tiny):
    rows = _table(tiny["epdm-table1"])
    assert [r["variant"] for r in rows] == list(epdm_table1.VARIANTS)
    assert all(r["seeds"] == "0" and int(float(r["steps"])) == common.SCALES["tiny"].steps for r in rows)
    _finite(rows, ["ms_per_step", "kl_estimate", "high_quality_fraction", "mode_coverage"])
    assert all(0 <= float(r["high_quality_fraction"]) <= 1 for r in rows)
    text = _report(tiny["epdm-table1"])
    assert "**Reproduces?** undecided" in text and "no t-test (one seed)" in text and "samples.png" in text
    records = json.loads((tiny["epdm-table1"] / "runs.json").read_text())
    own = [r for r in records if not r.get("shared")]
    assert len(list((tiny["epdm-table1"] / "runs").iterdir())) == len(own)
    # ddpm (and ddpm+epdm) of the same tiny config were trained by epdm-fig2 / epdm-fig3 beside it and reused
    assert {r["variant"] for r in records if r.get("shared")} == {"ddpm", "ddpm+epdm"}
    assert all(Path(r["dir"]).parent.parent.parent == tiny["epdm-table1"].parent for r in records)


def test_table2_two_seeds_give_spreads_and_t_tests(tiny):
    rows = _table(tiny["epdm-table2"])
    assert [r["variant"] for r in rows] == ["epdm", "uniform w_t", "random init, L=5", "random init, L=7"]
    assert all(r["seeds"] == "0 1" for r in rows)
    _finite(rows, ["kl_estimate", "kl_estimate_std"])
    text = _report(tiny["epdm-table2"])
    p_values = [float(p) for p in re.findall(r"Welch t-test p = ([0-9.e-]+)", text)]
    assert len(p_values) == 3 and all(0 <= p <= 1 for p in p_values)
    assert re.search(r"\*\*Reproduces\?\*\* (yes|no|partly): \d of the 3 orderings", text)
    assert "±" in (tiny["epdm-table2"] / "table.md").read_text()


def test_fig2_and_fig3_curves_per_kernel(tiny):
    kernels = ["imq", "imq@0.1", "laplace", "laplace@0.1", "rbf", "rbf@0.1"]  # sorted, as measured
    for name, variants in (("epdm-fig2", ["ddpm"]), ("epdm-fig3", ["ddpm", "ddpm+epdm", "ddpm+epdm (rbf@0.1)"])):
        rows = _table(tiny[name])
        assert [r["curve"] for r in rows] == [f"{v} / {k}" for v in variants for k in kernels]
        _finite(rows, ["t=1", "t=100", "floor(t=1)", "trend"])
        assert all(-1 <= float(r["trend"]) <= 1 and float(r["floor(t=1)"]) > 0 for r in rows)
        text = _report(tiny[name])
        assert "propagation.png" in text and "propagation-h0.1.png" in text
    assert re.search(r"under \d of 6 kernels", _report(tiny["epdm-fig2"]))


def test_fig4_quality_and_time_per_L(tiny):
    rows = _table(tiny["epdm-fig4"])
    assert [r["variant"] for r in rows] == ["L=1", "L=3", "L=5", "L=7", "L=10"]
    _finite(rows, ["ms_per_step (side by side)", "kl_estimate"])
    assert all(float(r["ms_per_step (side by side)"]) > 0 for r in rows)
    assert "tradeoff.png" in _report(tiny["epdm-fig4"])


def test_propagation_theorem_checks(tiny):
    folder = tiny["propagation-theorem"]
    rows = _table(folder)
    assert [r["model"] for r in rows] == ["ddpm", "oracle, eps-bias 0.1", "oracle, eps-scale 1.1"]
    for r in rows:
        assert all(0 <= float(r[c]) <= 1 for c in ("bound held", "Thm 3.1 failed"))
    _finite(rows, ["E_1^cumu", "noise", "bound"])
    mmd = list(csv.DictReader((folder / "prop-4-1" / "table.csv").open()))
    assert len(mmd) == 3 * 6
    assert all(0 <= float(r[c]) <= 1 for r in mmd for c in ("Prop. 4.1 lower", "Prop. 4.1 upper"))
    report = _report(folder)
    assert "theorem.png" in report and "**(a) Closed form.**" in report
    assert re.search(r"Reproduces\?\*\* (no|partly): Thm 3.1 is false \(closed form: the slack is negative at every t",
                     report)
    assert (folder / "measure" / "oracle-eps-bias0.1" / "propagation.csv").is_file()


def test_rerun_reuses_finished_runs_and_is_deterministic(tiny, capsys, tmp_path):
    folder = tmp_path / "moved"  # a reproduction folder still works after a move
    shutil.copytree(tiny["epdm-fig2"], folder)
    before, mtime = (folder / "table.csv").read_text(), (folder / "runs" / "ddpm-seed0" / "train.json").stat().st_mtime
    shutil.rmtree(tiny["epdm-fig2"] / "runs")
    _reproduce(capsys, "epdm-fig2", "--scale", "tiny", "--out", str(folder))
    assert (folder / "runs" / "ddpm-seed0" / "train.json").stat().st_mtime == mtime  # not trained again
    assert (folder / "table.csv").read_text() == before
    shutil.copytree(folder / "runs", tiny["epdm-fig2"] / "runs")


def test_unfinished_run_resumes_from_its_checkpoint(tmp_path):
    scale = replace(common.SCALES["tiny"], steps=20, train=("train.batch_size=32", "train.checkpoint_every=10",
                                                                    "data.num_samples=256"))
    study = common.Study("t", tmp_path, "tiny", scale, 1, False)
    run_dir = tmp_path / "runs" / "v-seed0"
    study.train("v", [], 0)
    (run_dir / "train.json").unlink()  # as if stopped after the checkpoint at step 10
    shutil.rmtree(run_dir / "checkpoints" / "step_00000020")
    (run_dir / "marker").touch()
    record = study.train("v", [], 0)
    assert record["steps"] == 20 and (run_dir / "marker").is_file()  # resumed in place, not retrained
    study.train("v", ["train.lr=1e-4"], 0)  # another config: trained afresh
    assert not (run_dir / "marker").exists()
    # a run made before an option existed (its config.toml lacks the key) is not one made with today's default
    toml = run_dir / "config.toml"
    toml.write_text("".join(line for line in toml.read_text().splitlines(True) if not line.startswith("t_dist")))
    (run_dir / "marker").touch()
    assert study.train("v", ["train.lr=1e-4"], 0)["steps"] == 20 and not (run_dir / "marker").exists()


def test_epdm_quick_tiny(tmp_path, capsys):
    _reproduce(capsys, "epdm-quick", "--scale", "tiny", "--out", str(tmp_path))
    rows = _table(tmp_path)
    assert [r["variant"] for r in rows] == ["vanilla", "epdm-paper", "epdm-official"]
    assert all(int(float(r["steps"])) > 0 for r in rows)
    assert "propagation.png" in _report(tmp_path)
    assert (tmp_path / "propagation.png").is_file() and len(list((tmp_path / "runs").iterdir())) == 3


def test_image_data_get_the_unet_and_fd(tmp_path, capsys, monkeypatch):
    """--data digits: the tiny U-Net, FD on the digits classifier's features, image grids of samples."""
    scale = common.Scale(None, T=10, steps=3, seeds=1, samples=8, num=8, grid=(1, 10), permutations=5,
                         train=("train.batch_size=8",), mlp=(), unet="tiny")
    monkeypatch.setitem(epdm_table1.SCALES, "tiny", scale)
    _reproduce(capsys, "epdm-table1", "--scale", "tiny", "--data", "digits", "--out", str(tmp_path))
    rows = _table(tmp_path)
    _finite(rows, ["fd", "kid"])
    text = _report(tmp_path)
    assert "(fd, lower is better)" in text and "U-Net preset `tiny`" in text
    assert all((tmp_path / f"samples-{common.slug(v)}.png").is_file() for v in epdm_table1.VARIANTS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_paper_scale_prints_estimate_and_refuses_cpu(capsys, tmp_path):
    folder = tmp_path / "paper"
    assert main(["reproduce", "epdm-table1", "--scale", "paper", "--data", "digits", "--out", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert re.search(r"paper-scale estimate: ~[\d,]+ V100 GPU-hours \(5 variants x 3 seeds", out)
    assert err.count("\n") == 1 and "needs a CUDA GPU (estimate above); --force runs it here anyway" in err
    assert not folder.exists()  # nothing written before the check


def test_reproduce_bad_options(capsys, tmp_path):
    assert main(["reproduce", "epdm-fig3", "--scale", "paper", "--out", str(tmp_path / "p")]) == 2
    assert "trains on the paper's data: give it with --data" in capsys.readouterr().err
    assert main(["reproduce", "propagation-theorem", "--scale", "tiny", "--data", "moons", "--out",
                 str(tmp_path)]) == 2
    assert "needs Gaussian-mixture data (gmm-grid, gmm-ring), got moons" in capsys.readouterr().err
    assert main(["reproduce", "epdm-table1", "--scale", "tiny", "--data", f"cifar10:{tmp_path}/none", "--out",
                 str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    assert main(["reproduce", "epdm-table1", "--scale", "tiny", "--data", f"image-folder:{tmp_path}", "--out",
                 str(tmp_path / "i")]) == 2
    assert "FID on image-folder:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["smd-grid", "--data", "gmm-ring"], "smd-grid does not take --data (it has its own fixed data and scale)"),
    (["smd-grid", "--force", "--inception-weights", "w.pth"], "smd-grid does not take --inception-weights, --force"),
    (["propagation-theorem", "--scale", "tiny", "--inception-weights", "w.pth"],
     "--inception-weights is used only for FID on image data other than digits"),
    (["epdm-table1", "--scale", "tiny", "--data", "digits", "--inception-weights", "w.pth"],
     "digits does not use it"),
    (["epdm-table1", "--scale", "tiny", "--force"], "--force only lets a paper-scale run start without a GPU"),
])
def test_reproduce_refuses_options_it_would_ignore(argv, message, capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["reproduce", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_report_gathers_markdown_and_html(tiny, tmp_path, capsys):
    out = tmp_path / "site" / "all.md"
    folders = [str(tiny["epdm-fig2"]), str(tiny["epdm-table1"]), str(tiny["epdm-fig2"])]
    assert main(["report", *folders, "--out", str(out)]) == 0
    md = out.read_text()
    assert md.startswith("# diffprop reproductions") and "| experiment | reproduces? | folder |" in md
    assert "## epdm-fig2 (tiny, gmm-ring)" in md and "## epdm-table1 (tiny, gmm-ring)" in md
    assert md.count("**Claim.**") == 3 and "(#epdm-fig2-tiny-gmm-ring-1)" in md  # a repeated title: GitHub's ids
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images and all((out.parent / src).is_file() for src in images)  # rebased onto the page's folder
    html = out.with_suffix(".html").read_text()
    assert html.count("<img") == len(images) and html.count('src="data:image/png;base64,') == len(images)
    assert "<table>" in html and "<strong>Reproduces?</strong>" in html and "<h1" in html and "<li>" in html
    for a in ("epdm-fig2-tiny-gmm-ring", "epdm-fig2-tiny-gmm-ring-1", "epdm-table1-tiny-gmm-ring"):
        assert f'id="{a}"' in html and f'href="#{a}"' in html


def test_report_errors(tiny, tmp_path, capsys):
    cases = [([str(tmp_path / "missing")], "no such folder"),
             ([str(tmp_path)], "not a report folder (no report.md"),
             ([str(tiny["epdm-fig2"]), "--out", str(tmp_path / "x.html")], "give a .md file")]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "report.md").write_text("# t\n\n![f](gone.png)\n\n**Reproduces?** yes\n")
    cases.append(([str(broken)], "links the figure gone.png, which is missing"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "report.md").write_text("notes\n")
    cases.append(([str(tmp_path / "plain")], "not a diffprop report (needs a '# title' line)"))
    for args, message in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "r.md")]
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_markdown_to_html_escapes_and_converts():
    from diffprop.mdhtml import to_html

    page = to_html("# A <b>\n\nx < y, **bold** `a<b`, [l](u.md)\n\n- one\n- two\n\n| h | k |\n|---|---|\n| 1 | 2 |\n\n"
                   "![cap](f.png)\n", "T", image=lambda src: "IMG:" + src)
    assert '<h1 id="a-b">A &lt;b&gt;</h1>' in page and "<p>x &lt; y, <strong>bold</strong> <code>a&lt;b</code>, " \
        '<a href="u.md">l</a></p>' in page
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in page
    assert "<tr>\n<th>h</th>\n<th>k</th>\n</tr>" in page and "<tr>\n<td>1</td>\n<td>2</td>\n</tr>" in page
    assert '<img src="IMG:f.png" alt="cap" />' in page and "<title>T</title>" in page


def test_compare_and_standing_read_direction_and_significance():
    groups = {"ours": {"m": np.array([1.0, 1.1, 0.9])}, "low": {"m": np.array([0.1, 0.2, 0.15])},
              "high": {"m": np.array([5.0, 5.2, 4.9])}, "same": {"m": np.array([0.8, 1.3, 1.0])}}
    tests = {t["other"]: t for t in compare(groups, "m", "ours", ["low", "high", "same"], alpha=0.05)}
    assert [standing(tests[v], 0.05) for v in ("low", "high", "same")] == ["worse than", "better than",
                                                                                "no different from"]
    assert tests["high"]["significant"] and not tests["low"]["significant"] and not tests["low"]["better"]
    higher = compare(groups, "m", "ours", ["low"], lower_better=False, alpha=0.05)[0]
    assert higher["better"] and standing(higher, 0.05) == "better than"
