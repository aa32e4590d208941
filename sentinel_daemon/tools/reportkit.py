"""HTML pieces of the job report: escaping, sections, notes, tables and inline figures.

Every chart goes into the page itself as a ``data:image/png;base64,...`` URI, so the
report is one file that survives being attached, copied or mailed alone.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def section(title: str, body: str) -> str:
    return f"<section>\n<h2>{esc(title)}</h2>\n{body}\n</section>\n"


def note(text: str) -> str:
    """A highlighted remark: something the reader should weigh."""
    return f'<p class="note">{esc(text)}</p>\n'


def hint(text: str) -> str:
    """A quiet remark under a table: how to read it."""
    return f'<p class="hint">{esc(text)}</p>\n'


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str, caption: str = "") -> str:
    """A chart, inline."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">{cap}</figure>\n'


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table of already escaped (or built) cells; ``head`` is plain text."""
    attr = f' class="{esc(cls)}"' if cls else ""
    top = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attr}><tr>{top}</tr>{body}</table>\n"


def nowrap(text: str) -> str:
    """``text`` that a line may not break inside (a number, ``name=value``)."""
    return f'<span class="nb">{esc(text)}</span>'
