"""Reproductions run end to end at tiny scale and write their table, figure and report."""
import csv

from diffprop.cli import main


def test_reproduce_list_and_unknown(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "epdm-quick" in capsys.readouterr().out
    assert main(["reproduce", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "epdm-quick", "--scale", "huge"]) == 2
    assert "scale 'huge' is not available; allowed: tiny, small" in capsys.readouterr().err


def test_epdm_quick_tiny(tmp_path, capsys):
    assert main(["reproduce", "epdm-quick", "--scale", "tiny", "--out", str(tmp_path), "--quiet"]) == 0, \
        capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["variant"] for r in rows] == ["vanilla", "epdm-paper", "epdm-official"]
    assert all(int(float(r["steps"])) > 0 for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "**Claim.**" in report and "**Reproduces?**" in report and "propagation.png" in report
    assert (tmp_path / "propagation.png").is_file() and len(list((tmp_path / "runs").iterdir())) == 3
