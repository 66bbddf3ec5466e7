"""``diffprop report DIR...``: reproduction folders (``report.md``, tables, figures) gathered into one Markdown page,
with a summary table of the verdicts, and a self-contained HTML page with the same content (images embedded).

A folder may come from anyone, so its report is untrusted input: a figure must be an image file (by name and by
its first bytes) inside its folder, symbolic links resolved, or the folder is refused; the HTML page embeds nothing
else, and :func:`~diffprop.mdhtml.to_html` escapes the rest (no raw HTML, only http(s) and relative links)."""
from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from .errors import DiffpropError
from .mdhtml import anchor, to_html

_TARGET = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
         ".gif": (b"GIF87a", b"GIF89a")}


def _relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:|/|#", target, re.I)


def image_inside(path: Path, roots: list[Path]) -> bool:
    """Whether ``path`` is an image file (PNG, JPEG, GIF by suffix and first bytes) inside one of ``roots``, after
    resolving symbolic links (``fig.png -> /etc/passwd`` is not)."""
    real = path.resolve()
    if not (real.is_file() and any(real.is_relative_to(r.resolve()) for r in roots)):
        return False
    with open(real, "rb") as f:
        head = f.read(8)
    return any(head.startswith(m) for m in MAGIC.get(real.suffix.lower(), ()))


def _title(text: str) -> str | None:
    """A report's title: its first ``# `` heading."""
    return next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), None)


def _md_text(text: str) -> str:
    """``text`` as literal Markdown inline text (a title or verdict from a report, put into the summary table)."""
    return re.sub(r"([\\`*_\[\]<>|!#&])", r"\\\1", " ".join(text.split()))


def read_reproduction(folder: Path, page_dir: Path) -> dict:
    """One folder's report (a reproduction's or the demo's): its title, verdict ("-" where it states none) and
    Markdown with headings one level down and relative links rewritten against ``page_dir``; every linked image
    must exist."""
    if not folder.is_dir():
        raise DiffpropError(f"{folder}: no such folder")
    path = folder / "report.md"
    if not path.is_file():
        raise DiffpropError(f"{folder}: not a report folder (no report.md; run `diffprop reproduce` or `diffprop "
                            f"demo` first)")
    text = path.read_text(encoding="utf-8", errors="replace")
    title = _title(text)
    verdict = next((ln.split("**Reproduces?**", 1)[1].strip() for ln in text.splitlines()
                    if ln.startswith("**Reproduces?**")), None)
    if title is None:
        raise DiffpropError(f"{path}: not a diffprop report (needs a '# title' line)")
    verdict = "-" if verdict is None else verdict

    def rebase(m: re.Match) -> str:
        target = m.group(2)
        if not _relative(target):
            return m.group(0)
        if m.group(1).startswith("!") and not (folder / target).is_file():
            raise DiffpropError(f"{path}: links the figure {target}, which is missing")
        if m.group(1).startswith("!") and not image_inside(folder / target, [folder]):
            raise DiffpropError(f"{path}: links the figure {target}, which is not a PNG, JPEG or GIF file inside "
                                f"{folder}; a report shows only its own figures")
        return m.group(1) + Path(os.path.relpath(folder / target, page_dir)).as_posix() + m.group(3)

    body = re.sub(r"^(#+) ", r"#\1 ", _TARGET.sub(rebase, text), flags=re.M)
    return {"folder": folder, "title": title, "verdict": verdict, "body": body}


def gather(folders: list[Path], page_dir: Path) -> str:
    """The Markdown page: a summary table of the verdicts, then every report."""
    reports = [read_reproduction(f, page_dir) for f in folders]
    seen = {"diffprop-reproductions": 1}  # the page's own heading comes first
    rows = "".join(f"| [{_md_text(r['title'])}](#{anchor(r['title'], seen)}) | {_md_text(r['verdict'])} | "
                   f"{_md_text(Path(os.path.relpath(r['folder'], page_dir)).as_posix())} |\n" for r in reports)
    return ("# diffprop reproductions\n\n| experiment | reproduces? | folder |\n|---|---|---|\n" + rows + "\n" +
            "\n".join(r["body"].rstrip() + "\n" for r in reports))


def _data_uri(page_dir: Path, roots: list[Path]):
    """The HTML page's images: a vetted image file inside the gathered ``roots`` as a data URI, else None (its alt
    text is shown; a remote image is not fetched either)."""
    def image(src: str) -> str | None:
        path = page_dir / src
        if not _relative(src) or not image_inside(path, roots):
            return None
        return f"data:{MIME[path.resolve().suffix.lower()]};base64," + base64.b64encode(path.read_bytes()).decode()
    return image


def write_html(report: Path) -> Path:
    """``report`` (a ``report.md``) as a self-contained HTML page beside it, showing only images inside its folder."""
    text = report.read_text(encoding="utf-8")
    title = _title(text) or "diffprop report"
    html_path = report.with_suffix(".html")
    html_path.write_text(to_html(text, title, _data_uri(report.parent, [report.parent])), encoding="utf-8")
    return html_path


def write_report_pages(folders: list[Path], out: Path) -> tuple[Path, Path]:
    """Write ``out`` (Markdown) and ``out`` with ``.html`` (self-contained) from reproduction ``folders``."""
    if out.suffix != ".md":
        raise DiffpropError(f"--out {out}: give a .md file (the HTML page goes beside it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    md = gather(folders, out.parent)
    out.write_text(md, encoding="utf-8")
    html_path = out.with_suffix(".html")
    html_path.write_text(to_html(md, "diffprop reproductions", _data_uri(out.parent, folders)), encoding="utf-8")
    return out, html_path
