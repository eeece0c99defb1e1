"""What a preference-tuned model says: its replies to held-out prompts
against the chosen and rejected replies (`python -m tfchat.evaluate` on a
dpo run).

Reward accuracy only ranks each pair by likelihood; a model can rank every
pair right and no longer write anything readable. These numbers come from
what it writes: greedy replies scored by chrF (sacrebleu's, 0-100; character
n-grams, so any language and any tokenizer), the measure the chat
evaluation reports too (`tfchat.evaluation.chat`).
"""

import numpy as np
import sacrebleu


def preferred_replies(generator, pairs, batch_size=32, max_new_tokens=128, examples=3):
    """The greedy replies of `generator` (`tfchat.inference.generator`) to
    the distinct prompts of `pairs` (`PreferencePair`s; the first pair of a
    prompt counts), each scored by chrF against its chosen and its
    rejected reply: the share closer to the chosen one (a tie counts
    half), the mean chrF against the chosen one, the share that are the
    chosen reply exactly, and the first `examples` of them."""

    by_prompt = {}
    for pair in pairs:
        by_prompt.setdefault(pair.prompt, pair)
    prompts = list(by_prompt)
    replies = []
    for start in range(0, len(prompts), batch_size):
        replies += generator.chat([list(p) for p in prompts[start:start + batch_size]],
                                  max_new_tokens=max_new_tokens)
    closer, chrf_chosen, exact, shown = [], [], [], []
    for prompt, reply in zip(prompts, replies):
        pair = by_prompt[prompt]
        chosen, rejected = (_text(pair.chosen), _text(pair.rejected))
        to_chosen = sacrebleu.sentence_chrf(reply, [chosen]).score
        to_rejected = sacrebleu.sentence_chrf(reply, [rejected]).score
        closer.append(1.0 if to_chosen > to_rejected else 0.5 if to_chosen == to_rejected else 0.0)
        chrf_chosen.append(to_chosen)
        exact.append(float(reply.strip() == chosen.strip()))
        if len(shown) < examples:
            shown.append({"user": prompt[-1].content, "chosen": chosen, "rejected": rejected,
                          "reply": reply})
    return {
        "val_prompts": len(prompts),
        "val_replies_closer_to_chosen": float(np.mean(closer)),
        "val_reply_chrf_chosen": float(np.mean(chrf_chosen)),
        "val_replies_exactly_chosen": float(np.mean(exact)),
        "examples": shown,
    }


def _text(messages):
    return "\n".join(m.content for m in messages)
