"""Text from files we did not write (submissions, result files, configs) made safe for each output.

Every free-text value that reaches an output goes through one of these: a method name such as
`x | 99.99 |\\n| 1 | FAKE-SOTA` must not forge table cells or rows, `<img onerror=...>` must not become
markup, `$\\macro$` must not reach matplotlib's math parser, and an ANSI escape must not reach a terminal.
"""
from __future__ import annotations

import html
import re
from typing import Optional

# Markdown punctuation that can start markup (emphasis, links, code, tables, headings, math, strikethrough),
# written with CommonMark backslash escapes; & < > become HTML entities so no tag or entity survives.
_MD = {c: "\\" + c for c in "\\`*_[]|~#!$"}
_MD.update({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def one_line(text, limit: int = 300) -> str:
    """`text` as one printable line: newlines and tabs become spaces, other control characters are written
    as escapes (\\x1b), and anything past `limit` characters is cut with an ellipsis."""
    text = str(text)
    out = []
    for ch in text:
        if ch in "\r\n\t":
            out.append(" ")
        elif not ch.isprintable():
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_cell(text, limit: int = 300) -> str:
    """Safe inside a Markdown table cell or list item: one line, no markup, no `|` cell break."""
    return "".join(_MD.get(c, c) for c in one_line(text, limit))


def html_text(text, limit: int = 2000) -> str:
    """Safe as HTML element text or a quoted attribute value."""
    return html.escape(one_line(text, limit), quote=True)


def plot_text(text, limit: int = 200) -> str:
    """Safe as a matplotlib label: `$` is escaped so mathtext never parses data (newlines are kept)."""
    return "\n".join(one_line(part, limit) for part in str(text).split("\n")).replace("$", r"\$")


def slug(text, keep: str = "_.-", lower: bool = False, limit: Optional[int] = 80) -> str:
    """`text` as part of a file name or id: each run of characters other than ASCII letters, digits and
    `keep` becomes one '-', leading and trailing '-' dropped, lower-cased on request, cut at `limit`."""
    out = re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "-", str(text)).strip("-")
    out = out.lower() if lower else out
    return out if limit is None else out[:limit]
