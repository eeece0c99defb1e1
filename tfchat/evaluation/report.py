"""One self-contained HTML report of an evaluation: the scores as tables
and the pictures of `tfchat.evaluation.plots` inlined as base64 PNG data
URIs, so the file opens anywhere, offline, on its own.

    python -m tfchat.evaluate --run runs/chat --report report.html
    python -m tfchat.evaluate --run runs/chat --plots plots/ --attention-prompt "Hi"

Example (a notebook):
```python
from tfchat.evaluation import report
report.write_report("report.html", results, {"curves": plots.training_curves("runs/chat")})
```
"""

import base64
import html
import json
import math
import os
import tempfile

from tfchat.evaluation import plots

# Captions of the pictures `plots.write_plots` names.
CAPTIONS = {
    "training_curves": "Training and validation curves (metrics.jsonl)",
    "scores": "Scores per metric: per-example distributions where kept, "
              "else the value and its bootstrap interval",
    "groups": "Scores per group (hatched, *: too few examples for a stable figure)",
    "attention": "Attention probabilities per layer and head (query down, key across; "
                 "the line marks where the reply starts)",
    "logprobs": "Log-probability of each reply token given the tokens before it",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: rgb(34, 34, 34); max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: dimgray; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; }
"""


def _png(image):
    """PNG bytes of a Figure, bytes, or a path to a PNG file."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if hasattr(image, "savefig"):
        return plots.png_bytes(image)
    with open(image, "rb") as f:
        return f.read()


def _cell(value):
    if value is None:
        return "<td>&ndash;</td>"
    if isinstance(value, bool):
        return f"<td>{value}</td>"
    if isinstance(value, int):
        return f'<td class="number">{value}</td>'
    if isinstance(value, float):
        shown = "n/a" if not math.isfinite(value) else f"{value:.4g}"
        return f'<td class="number">{shown}</td>'
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) for v in value):
        return f'<td class="number">[{value[0]:.4g}, {value[1]:.4g}]</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(header, rows, table_id=None):
    attribute = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def scores_html(results):
    """The scores as HTML tables: the evaluation table (`metrics`: name,
    value, count, interval) where there is one, else every number of the
    results; then the per-group table of a fairness report, and the other
    plain values (objective, step, checkpoint...)."""
    parts = []
    table = [r for r in results.get("metrics") or [] if isinstance(r, dict) and "name" in r]
    if table:
        parts.append(_table(("metric", "value", "count", "95% interval"),
                            [(r["name"], r.get("value"), r.get("count"), r.get("ci"))
                             for r in table], "scores"))
    else:
        numbers = [(k, v) for k, v in results.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        parts.append(_table(("metric", "value"), numbers, "scores"))
    groups, small = plots.group_table(results)
    if groups:
        names = list(dict.fromkeys(k for row in groups.values() for k in row))
        parts.append("<h3>Per group</h3>" + _table(
            ("group", *names),
            [(g + (" *" if g in small else ""), *(row.get(n) for n in names))
             for g, row in groups.items()], "groups"))
    plain = [(k, v) for k, v in results.items()
             if isinstance(v, (str, bool)) or v is None or k in ("step", "seconds")]
    if plain:
        parts.append("<h3>Run</h3>" + _table(("key", "value"), plain, "run"))
    examples = results.get("examples") or []  # classify: a count, not records
    if isinstance(examples, list) and examples and all(isinstance(e, dict) for e in examples):
        parts.append("<h3>Examples</h3>" + "".join(
            f"<pre>{html.escape(json.dumps(e, ensure_ascii=False, indent=1))}</pre>"
            for e in examples))
    return "\n".join(parts)


def report_html(results, images=None, title="tfchat evaluation"):
    """The report as one HTML string: `results` (a dict, as evaluation.json
    holds) as tables, then each of `images` ({name: Figure, PNG bytes or
    PNG path}) as an inlined PNG with its caption."""
    figures = []
    for name, image in (images or {}).items():
        data = base64.b64encode(_png(image)).decode("ascii")
        caption = html.escape(CAPTIONS.get(name, name.replace("_", " ")))
        figures.append(f'<figure id="{html.escape(name)}"><img alt="{html.escape(name)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{caption}'
                       "</figcaption></figure>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><h2>Scores</h2>{scores_html(results)}"
            + ("<h2>Pictures</h2>" + "\n".join(figures) if figures else "")
            + "</body></html>\n")


def write_report(path, results, images=None, title="tfchat evaluation"):
    """Writes `report_html` to `path`; returns the path."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(report_html(results, images, title))
    return path


def pictures(run, results, plots_dir=None, report_path=None, prompt=None):
    """What `python -m tfchat.evaluate --plots DIR --report FILE` writes:
    the PNGs of `plots.write_plots` into `plots_dir` (a temporary folder
    when only a report is asked for) and the HTML report of `results` with
    them. `prompt`: the one the attention and log-probability pictures look
    at (default `plots.default_prompt`). Returns the lines to print."""
    lines = []
    with tempfile.TemporaryDirectory() as scratch:
        written = plots.write_plots(plots_dir or scratch, run=run, results=results,
                                    prompt=prompt)
        if plots_dir:
            lines.append(f"Wrote {len(written)} pictures to {plots_dir}: "
                         + ", ".join(os.path.basename(p) for p in written.values()))
        if report_path:
            title = f"{run.path} ({run.config.objective}, step {run.step})"
            write_report(report_path, results, written, title=title)
            lines.append(f"Wrote {report_path}")
    return "\n".join(lines)
