"""Markdown as a standalone HTML page, for reports built from files a user hands over, so treated as untrusted:
markdown-it-py (CommonMark and pipe tables) with raw HTML off, so any ``<tag>`` in the text stays text; link
targets only http(s) or relative (no ``javascript:``, ``data:``, ``file:``; markdown-it escapes every attribute);
an image only where the caller's ``image`` function gives its ``src`` (e.g. a data URI of a file it vetted),
else its alt text."""
from __future__ import annotations

import html
import re
from typing import Callable
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.token import Token

_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):", re.I)


def safe_link(url: str) -> bool:
    """An http(s) URL or a relative one (a path or ``#anchor``; not ``//host``, which takes the page's scheme)."""
    m = _SCHEME.match(url)
    return m.group(1).lower() in ("http", "https") if m else not url.startswith("//")


def anchor(title: str, seen: dict | None = None) -> str:
    """The id of a heading (the target of a ``[..](#id)`` link to it); with ``seen`` (id -> count so far) a repeated
    id gets ``-1``, ``-2``, ... as on GitHub."""
    a = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    if seen is None:
        return a
    n = seen.get(a, 0)
    seen[a] = n + 1
    return f"{a}-{n}" if n else a


def to_html(markdown: str, title: str, image: Callable[[str], str | None] = lambda src: src) -> str:
    """A standalone HTML page of ``markdown``: headings get :func:`anchor` ids; ``image(src)`` (``src`` as written,
    percent-decoded) gives each image's ``src``, or None to show its alt text instead."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.validateLink = safe_link
    tokens, seen = md.parse(markdown), {}
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            tok.attrSet("id", anchor(tokens[i + 1].content, seen))
        for j, child in enumerate(tok.children or []):
            if child.type == "image":
                src = image(unquote(child.attrGet("src") or ""))
                if src is None:
                    tok.children[j] = Token("text", "", 0, content=child.content)
                else:
                    child.attrSet("src", src)
    body = md.renderer.render(tokens, md.options, {})
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;padding:.2em .5em}"
             "th{background:#eee}img{max-width:100%}code{background:#f4f4f4}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + body + "</body></html>\n")
