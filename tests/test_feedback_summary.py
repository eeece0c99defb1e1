"""Human judgements: `python -m tfchat.evaluate --feedback FILE ...`
(tfchat/evaluation/feedback.py) against hand-counted files of both writers
(the terminal chat's FeedbackLog records and the chat page's /feedback
records), the Wilson interval and the kappas by hand, and bad input."""

import json

import pytest

from conftest import write_jsonl
from tfchat import evaluate as evaluate_cli
from tfchat.data.chat_template import Message
from tfchat.data.preferences import FeedbackLog, labelled_record, pair_record
from tfchat.errors import TfchatError
from tfchat.evaluation import feedback


def prompt(i):
    return [Message("user", f"question {i}")]


def reply(text):
    return [Message("assistant", text)]


# good (True) or bad per judge on the replies r1..r5 to questions 1..5.
JUDGE_1 = [True, True, False, True, False]
JUDGE_2 = [True, False, False, True, True]
JUDGE_3 = [True, True, False, False, False]


def chat_file(path):
    """What `python -m tfchat.chat --feedback` appends: /good and /bad on
    questions 1-6 (4 good of 6), then /prefer 1 over two other replies to
    question 7."""
    log = FeedbackLog(str(path))
    for i, good in enumerate(JUDGE_1 + [True], start=1):
        log.add(labelled_record(prompt(i), reply(f"r{i}"), good))
    for other in ("b", "c"):
        log.add(pair_record(prompt(7), reply("a"), reply(other)))
    return str(path)


def page_file(path, labels):
    """What the chat page's thumbs and retries append (`feedback_record`)."""
    from tfchat.serving.openai_api import feedback_record

    log = FeedbackLog(str(path))
    messages = lambda i: [{"role": "user", "content": f"question {i}"}]  # noqa: E731
    for i, good in enumerate(labels, start=1):
        log.add(feedback_record({"messages": messages(i), "reply": f"r{i}", "label": good}))
    log.add(feedback_record({"messages": messages(7), "chosen": "a", "rejected": "b"}))
    return str(path)


def wilson_by_hand(k, n, z=1.96):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return centre - half, centre + half


def test_wilson_interval_by_hand():
    low, high = feedback.wilson_interval(7, 10)
    assert (round(low, 3), round(high, 3)) == (0.397, 0.892)  # the textbook 7 of 10
    for k, n in ((0, 5), (4, 6), (10, 10), (31, 97)):
        assert feedback.wilson_interval(k, n) == pytest.approx(list(wilson_by_hand(k, n)), abs=1e-4)
    assert feedback.wilson_interval(0, 0) is None


def test_summary_of_two_judges_against_hand_counts(tmp_path, capsys):
    one = chat_file(tmp_path / "chat.jsonl")
    two = page_file(tmp_path / "page.jsonl", JUDGE_2)
    summary = feedback.summarise([one, two])
    assert summary["judgements"] == 8 + 6
    row = summary["runs"][one]
    assert (row["judged_replies"], row["good"], row["bad"], row["preferences"], row["prompts"]) \
        == (6, 4, 2, 2, 7)
    assert row["good_share"]["rate"] == pytest.approx(4 / 6)
    assert row["good_share"]["ci95"] == pytest.approx(list(wilson_by_hand(4, 6)), abs=1e-4)
    row = summary["runs"][two]
    assert (row["judged_replies"], row["good"], row["preferences"]) == (5, 3, 1)
    # Questions 1-5: the judges agree on 1, 3 and 4. Each said good 3 times of 5:
    # chance agreement (3*3 + 2*2) / 25 = 0.52; kappa (0.6 - 0.52) / 0.48.
    labels = summary["agreement"]["labels"]["pairs"]
    assert len(labels) == 1 and labels[0]["items"] == 5
    assert labels[0]["percent_agreement"] == pytest.approx(60)
    assert labels[0]["cohen_kappa"] == pytest.approx((0.6 - 0.52) / 0.48)
    # One shared preference (a over b), the same: 100%, kappa undefined.
    prefs = summary["agreement"]["preferences"]["pairs"][0]
    assert (prefs["items"], prefs["percent_agreement"], prefs["cohen_kappa"]) == (1, 100, None)
    assert summary["win_rates"] == {}  # no record names the runs of its replies

    capsys.readouterr()
    out_json = tmp_path / "summary.json"
    assert evaluate_cli.main(["--feedback", one, two, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "4 good, 2 bad" in out and "good share 0.667" in out
    assert "60.0%, Cohen's kappa 0.167" in out
    assert json.loads(out_json.read_text())["runs"][one]["good"] == 4


def test_three_judges_fleiss_kappa_by_hand(tmp_path):
    files = [chat_file(tmp_path / "one.jsonl"), page_file(tmp_path / "two.jsonl", JUDGE_2),
             page_file(tmp_path / "three.jsonl", JUDGE_3)]
    agreement = feedback.summarise(files)["agreement"]["labels"]
    assert agreement["judges"] == 3 and agreement["items_all_judged"] == 5
    # Per item, the share of agreeing judge pairs; the overall category shares.
    ratings = list(zip(JUDGE_1, JUDGE_2, JUDGE_3))
    n = 3
    per_item = [(sum(r) ** 2 + (n - sum(r)) ** 2 - n) / (n * (n - 1)) for r in ratings]
    good = sum(map(sum, ratings)) / (n * len(ratings))
    observed, expected = sum(per_item) / len(ratings), good ** 2 + (1 - good) ** 2
    assert (observed, round(good, 4)) == (pytest.approx(0.6), round(8 / 15, 4))
    assert agreement["fleiss_kappa"] == pytest.approx((observed - expected) / (1 - expected))
    assert len(agreement["pairs"]) == 3  # Cohen's kappa for each two of them too
    assert feedback.fleiss_kappa([["a", "a"], ["a", "a"]]) is None


def test_prefer_win_rates_between_runs(tmp_path):
    """Preferences that name both sides' runs: A wins 7 of 10 against B."""
    records = []
    for i in range(10):
        winner, loser = ("A", "B") if i < 7 else ("B", "A")
        records.append({"prompt": [{"role": "user", "content": f"q{i}"}],
                        "chosen": [{"role": "assistant", "content": f"{winner} {i}"}],
                        "rejected": [{"role": "assistant", "content": f"{loser} {i}"}],
                        "chosen_run": winner, "rejected_run": loser, "run": "ab"})
    path = write_jsonl(tmp_path / "ab.jsonl", records)
    summary = feedback.summarise([path])
    a, b = summary["win_rates"]["A"], summary["win_rates"]["B"]
    assert (a["count"], a["of"], b["count"], b["of"]) == (7, 10, 3, 10)
    assert a["ci95"] == pytest.approx(list(wilson_by_hand(7, 10)), abs=1e-4)
    assert b["ci95"] == pytest.approx([1 - a["ci95"][1], 1 - a["ci95"][0]])
    assert list(summary["runs"]) == ["ab"] and summary["runs"]["ab"]["preferences"] == 10
    assert "/prefer win rate of A: 0.700 [0.397, 0.892] (7/10)" in feedback.format_summary(summary)


def test_a_file_that_is_not_feedback_is_one_clear_line(tmp_path, capsys):
    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    with pytest.raises(TfchatError, match=r"chats\.jsonl line 1: not a feedback record"):
        feedback.summarise([chats])
    capsys.readouterr()
    assert evaluate_cli.main(["--feedback", chats]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chats.jsonl line 1: not a feedback record" in err
    bad_label = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": [{"role": "user", "content": "hi"}],
         "completion": [{"role": "assistant", "content": "yo"}], "label": "yes"}])
    with pytest.raises(TfchatError, match=r"bad\.jsonl line 1: \"label\" must be true or false"):
        feedback.summarise([bad_label])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TfchatError, match="no feedback records"):
        feedback.summarise([str(empty)])
    # Without --feedback, --run is still required.
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main([])
    assert e.value.code == 2 and "--run" in capsys.readouterr().err


def test_a_missing_feedback_file_is_a_one_line_error(tmp_path, capsys):
    from tfchat import evaluate

    assert evaluate.main(["--feedback", str(tmp_path / "none.jsonl")]) == 1
    assert capsys.readouterr().err == f"error: No feedback file at {tmp_path / 'none.jsonl'}.\n"


def test_string_prompts_and_replies_read_as_one_message(tmp_path):
    from tfchat.evaluation.feedback import read_feedback

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Hi!", "chosen": "Hello.", "rejected": "Go."}) + "\n")
    (judgement,) = read_feedback(str(path))
    assert judgement["prompt"] == (("user", "Hi!"),)
    assert (judgement["chosen"], judgement["rejected"]) == ((("assistant", "Hello."),),
                                                            (("assistant", "Go."),))
