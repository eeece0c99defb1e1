"""Synthetic preference tasks, shared by tests/test_dpo.py and
benchmarks/dpo_defaults.py: per task, 30 prompts with a preferred and a
rejected reply, and the settings of the chat model (SFT) fine-tuned on both
replies of every prompt before preference tuning.

  polite      char tokenizer, 2 layers, width 64, context 64: "where are
              the X?" -> "happy to help, the X are here." over "find the X
              yourself." (the task of issue 28); short replies.
  directions  BPE (vocabulary 600, 256 of them byte fallbacks), context 64:
              "how do I get to the X?" -> three sentences of directions
              over "No idea where the X is. Look it up yourself."

The first 20 prompts are the preference pairs' (`TRAINING`), the last 10
are held out from them (`HELD_OUT`); the SFT model saw both replies of all
30, the rejected one twice as often.
"""

import sacrebleu

from conftest import write_jsonl

ITEMS = ["apples", "cats", "keys", "books", "shoes", "cups", "pens", "dogs", "maps", "hats",
         "bags", "coins", "forks", "lamps", "socks", "boats", "birds", "cards", "drums", "eggs",
         "gloves", "jars", "kites", "locks", "nails", "pots", "rings", "tents", "tools", "vases"]
PLACES = ["library", "station", "museum", "park", "bank", "bakery", "harbour", "market",
          "school", "theatre", "hospital", "castle", "bridge", "stadium", "airport", "gallery",
          "church", "garden", "cinema", "hotel", "palace", "zoo", "beach", "tower", "square",
          "temple", "factory", "office", "prison", "mall"]
_STREETS = ["two", "three", "four", "five", "six"]
TRAINING, HELD_OUT = slice(0, 20), slice(20, 30)


def polite(item):
    return (f"where are the {item}?", f"happy to help, the {item} are here.",
            f"find the {item} yourself.")


def directions(i, place):
    return (f"how do I get to the {place}?",
            f"The {place} is {_STREETS[i % 5]} streets north of here. Walk past the fountain "
            f"and turn left. You will see it on your right.",
            f"No idea where the {place} is. Look it up yourself.")


# (prompt, preferred reply, rejected reply) per task.
EXAMPLES = {
    "polite": [polite(item) for item in ITEMS],
    "directions": [directions(i, place) for i, place in enumerate(PLACES)],
}
_SMALL = {"model.num_layers": 2, "model.num_heads": 2, "model.hidden_dim": 64,
          "model.block_size": 64, "model.dropout": 0.0, "train.max_steps": 400,
          "train.learning_rate": 3e-3}
SFT_SETTINGS = {
    "polite": {"tokenizer.kind": "char", **_SMALL},
    "directions": {"tokenizer.kind": "bpe", "tokenizer.vocab_size": 600, **_SMALL},
}


def write_chats(path, examples):
    """Both replies of every example as chat JSONL (the SFT data), the
    rejected one twice: the SFT model then answers in the rejected style,
    and preference tuning must switch it."""
    return write_jsonl(path, [
        {"messages": [{"role": "user", "content": prompt},
                      {"role": "assistant", "content": reply}]}
        for prompt, chosen, rejected in examples for reply in (chosen, rejected, rejected)])


def write_pairs(path, examples):
    """The examples as preference pairs (TRL's prompt/chosen/rejected)."""
    return write_jsonl(path, [{"prompt": prompt, "chosen": chosen, "rejected": rejected}
                              for prompt, chosen, rejected in examples])


def in_preferred_style(reply, example):
    """Whether `reply` to `example`'s prompt is in the preferred style: chrF
    at least 80 against the preferred reply, and closer to it than to the
    rejected one (what the tests ask of replies to prompts the pairs leave
    out, where a name copied a letter wrong is still the preferred reply)."""
    _, chosen, rejected = example

    def chrf(reference):
        return sacrebleu.sentence_chrf(reply, [reference]).score

    return chrf(chosen) >= 80 and chrf(chosen) > chrf(rejected)
