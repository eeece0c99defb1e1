"""The training job `python -m tfchat.fit` runs, for every objective:

    config -> checked whole -> data read and checked -> tokenizer (trained,
    resumed, or init_from's) -> datasets -> run folder written -> model
    (init_from's weights, LoRA) under the strategy -> the trainer's loop

Nothing is written until the config, the data and the tokenizer have
passed every check, so a bad setting or bad input leaves no run folder
behind. What differs between objectives comes from `tfchat.objectives`.
"""

import os
import shutil

import keras
import tensorflow as tf

from tfchat import objectives
from tfchat.data.chat_template import use_chat_template
from tfchat.data.cleaned import REPORT, placeholders, reading_config
from tfchat.data.tokenizer import load_tokenizer, train_tokenizer
from tfchat.errors import TfchatError
from tfchat.objectives.base import restore_backbone
from tfchat.run import apply_lora, check_family, check_init_from, load_run, start_checkpoint
from tfchat.run_folder import RunFolder, same_files
from tfchat.train.distribute import choose_strategy, input_shard, is_chief
from tfchat.train.optim import build_optimizer
from tfchat.train.trainer import Trainer


def train(config, resume=False, overwrite=False, verbose=1, strategy=None):
    """Runs the whole training job for `config`; returns the metric history
    (one dict per log: the step, training metrics, and validation metrics
    at evaluations).

    `strategy` overrides `train.strategy` (tests pass a MirroredStrategy over
    logical CPU devices)."""
    config = objectives.resolve(config)
    objective = objectives.get(config.objective)
    check_family(config)
    folder = RunFolder(config.run_dir)
    t = config.train
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(t.seed)
    strategy = strategy or choose_strategy(t.strategy)
    # Under multi_worker only the chief writes the run folder; the other
    # workers build the same tokenizer from the same corpus.
    chief = is_chief(strategy)
    exists = folder.exists()
    if chief and exists and not (resume or overwrite):
        raise TfchatError(
            f"A run already exists at {folder.path}. Pass --resume to continue it, "
            "--overwrite to start over, or --name for a new run."
        )
    if resume and not exists:
        raise TfchatError(f"Nothing to resume: no run at {folder.path}.")
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % (replicas * t.grad_accumulation_steps):
        raise TfchatError(
            f"train.batch_size {t.batch_size} must divide evenly over {replicas} replica(s) "
            f"x {t.grad_accumulation_steps} micro-batch(es)."
        )

    init_checkpoint = None
    if config.init_from:
        check_init_from(config)
        init_folder = RunFolder(config.init_from)
        init_checkpoint = start_checkpoint(config.init_from)
        if resume and not same_files(folder.tokenizer, init_folder.tokenizer):
            raise TfchatError(
                f"The tokenizer in {folder.tokenizer} differs from init_from "
                f"{config.init_from}'s; the run and its pretrained weights must share a "
                "vocabulary."
            )
    # The other runs it reads (distill's teacher), checked before any work.
    objective.check_sources(config, folder if resume else None)
    teacher_path = objective.teacher_path(config)
    if teacher_path:
        teacher_folder = RunFolder(teacher_path)
    # The data-hygiene stage cleans the corpus once into a copy beside the
    # runs, which the objective then reads (tfchat/data/cleaned.py); the
    # run's config keeps the user's own data settings.
    read_config, cleaned = reading_config(config)
    if objective.labelled:
        # A resumed run's label ids must stay those its checkpoint learnt.
        data = objective.read_data(read_config, labels=folder.read_labels() if resume else None)
    else:
        data = objective.read_data(read_config)
    # Prepared tokens (tfchat.prepare) come with their tokenizer, which must
    # be the run's.
    prepared = getattr(data, "is_prepared", False)
    if resume:
        tokenizer = load_tokenizer(folder.tokenizer)
        if prepared:
            data.check_tokenizer(folder.tokenizer, f"the run {folder.path}")
    elif config.init_from:
        # The pretrained embeddings only make sense with their own vocabulary.
        tokenizer = load_tokenizer(init_folder.tokenizer)
        if prepared:
            data.check_tokenizer(init_folder.tokenizer, f"init_from {config.init_from}")
    elif teacher_path:
        # The student predicts the teacher's tokens.
        tokenizer = load_tokenizer(teacher_folder.tokenizer)
        if prepared:
            data.check_tokenizer(teacher_folder.tokenizer, f"{objective.teacher} {teacher_path}")
    elif prepared:
        data.check_settings(config.tokenizer)
        tokenizer = load_tokenizer(data.tokenizer_dir)
    else:
        tokenizer = train_tokenizer(config.tokenizer, objective.tokenizer_texts(data),
                                    symbols=placeholders(config.data))
    use_chat_template(tokenizer, config.tokenizer)
    shard = input_shard(strategy)
    objective.check_data(config, data, tokenizer, workers=shard.count)
    reference = {"init_checkpoint": init_checkpoint} if objective.scores_with_init else {}
    # Each worker reads only its share of the training data.
    datasets = objective.datasets(config, data, tokenizer, verbose=verbose and chief,
                                  shard=shard, **reference)
    labels = data.labels if objective.labelled else None
    if chief and not resume:
        if exists and overwrite:
            shutil.rmtree(folder.path)
        folder.create(config, tokenizer, labels)
    if chief and cleaned:
        shutil.copyfile(os.path.join(cleaned.folder, REPORT), os.path.join(folder.path, REPORT))

    with strategy.scope():
        model = objective.build_model(config, tokenizer.vocabulary_size, labels)
        if init_checkpoint and not resume:
            restore_backbone(model, init_checkpoint, config.init_from)
            if verbose and chief:
                print(f"Backbone weights from {init_checkpoint}.")
        # After the pretrained weights, so the adapters start from them; the
        # optimizer below then holds the adapters only.
        apply_lora(model, config)
        if teacher_path:
            # Under the strategy: the teacher's weights sit on every replica.
            model.attach_teacher(load_run(teacher_path, forward_pass=False).backbone)
            if verbose and chief:
                print(f"Teacher: {teacher_path}.")
        compile_task(model, t)
    trainer = Trainer(
        config, strategy, model, datasets["train"], datasets["val"], folder,
        sample=objective.sampler(model, tokenizer, config) if chief else None, verbose=verbose,
        selection_loss=lambda results: objective.selection_loss(config, results),
        warning=lambda results: objective.warning(config, results),
    )
    if resume:
        step = trainer.restore()
        if verbose:
            print(f"Resuming {folder.path} at step {step}.")
    if verbose and chief:
        print(_banner(config, objective, data, model, tokenizer, replicas))
        if cleaned:
            print(_hygiene_line(cleaned.report, folder.path))
        advice = precision_advice(t, gpus=len(tf.config.list_logical_devices("GPU")))
        if advice:
            print(advice)
    history = trainer.fit()
    best = folder.read_best() if chief else None
    if verbose and chief and trainer.last_warning:
        at_best = folder.evaluation_at(best["step"]) if best else None
        print(f"\nWarning: at the last evaluation (step {trainer.step}), {trainer.last_warning} "
              + (objective.closing_note(config, best["step"], at_best) if at_best else ""))
    elif verbose and chief and objective.default_checkpoint == "best" and best:
        print(f"\nThe best checkpoint is step {best['step']}'s, which chat, generate, "
              "export and evaluate load (--checkpoint latest for the last).")
    if objective.report_best and verbose and chief:
        print(objective.report_best(load_run(folder.path, checkpoint="best")))
    return history


def compile_task(model, train_config):
    """Builds the optimizer's variables up front (the strategy loop needs
    them before its first step) and attaches it to the model."""
    optimizer = build_optimizer(train_config, model)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer)


def precision_advice(train_config, gpus):
    """A hint for a setting that is slower than it need be, or None."""
    t = train_config
    if t.precision == "mixed_bfloat16" and t.jit_compile and not gpus:
        # Measured in benchmarks/RESULTS.md: 1,972 vs 2,928 tokens/s (large shape).
        return ("Note: on a CPU, mixed_bfloat16 runs faster with --train.jit_compile "
                "false (XLA's CPU matmuls gain nothing from bfloat16).")
    return None


def _hygiene_line(report, run_dir):
    removed = ", ".join(f"{n} {reason}" for reason, n in report["removed"].items() if n)
    found = ", ".join(f"{n} {kind}" for kind, n in report["pii_found"].items() if n)
    extra = "".join(
        f"; {n} {what}" for n, what in (
            (report.get("documents_repaired", 0), "repaired"),
            (report.get("blocked_terms_masked", 0), "blocked terms masked")) if n)
    if "balance" in report:
        extra += f"; balanced {report['balance']['mode']} on {report['balance']['field']}"
    return (f"Data hygiene: {report['documents_kept']} of {report['documents_read']} documents "
            f"kept (removed: {removed or 'none'}; PII replaced: {found or 'none'}{extra}); "
            f"{os.path.join(run_dir, REPORT)}.")


def _banner(config, objective, data, model, tokenizer, replicas):
    m, t = config.model, config.train
    what = objective.describe(config, data, model)
    trainable = sum(int(v.shape.num_elements()) for v in model.trainable_variables)
    return (
        f"Training {config.run_dir} ({config.objective}{': ' + what if what else ''}): "
        f"{model.backbone.num_params() / 1e6:.2f}M parameters, "
        f"vocabulary {tokenizer.vocabulary_size} ({config.tokenizer.kind}), "
        f"{t.precision}; global batch {t.batch_size} = {replicas} replica(s) x "
        f"{t.batch_size // replicas} {objective.batch_rows}"
        + (f" in {t.grad_accumulation_steps} micro-batches" if t.grad_accumulation_steps > 1 else "")
        + f", {m.block_size} tokens each."
        + (f" LoRA rank {m.lora_rank}: {trainable} trainable parameters." if m.lora_rank else "")
    )
