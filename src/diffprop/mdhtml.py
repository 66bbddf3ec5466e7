"""The little Markdown diffprop writes (headings, paragraphs, bullets, pipe tables, images, links, bold, code) as
HTML, so that a report needs no Markdown package. Anything else passes through as escaped text."""
from __future__ import annotations

import html
import re
from typing import Callable

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: str, image: Callable[[str], str]) -> str:
    """Escape ``text`` and turn code spans, images, links and bold into tags (nothing inside code spans)."""
    out = []
    for part in re.split(r"(`[^`]+`)", text):
        if len(part) > 1 and part[0] == part[-1] == "`":
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)
        s = _IMAGE.sub(lambda m: f'<img alt="{m.group(1).replace(chr(34), "&quot;")}" '
                                 f'src="{image(html.unescape(m.group(2)))}">', s)
        s = _LINK.sub(r'<a href="\2">\1</a>', s)
        out.append(_BOLD.sub(r"<strong>\1</strong>", s))
    return "".join(out)


def anchor(title: str, seen: dict | None = None) -> str:
    """The id of a heading (the target of a ``[..](#id)`` link to it); with ``seen`` (id -> count so far) a repeated
    id gets ``-1``, ``-2``, ... as on GitHub."""
    a = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    if seen is None:
        return a
    n = seen.get(a, 0)
    seen[a] = n + 1
    return f"{a}-{n}" if n else a


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def to_html(markdown: str, title: str, image: Callable[[str], str] = lambda src: src) -> str:
    """A standalone HTML page of ``markdown``; ``image(src)`` gives each image's ``src`` (e.g. a data URI)."""
    lines, body, i, seen = markdown.splitlines(), [], 0, {}
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            n = len(m.group(1))
            body.append(f'<h{n} id="{anchor(m.group(2), seen)}">{inline(m.group(2), image)}</h{n}>')
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            body.append("<table>\n<tr>" + "".join(f"<th>{inline(c, image)}</th>" for c in head) + "</tr>\n" +
                        "".join("<tr>" + "".join(f"<td>{inline(c, image)}</td>" for c in r) + "</tr>\n" for r in rest)
                        + "</table>")
        elif re.match(r"\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                items.append(f"<li>{inline(lines[i].lstrip()[2:], image)}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6}\s|\s*\||\s*[-*] )", lines[i]):
                para.append(lines[i].strip())
                i += 1
            body.append(f"<p>{inline(' '.join(para), image)}</p>")
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;padding:.2em .5em}"
             "th{background:#eee}img{max-width:100%}code{background:#f4f4f4}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
