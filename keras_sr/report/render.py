"""One report, two renderings: a self-contained HTML page and a Markdown file.

The sections (`keras_sr.report.sections`) describe the report once, as a list of blocks; this module
only turns blocks into text. HTML inlines every image as a base64 data URI and carries no script and
no link to anything outside the file, so the page can be mailed or archived as it is. Markdown links
each image as a PNG file in a folder beside it (`FILES_DIR`), written by the caller.
"""
import base64
import dataclasses
import html
import re

FILES_DIR = "report_files"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1b1f24;
       max-width: 1160px; margin: 24px auto; padding: 0 20px; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.3em 0 0.4em; }
p { margin: 0.4em 0; }
p.note { color: #57606a; font-style: italic; }
nav { font-size: 0.92em; color: #57606a; }
nav a { margin-right: 1em; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 3px 10px; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { word-break: break-all; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 0.6em 0 1.2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: 0.88em; color: #57606a; margin-top: 2px; }
"""


@dataclasses.dataclass
class Heading:
    """A section title; level 1 is the page title, `anchor` the HTML id (level 2 gets one)."""
    level: int
    text: str
    anchor: str = ""


@dataclasses.dataclass
class Paragraph:
    """A line of text; `note` renders it as a de-emphasised remark (an omitted section, ...)."""
    text: str
    note: bool = False


@dataclasses.dataclass
class Table:
    """A table of already formatted cells.

    `numeric[j]` right-aligns column j; every row has len(header) cells.
    """
    header: list
    rows: list
    numeric: list = None

    def __post_init__(self):
        if self.numeric is None:
            self.numeric = [False] * len(self.header)
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table row {row} has {len(row)} cells for {len(self.header)} columns")


@dataclasses.dataclass
class Image:
    """A PNG image; `name` is its file name in `FILES_DIR` (unique within a report)."""
    name: str
    png: bytes
    alt: str
    caption: str = ""


@dataclasses.dataclass
class Navigation:
    """Links to the level-2 sections titled `titles` (HTML only)."""
    titles: list


def anchor(text):
    """The HTML id of a section title: lower case, runs of other characters as one "-"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _html_block(block):
    esc = html.escape
    if isinstance(block, Heading):
        ident = f' id="{esc(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{ident}>{esc(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f'<p class="note">{esc(block.text)}</p>' if block.note else f"<p>{esc(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
        body = []
        for row in block.rows:
            cells = "".join(f'<td class="{"num" if num else "text"}">{esc(c)}</td>'
                            for c, num in zip(row, block.numeric))
            body.append(f"<tr>{cells}</tr>")
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + \
            "\n</tbody>\n</table>"
    if isinstance(block, Navigation):
        links = "".join(f'<a href="#{esc(anchor(t))}">{esc(t)}</a>' for t in block.titles)
        return f"<nav>{links}</nav>"
    if isinstance(block, Image):
        uri = "data:image/png;base64," + base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{esc(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure><img src="{uri}" alt="{esc(block.alt)}">{caption}</figure>'
    raise TypeError(f"not a report block: {block!r}")


def to_html(blocks, title):
    """The whole report as one HTML5 page (str): inline CSS, images as data URIs, no scripts.

    Args:
        blocks: list of `Heading`, `Paragraph`, `Table`, `Image`, `Navigation`.
        title: the document title (the browser tab).
    """
    body = "\n".join(_html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def _md_text(text):
    # Paths and flag values hold "*" and "_" (globs, file names), which Markdown would read as
    # emphasis; a pipe would end a table cell and a newline a table row.
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", str(text)).replace("\n", " ")


def _md_block(block):
    if isinstance(block, Heading):
        return "#" * block.level + " " + _md_text(block.text)
    if isinstance(block, Paragraph):
        return f"> {_md_text(block.text)}" if block.note else _md_text(block.text)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_text(h) for h in block.header) + " |",
                 "|" + "|".join("---:" if num else "---" for num in block.numeric) + "|"]
        lines += ["| " + " | ".join(_md_text(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Image):
        text = f"![{_md_text(block.alt)}]({FILES_DIR}/{block.name})"
        return text + (f"\n\n{_md_text(block.caption)}" if block.caption else "")
    raise TypeError(f"not a report block: {block!r}")


def to_markdown(blocks):
    """The report as Markdown (str); images link to `FILES_DIR/<name>` relative to the file.

    `Navigation` is left out: Markdown viewers build their own outline.
    """
    return "\n\n".join(_md_block(b) for b in blocks if not isinstance(b, Navigation)) + "\n"
