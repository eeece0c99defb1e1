"""Human judgements: a summary of feedback files,
`python -m tfchat.evaluate --feedback FILE [FILE ...]`.

A feedback file is what `python -m tfchat.chat --feedback FILE` and the web
page's thumbs (`python -m tfchat.serve --feedback FILE`, `POST /feedback`)
append, one JSON record a line, the same two forms from both:
  * a judged reply (`/good`, `/bad`, thumbs up or down):
    {"prompt": [messages], "completion": [{"role": "assistant", ...}], "label": true|false}
  * a preference (`/prefer N`: one record per reply N was preferred over):
    {"prompt": [messages], "chosen": [...], "rejected": [...]}
("messages" is read in place of "prompt", as DPO reads it.) Each file is one
session of judging, one judge on the replies of one run; records may name
their run in a "run" field (and a preference its sides' runs in
"chosen_run" and "rejected_run"), which groups them by run instead of file.

The summary (`summarise(paths)`):
  * per run: judged replies, good and bad, the share of good replies with a
    95% Wilson score interval, preference records and the prompts judged;
  * `/prefer` win rates: a preference says which of two replies the judge
    preferred, not which run wrote them; where records name the runs of
    both sides ("chosen_run", "rejected_run": a judge comparing two runs'
    replies), each run's share of its comparisons with another run that it
    won, with a 95% Wilson score interval. A preference without them counts
    for its run (a reply over its own /retry) and in agreement;
  * agreement between judges (files) that judged the same items: a reply to
    a prompt (good or bad), or a pair of replies to a prompt (which one
    wins): percent agreement and Cohen's kappa over the items two judges
    share, and Fleiss' kappa over the items every judge judged when there
    are three or more. A judge who judged an item twice counts the last
    judgement.
"""

import collections
import math
import os

from tfchat.data.files import read_json_lines
from tfchat.errors import TfchatError

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
LABELLED = '{"prompt": [...], "completion": [...], "label": true|false}'
PAIR = '{"prompt": [...], "chosen": [...], "rejected": [...]}'


def wilson_interval(successes, trials, z=Z_95):
    """The Wilson score interval (lower, upper) of a proportion; None
    without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def cohen_kappa(first, second):
    """Cohen's kappa of two judges' categories on the same items (two
    equal-length lists); None without items, and where it is undefined:
    both judges gave everything one and the same category (percent
    agreement says they agree; chance would have agreed too)."""
    if not first:
        return None
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    a_counts, b_counts = collections.Counter(first), collections.Counter(second)
    expected = sum(a_counts[c] * b_counts[c] for c in a_counts) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(ratings):
    """Fleiss' kappa of items each judged by the same number of judges:
    `ratings` is one list of categories per item. None without items or
    with fewer than two judges, and undefined (None) when every judgement
    is the same category."""
    if not ratings or len(ratings[0]) < 2:
        return None
    judges = len(ratings[0])
    if any(len(r) != judges for r in ratings):
        raise ValueError("Fleiss' kappa needs the same number of judgements of every item.")
    categories = sorted({c for r in ratings for c in r}, key=str)
    counts = [[r.count(c) for c in categories] for r in ratings]
    items = len(ratings)
    agreement = [(sum(k * k for k in row) - judges) / (judges * (judges - 1)) for row in counts]
    shares = [sum(row[j] for row in counts) / (items * judges) for j in range(len(categories))]
    observed, expected = sum(agreement) / items, sum(s * s for s in shares)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def _messages(value, where, name):
    """A prompt or reply as (role, content) pairs; a string, as preference
    data may write it (tfchat.data.preferences), is one message: the
    prompt the user's, a reply the assistant's."""
    if isinstance(value, str):
        return (("user" if name in ("prompt", "messages") else "assistant", value),)
    if not (isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value)):
        raise TfchatError(f'{where}: "{name}" must be a string or a list of {{"role", "content"}} messages.')
    return tuple((m["role"], m["content"]) for m in value)


def read_feedback(path):
    """The judgements of a feedback file, in order: dicts with "kind"
    ("label" or "prefer"), "prompt" and "run", and "reply" and "good", or
    "chosen", "rejected", "chosen_run" and "rejected_run". A line that is
    not a feedback record is an error naming the file and line."""
    if not os.path.isfile(path):
        raise TfchatError(f"No feedback file at {path}.")
    judgements = []
    for number, record in read_json_lines(path):
        where = f"{path} line {number}"
        prompt_key = "prompt" if isinstance(record, dict) and "prompt" in record else "messages"
        if not (isinstance(record, dict) and prompt_key in record
                and ({"completion", "label"} <= record.keys()
                     or {"chosen", "rejected"} <= record.keys())):
            raise TfchatError(f"{where}: not a feedback record (python -m tfchat.chat --feedback "
                              f"and the chat page write {LABELLED} or {PAIR}).")
        run = str(record.get("run") or path)
        judgement = {"prompt": _messages(record[prompt_key], where, prompt_key), "run": run,
                     "where": where}
        if "label" in record:
            if not isinstance(record["label"], bool):
                raise TfchatError(f'{where}: "label" must be true or false.')
            reply = _messages(record["completion"], where, "completion")
            judgement.update(kind="label", reply=reply, good=record["label"])
        else:
            judgement.update(
                kind="prefer", chosen=_messages(record["chosen"], where, "chosen"),
                rejected=_messages(record["rejected"], where, "rejected"),
                chosen_run=record.get("chosen_run"), rejected_run=record.get("rejected_run"))
        judgements.append(judgement)
    if not judgements:
        raise TfchatError(f"{path}: no feedback records (the file is empty).")
    return judgements


def _proportion(successes, trials):
    return {"count": successes, "of": trials, "rate": successes / trials if trials else None,
            "ci95": wilson_interval(successes, trials)}


def _items(judgements):
    """{item: category} of one judge's judgements: (prompt, reply) -> good or
    bad, and (prompt, the two replies in sorted order) -> which one won; a
    later judgement of an item replaces an earlier one."""
    items = {}
    for j in judgements:
        if j["kind"] == "label":
            items[("label", j["prompt"], j["reply"])] = "good" if j["good"] else "bad"
        else:
            first, second = sorted((j["chosen"], j["rejected"]))
            items[("prefer", j["prompt"], first, second)] = 0 if j["chosen"] == first else 1
    return items


def agreement(judges):
    """Agreement of judges ({name: [judgement, ...]}) on the items they
    share, separately for judged replies ("labels") and preferences."""
    tables = {name: _items(js) for name, js in judges.items()}
    names = sorted(tables)
    result = {}
    for kind in ("label", "prefer"):
        mine = {n: {k: v for k, v in tables[n].items() if k[0] == kind} for n in names}
        pairs = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = sorted(mine[a].keys() & mine[b].keys(), key=repr)
                if not shared:
                    continue
                first, second = [mine[a][k] for k in shared], [mine[b][k] for k in shared]
                pairs.append({"judges": [a, b], "items": len(shared),
                              "percent_agreement": 100 * sum(
                                  x == y for x, y in zip(first, second)) / len(shared),
                              "cohen_kappa": cohen_kappa(first, second)})
        entry = {"pairs": pairs}
        if len(names) >= 3:
            common = set.intersection(*(set(mine[n]) for n in names))
            ratings = [[mine[n][k] for n in names] for k in sorted(common, key=repr)]
            entry.update(judges=len(names), items_all_judged=len(ratings),
                         fleiss_kappa=fleiss_kappa(ratings))
        if pairs or len(names) >= 3:
            result["labels" if kind == "label" else "preferences"] = entry
    return result


def summarise(paths):
    """The summary of the feedback files `paths` (see the module's docstring)."""
    by_file = {path: read_feedback(path) for path in paths}
    judgements = [j for js in by_file.values() for j in js]
    runs = {}
    for j in judgements:
        runs.setdefault(j["run"], []).append(j)
    per_run = {}
    for run, js in runs.items():
        labels = [j for j in js if j["kind"] == "label"]
        good = sum(j["good"] for j in labels)
        per_run[run] = {
            "judgements": len(js), "judged_replies": len(labels), "good": good,
            "bad": len(labels) - good, "good_share": _proportion(good, len(labels)),
            "preferences": sum(j["kind"] == "prefer" for j in js),
            "prompts": len({j["prompt"] for j in js}),
        }
    wins = collections.Counter()
    games = collections.Counter()
    for j in judgements:
        if j["kind"] == "prefer" and j["chosen_run"] and j["rejected_run"] \
                and j["chosen_run"] != j["rejected_run"]:
            wins[str(j["chosen_run"])] += 1
            games[str(j["chosen_run"])] += 1
            games[str(j["rejected_run"])] += 1
    win_rates = {run: _proportion(wins[run], games[run]) for run in sorted(games)}
    return {
        "files": list(paths),
        "judgements": len(judgements),
        "runs": per_run,
        "win_rates": win_rates,
        "agreement": agreement(by_file) if len(by_file) > 1 else {},
    }


def _rate(p):
    if p["rate"] is None:
        return "n/a"
    low, high = p["ci95"]
    return f"{p['rate']:.3f} [{low:.3f}, {high:.3f}] ({p['count']}/{p['of']})"


def format_summary(summary):
    """The summary as text."""
    lines = [f"{summary['judgements']} judgement(s) in {len(summary['files'])} file(s)"]
    for run, row in summary["runs"].items():
        lines.append(f"{run}: {row['judged_replies']} judged replies ({row['good']} good, "
                     f"{row['bad']} bad), {row['preferences']} preferences, "
                     f"{row['prompts']} prompts; good share {_rate(row['good_share'])}")
    for run, p in summary["win_rates"].items():
        lines.append(f"/prefer win rate of {run}: {_rate(p)}")
    for kind, entry in summary["agreement"].items():
        for pair in entry["pairs"]:
            kappa = pair["cohen_kappa"]
            lines.append(f"agreement on {kind}, {' and '.join(pair['judges'])}: {pair['items']} "
                         f"items, {pair['percent_agreement']:.1f}%, Cohen's kappa "
                         f"{'n/a' if kappa is None else f'{kappa:.3f}'}")
        if "fleiss_kappa" in entry:
            kappa = entry["fleiss_kappa"]
            lines.append(f"agreement on {kind}, all {entry['judges']} judges: "
                         f"{entry['items_all_judged']} items, Fleiss' kappa "
                         f"{'n/a' if kappa is None else f'{kappa:.3f}'}")
    return "\n".join(lines)


def command(paths, json_path=None):
    """`python -m tfchat.evaluate --feedback FILE ...`: prints the summary
    and writes it to `json_path` if given. Returns the exit code."""
    from tfchat.data.files import write_json_atomic

    summary = summarise(paths)
    print(format_summary(summary))
    if json_path:
        write_json_atomic(json_path, summary)
        print(f"\nWrote {json_path}")
    return 0
