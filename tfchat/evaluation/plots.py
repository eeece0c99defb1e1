"""Pictures of a run (matplotlib, no display needed): training and
validation curves from `metrics.jsonl`, the score distribution per metric,
per-group bars for fairness, and for one prompt the attention maps per
layer and head and the per-token log-probabilities of a reply.

Every function returns a matplotlib `Figure` (shown inline when it is a
notebook cell's value) and also writes it as a PNG when given `path`;
those with nothing to draw return None. Figures are drawn on the Agg
canvas without pyplot, so nothing here opens a window or keeps figures
alive. `write_plots` writes them all for `python -m tfchat.evaluate --plots`.

Example (a notebook):
```python
from tfchat.evaluation import plots
plots.training_curves("runs/chat")                # the Figure, inline
looked = plots.inspect_prompt(run.backbone, run.tokenizer, "Hello", chat=True)
plots.attention_figure(looked, path="attention.png")
plots.logprob_figure(looked)
```
"""

import dataclasses
import io
import json
import math
import os
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# The four panels of the training curves: title, then (label, key) pairs.
CURVES = (
    ("loss", (("train", "loss"), ("validation", "val_loss"))),
    ("perplexity", (("train", "perplexity"), ("validation", "val_perplexity"))),
    ("learning rate", (("lr", "lr"),)),
    ("tokens/s", (("useful", "useful_tokens/s"), ("all", "tokens/s"))),
)
# Cells of the attention grid at most: evenly spaced layers and heads beyond.
MAX_LAYERS, MAX_HEADS = 6, 8


class PlotFigure(Figure):
    """A Figure on the Agg canvas that shows itself as a PNG in a notebook
    (without pyplot's inline hook)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self):
        return png_bytes(self)


def png_bytes(figure):
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Tokens of scripts the default font lacks (Han, Devanagari...) draw
        # as boxes; the picture is still worth having.
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        warnings.filterwarnings("ignore", message="Matplotlib currently does not support")
        figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _finish(figure, path):
    if path:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as f:
            f.write(png_bytes(figure))
    return figure


# --- training curves ---

def read_metrics(source):
    """The records of a run's `metrics.jsonl` (a run folder or the file).
    A step appears in a training record and, where it evaluated, a
    validation record (keys `val_*`)."""
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(records, key):
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def training_curves(metrics, path=None, title=None):
    """Loss, perplexity, learning rate and tokens/s (useful and all) against
    the step: training every log, validation at each evaluation. `metrics`
    is a run folder, a `metrics.jsonl` path or its records; panels whose
    keys the run never logged are left out. None when nothing was logged."""
    records = metrics if isinstance(metrics, list) else read_metrics(metrics)
    panels = [(name, [(label, *_series(records, key)) for label, key in lines])
              for name, lines in CURVES]
    panels = [(name, [line for line in lines if line[1]]) for name, lines in panels]
    panels = [(name, lines) for name, lines in panels if lines]
    if not panels:
        return None
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = PlotFigure(figsize=(5.5 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, lines) in zip(axes, panels):
        for label, steps, values in lines:
            marker = "o" if len(steps) < 30 else None
            ax.plot(steps, values, label=label, marker=marker, markersize=3)
        if name == "perplexity" and all(v > 0 for line in lines for v in line[2]):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    return _finish(figure, path)


# --- scores ---

def per_example_scores(results):
    """{metric: [per-example values]} found in evaluation results: a
    `per_example` mapping of metric to values, a `values` list on an entry
    of the `metrics` table, or numeric fields of the `examples` records."""
    found = {}
    for name, values in (results.get("per_example") or {}).items():
        found[name] = list(values)
    for row in results.get("metrics") or []:
        if isinstance(row, dict) and isinstance(row.get("values"), list):
            found.setdefault(row["name"], list(row["values"]))
    examples = results.get("examples")  # classify: a count, not records
    examples = [e for e in examples if isinstance(e, dict)] if isinstance(examples, list) else []
    for key in sorted({k for e in examples for k, v in e.items() if _is_number(v)}):
        found.setdefault(key, [e[key] for e in examples if _is_number(e.get(key))])
    return {k: [float(v) for v in values if _is_number(v)] for k, values in found.items()
            if any(_is_number(v) for v in values)}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_rows(results):
    """(name, value, ci or None) of every metric in the results' table, or
    of their flat numeric keys where there is no table."""
    rows = []
    for row in results.get("metrics") or []:
        if isinstance(row, dict) and _is_number(row.get("value")):
            ci = row.get("ci")
            rows.append((row["name"], float(row["value"]),
                         tuple(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2
                         and all(_is_number(c) for c in ci) else None))
    if rows:
        return rows
    skip = {"step", "seconds", "schema_version"}
    return [(k, float(v), None) for k, v in results.items() if _is_number(v) and k not in skip]


def score_distributions(results, path=None, bins=20):
    """One panel per metric: a histogram of its per-example scores where
    the results keep them (`per_example_scores`), else its value with its
    bootstrap confidence interval from the `metrics` table. None when the
    results hold no number."""
    scores = per_example_scores(results)
    rows = [row for row in _metric_rows(results) if row[0] not in scores]
    panels = [("hist", name, values) for name, values in scores.items()]
    panels += [("value", name, (value, ci)) for name, value, ci in rows]
    if not panels:
        return None
    columns = min(4, len(panels))
    rows_count = math.ceil(len(panels) / columns)
    figure = PlotFigure(figsize=(3.3 * columns, 2.6 * rows_count), layout="constrained")
    axes = figure.subplots(rows_count, columns, squeeze=False).ravel()
    for ax, (kind, name, data) in zip(axes, panels):
        if kind == "hist":
            ax.hist(data, bins=bins, color="tab:blue", alpha=0.8)
            mean = float(np.mean(data))
            ax.axvline(mean, color="black", linestyle="--", linewidth=1)
            ax.set_title(f"{name} (n={len(data)}, mean {mean:.3g})", fontsize="small")
            ax.set_ylabel("examples")
        else:
            value, ci = data
            error = None if ci is None else [[value - ci[0]], [ci[1] - value]]
            ax.errorbar([0], [value], yerr=error, fmt="o", capsize=6, color="tab:blue")
            ax.set_xticks([])
            ax.set_xlim(-1, 1)
            label = f"{value:.4g}" + ("" if ci is None else f" [{ci[0]:.3g}, {ci[1]:.3g}]")
            ax.set_title(f"{name}\n{label}", fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _finish(figure, path)


# --- fairness ---

def group_table(groups):
    """({group: {metric: value}}, small groups) from evaluation results
    (their `"groups"`), a fairness report (`per_group` and `small_groups`,
    `tfchat.evaluation.fairness`) or a plain {group: {metric: value}}
    dict; only numeric metrics, without the `examples` count. ({}, ()) when
    there is none."""
    if not isinstance(groups, dict):
        return {}, ()
    if "groups" in groups and isinstance(groups["groups"], dict):
        groups = groups["groups"]
    small = tuple(groups.get("small_groups") or ())
    if isinstance(groups.get("per_group"), dict):
        groups = groups["per_group"]
    table = {}
    for group, row in groups.items():
        if not isinstance(row, dict):
            continue
        values = {k: float(v) for k, v in row.items() if _is_number(v) and k != "examples"}
        if values:
            table[str(group)] = values
            if row.get("small") is True and group not in small:
                small += (group,)
    return table, small


def group_bars(groups, path=None, metrics=None):
    """Per-group bars, one panel per metric (`metrics`, default all the
    table has), for a fairness report or a {group: {metric: value}} dict
    (`group_table`). Small groups (too few examples for a stable figure)
    are hatched and starred, not hidden. None when there are no groups."""
    table, small = group_table(groups)
    if not table:
        return None
    names = list(metrics or dict.fromkeys(k for row in table.values() for k in row))
    names = [n for n in names if any(n in row for row in table.values())]
    if not names:
        return None
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    labels = list(table)
    width = max(3.5, 0.5 * len(labels) + 1.5)
    figure = PlotFigure(figsize=(width * columns, 2.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for ax, name in zip(axes, names):
        values = [table[g].get(name, np.nan) for g in labels]
        bars = ax.bar(range(len(labels)), values, color=colors)
        for bar, group in zip(bars, labels):
            if group in small:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
        ax.set_xticks(range(len(labels)),
                      [g + ("*" if g in small else "") for g in labels],
                      rotation=30 if len(labels) > 4 else 0, fontsize="small")
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if small:
        figure.suptitle("* hatched: too few examples for a stable figure", fontsize="small")
    return _finish(figure, path)


# --- one prompt: attention and log-probabilities ---

@dataclasses.dataclass
class PromptLook:
    """What `inspect_prompt` saw: the token ids of prompt + reply, each
    token's text, where the reply starts, every layer's attention
    probabilities ([L] numpy [H, T, T]), and each reply token's
    log-probability given the tokens before it."""

    ids: list
    tokens: list
    prompt_length: int
    maps: list
    logprobs: list
    reply: str

    @property
    def reply_tokens(self):
        return self.tokens[self.prompt_length:]


def token_texts(tokenizer, ids):
    """Each id's own text, readable on an axis: spaces as ␣, newlines as
    \\n, special tokens by name, an id that renders as nothing as #id."""
    import tensorflow as tf

    if not ids:
        return []
    ragged = tf.RaggedTensor.from_row_lengths(tf.constant(ids, tf.int32),
                                              tf.ones([len(ids)], tf.int64))
    texts = [t.decode("utf-8", errors="replace") for t in tokenizer.detokenize(ragged).numpy()]
    try:
        specials = {v: k for k, v in tokenizer.special_tokens().items()}
    except Exception:  # a pretrained vocabulary without tfchat's specials
        specials = {}
    shown = []
    for i, text in zip(ids, texts):
        if not text:
            text = specials.get(i, f"#{i}")
        shown.append(text.replace(" ", "␣").replace("\n", "\\n"))
    return shown


def inspect_prompt(backbone, tokenizer, prompt, chat=False, max_new_tokens=24, reply=None):
    """Runs `prompt` (and a reply) through the GPT `backbone` once, with
    attention probabilities (`GPT.call_with_attention`). `chat`: the prompt
    is a user message, rendered with the run's chat template; else plain
    text. The reply is `reply` when given (scored as the model would have to
    write it), else the greedy one (up to `max_new_tokens`). The sequence is
    cut to the model's context, keeping its end. Returns a `PromptLook`."""
    from tfchat.inference.generator import Generator

    generator = Generator(backbone, tokenizer)
    if chat:
        from tfchat.data.chat_template import Message

        prompt_ids = list(generator.chat_prompt([Message("user", prompt)], max_new_tokens).ids)
        stops, stop_at_eos = generator.chat_stop_ids(), False
    else:
        prompt_ids = tokenizer.tokenize_prompts([prompt]).to_list()[0]
        stops, stop_at_eos = (), True
    if reply is None:
        reply_ids = generator.generate_ids([prompt_ids], max_new_tokens, generator.sampler(0.0),
                                           stop_at_eos=stop_at_eos, stop_token_ids=stops)[0]
    else:
        reply_ids = tokenizer.tokenize([reply]).to_list()[0]
    ids = (prompt_ids + reply_ids)[-backbone.block_size:]
    prompt_length = max(0, len(ids) - len(reply_ids))
    logits, maps = backbone.call_with_attention(np.array([ids], "int32"))
    logits = np.asarray(logits[0], np.float64)
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    # Token t is predicted at position t - 1; a reply that starts the
    # window has no position before its first token.
    logprobs = [float(log_softmax[t - 1, ids[t]]) if t else float("nan")
                for t in range(prompt_length, len(ids))]
    return PromptLook(
        ids=ids, tokens=token_texts(tokenizer, ids), prompt_length=prompt_length,
        maps=[np.asarray(m[0], np.float32) for m in maps], logprobs=logprobs,
        reply=generator.decode([reply_ids])[0],
    )


def _spread(count, most):
    """At most `most` indices of range(count), evenly spaced, ends kept."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def attention_figure(look, path=None, layers=None, heads=None, max_layers=MAX_LAYERS,
                     max_heads=MAX_HEADS):
    """A grid of attention maps, a row per layer and a column per head:
    query tokens down, key tokens across, the reply's first token marked.
    `look` is a `PromptLook`, or (tokens, maps) with maps [L][H, T, T] (a
    batch axis of 1 is dropped). Beyond `max_layers` x `max_heads` cells,
    evenly spaced layers and heads (or those `layers` / `heads` name)."""
    if isinstance(look, PromptLook):
        tokens, maps, start = look.tokens, look.maps, look.prompt_length
    else:
        (tokens, maps), start = look, None
    maps = [np.asarray(m) for m in maps]
    maps = [m[0] if m.ndim == 4 else m for m in maps]
    layers = list(layers) if layers is not None else _spread(len(maps), max_layers)
    heads = list(heads) if heads is not None else _spread(maps[0].shape[0], max_heads)
    length = maps[0].shape[-1]
    tokens = list(tokens)[-length:]
    cell = max(2.2, min(6.0, 0.17 * length))
    figure = PlotFigure(figsize=(cell * len(heads) + 0.8, cell * len(layers) + 0.4),
                        layout="constrained")
    axes = figure.subplots(len(layers), len(heads), squeeze=False)
    image = None
    labelled = length <= 48
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(maps[layer][head], vmin=0.0, vmax=1.0, cmap="viridis",
                              interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize="small")
            if labelled:
                size = 6 if length > 24 else 8
                ax.set_xticks(range(length), tokens, rotation=90, fontsize=size)
                ax.set_yticks(range(length), tokens if c == 0 else [""] * length,
                              fontsize=size)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            if start is not None and 0 < start < length:
                ax.axhline(start - 0.5, color="white", linewidth=0.8)
                ax.axvline(start - 0.5, color="white", linewidth=0.8, linestyle=":")
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    return _finish(figure, path)


def logprob_figure(look, path=None):
    """The reply's tokens and the log-probability the model gave each, given
    the tokens before it (`PromptLook`; or (tokens, logprobs)). None for an
    empty reply."""
    if isinstance(look, PromptLook):
        tokens, logprobs, reply = look.reply_tokens, look.logprobs, look.reply
    else:
        (tokens, logprobs), reply = look, None
    if not len(logprobs):
        return None
    values = np.asarray(logprobs, np.float64)
    figure = PlotFigure(figsize=(max(5.0, 0.3 * len(values) + 1.5), 3.4), layout="constrained")
    ax = figure.subplots()
    colors = ["tab:red" if v < math.log(0.1) else "tab:blue" for v in np.nan_to_num(values)]
    ax.bar(range(len(values)), np.nan_to_num(values), color=colors)
    ax.set_xticks(range(len(values)), list(tokens)[-len(values):], rotation=90, fontsize=8)
    ax.axhline(math.log(0.1), color="gray", linestyle=":", linewidth=1)
    ax.set_ylabel("log p(token)")
    finite = values[np.isfinite(values)]
    total = f"sum {finite.sum():.2f}, mean {finite.mean():.2f}" if len(finite) else ""
    ax.set_title(f"reply log-probabilities ({total}; red: p < 0.1)", fontsize="small")
    if reply:
        figure.suptitle(reply if len(reply) < 90 else reply[:87] + "...", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _finish(figure, path)


# --- all of them ---

def default_prompt(run):
    """The prompt of the run's logged samples (`train.sample_prompt`): a
    chat run's user message ("Hello" when blank), a causal run's text."""
    prompt = run.config.train.sample_prompt
    if run.objective.chats:
        return prompt.strip() or "Hello"
    return prompt or "\n"


def write_plots(folder, run=None, results=None, metrics=None, prompt=None, chat=None,
                max_new_tokens=24):
    """Writes every picture there is something for into `folder` and
    returns {name: path}: `training_curves.png` (from `metrics`: a run
    folder or metrics.jsonl; default the run's), `scores.png` and
    `groups.png` (from `results`), and for a run that generates (a loaded
    `tfchat.run.Run`) `attention.png` and `logprobs.png` for `prompt`
    (default `default_prompt`; chat runs read it as a user message)."""
    os.makedirs(folder, exist_ok=True)
    written = {}

    def keep(name, make):
        path = os.path.join(folder, f"{name}.png")
        if make(path) is not None:
            written[name] = path

    source = metrics or (run.folder.metrics if run is not None else None)
    if source and os.path.exists(source):
        keep("training_curves", lambda p: training_curves(source, path=p))
    if results:
        keep("scores", lambda p: score_distributions(results, path=p))
        keep("groups", lambda p: group_bars(results, path=p))
    if run is not None and run.objective.generates:
        chat = run.objective.chats if chat is None else chat
        look = inspect_prompt(run.backbone, run.tokenizer, prompt or default_prompt(run), chat=chat,
                              max_new_tokens=max_new_tokens)
        keep("attention", lambda p: attention_figure(look, path=p))
        keep("logprobs", lambda p: logprob_figure(look, path=p))
    return written
