"""Train a language model: `python -m tfchat.fit`.

With no arguments it trains a small chat model (BPE, 4 layers, width 128) on
the English conversations of the chatterbot-corpus package (loss on the
assistant's tokens only; a few minutes on 2 CPU cores) and prints how to chat
with it. Everything else comes from config files and `--section.field value`
overrides:

    python -m tfchat.fit --config shakespeare_char
    python -m tfchat.fit --data.path my_corpus/ --tokenizer.kind bpe \\
        --model.num_layers 6 --train.max_steps 5000 --name my_run
    python -m tfchat.fit --name my_run --resume      # continue a stopped run
    python -m tfchat.fit --init_from runs/my_run --data.path chats.jsonl \\
        --model.lora_rank 8 --name my_chat           # chat fine-tuning, LoRA

Masked-LM pretraining, then classification fine-tuning from it:

    python -m tfchat.fit --objective mlm --tokenizer.kind wordpiece --name enc
    python -m tfchat.fit --objective classify --tokenizer.kind wordpiece \\
        --init_from runs/enc --data.path labels.csv --name clf

A run lives in runs/<name>/: its config, tokenizer, checkpoints and
TensorBoard logs (tensorboard --logdir runs).
"""

import dataclasses
import os
import shutil
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

import tfchat  # noqa: F401  (sets the Keras backend)
from tfchat import config as config_lib
from tfchat.errors import TfchatError


def build_parser():
    parser = config_lib.parser_with_config(__doc__, prog="python -m tfchat.fit")
    parser.add_argument(
        "--resume", action="store_true",
        help="Continue the run named by --name from its latest checkpoint.",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="Delete an existing run of the same name and start over.",
    )
    quiet.add_verbose_flag(parser)
    return parser


def make_config(args):
    overrides = config_lib.overrides_from_args(args)
    if args.resume:
        from tfchat.run import load_config

        name = overrides.get("name", config_lib.Config.name)
        runs_dir = overrides.get("runs_dir", config_lib.Config.runs_dir)
        saved = load_config(os.path.join(runs_dir, name)).to_dict()
        return config_lib.build_config(args.config, overrides, base=saved)
    config = config_lib.build_config(args.config, overrides)
    if config.init_from:
        # Fine-tuning keeps the pretrained run's model shape and tokenizer
        # unless the command line says otherwise (then `train` explains).
        from tfchat.run import load_config

        saved = load_config(config.init_from).to_dict()
        base = {"model": saved["model"], "tokenizer": saved["tokenizer"]}
        config = config_lib.build_config(args.config, overrides, base=base)
    return config


def resolve_objective(config):
    """`objective: auto` -> chat for dialogue data, causal otherwise."""
    if config.objective != config_lib.AUTO_OBJECTIVE:
        return config
    from tfchat.data.dialogues import is_dialogue_data

    objective = "chat" if is_dialogue_data(config.data) else "causal"
    config = dataclasses.replace(config, objective=objective)
    # What holds for the chosen objective (e.g. chat's tokenizer) is checked now.
    config_lib.validate(config)
    return config


def train(config, resume=False, overwrite=False, verbose=1, strategy=None):
    """Runs the whole training job for `config` (any objective; mlm and
    classify go to `_train_encoder`); returns the metric history.

    `strategy` overrides `train.strategy` (tests pass a MirroredStrategy over
    logical CPU devices)."""
    import keras
    import tensorflow as tf

    from tfchat.data.corpus import Corpus
    from tfchat.data.pipeline import causal_lm_dataset
    from tfchat.data.tokenizer import load_tokenizer, train_tokenizer
    from tfchat.run import CONFIG_FILE, TOKENIZER_DIR, build_model, write_json_atomic
    from tfchat.run import apply_lora
    from tfchat.train.distribute import choose_strategy, is_chief
    from tfchat.train.trainer import ChatTrainer, Trainer

    config = resolve_objective(config)
    chat = config.objective == "chat"
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.train.seed)
    strategy = strategy or choose_strategy(config.train.strategy)
    # Under multi_worker only the chief writes the run folder; the other
    # workers build the same tokenizer from the same corpus.
    chief = is_chief(strategy)

    run_dir = config.run_dir
    exists = os.path.isfile(os.path.join(run_dir, CONFIG_FILE))
    if chief and exists and not (resume or overwrite):
        raise TfchatError(
            f"A run already exists at {run_dir}. Pass --resume to continue it, "
            "--overwrite to start over, or --name for a new run."
        )
    if resume and not exists:
        raise TfchatError(f"Nothing to resume: no run at {run_dir}.")
    if chief and overwrite and exists and not resume:
        shutil.rmtree(run_dir)
    replicas = strategy.num_replicas_in_sync
    if config.train.batch_size % (replicas * config.train.grad_accumulation_steps):
        raise TfchatError(
            f"train.batch_size {config.train.batch_size} must divide evenly over "
            f"{replicas} replica(s) x {config.train.grad_accumulation_steps} "
            "micro-batch(es)."
        )
    if config.objective in config_lib.ENCODER_OBJECTIVES:
        return _train_encoder(config, strategy, resume=resume, verbose=verbose)
    if chat:
        from tfchat.data.dialogues import DialogueCorpus

        corpus = DialogueCorpus(config.data)
    else:
        corpus = Corpus(config.data)
    tokenizer_dir = os.path.join(run_dir, TOKENIZER_DIR)
    init_checkpoint = None
    if config.init_from:
        tokenizer, init_checkpoint = _init_from(config, tokenizer_dir if resume else None)
        if chief and not resume:
            os.makedirs(run_dir, exist_ok=True)
            tokenizer.save(tokenizer_dir)
            write_json_atomic(os.path.join(run_dir, CONFIG_FILE), config.to_dict())
    elif resume:
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(config.tokenizer, corpus.iter_texts("train"))
        if chief:
            os.makedirs(run_dir, exist_ok=True)
            tokenizer.save(tokenizer_dir)
            write_json_atomic(os.path.join(run_dir, CONFIG_FILE), config.to_dict())

    m, t = config.model, config.train
    datasets = {}
    for split in ("train", "val") if not chat else ():  # chat: _chat_datasets
        datasets[split] = causal_lm_dataset(
            corpus.texts(split), tokenizer, m.block_size, t.batch_size,
            add_eos=corpus.is_documents,
            shuffle_buffer=t.shuffle_buffer if split == "train" else 0,
            seed=t.seed, repeat=split == "train", drop_remainder=split == "train",
        )
        _check_not_empty(corpus.texts(split), tokenizer, m.block_size, split, corpus)
    if chat:
        datasets = _chat_datasets(config, corpus, tokenizer, verbose and chief)

    with strategy.scope():
        model = build_model(config, tokenizer.vocabulary_size)
        if init_checkpoint and not resume:
            _restore_init(model, init_checkpoint, config.init_from)
        # After the pretrained weights, so the adapters start from them;
        # the optimizer below then holds the adapters only.
        apply_lora(model, config)
        _compile(model, t)
    trainer = _start_trainer(ChatTrainer if chat else Trainer, config, strategy, model,
                             tokenizer, datasets, resume, verbose)
    if verbose and chief:
        print(
            f"Training {run_dir}: {model.backbone.num_params() / 1e6:.2f}M parameters, "
            f"vocabulary {tokenizer.vocabulary_size} ({config.tokenizer.kind}), "
            f"{t.precision}; global batch {t.batch_size} = {replicas} replica(s) x "
            f"{t.batch_size // replicas} sequences"
            + (f" in {t.grad_accumulation_steps} micro-batches" if t.grad_accumulation_steps > 1 else "")
            + f", {m.block_size} tokens each."
            + (f" LoRA rank {m.lora_rank}: {_count(model.trainable_variables)} "
               "trainable parameters." if m.lora_rank else "")
        )
        advice = precision_advice(t, gpus=len(tf.config.list_logical_devices("GPU")))
        if advice:
            print(advice)
    return trainer.fit()


def precision_advice(train_config, gpus):
    """A hint for a setting that is slower than it need be, or None."""
    t = train_config
    if t.precision == "mixed_bfloat16" and t.jit_compile and not gpus:
        # Measured in benchmarks/RESULTS.md: 1,972 vs 2,928 tokens/s (large shape).
        return ("Note: on a CPU, mixed_bfloat16 runs faster with --train.jit_compile "
                "false (XLA's CPU matmuls gain nothing from bfloat16).")
    return None


def _compile(model, train_config):
    """Builds the optimizer's variables up front (the strategy loop needs them
    before its first step) and attaches it to the model."""
    from tfchat.train.optim import build_optimizer

    optimizer = build_optimizer(train_config, model)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer)


def _start_trainer(trainer_class, config, strategy, model, tokenizer, datasets, resume,
                   verbose):
    """The trainer for a built, compiled model; on resume, at its checkpoint."""
    trainer = trainer_class(config, strategy, model, tokenizer, datasets["train"],
                            datasets["val"], config.run_dir, verbose=verbose)
    if resume:
        step = trainer.restore()
        if verbose:
            print(f"Resuming {config.run_dir} at step {step}.")
    return trainer


def _count(variables):
    return sum(int(v.shape.num_elements()) for v in variables)


def _init_from(config, run_tokenizer_dir=None):
    """The pretrained run's tokenizer and checkpoint, after checking that the
    fine-tuning config can use them."""
    from tfchat.data.tokenizer import load_tokenizer
    from tfchat.run import TOKENIZER_DIR, latest_checkpoint, load_config

    source = config.init_from
    pretrained = load_config(source)
    if pretrained.objective in config_lib.ENCODER_OBJECTIVES:
        raise TfchatError(
            f"init_from {source} is a {pretrained.objective} run (a BERT encoder); "
            f"objective {config.objective} starts from a causal or chat run."
        )
    if pretrained.model.lora_rank:
        raise TfchatError(
            f"init_from {source} has LoRA adapters; merge them into its weights "
            f"first: python -m tfchat.lora merge --run {source}"
        )
    shape = ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "block_size")
    for key in shape:
        mine, theirs = getattr(config.model, key), getattr(pretrained.model, key)
        if key == "intermediate_dim":
            mine = mine or 4 * config.model.hidden_dim
            theirs = theirs or 4 * pretrained.model.hidden_dim
        if mine != theirs:
            raise TfchatError(
                f"model.{key} is {mine} but init_from {source} has {theirs}; "
                "a fine-tuned model keeps its pretrained shape."
            )
    # The chat markers are reserved ids of every tfchat tokenizer, so a
    # pretrained vocabulary needs no new embedding rows for chat; it must
    # only be the very same vocabulary.
    if config.tokenizer.kind != pretrained.tokenizer.kind:
        raise TfchatError(
            f"tokenizer.kind is {config.tokenizer.kind} but init_from {source} "
            f"uses {pretrained.tokenizer.kind}; a fine-tuned model keeps its "
            "pretrained vocabulary."
        )
    source_tokenizer_dir = os.path.join(source, TOKENIZER_DIR)
    tokenizer = load_tokenizer(source_tokenizer_dir)
    if run_tokenizer_dir and not _same_files(run_tokenizer_dir, source_tokenizer_dir):
        raise TfchatError(
            f"The tokenizer in {run_tokenizer_dir} differs from init_from "
            f"{source}'s; the run and its pretrained weights must share a vocabulary."
        )
    checkpoint, _ = latest_checkpoint(source)
    return tokenizer, checkpoint


def _same_files(dir_a, dir_b):
    names = sorted(os.listdir(dir_a))
    if names != sorted(os.listdir(dir_b)):
        return False
    for name in names:
        with open(os.path.join(dir_a, name), "rb") as a, open(os.path.join(dir_b, name), "rb") as b:
            if a.read() != b.read():
                return False
    return True


def _restore_init(model, checkpoint, source):
    import tensorflow as tf

    from tfchat.run import restore_weights

    try:
        restore_weights(model, checkpoint)
    except (tf.errors.OpError, ValueError, AssertionError) as e:
        raise TfchatError(
            f"The weights of init_from {source} do not fit this model: "
            f"{str(e).splitlines()[0][:300]}"
        ) from None


def _chat_datasets(config, corpus, tokenizer, verbose):
    """Renders the conversations with the chat template and batches them as
    (inputs, targets, weights); see `tfchat.data.pipeline.chat_dataset`."""
    from tfchat.data.chat_template import encode_conversations
    from tfchat.data.pipeline import chat_dataset

    m, t = config.model, config.train
    datasets = {}
    for split in ("train", "val"):
        encoded = encode_conversations(
            tokenizer, corpus.conversations(split), max_tokens=m.block_size + 1
        )
        usable = [e for e in encoded if sum(e.weights)]
        if not usable:
            raise TfchatError(
                f"No {split} conversation of {corpus.path} leaves room for an "
                f"assistant token within model.block_size {m.block_size}; "
                "raise model.block_size."
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
        datasets[split] = chat_dataset(
            usable, m.block_size, t.batch_size,
            shuffle_buffer=t.shuffle_buffer if train else 0, seed=t.seed,
            repeat=train, drop_remainder=train,
        )
    return datasets


def _train_encoder(config, strategy, resume=False, verbose=1):
    """`train` for objectives mlm and classify: the BERT encoder over a
    corpus (mlm) or labelled texts (classify), optionally starting from the
    encoder of the run `init_from`."""
    import tensorflow as tf

    from tfchat.data.corpus import Corpus
    from tfchat.data.labelled import read_labelled
    from tfchat.data.pipeline import classification_dataset, count_truncated, masked_lm_dataset
    from tfchat.data.tokenizer import load_tokenizer, train_tokenizer
    from tfchat.run import (
        CONFIG_FILE, TOKENIZER_DIR, build_model, check_init_from, load_backbone_weights,
        load_labels, save_labels, write_json_atomic,
    )
    from tfchat.train.distribute import is_chief
    from tfchat.train.trainer import Trainer

    chief = is_chief(strategy)
    run_dir = config.run_dir
    m, t = config.model, config.train
    classify = config.objective == "classify"
    init_from = config.init_from if not resume else ""
    if init_from:
        check_init_from(config)

    # Read and check all input before anything is written.
    if classify:
        data = read_labelled(config.data, labels=load_labels(run_dir) if resume else None)
        texts = {split: tf.data.Dataset.from_tensor_slices(data.texts(split)) for split in ("train", "val")}
        vocabulary_texts = iter(data.texts("train"))
    else:
        corpus = Corpus(config.data)
        texts = {split: corpus.texts(split) for split in ("train", "val")}
        vocabulary_texts = corpus.iter_texts("train")
    tokenizer_dir = os.path.join(run_dir, TOKENIZER_DIR)
    if resume:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif init_from:
        # The encoder's embeddings only make sense with its own vocabulary.
        tokenizer = load_tokenizer(os.path.join(init_from, TOKENIZER_DIR))
    else:
        tokenizer = train_tokenizer(config.tokenizer, vocabulary_texts)
    if not classify:
        for split in ("train", "val"):
            _check_mlm_split(texts[split], tokenizer, m.block_size, split, corpus)
    if chief and not resume:
        os.makedirs(run_dir, exist_ok=True)
        tokenizer.save(tokenizer_dir)
        if classify:
            save_labels(run_dir, data.labels)
        write_json_atomic(os.path.join(run_dir, CONFIG_FILE), config.to_dict())

    one_per_text = classify or corpus.is_documents
    if one_per_text and verbose and chief:
        # Texts longer than the context are cut to fit; say how many.
        for split in ("train", "val"):
            cut, total = count_truncated(texts[split], tokenizer, m.block_size - 2)
            if cut:
                print(f"Truncated {cut} of {total} {split} texts longer than "
                      f"model.block_size - 2 = {m.block_size - 2} tokens.")
    datasets = {}
    for split in ("train", "val"):
        training = split == "train"
        options = dict(
            shuffle_buffer=t.shuffle_buffer if training else 0, repeat=training,
            drop_remainder=training,
        )
        if classify:
            datasets[split] = classification_dataset(
                data.texts(split), data.label_ids(split), tokenizer, m.block_size,
                t.batch_size, seed=t.seed, **options,
            )
        else:
            mlm = config.mlm
            datasets[split] = masked_lm_dataset(
                texts[split], tokenizer, m.block_size, t.batch_size,
                documents=corpus.is_documents, mask_rate=mlm.mask_rate,
                mask_token_rate=mlm.mask_token_rate, random_token_rate=mlm.random_token_rate,
                max_predictions=mlm.max_predictions, whole_word=mlm.whole_word,
                # Validation masks differ from training's, and stay fixed.
                seed=t.seed if training else t.seed + 1, **options,
            )

    with strategy.scope():
        model = build_model(config, tokenizer.vocabulary_size, len(data.labels) if classify else None)
        if init_from:
            loaded = load_backbone_weights(model, init_from)
            if verbose and chief:
                print(f"Encoder weights from {loaded}.")
        _compile(model, t)
    trainer = _start_trainer(Trainer, config, strategy, model, tokenizer, datasets,
                             resume, verbose)
    if verbose and chief:
        what = (f"{len(data.labels)} classes, {len(data.train)} training examples"
                if classify else "masked LM")
        print(
            f"Training {run_dir} ({config.objective}: {what}): "
            f"{model.backbone.num_params() / 1e6:.2f}M encoder parameters, "
            f"vocabulary {tokenizer.vocabulary_size} ({config.tokenizer.kind}); "
            f"batch {t.batch_size} x {m.block_size} tokens."
        )
    history = trainer.fit()
    if classify and verbose and chief:
        from tfchat.evaluation.classification import evaluate_classifier, format_report
        from tfchat.run import load_run

        best = load_run(run_dir, checkpoint="best")
        print(f"\nValidation split, best checkpoint (step {best.step}):")
        print(format_report(evaluate_classifier(best)))
    return history


def _check_mlm_split(texts, tokenizer, block_size, split, corpus):
    """Fails early, and clearly, when a split gives no encoder sequence."""
    from tfchat.data.pipeline import pack_sequences, tokenize_texts

    if corpus.is_documents:
        if not any(True for _ in texts.take(1)):
            raise TfchatError(
                f"The {split} split of {corpus.path} has no documents; add documents "
                "or change data.val_fraction."
            )
        return
    blocks = pack_sequences(tokenize_texts(texts, tokenizer), block_size - 2)
    if not any(True for _ in blocks.take(1)):
        raise TfchatError(
            f"The {split} split of {corpus.path} has fewer than model.block_size - 2 "
            f"= {block_size - 2} tokens. Lower model.block_size or add text."
        )


def _check_not_empty(texts, tokenizer, block_size, split, corpus):
    """Fails early, and clearly, when a split cannot fill one block."""
    from tfchat.data.pipeline import pack_sequences, tokenize_texts

    blocks = pack_sequences(tokenize_texts(texts, tokenizer, corpus.is_documents), block_size + 1)
    for _ in blocks.take(1):
        return
    raise TfchatError(
        f"The {split} split of {corpus.path} has fewer than model.block_size + 1 "
        f"= {block_size + 1} tokens. Lower model.block_size or add text."
    )


def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            keys = ", ".join(k for k, *_ in config_lib.flat_keys())
            raise TfchatError(
                f"Unknown option {unknown[0]!r}. Valid config keys: {keys}."
            )
        config = resolve_objective(make_config(args))
        train(config, resume=args.resume, overwrite=args.overwrite)
    except TfchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if config.objective == "chat":
        print(
            "\nDone. Chat with it:\n"
            f"  python -m tfchat.chat --run {config.run_dir}\n"
            f"Score its replies (BLEU, ROUGE-L):\n"
            f"  python -m tfchat.evaluate --run {config.run_dir}"
        )
        return 0
    if config.objective == "mlm":
        print(f'\nDone. Try it with:\n  python -m tfchat.fill_mask --run {config.run_dir} '
              '"To be or not to [MASK]."')
        return 0
    if config.objective == "classify":
        print(f"\nDone. Evaluate it with:\n  python -m tfchat.evaluate --run {config.run_dir}")
        return 0
    print(
        "\nDone. Sample from it with:\n"
        f"  python -m tfchat.generate --run {config.run_dir} "
        f'--prompt "{_sample_prompt(config)}"'
    )
    return 0


def _sample_prompt(config):
    return "User: Hello\\nBot:" if config.data.path.startswith("chatterbot:") else "\\n"


if __name__ == "__main__":
    sys.exit(main())
