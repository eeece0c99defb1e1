"""`objective: chat`: fine-tuning on conversations, the loss on the
assistant's tokens only (messages JSONL, chatterbot YAML)."""

from tfchat.data import augment
from tfchat.data.cleaned import reading_config
from tfchat.data.chat_template import Message, encode_conversations
from tfchat.data.dialogues import DialogueCorpus
from tfchat.data.pipeline import chat_dataset
from tfchat.data.tasks import TaskCorpus
from tfchat.data.sharding import WHOLE
from tfchat.errors import TfchatError
from tfchat.evaluation.chat import evaluate_replies
from tfchat.evaluation import fairness
from tfchat.evaluation.language_model import evaluate_loss
from tfchat.evaluation.tasks import ReplyCache, evaluate_task
from tfchat.inference.generator import Generator
from tfchat.objectives.base import Objective, build_causal_lm, share, training_texts
from tfchat.serving.export import (
    add_chat_signature, add_generate_signature, add_score_signature,
)


def check_config(config):
    if config.tokenizer.kind == "wordpiece":
        return ["objective chat needs tokenizer.kind char or bpe (WordPiece splits the "
                "chat markers)"]
    return []


def read_data(config):
    """A `DialogueCorpus`, or for task records (translation, summarisation,
    qa: `data.task`) a `TaskCorpus` of one-exchange conversations."""
    return TaskCorpus.for_data(config.data) or DialogueCorpus(config.data)


def encode(config, conversations, tokenizer):
    """Conversations -> `Encoded` rows that fit one block with room for at
    least one assistant token (the others are dropped), and all of them."""
    encoded = encode_conversations(tokenizer, conversations,
                                   max_tokens=config.model.block_size + 1)
    return [e for e in encoded if sum(e.weights)], encoded


def check_data(config, corpus, tokenizer, workers=1):
    """Nothing beyond `datasets`, which renders every conversation and fails
    if a split has none that fits."""


def datasets(config, corpus, tokenizer, verbose=0, batch_size=None, splits=("train", "val"),
             conversations=None, shard=WHOLE):
    """The conversations rendered with the chat template, as (inputs,
    targets, weights) batches; see `tfchat.data.pipeline.chat_dataset`.
    `conversations` ({split: [...]}) replaces the corpus' own."""
    m, t = config.model, config.train
    result = {}
    for split in splits:
        rows = (conversations[split] if conversations and split in conversations
                else corpus.conversations(split))
        part = share(split, shard)
        usable, encoded = encode(config, part.rows(rows), tokenizer)
        if not usable:
            raise TfchatError(
                f"No {split} conversation of {corpus.path} leaves room for an "
                f"assistant token within model.block_size {m.block_size}; "
                "raise model.block_size."
                if part.whole or len(rows) >= part.count else
                f"The {split} split of {corpus.path} has {len(rows)} conversations, "
                f"fewer than the {part.count} workers."
            )
        if verbose:
            truncated = sum(e.truncated for e in usable)
            unknown = sum(ids.count(tokenizer.unk_id) for ids in (e.ids for e in usable))
            print(
                f"{split}: {len(usable)} conversations, {truncated} truncated to "
                f"{m.block_size + 1} tokens"
                + (f", {len(encoded) - len(usable)} skipped (no room for a reply)"
                   if len(usable) < len(encoded) else "")
                + (f", {unknown} unknown tokens" if unknown else "")
                + "."
            )
        train = split == "train"
        result[split] = chat_dataset(
            usable, m.block_size, part.batch_size(batch_size or t.batch_size),
            shuffle_buffer=t.shuffle_buffer if train else 0, seed=t.seed,
            repeat=train, drop_remainder=train, packing=config.data.packing,
            augment=augment.from_config(config.data) if train else None,
            mask_id=augment.mask_id(tokenizer),
        )
    return result


def sampler(model, tokenizer, config):
    """The logged sample: the reply to `train.sample_prompt` sent as a user
    message, from one generator for the run (traced once)."""
    t = config.train
    if not t.sample_tokens:
        return None
    generator = Generator(model.backbone, tokenizer)
    message = t.sample_prompt.strip() or "Hello"

    def sample():
        reply = generator.chat([[Message("user", message)]], t.sample_tokens,
                               temperature=0.8, top_k=40, seed=t.seed)[0]
        return f"user: {message}\nassistant: {reply}"

    return sample


def evaluate(run, batch_size=32, max_new_tokens=128, limit=0, examples=3, jit_compile=True,
             **unused):
    """Assistant-token loss, perplexity and accuracy, and BLEU, ROUGE-L and
    chrF of greedy replies, on the first `limit` (0 = all) validation
    conversations (`tfchat.evaluation.chat`); for task records, under
    "task", the task's own metrics of the same replies
    (`tfchat.evaluation.tasks`)."""
    corpus = read_data(reading_config(run.config)[0])  # the run's cleaned copy, if any
    conversations = corpus.conversations("val")[: limit or None]
    val = datasets(run.config, corpus, run.tokenizer, batch_size=batch_size, splits=["val"],
                   conversations={"val": conversations})["val"]
    results = evaluate_loss(run.model, val)
    generator = Generator(run.backbone, run.tokenizer, jit_compile=jit_compile)
    task = corpus.task if isinstance(corpus, TaskCorpus) else None
    if task:  # the task's metrics (tfchat.evaluation.tasks) score the same greedy replies
        generator = cache = ReplyCache(generator)
    groups = corpus.groups("val")  # data.group_field: the same replies scored per group
    if groups is not None:
        generator = fairness.RecordingGenerator(generator)
    results.update(evaluate_replies(
        generator, conversations, corpus.conversations("train"), run.config.data.path,
        batch_size=batch_size, max_new_tokens=max_new_tokens, examples=examples,
    ))
    if task:
        results["task"], rows = evaluate_task(cache, task, conversations, batch_size,
                                              max_new_tokens)
        results["metrics"] = results.get("metrics", []) + rows
    if groups is not None:
        results["groups"] = fairness.chat_groups(
            generator, conversations, groups[:len(conversations)], results.get("bleu_tokenize"),
            run.config.data.group_field, max_new_tokens, batch_size)
    return results


def describe(config, corpus, model):
    return ("conversations packed several to a block" if config.data.packing
            else "one conversation per block")


def next_steps(config):
    return ("Chat with it:\n"
            f"  python -m tfchat.chat --run {config.run_dir}\n"
            "Score its replies (BLEU, chrF, METEOR, ROUGE):\n"
            f"  python -m tfchat.evaluate --run {config.run_dir}")


OBJECTIVE = Objective(
    name="chat",
    augments=True,
    init_from=("causal", "chat", "dpo"),
    generates=True,
    chats=True,
    check_config=check_config,
    read_data=read_data,
    tokenizer_texts=training_texts,
    check_data=check_data,
    datasets=datasets,
    build_model=build_causal_lm,
    sampler=sampler,
    describe=describe,
    evaluate=evaluate,
    signatures=(add_generate_signature, add_chat_signature, add_score_signature),
    next_steps=next_steps,
)
