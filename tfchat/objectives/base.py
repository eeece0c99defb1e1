"""What every objective module provides, and the model builders they share.

An objective (`causal`, `chat`, `dpo`, `distill`, `mlm`, `classify`) is one
module under `tfchat/objectives/` that defines an `Objective`: how to read
its data, which datasets and model it trains, how its text sample is drawn
during training, how a trained run is evaluated, which signatures it
exports, and which runs it may start from. `tfchat.objectives` is the
registry.
"""

import dataclasses
import typing

import tensorflow as tf

from tfchat.data.corpus import Corpus
from tfchat.data.prepared import PreparedCorpus, is_prepared
from tfchat.data.sharding import WHOLE, InputShard
from tfchat.errors import TfchatError
from tfchat.model.bert import BertEncoder
from tfchat.model.gpt import GPT
from tfchat.model.tasks import CausalLM


# Fine-tuning keeps the model shape and tokenizer of the run it starts from.
INIT_FROM_SETTINGS = (("init_from", ("model", "tokenizer")),)


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective, from data to export.

    Functions (`config` is a `tfchat.config.Config`, `data` what `read_data`
    returned, `run` a loaded `tfchat.run.Run`):

      check_config(config) -> list of messages for settings it cannot use
      read_data(config) -> data; reads and checks all input. A `labelled`
          objective's takes `labels=` too: a resumed run's classes, which
          fix the label ids its checkpoint was trained with
      tokenizer_texts(data) -> iterator of training texts for a new vocabulary
      check_data(config, data, tokenizer, workers) -> raises TfchatError if
          a split, or a worker's share of the training split, cannot make
          one batch
      datasets(config, data, tokenizer, verbose, shard) -> {"train", "val"}
          tf.data datasets of (inputs, targets[, weights]) batches (with
          `init_checkpoint=` too where `scores_with_init`); the training
          split only `shard`'s part (`tfchat.data.sharding`), in batches
          of its part of `train.batch_size`
      build_model(config, vocabulary_size, labels=None, forward_pass=True) ->
          a built task model (forward_pass: see tfchat.run.build_model)
      sampler(model, tokenizer, config) -> a function returning the text
          sample logged at each evaluation, or None
      evaluate(run, **options) -> dict of results (`python -m tfchat.evaluate`)
      format_results(results) -> text, or None to print key: value lines
      describe(config, data, model) -> the line printed when training starts
      next_steps(config) -> what to run next, printed when training ends
    """

    name: str
    init_from: typing.Tuple[str, ...]  # objectives of the runs it may start from
    generates: bool  # a GPT that writes text (generate, chat)
    check_config: typing.Callable
    read_data: typing.Callable
    tokenizer_texts: typing.Callable
    check_data: typing.Callable
    datasets: typing.Callable
    build_model: typing.Callable
    evaluate: typing.Callable
    signatures: tuple  # tfchat.serving.export builders; the first is serving_default
    next_steps: typing.Callable
    sampler: typing.Callable = lambda model, tokenizer, config: None
    describe: typing.Callable = lambda config, data, model: ""
    format_results: typing.Optional[typing.Callable] = None
    # Printed after training from the best checkpoint (classify's report).
    report_best: typing.Optional[typing.Callable] = None
    labelled: bool = False  # the run keeps labels.json; read_data takes labels=
    chats: bool = False  # trained on the chat template: `python -m tfchat.chat` fits it
    # Its datasets score the data with init_from's weights (DPO's
    # reference): `datasets` takes `init_checkpoint`, that run's latest.
    scores_with_init: bool = False
    # config -> its own defaults for general settings ({"train.learning_rate":
    # ...}), used where the config files and command line leave a key unset
    # (`tfchat.objectives.resolve`); they may depend on what was set.
    defaults: typing.Callable = lambda config: {}
    # (config, validation results) -> what ranks evaluations for the best
    # checkpoint and early stopping, lower is better.
    selection_loss: typing.Callable = lambda config, results: results["val_loss"]
    # (config, validation results) -> a warning to print, or None.
    warning: typing.Callable = lambda config, results: None
    # (config, the best checkpoint's step, its validation results) -> what
    # the end of training adds to the last evaluation's warning.
    closing_note: typing.Callable = lambda config, step, results: ""
    # The checkpoint chat, generate, export and evaluate load unless told:
    # "latest", or "best" (the latest while there is no best yet).
    default_checkpoint: str = "latest"
    # It trains on a folder of prepared tokens (`python -m tfchat.prepare`).
    reads_prepared: bool = False
    # Its datasets apply data.augment_* to the training split
    # (`tfchat.data.augment`).
    augments: bool = False
    # What one row of a batch is, in the line training starts with (dpo:
    # "pairs", a chosen and a rejected sequence).
    batch_rows: str = "sequences"
    # An encoder whose runs fill in [MASK]s (`python -m tfchat.fill_mask`,
    # the exported `fill_mask` signature and its mask_token).
    fills_masks: bool = False
    # The other runs whose settings a new run takes where the config files
    # and command line leave them unset: (the config key naming the run,
    # the sections of its config taken), in order (`tfchat.fit.make_config`,
    # which first converts a pretrained checkpoint named there into a run).
    settings_from: tuple = INIT_FROM_SETTINGS
    # The config key naming the run whose model the trained one learns from
    # (distill's teacher), or None. The job checks it (`check_sources`),
    # gives the new run that run's tokenizer (the model predicts its
    # tokens), loads it under the strategy and gives the task its backbone
    # (`attach_teacher`).
    teacher: typing.Optional[str] = None
    # (config, the run folder being resumed or None) -> raises TfchatError
    # if a run the config reads besides init_from (the teacher) cannot serve.
    check_sources: typing.Callable = lambda config, resumed_folder: None
    # config -> messages for the values of its own config section (mlm, dpo,
    # distill) that a type alone cannot check. Every objective's are checked
    # on every config (`tfchat.objectives.check`), as `tfchat.config.validate`
    # checks the other sections: a bad value is an error whatever trains.
    check_settings: typing.Callable = lambda config: []

    def teacher_path(self, config):
        """The path of `config`'s teacher run (`teacher`), or "" for none."""
        return config_value(config, self.teacher) if self.teacher else ""


def config_value(config, key):
    """The value of the dotted `key` ("distill.teacher") in `config`."""
    value = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def read_corpus(config):
    """The text corpus of `config.data` (causal and mlm objectives), or the
    tokens of a folder `python -m tfchat.prepare` wrote (causal)."""
    if is_prepared(config.data.path):
        return PreparedCorpus(config.data)
    return Corpus(config.data)


def share(split, shard):
    """The part of `split` one worker reads: `shard` of the training split,
    all of validation (which every worker evaluates whole)."""
    return shard if split == "train" else WHOLE


def split_shares(path, workers):
    """(split, shard, its name in messages) for the validation split and
    each of `workers` workers' share of the training split."""
    shares = [("train", WHOLE, f"The train split of {path}")] if workers == 1 else [
        ("train", InputShard(workers, i), f"Worker {i}'s share (of {workers}) of the "
         f"train split of {path}")
        for i in range(workers)
    ]
    return shares + [("val", WHOLE, f"The val split of {path}")]


def training_texts(corpus):
    """The texts a new vocabulary is learnt from: the training split."""
    return corpus.iter_texts("train")


# The decoder options of `config.model` that only the GPT takes.
DECODER_OPTIONS = (
    "norm", "norm_epsilon", "position", "rope_theta", "rope_scaling_factor",
    "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions",
    "mlp", "num_kv_heads", "tie_embeddings", "qkv_bias", "use_bias",
    "head_dim", "sliding_window", "qk_norm", "scale_embeddings",
)


def decoder_args(config):
    """The GPT's decoder options from `config.model` (defaults: GPT-2)."""
    return {name: getattr(config.model, name) for name in DECODER_OPTIONS}


def backbone_args(config, vocabulary_size):
    """What GPT and BertEncoder both take from `config.model`."""
    m = config.model
    return dict(
        vocabulary_size=vocabulary_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        hidden_dim=m.hidden_dim,
        intermediate_dim=m.intermediate_dim,
        block_size=m.block_size,
        dropout=m.dropout,
        dtype=config.train.precision,
    )


def build_causal_lm(config, vocabulary_size, labels=None, forward_pass=True):
    """A `CausalLM` over a `GPT`, built with weights: by a forward pass on
    zeros, or by `GPT.build` alone (`forward_pass=False`, enough to restore
    weights and generate; `tfchat.run.build_model`)."""
    backbone = GPT(
        **backbone_args(config, vocabulary_size), **decoder_args(config), name="gpt"
    )
    model = CausalLM(
        backbone, grad_accumulation_steps=config.train.grad_accumulation_steps,
        dtype=config.train.precision, name="causal_lm",
    )
    if forward_pass:
        model(tf.zeros((1, config.model.block_size), tf.int32))
    else:
        backbone.build((None, config.model.block_size))
        model.built = True  # CausalLM has no weights of its own
    return model


def build_encoder(config, vocabulary_size):
    return BertEncoder(**backbone_args(config, vocabulary_size), name="bert")


def encoder_inputs(block_size):
    """Dummy inputs that build an encoder task."""
    return {
        "token_ids": tf.zeros((1, block_size), tf.int32),
        "padding_mask": tf.ones((1, block_size), tf.bool),
    }


def encoder_only(config):
    """The settings an encoder objective (mlm, classify) cannot use."""
    problems = []
    if config.tokenizer.kind != "wordpiece":
        problems.append(f"objective {config.objective} needs tokenizer.kind wordpiece "
                        "(for [CLS], [SEP] and [MASK])")
    if config.model.lora_rank:
        problems.append("model.lora_rank must be 0 for objective mlm or classify "
                        "(LoRA adapts the GPT only)")
    if config.model.block_size < 3:
        problems.append("model.block_size must be at least 3 for an encoder "
                        "([CLS] text [SEP])")
    return problems


def restore_backbone(model, checkpoint, source):
    """Loads every backbone weight of `model` from the run checkpoint
    `checkpoint` (of the run `source`, named in the error).

    Only the backbone is named, so nothing else in the checkpoint waits for
    a matching object: restoring `model` itself would also queue the old
    run's optimizer slots for whatever optimizer `model.compile` attaches
    later (TensorFlow restores such deferred values on creation)."""
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=model.backbone))
    try:
        root.restore(checkpoint).assert_existing_objects_matched().expect_partial()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
        raise TfchatError(
            f"The weights of init_from {source} do not fit this model: "
            f"{str(e).splitlines()[0][:300]}"
        ) from None
