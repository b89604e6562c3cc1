"""`report/report.html`: the report as one self-contained page (plots embedded as data URIs, styles inline, no
script, nothing fetched), next to report.md. Besides the Markdown's sections it adds each step's wall time and
the exact config, package versions and git revision of the run.

Rendering is markdown-it-py (CommonMark + tables) with raw HTML off, so text from samples or configs can never
inject markup. The one structure it adds: a list item with a sub-list (in the report, a claim and its
comparisons) becomes a `<details>` fold, the item's own text its `<summary>` (`fold_sublists`, a rule on the
parsed tokens, not on the text).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

from safepretrain.config import StudyConfig
from safepretrain.report.data import as_rundir
from safepretrain.rundir import RunDir
from safepretrain.utils import read_json, write_text_atomic

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; max-width: 1100px;
       margin: 0 auto; padding: 1.5em 2em; }
h1 { border-bottom: 2px solid #0072B2; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .4em .8em .8em 0; font-size: 12.5px; display: inline-table;
        vertical-align: top; max-width: 100%; }  /* a metric's per-stage tables sit side by side */
th, td { border: 1px solid #d0d0d0; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #eef3f8; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #e0e0e0; margin: .5em 0; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: #f5f5f5; padding: .8em; overflow-x: auto; }
nav { background: #f5f8fb; padding: .6em 1em; border: 1px solid #dde5ee; }
nav a { margin-right: 1em; }
details { margin: .3em 0; }
li:has(> details) { list-style: none; }
details > summary { cursor: pointer; }
details > ul { font-size: 13.5px; }
"""


def _html_token(content: str) -> Token:
    token = Token("html_block", "", 0)
    token.content = content
    return token


def fold_sublists(state: StateCore) -> None:
    """markdown-it core rule: `- text` followed by an indented sub-list renders as
    `<li><details><summary>text</summary><ul>…</ul></details></li>`. Only the parser's own tokens are rearranged,
    so no text is ever read as markup."""
    tokens = state.tokens
    folds = [i for i in range(3, len(tokens) - 1) if tokens[i].type == "paragraph_close"
             and tokens[i + 1].type in ("bullet_list_open", "ordered_list_open") and tokens[i - 2].type ==
             "paragraph_open" and tokens[i - 3].type == "list_item_open"]
    closes = {}
    for i in folds:
        sub = tokens[i + 1]
        closes[next(j for j in range(i + 2, len(tokens)) if tokens[j].level == sub.level
                    and tokens[j].type == sub.type.replace("_open", "_close"))] = True
    out = []
    for i, t in enumerate(tokens):
        if i + 2 in folds:
            out.append(_html_token("<details><summary>"))
        elif i in folds:
            out.append(_html_token("</summary>\n"))
        else:
            out.append(t)
        if i in closes:
            out.append(_html_token("</details>\n"))
    state.tokens = out


def renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.core.ruler.push("fold_sublists", fold_sublists)
    return md


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _embed_images(body: str, folder: Path) -> str:
    """Local PNGs become data URIs; an image that is not there is dropped (never fetched)."""
    def swap(m: re.Match) -> str:
        path = folder / html.unescape(m.group(1))
        if not path.is_file() or path.suffix.lower() != ".png":
            return 'src=""'
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    return re.sub(r'src="([^"]+)"', swap, body)


def _step_times(rd: RunDir) -> list[tuple[str, float]]:
    out = []
    for done in rd.done_files():
        info = read_json(done)
        seconds = info.get("step_seconds", info.get("wall_s"))
        if seconds is not None:
            out.append((str(done.parent.relative_to(rd.root)), float(seconds)))
    return out


def write_html_report(run_dir: Path | RunDir, cfg: StudyConfig) -> Path:
    rd = as_rundir(run_dir)
    out = rd.report
    md = (out / "report.md").read_text()
    times = _step_times(rd)
    if times:
        md += "\n\n## Step wall times\n\n| step | seconds |\n|---|---|\n" + "\n".join(
            f"| {name} | {s:.1f} |" for name, s in times) + "\n"
    body = _embed_images(renderer().render(md), out)
    sections = []

    def anchor(m: re.Match) -> str:
        title = re.sub(r"<[^>]+>", "", m.group(1))
        slug = _slug(title)
        sections.append((slug, title))
        return f'<h2 id="{slug}">{m.group(1)}</h2>'

    body = re.sub(r"<h2>(.*?)</h2>", anchor, body)
    manifest = read_json(rd.manifest) if rd.manifest.is_file() else {}
    config = rd.study_yaml.read_text() if rd.study_yaml.is_file() else ""
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items() if v)
    provenance = (f'<h2 id="provenance">Config, versions and revision</h2><p>git revision '
                  f"<code>{html.escape(str(manifest.get('git_sha')))}</code>; Python "
                  f"{html.escape(str(manifest.get('python')))} on {html.escape(str(manifest.get('platform')))}; "
                  f"{html.escape(versions)}.</p><pre>{html.escape(config)}</pre>")
    sections.append(("provenance", "Config, versions and revision"))
    nav = "<nav>" + "".join(f'<a href="#{s}">{html.escape(t)}</a>' for s, t in sections) + "</nav>"
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Study {html.escape(cfg.name)}</title><style>{CSS}</style></head>"
            f"<body>{nav}{body}{provenance}</body></html>\n")
    write_text_atomic(out / "report.html", page)
    return out / "report.html"
