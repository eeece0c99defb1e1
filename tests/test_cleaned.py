"""The data-hygiene stage inside training (`tfchat.data.cleaned`, called by
`tfchat.job.train`): a dirty corpus is cleaned once before the split, the
run records data_report.json, bad settings stop before a run folder is
written, and a model trained on scrubbed conversations cannot say the
personal data its corpus held."""

import json
import os

import pytest

from conftest import CHAT_PAIRS, CHAT_TINY, TINY, nest, write_jsonl, write_text
from tfchat import config as config_lib
from tfchat.data.cleaned import clean_corpus
from tfchat.errors import TfchatError
from tfchat.job import train

EMAIL, PHONE = "ann.lee@example.com", "+44 20 7946 0958"


WORDS = ("sea ship river stone bread lamp window garden winter music letter market horse "
         "bridge candle forest mirror silver paper cloud").split()


def dirty_documents():
    import random

    rng = random.Random(0)
    base = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(30)]
    return ([{"text": t} for t in base]
            + [{"text": base[3]}, {"text": base[7] + "  "}]  # exact duplicates
            + [{"text": f"write to {EMAIL} or call {PHONE} today, caf\u00c3\u00a9 open."}])


def test_a_dirty_corpus_is_cleaned_before_the_split_and_reported(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", dirty_documents())
    settings = {**TINY, "objective": "causal", "name": "clean", "runs_dir": str(tmp_path / "runs"),
                "data.path": data, "data.dedup": "exact", "data.scrub_pii": "all",
                "data.fix_unicode": True, "train.max_steps": 4, "train.eval_interval": 4}
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    run = tmp_path / "runs" / "clean"
    report = json.loads((run / "data_report.json").read_text())
    assert report["documents_read"] == 33 and report["documents_kept"] == 31
    assert report["removed"]["duplicate_exact"] == 2
    assert report["documents_repaired"] == 2  # the mojibake, the trailing spaces
    assert (report["pii_found"]["EMAIL"], report["pii_found"]["PHONE"]) == (1, 1)
    # The run's config keeps the user's data path; the copy it read is clean.
    assert json.loads((run / "config.json").read_text())["data"]["path"] == data
    (copy,) = [d for d in (tmp_path / "runs" / ".cleaned").iterdir()]
    text = "".join(p.read_text() for p in (copy / "data").glob("*.jsonl"))
    assert EMAIL not in text and PHONE not in text and "<EMAIL>" in text and "café" in text


def test_conversations_keep_their_roles_and_lose_their_personal_data(tmp_path):
    records = [{"messages": [{"role": "user", "content": "mail?"},
                             {"role": "assistant", "content": f"it is {EMAIL}"}]}] * 3
    data = config_lib.DataConfig(path=write_jsonl(tmp_path / "chats.jsonl", records),
                                 dedup="exact", scrub_pii="email")
    cleaned = clean_corpus(data, str(tmp_path / "cache"))
    lines = [json.loads(line) for line in open(os.path.join(cleaned.data.path, "00000.jsonl"))]
    assert lines == [{"messages": [{"role": "user", "content": "mail?"},
                                   {"role": "assistant", "content": "it is <EMAIL>"}]}]
    assert cleaned.report["removed"]["duplicate_exact"] == 2
    # The same settings and files: the same copy, reused.
    assert clean_corpus(data, str(tmp_path / "cache")).folder == cleaned.folder


def test_text_files_are_cleaned_by_paragraph(tmp_path):
    paragraph = "a paragraph about the sea and the ships on it.\nits second line."
    other = "a different paragraph about mountains and rivers.\nand its line."
    path = write_text(tmp_path / "book.txt", "\n\n".join([paragraph, other, paragraph]) + "\n")
    cleaned = clean_corpus(config_lib.DataConfig(path=path, dedup="exact"), str(tmp_path / "c"))
    assert cleaned.data.format == "text"
    assert open(os.path.join(cleaned.data.path, "00000.txt")).read() == f"{paragraph}\n\n{other}\n"


def test_bad_hygiene_settings_stop_before_a_run_folder_is_written(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", dirty_documents())
    blocklist = write_text(tmp_path / "block.txt", "# terms\nbad\nre:(unclosed\n")
    base = {**TINY, "objective": "causal", "name": "bad", "runs_dir": str(tmp_path / "runs"),
            "data.path": data}
    cases = [({"data.blocklist": blocklist}, r"block.txt.*line 3"),
             ({"data.scrub_pii": "email,passport"}, "passport"),
             ({"data.languages": "xx"}, "xx"),
             ({"data.dedup": "fuzzy"}, "data.dedup must be one of none, exact, near")]
    for overrides, match in cases:
        with pytest.raises(TfchatError, match=match):
            train(config_lib.build_config(overrides=nest({**base, **overrides})), verbose=0)
        assert not (tmp_path / "runs" / "bad").exists()


def test_a_model_trained_on_scrubbed_conversations_cannot_say_the_addresses(tmp_path):
    """The same chat run with and without data.scrub_pii: without, it
    memorises the e-mail address and phone number and says them; with, none
    of 200 sampled replies holds either (so the test can fail)."""
    from tfchat.data.chat_template import Message
    from tfchat.inference.generator import Generator
    from tfchat.run import load_run

    pairs = [*CHAT_PAIRS, ("how can i reach you?", f"mail {EMAIL} or ring {PHONE}.")]
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for _ in range(20) for q, a in pairs]
    data = write_jsonl(tmp_path / "chats.jsonl", records)
    said = {}
    for scrub in ("", "all"):
        name = f"scrub_{scrub or 'off'}"
        settings = {**CHAT_TINY, "name": name, "runs_dir": str(tmp_path / "runs"),
                    "data.path": data, "data.scrub_pii": scrub, "model.block_size": 64}
        train(config_lib.build_config(overrides=nest(settings)), verbose=0)
        run = load_run(str(tmp_path / "runs" / name))
        generator = Generator(run.backbone, run.tokenizer)
        replies = generator.chat([[Message("user", "how can i reach you?")]] * 200,
                                 max_new_tokens=60, temperature=1.0, seed=3)
        said[scrub] = sum(EMAIL in r or PHONE in r for r in replies)
        if scrub:
            # Evaluation reads the run's cleaned copy too: its references
            # hold the placeholder, not the address.
            from tfchat import objectives

            results = objectives.get("chat").evaluate(run, examples=100, jit_compile=False)
            references = json.dumps(results["examples"])
            assert "<EMAIL>" in references and EMAIL not in references
    assert said[""] > 0  # it learnt them
    assert said["all"] == 0


def test_prepare_cleans_reports_and_gives_the_same_shards_for_a_seed(tmp_path, capsys):
    import filecmp

    from tfchat import prepare

    data = write_jsonl(tmp_path / "docs.jsonl", dirty_documents())
    flags = ["--data.path", data, "--tokenizer.kind", "char", "--data.dedup", "near",
             "--data.scrub_pii", "all"]
    assert prepare.main([*flags, "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents_kept"] < report["documents_read"] and report["pii_found"]["EMAIL"]
    assert not (tmp_path / "dry").exists() and not (tmp_path / ".cleaned").exists()
    for out in ("one", "two"):
        assert prepare.main([*flags, "--out", str(tmp_path / "cache" / out)]) == 0
    one, two = tmp_path / "cache" / "one", tmp_path / "cache" / "two"
    assert json.loads((one / "data_report.json").read_text()) == report
    for split in ("train", "val"):
        shards = sorted(p.name for p in (one / split).iterdir())
        assert shards, split
        assert filecmp.cmpfiles(one / split, two / split, shards, shallow=False)[0] == shards


@pytest.mark.parametrize("mode", ["down", "up"])
def test_balancing_gives_every_group_the_same_weight_and_keeps_validation(tmp_path, mode):
    from tfchat.data.corpus import Corpus

    records = [{"text": f"document {i} from a {source} source.", "source": source}
               for i, source in enumerate(["big"] * 40 + ["small"] * 10)]
    records = [records[i] for i in range(0, 50, 5)] + [r for i, r in enumerate(records) if i % 5]
    path = write_jsonl(tmp_path / "docs.jsonl", records)
    original = Corpus(config_lib.DataConfig(path=path))
    data = config_lib.DataConfig(path=path, balance_field="source", balance=mode)
    cleaned = clean_corpus(data, str(tmp_path / "cache"), seed=5)
    corpus = Corpus(cleaned.data)
    assert list(corpus.iter_texts("val")) == list(original.iter_texts("val"))
    train = [json.loads(line) for line in open(os.path.join(cleaned.data.path, "00000.jsonl"))]
    counts = {s: sum(r["source"] == s for r in train) for s in ("big", "small")}
    val_counts = {s: sum(t.endswith(f"a {s} source.") for t in original.iter_texts("val"))
                  for s in ("big", "small")}
    balanced = {s: counts[s] - val_counts[s] for s in counts}
    assert balanced["big"] == balanced["small"]
    before = cleaned.report["balance"]["before"]
    assert balanced["big"] == (min if mode == "down" else max)(before.values())
    assert cleaned.report["balance"]["after"] == dict.fromkeys(["big", "small"], balanced["big"])
    # Missing from a record: its file and line.
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "source": "x"}, {"text": "b"}])
    with pytest.raises(TfchatError, match=r"bad.jsonl line 2: no field 'source'"):
        clean_corpus(config_lib.DataConfig(path=str(tmp_path / "bad.jsonl"), balance_field="source"),
                     str(tmp_path / "cache"))


def test_unicode_repair_is_on_by_default_and_runs_from_before_keep_it_off(tmp_path):
    from tfchat.run_folder import load_config

    data = write_text(tmp_path / "notes.txt", "the caf\u00c3\u00a9  opens at nine.\n" * 40)
    settings = {**TINY, "objective": "causal", "name": "new", "runs_dir": str(tmp_path / "runs"),
                "data.path": data, "train.max_steps": 4, "train.eval_interval": 4}
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    run = tmp_path / "runs" / "new"
    assert json.loads((run / "config.json").read_text())["data"]["fix_unicode"] is True
    (copy,) = (tmp_path / "runs" / ".cleaned").iterdir()
    assert (copy / "data" / "00000.txt").read_text().startswith("the café opens at nine.\n")
    # A run whose config.json predates the setting read its data raw, and still does.
    saved = json.loads((run / "config.json").read_text())
    del saved["data"]["fix_unicode"]
    (run / "config.json").write_text(json.dumps(saved))
    assert load_config(str(run)).data.fix_unicode is False
    assert json.loads((run / "config.json").read_text())["data"]["fix_unicode"] is False
    # The chatterbot corpus and CSV files are not the stage's to read: off for them.
    from tfchat.data.cleaned import hygiene_enabled

    assert not hygiene_enabled(config_lib.DataConfig(path="chatterbot:english"))
    csv = write_text(tmp_path / "labels.csv", "text,label\nhi,a\n")
    assert not hygiene_enabled(config_lib.DataConfig(path=csv))
    yml = write_text(tmp_path / "talk.yml", "conversations:\n- - hi\n  - hello\n")
    assert not hygiene_enabled(config_lib.DataConfig(path=yml))
    with pytest.raises(TfchatError, match="not chatterbot-corpus YAML files"):
        clean_corpus(config_lib.DataConfig(path=yml, dedup="exact"), str(tmp_path / "c"))
    assert hygiene_enabled(config_lib.DataConfig(path=data))


def test_errors_in_the_cleaned_copy_name_the_users_file_and_line(tmp_path, capsys):
    from tfchat import fit

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "and then?"}]}
    path = write_jsonl(tmp_path / "chats.jsonl", [good, good, good, bad])
    with open(path, "a", encoding="utf-8") as f:  # a blank line, skipped, then another bad one
        f.write("\n" + json.dumps({"messages": [{"role": "user", "content": "why?"}]}) + "\n")
    code = fit.main(["--data.path", path, "--data.dedup", "exact",
                     "--runs_dir", str(tmp_path / "runs")])
    # Duplicates left lines 2 and 3 out of the copy, where this is line 2.
    assert code == 1
    assert capsys.readouterr().err == \
        f"error: {path} line 4: the conversation has no assistant turn.\n"
    from tfchat.data.cleaned import name_sources

    (copy,) = (tmp_path / "runs" / ".cleaned").iterdir()
    assert name_sources(f"{copy}/data/00000.jsonl line 3: x") == f"{path} line 6: x"


def test_metadata_fields_are_kept_as_written_and_do_not_make_documents_differ(tmp_path):
    text = "the same words about the sea, the ships and the harbour at night."
    records = [{"text": text, "source": "forum", "url": "https://a.example/1", "lang": "en"},
               {"text": text + "  ", "source": "blog", "url": "https://b.example/2", "lang": "en"},
               {"messages": [{"role": "user", "content": "hi  there"},
                             {"role": "assistant", "content": "hello"}], "title": "caf\u00c3\u00a9  x"}]
    path = write_jsonl(tmp_path / "docs.jsonl", records)
    cleaned = clean_corpus(config_lib.DataConfig(path=path, dedup="exact"), str(tmp_path / "c"))
    assert cleaned.report["removed"]["duplicate_exact"] == 1
    lines = [json.loads(line) for line in open(os.path.join(cleaned.data.path, "00000.jsonl"))]
    assert lines[0] == records[0]
    # The conversation is cleaned; its title, metadata, is not.
    assert lines[1] == {"messages": [{"role": "user", "content": "hi there"},
                                     {"role": "assistant", "content": "hello"}],
                        "title": records[2]["title"]}


def test_a_bad_record_leaves_no_partial_copy(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one", "source": "a"}, {"text": "two"}])
    cache = tmp_path / "runs" / ".cleaned"
    with pytest.raises(TfchatError, match=r"docs\.jsonl line 2: no field 'source'"):
        clean_corpus(config_lib.DataConfig(path=path, balance_field="source"), str(cache))
    assert not cache.exists()
