"""A tiny HTML writer for reports: one self-contained file, figures inline, numbers in tables.

Pages read well offline and in a text browser: every figure has a heading and a caption, and
every number a figure shows is also in a table.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field

import pandas as pd

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #345; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #eef2f5; }
figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 90%; }
nav ul { columns: 2; }
.muted { color: #777; }
.warning { background: #fff4e5; border-left: 4px solid #e8590c; padding: .4em .8em; }
.provenance code { white-space: pre-wrap; word-break: break-all; }
"""


@dataclass
class Section:
    """A titled part of a report: paragraphs, tables and figures in order."""

    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)

    def text(self, paragraph: str) -> Section:
        """Add a paragraph (plain text, escaped)."""
        self.parts.append(f"<p>{html.escape(paragraph)}</p>")
        return self

    def warning(self, paragraph: str) -> Section:
        """Add a paragraph marked as a warning (plain text, escaped; "Warning: " is prepended)."""
        self.parts.append(f'<p class="warning"><strong>Warning:</strong> {html.escape(paragraph)}</p>')
        return self

    def code(self, label: str, text: str) -> Section:
        """Add ``label: text`` with the text verbatim (a command line)."""
        self.parts.append(f'<p class="provenance">{html.escape(label)}: <code>{html.escape(text)}</code></p>')
        return self

    def heading(self, title: str) -> Section:
        """Add a sub-heading."""
        self.parts.append(f"<h3>{html.escape(title)}</h3>")
        return self

    def table(self, frame: pd.DataFrame, caption: str | None = None, float_format: str = "{:.3f}") -> Section:
        """Add a table (index ignored)."""
        self.parts.append(table_html(frame, caption, float_format))
        return self

    def figure(self, svg: str, caption: str) -> Section:
        """Add an inline SVG figure with a caption."""
        self.parts.append(
            f'<figure role="img">{_strip_xml_header(svg)}<figcaption>{html.escape(caption)}'
            "</figcaption></figure>"
        )
        return self


def table_html(frame: pd.DataFrame, caption: str | None = None, float_format: str = "{:.3f}") -> str:
    """An HTML table of ``frame``; floats formatted (counts, ``n_*`` columns, as integers), NaN and
    None shown as ``n/a``."""
    formatted = frame.copy()
    for column in formatted.columns:
        values = formatted[column]
        if pd.api.types.is_float_dtype(values):
            # counts (n_*) read back from a TSV with an n/a are floats
            whole = str(column).startswith("n_") and bool((values.dropna() % 1 == 0).all())
            formatted[column] = values.map(
                lambda v, whole=whole: (
                    "n/a" if pd.isna(v) else (f"{v:.0f}" if whole else float_format.format(v))
                )
            )
        else:
            formatted[column] = values.map(
                lambda v: "n/a" if v is None or (isinstance(v, float) and pd.isna(v)) else v
            )
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in formatted.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in formatted.itertuples(index=False)
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_page(title: str, intro: str, sections: list[Section]) -> str:
    """The whole report as one HTML string."""
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>'
        for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p><nav><ul>{toc}</ul></nav>{body}"
        "</body></html>\n"
    )


def provenance_section(provenance: dict | None) -> Section:
    """The "Provenance" section: the neurossm-app version, the date and the exact command line of
    the call (:func:`neurossm_app.provenance.call_provenance`); the caller adds its tables."""
    section = Section("Provenance", "provenance")
    if not provenance:
        return section.text("Built outside a neurossm-app call: no command line or date recorded.")
    section.text(f"neurossm-app {provenance.get('neurossm-app')}, {provenance.get('date')}.")
    return section.code("Command line", str(provenance.get("command_line")))


def figure_to_svg(fig, tight: bool = True, text_as_paths: bool = True) -> str:
    """Serialize a matplotlib figure as SVG text; close it if pyplot made it.

    ``tight`` crops the figure to what is drawn (matplotlib draws it twice for that);
    ``text_as_paths=False`` writes text as SVG ``<text>`` in a generic font instead of glyph
    outlines, which is several times cheaper for figures with many labels.
    """
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path" if text_as_paths else "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight" if tight else None)
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it there
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buffer.getvalue()


def _strip_xml_header(svg: str) -> str:
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg
