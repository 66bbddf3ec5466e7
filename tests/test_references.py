"""Paper citations: docs/references.md defines the three-digit codes (000-004) that docstrings use, and user-facing
text (--help, README, docs, report texts, config docs, error messages) cites by author and year instead."""
import ast
import re
from pathlib import Path

import pytest

from diffprop.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
CODES = ("000", "001", "002", "003", "004")
# a bare paper code: not part of a longer number (1000, 1,000, 0.003, 2e-003) or a name (step_000)
CODE = re.compile(r"(?<![\w.,\-])00[0-4](?![\w]|\.\d)")


def codes_in(text: str) -> list[str]:
    return [text[max(0, m.start() - 30):m.end() + 30].replace("\n", " ") for m in CODE.finditer(text)]


def test_pattern_flags_codes_only():
    assert codes_in("see 000 Eq. 13, 002's loss (003) and 000.") and len(codes_in("000 and 004")) == 2
    assert not codes_in("T = 1000, 1,000 steps, rho = 0.003, std 0.0007, step_000, 2e-003, v1.004, x1000")


def _parsers():
    p = build_parser()
    yield "diffprop", p
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    yield from ((f"diffprop {name}", s) for name, s in sub.choices.items())


@pytest.mark.parametrize("name,parser", list(_parsers()), ids=lambda x: x if isinstance(x, str) else "")
def test_help_cites_no_code(name, parser):
    assert codes_in(parser.format_help()) == [], name


def test_help_points_to_references():
    assert "docs/references.md" in build_parser().format_help()


@pytest.mark.parametrize("path", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                                                      if p.name != "references.md")])
def test_docs_cite_no_code(path):
    assert codes_in((ROOT / path).read_text()) == [], path


def _modules():
    for p in sorted((ROOT / "src" / "diffprop").rglob("*.py")):
        yield pytest.param(p, id=str(p.relative_to(ROOT / "src" / "diffprop")))


@pytest.mark.parametrize("path", list(_modules()))
def test_user_texts_cite_no_code(path):
    """Every string literal other than a docstring (help, config docs, CLAIMs, report and plot texts, errors)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = [f"line {n.lineno}: {c}" for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
             for c in codes_in(n.value)]
    assert found == [], found


def test_references_define_every_code():
    text = (ROOT / "docs" / "references.md").read_text()
    for code in CODES:
        assert re.search(rf"^\| {code} \| [^|]*\(20\d\d\)", text, re.M), f"{code}: no row in the code table"
        assert f"**[{code}]**" in text, f"{code}: no full citation"
    assert "arXiv:2308.05021" in text and "arXiv:2309.14068" in text  # the two ICLR 2024 papers
    assert "docs/references.md" in (ROOT / "README.md").read_text()


def test_docstrings_use_defined_codes_only():
    """A docstring citing "005" or "010" would point nowhere."""
    bad = [f"{p.name}: {m.group()}" for p in (ROOT / "src" / "diffprop").rglob("*.py")
           for m in re.finditer(r"(?<![\w.,\-])0(?:0[5-9]|[1-9]\d)(?= (?:Eq|Sec|Fig|Table|Thm|Prop|Def|Alg|App)\b)",
                                p.read_text())]
    assert bad == []


def test_no_file_cites_design_md():
    hits = [str(p.relative_to(ROOT)) for d in ("src", "tests", "docs", "configs") for p in (ROOT / d).rglob("*")
            if p.is_file() and p.suffix in (".py", ".md", ".toml") and p != Path(__file__).resolve()
            and "DESIGN.md" in p.read_text()]
    hits += [n for n in ("README.md", "Makefile", "pyproject.toml") if "DESIGN.md" in (ROOT / n).read_text()]
    assert hits == []
