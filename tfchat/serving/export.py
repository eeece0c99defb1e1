"""A run as a SavedModel for stock TF Serving: `ExportArchive` with the
signatures of the run's objective, TF Serving's version folders, written
atomically, and the metadata in `assets.extra/tfchat.json`. What each
signature takes and returns: `python -m tfchat.export --help`."""

import datetime
import inspect
import json
import os
import shutil

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tfchat
from tfchat.data.chat_template import chat_turns_tf
from tfchat.data.tokenizer import MASK_TOKEN
from tfchat.errors import TfchatError
from tfchat.serving import graphs

METADATA_DIR = "assets.extra"
METADATA_FILE = "tfchat.json"


# --- signatures, chosen per run objective ---


def add_generate_signature(archive, run):
    """`generate` (and `serving_default`, being first): prompts -> text."""
    archive.add_endpoint(
        "generate",
        graphs.make_generate_function(run.backbone, run.tokenizer),
        input_signature=graphs.generate_input_signature(),
    )


def add_score_signature(archive, run):
    """`score`: texts -> mean log-likelihood and perplexity."""
    archive.add_endpoint(
        "score",
        graphs.make_score_function(run.backbone, run.tokenizer),
        input_signature=graphs.score_input_signature(),
    )


def _fit_prompt_tf(sizes, roles, start, generation_prompt, max_tokens):
    """`chat_template._fit` on turn sizes: the oldest exchanges left out (a
    leading system message kept) until the prompt fits `max_tokens` with its
    `start` ids, then, if it still does not, its start cut after them.
    Returns (where the kept turns after the system message begin, how many
    tokens are cut from the start, both counted after the start ids)."""
    turn = tf.range(tf.size(roles))
    head = tf.cast(tf.reduce_any(tf.equal(roles[:1], "system")), tf.int32)
    # Exchanges begin at each user turn after the system message, and at
    # its first turn whatever the role.
    opens = tf.logical_and(tf.equal(roles, "user"), turn > head)
    exchange = tf.cumsum(tf.cast(opens, tf.int32))  # [N]; the head's is 0 too
    exchanges = tf.reduce_sum(tf.cast(opens, tf.int32)) + 1
    in_body = turn >= head
    exchange_sizes = tf.math.unsorted_segment_sum(tf.where(in_body, sizes, 0), exchange, exchanges)
    head_size = tf.reduce_sum(tf.where(in_body, 0, sizes))
    budget = max_tokens - start
    # Leaving out the k oldest exchanges leaves the sizes from k on.
    totals = head_size + tf.cumsum(exchange_sizes, reverse=True) + generation_prompt
    dropped = tf.minimum(tf.reduce_sum(tf.cast(totals > budget, tf.int32)), exchanges - 1)
    resume = head_size + tf.reduce_sum(exchange_sizes[:dropped])
    cut = tf.maximum(totals[dropped] - budget, 0)
    return head_size, resume, cut


def chat_prompt_tf(tokenizer, roles, contents, max_new_tokens, context):
    """`Generator.chat_prompt(messages, max_new_tokens).ids` in TensorFlow
    ops: the conversation fitted to leave half the context (at most
    `max_new_tokens`) for the reply, or, where that cuts its last message,
    a quarter. Returns int32 [None]."""
    ids, sizes, roles, start, generation_prompt = chat_turns_tf(tokenizer, roles, contents)

    def fit(room):
        return _fit_prompt_tf(sizes, roles, start, generation_prompt,
                              context - tf.minimum(max_new_tokens, room))

    head_size, resume, cut = fit(context // 2)
    head_size, resume, cut = tf.cond(cut > 0, lambda: fit(context // 4),
                                     lambda: (head_size, resume, cut))
    kept = tf.concat([ids[start:start + head_size], ids[start + resume:]], 0)
    return tf.concat([ids[:start], kept[cut:]], 0)


def add_chat_signature(archive, run):
    """`chat`: one conversation, `roles` [N] and `contents` [N] strings, ->
    the assistant's reply. The run's chat template is applied in the graph
    (the ids training's `encode_conversations` gives), and the conversation
    fitted to leave room for the reply as `Generator.chat` fits it
    (`chat_prompt_tf`): the generation windows read a prompt that fits the
    context whole, as the Generator's do, so the fitting is the template's
    to do. The generation inputs and their defaults are those of
    `generate`."""
    context = run.backbone.block_size

    def encode(conversation, max_new_tokens):
        roles, contents = conversation
        ids = chat_prompt_tf(run.tokenizer, roles, contents, max_new_tokens[0], context)[None]
        # The sampling loop keeps a batch of unknown size; forget the 1.
        ids = tf.compat.v1.placeholder_with_default(ids, [None, None])
        return tf.RaggedTensor.from_tensor(ids)

    generate = graphs.make_generate_function(run.backbone, run.tokenizer, encode=encode)
    options = graphs.generate_input_signature()[1:]
    defaults = inspect.signature(generate).parameters

    def chat(roles, contents, *settings):
        return generate((roles, contents), *settings)

    # Give `chat` the same optional inputs, with the same defaults, so TF
    # Serving requests may leave them out.
    chat.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("roles", "contents")]
        + [
            inspect.Parameter(s.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=defaults[s.name].default)
            for s in options
        ]
    )
    archive.add_endpoint(
        "chat",
        chat,
        input_signature=[
            tf.TensorSpec([None], tf.string, name="roles"),
            tf.TensorSpec([None], tf.string, name="contents"),
            *options,
        ],
    )


def add_fill_mask_signature(archive, run):
    """`fill_mask` (mlm runs): texts with [MASK]s and an optional `top_k` ->
    the candidate pieces and probabilities for each [MASK], and the text
    filled with the best ones."""
    archive.add_endpoint(
        "fill_mask",
        graphs.make_fill_mask_function(run.model, run.tokenizer),
        input_signature=graphs.fill_mask_input_signature(),
    )


def add_classify_signature(archive, run):
    """`classify` (classify runs): texts -> the label, the probabilities of
    every label, and the label names."""
    archive.add_endpoint(
        "classify",
        graphs.make_classify_function(run.model, run.tokenizer, run.labels),
        input_signature=graphs.classify_input_signature(),
    )


# Each objective (tfchat.objectives) lists which of these add its
# signatures, in order; the first becomes `serving_default`.


# --- the TF Serving layout ---


def _versions(base):
    """The integer version folders under `base` (TF Serving ignores others)."""
    if not os.path.isdir(base):
        return []
    return sorted(int(n) for n in os.listdir(base) if n.isdigit() and int(n) > 0)


def next_version(base):
    """One above the highest existing version, starting at 1."""
    return (_versions(base) or [0])[-1] + 1


def _check_name(name):
    if not name or name in (".", "..") or any(c in name for c in "/\\"):
        raise TfchatError(
            f"The model name must be a plain folder name. Received: {name!r}"
        )


def _make_dirs(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise TfchatError(f"Cannot write to {path}: {e.strerror or e}.") from None
    if not os.access(path, os.W_OK):
        raise TfchatError(f"Cannot write to {path}: permission denied.")


# --- metadata ---


def _validation_metrics(run):
    """`val/*` scalars logged at the exported step (and the best checkpoint's
    record), read back from the run's TensorBoard event files."""
    metrics = {}
    log_dir = run.folder.logs
    files = sorted(tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*")))
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                if event.step != run.step:
                    continue
                for value in event.summary.value:
                    if not value.tag.startswith("val/"):
                        continue
                    if value.HasField("tensor"):
                        number = float(tf.make_ndarray(value.tensor))
                    else:
                        number = float(value.simple_value)
                    metrics[value.tag[len("val/"):]] = number
        except tf.errors.OpError:
            continue  # a file cut short by a crash; the rest are still read
    return {"step": run.step, "metrics": metrics, "best": run.folder.read_best()}


def _metadata(run, signatures):
    tokenizer = run.tokenizer
    special_tokens = tokenizer.special_tokens()
    extra = {}
    if run.objective.fills_masks:
        extra["mask_token"] = MASK_TOKEN
    if run.labels is not None:
        extra["labels"] = list(run.labels)
    return {
        "tfchat_version": tfchat.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "run": os.path.abspath(run.path),
        "objective": run.config.objective,
        "training_step": run.step,
        "validation": _validation_metrics(run),
        "tokenizer": {
            "kind": tokenizer.kind,
            "vocabulary_size": tokenizer.vocabulary_size,
            "special_tokens": special_tokens,
            "files": "tokenizer/",
            "chat_template": tokenizer.chat_template.name,
        },
        "block_size": run.config.model.block_size,
        # Weight-only int8: the method, and each weight's scales (min,
        # median, max over its channels); the scales are in the variables.
        "quantization": run.quantization,
        **extra,
        "signatures": signatures,
        "config": run.config.to_dict(),
    }


def _signature_summary(path):
    """{signature: {"inputs": {name: dtype}, "outputs": {...}, "defaults"}}
    as written into the SavedModel."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    summary = {}
    for key, signature in proto.meta_graphs[0].signature_def.items():
        if key.startswith("__"):
            continue
        summary[key] = {
            "inputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in signature.inputs.items()},
            "outputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in signature.outputs.items()},
            "defaults": {k: tf.make_ndarray(v).tolist() for k, v in signature.defaults.items()},
        }
    return summary


# --- export ---


def build_archive(run):
    """An `ExportArchive` holding the run's model, tokenizer and signatures.

    The tokenizer is tracked explicitly: its lookup table (char) or
    SentencePiece resource (bpe) is not a Keras variable, and an untracked
    resource makes the export fail or the model unloadable. The model is
    not: the signatures' functions capture every weight they use, which the
    archive saves; `track(model)` would save each weight a second time
    under another name (the Keras variable beside its tf.Variable), which
    doubled the SavedModel (shakespeare_char: 6.2 MiB of variables, 3.1
    without)."""
    archive = keras.export.ExportArchive()
    archive.track(run.tokenizer)
    for add_signature in run.objective.signatures:
        add_signature(archive, run)
    return archive


def export_run(run, saved_models_dir, name=None, version=None, force=False):
    """Writes the loaded run `run` (`tfchat.run.load_run`) to
    `<saved_models_dir>/<name>/<version>/`; returns its path.

    `name` defaults to the run folder's name, `version` to the next free one.
    """
    name = name or os.path.basename(os.path.normpath(run.path))
    _check_name(name)
    if version is not None and version <= 0:
        raise TfchatError(f"The version must be a positive integer. Received: {version}")
    base = os.path.join(saved_models_dir, name)
    _make_dirs(base)
    version = version or next_version(base)
    target = os.path.join(base, str(version))
    if os.path.exists(target) and not force:
        raise TfchatError(
            f"{target} already exists. Pass --force to replace it, or leave "
            "out --version to write the next free version."
        )
    # A dot-name is not an integer, so TF Serving ignores it until the rename.
    tmp = os.path.join(base, f".tmp-{version}-{os.getpid()}")
    old = os.path.join(base, f".old-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_archive(run).write_out(tmp, verbose=False)
        extra = os.path.join(tmp, METADATA_DIR)
        os.makedirs(extra, exist_ok=True)
        shutil.copytree(run.folder.tokenizer, os.path.join(extra, "tokenizer"))
        metadata = _metadata(run, _signature_summary(tmp))
        with open(os.path.join(extra, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, ensure_ascii=False)
        replace_dir(tmp, target, old)
    except OSError as e:
        raise TfchatError(f"Cannot write to {base}: {e.strerror or e}.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def replace_dir(new, target, old):
    """Renames `new` to `target`; an existing `target` is moved aside first
    and put back if the rename fails."""
    replacing = os.path.exists(target)
    if replacing:
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if replacing:
            os.rename(old, target)
        raise
    if replacing:
        shutil.rmtree(old, ignore_errors=True)
