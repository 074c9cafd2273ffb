"""The report's Markdown as one self-contained HTML page: images embedded as base64, so the page reads whole in
MLflow's artifact viewer, which shows an HTML artifact but neither renders Markdown nor follows relative images.

It converts only what the report writes (headings, paragraphs, tables, quotes, lists, images, links, bold,
code), so it needs no Markdown library.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
    "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
    "th{background:#f3f3f3}blockquote{border-left:4px solid #d33;margin:1rem 0;padding:.25rem 1rem;background:#fff4f4}"
    "code{background:#f3f3f3;padding:0 .2rem}img{max-width:100%}"
)
IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def inline(text: str) -> str:
    """Escape, then code spans, bold and links."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)


def table_row(values: list[str], right: list[bool], tag: str) -> str:
    aligned = (' style="text-align:right"' if r else "" for r in right)
    return "<tr>" + "".join(f"<{tag}{a}>{inline(v)}</{tag}>" for v, a in zip(values, aligned, strict=False)) + "</tr>"


def table_html(lines: list[str]) -> str:
    """A Markdown table (header, rule, rows) as an HTML table, keeping right alignment."""
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    right = [c.endswith(":") for c in cells[1]]
    rows = [table_row(cells[0], right, "th"), *(table_row(c, right, "td") for c in cells[2:])]
    return "<table>" + "".join(rows) + "</table>"


def image_html(alt: str, source: str, folder: Path) -> str:
    """An image file of ``folder`` embedded as a data URI (left as a link when the file is missing)."""
    path = folder / source
    if not path.is_file():
        return f'<p><img alt="{html.escape(alt)}" src="{html.escape(source)}"></p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def block_html(block: list[str], folder: Path) -> str:
    """One block of consecutive non-blank lines."""
    first = block[0]
    if first.startswith("#"):
        level = len(first) - len(first.lstrip("#"))
        return f"<h{level}>{inline(first[level:].strip())}</h{level}>"
    if first.startswith("|"):
        return table_html(block)
    if first.startswith(">"):
        return "<blockquote>" + " ".join(inline(line.lstrip("> ")) for line in block) + "</blockquote>"
    if first.startswith("- ") or re.match(r"\d+\. ", first):
        tag = "ul" if first.startswith("- ") else "ol"
        items = (re.sub(r"^(- |\d+\. )", "", line) for line in block)
        return f"<{tag}>" + "".join(f"<li>{inline(item)}</li>" for item in items) + f"</{tag}>"
    found = IMAGE.match(first)
    if found and len(block) == 1:
        return image_html(found[1], found[2], folder)
    return "<p>" + " ".join(inline(line) for line in block) + "</p>"


def markdown_to_html(text: str, folder: Path, title: str) -> str:
    """The whole page; images are read from ``folder``."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    body = "\n".join(block_html(block, folder) for block in blocks if block)
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n{body}\n</body></html>\n"
