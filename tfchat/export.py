"""Export a trained run as a SavedModel that stock TF Serving serves as is.

    python -m tfchat.export --run runs/default                # saved_models/default/<next>/
    python -m tfchat.export --run runs/default --name chat --version 3 --force

The SavedModel lands in TF Serving's base-path layout,
`saved_models/<name>/<version>/`: point TF Serving's `--model_base_path` at
`saved_models/<name>` and it loads the highest version. Signatures (tag
`serve`) take and return strings; the tokenizer, the sampling loop and the
detokenizer run inside the graph with core TensorFlow and tensorflow-text ops
only (no `py_function`, no XLA), so no tfchat, Keras or Python is needed to
serve. The first signature of each objective is also `serving_default`.

Causal (GPT) runs; chat runs add `chat` (roles, contents -> the reply):

  * `generate`: `prompt` [B] string, and optionally `max_new_tokens`,
    `temperature`, `top_k`, `top_p`, `seed` (one value, or one per prompt)
    -> `text`, `num_tokens`, `num_prompt_tokens`.
  * `score`: `text` [B] string -> `log_likelihood` (mean per token),
    `perplexity`, `num_tokens`.

Masked-LM (mlm) runs:

  * `fill_mask`: `text` [B] string with `[MASK]` markers, optional `top_k`
    (default 5; one value, or one per text) -> `tokens` [B, M, K] string and
    `probabilities` [B, M, K] float (the top-k pieces for every [MASK],
    best first, padded with "" and 0.0), `num_masks` [B], `filled` [B] (the
    text with each [MASK] replaced by its best piece). A text without a
    [MASK] gets no candidates and comes back unchanged.

Classify runs:

  * `classify`: `text` [B] string -> `label` [B] string, `probabilities`
    [B, K] float, `labels` [B, K] string (the label names, in the order of
    `probabilities`).

An encoder reads `[CLS] text [SEP]`; a text longer than the context is cut
at the end, as in training (a [MASK] past the cut is not read).

`<version>/assets.extra/tfchat.json` records what was exported: tfchat
version, config, tokenizer, training step, validation metrics, signatures,
and the label names (classify) or the mask token (mlm).
A version is written to a temporary folder and renamed into place, so TF
Serving never sees half a model; an existing version is replaced only with
`--force`.
"""

import argparse
import datetime
import json
import os
import shutil
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

import tfchat  # noqa: F401  (sets the Keras backend)
from tfchat.errors import TfchatError

DEFAULT_SAVED_MODELS_DIR = "saved_models"
METADATA_DIR = "assets.extra"
METADATA_FILE = "tfchat.json"


# --- signatures, chosen per run objective ---


def add_generate_signature(archive, run):
    """`generate` (and `serving_default`, being first): prompts -> text."""
    from tfchat import serving

    archive.add_endpoint(
        "generate",
        serving.make_generate_function(run.backbone, run.tokenizer),
        input_signature=serving.generate_input_signature(),
    )


def add_score_signature(archive, run):
    """`score`: texts -> mean log-likelihood and perplexity."""
    from tfchat import serving

    archive.add_endpoint(
        "score",
        serving.make_score_function(run.backbone, run.tokenizer),
        input_signature=serving.score_input_signature(),
    )


def add_chat_signature(archive, run):
    """`chat`: one conversation, `roles` [N] and `contents` [N] strings, ->
    the assistant's reply. The chat template is applied in the graph
    (`render_prompt_tf`, the same text as training's `render_text`); the
    generation inputs and their defaults are those of `generate`."""
    import inspect

    import tensorflow as tf

    from tfchat import serving
    from tfchat.data.chat_template import render_prompt_tf

    generate = serving.make_generate_function(run.backbone, run.tokenizer)
    options = serving.generate_input_signature()[1:]
    defaults = inspect.signature(generate).parameters

    def chat(roles, contents, *settings):
        prompt = tf.reshape(render_prompt_tf(roles, contents), [1])
        # The sampling loop keeps a batch of unknown size; forget the 1.
        prompt = tf.compat.v1.placeholder_with_default(prompt, [None])
        return generate(prompt, *settings)

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
    from tfchat import serving

    archive.add_endpoint(
        "fill_mask",
        serving.make_fill_mask_function(run.model, run.tokenizer),
        input_signature=serving.fill_mask_input_signature(),
    )


def add_classify_signature(archive, run):
    """`classify` (classify runs): texts -> the label, the probabilities of
    every label, and the label names."""
    from tfchat import serving

    archive.add_endpoint(
        "classify",
        serving.make_classify_function(run.model, run.tokenizer, run.labels),
        input_signature=serving.classify_input_signature(),
    )


# Objective -> the functions that add its signatures, in order; the first
# becomes `serving_default`.
SIGNATURE_BUILDERS = {
    "causal": (add_generate_signature, add_score_signature),
    "chat": (add_generate_signature, add_chat_signature, add_score_signature),
    "mlm": (add_fill_mask_signature,),
    "classify": (add_classify_signature,),
}


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
    import tensorflow as tf

    from tfchat.run import CHECKPOINT_DIR, LOG_DIR

    metrics = {}
    log_dir = os.path.join(run.path, LOG_DIR)
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
    best_path = os.path.join(run.path, CHECKPOINT_DIR, "best", "best.json")
    best = None
    if os.path.isfile(best_path):
        with open(best_path, encoding="utf-8") as f:
            best = json.load(f)
    return {"step": run.step, "metrics": metrics, "best": best}


def _metadata(run, signatures):
    import keras
    import tensorflow as tf

    from tfchat.serving import MASK_TOKEN

    tokenizer = run.tokenizer
    special_tokens = {
        name: tokenizer.token_id(name)
        for name in ("<pad>", "<unk>", "<bos>", "<eos>", "<|system|>",
                     "<|user|>", "<|assistant|>", "<|end|>")
    }
    extra = {}
    if tokenizer.kind == "wordpiece":
        special_tokens["[MASK]"] = tokenizer.mask_id
    if run.config.objective == "mlm":
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
        },
        "context_length": run.config.model.block_size,
        **extra,
        "signatures": signatures,
        "config": run.config.to_dict(),
    }


def _signature_summary(path):
    """{signature: {"inputs": {name: dtype}, "outputs": {...}, "defaults"}}
    as written into the SavedModel."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

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
    resource makes the export fail or the model unloadable."""
    import keras

    builders = SIGNATURE_BUILDERS.get(run.config.objective)
    if builders is None:
        raise TfchatError(
            f"Export does not support objective {run.config.objective!r} yet. "
            f"Supported: {', '.join(SIGNATURE_BUILDERS)}."
        )
    archive = keras.export.ExportArchive()
    archive.track(run.model)
    archive.track(run.tokenizer)
    for add_signature in builders:
        add_signature(archive, run)
    return archive


def export_run(
    run_dir,
    name=None,
    version=None,
    saved_models_dir=DEFAULT_SAVED_MODELS_DIR,
    force=False,
):
    """Writes `<saved_models_dir>/<name>/<version>/`; returns its path.

    `name` defaults to the run folder's name, `version` to the next free one.
    """
    from tfchat.run import TOKENIZER_DIR, load_run

    name = name or os.path.basename(os.path.normpath(run_dir))
    _check_name(name)
    if version is not None and version <= 0:
        raise TfchatError(f"The version must be a positive integer. Received: {version}")
    run = load_run(run_dir)
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
        shutil.copytree(os.path.join(run.path, TOKENIZER_DIR), os.path.join(extra, "tokenizer"))
        metadata = _metadata(run, _signature_summary(tmp))
        with open(os.path.join(extra, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, ensure_ascii=False)
        _replace(tmp, target, old)
    except OSError as e:
        raise TfchatError(f"Cannot write to {base}: {e.strerror or e}.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace(new, target, old):
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="Run folder, e.g. runs/default.")
    parser.add_argument("--name", default=None,
                        help="Model name (folder under the saved models folder). Default: the run's name.")
    parser.add_argument("--version", type=int, default=None,
                        help="Integer version folder. Default: one above the highest existing.")
    parser.add_argument("--saved-models-dir", default=DEFAULT_SAVED_MODELS_DIR,
                        help="Where model folders live (TF Serving's model base paths).")
    parser.add_argument("--force", action="store_true",
                        help="Replace the version if it already exists.")
    quiet.add_verbose_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        path = export_run(args.run, args.name, args.version, args.saved_models_dir, args.force)
    except TfchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(os.path.join(path, METADATA_DIR, METADATA_FILE), encoding="utf-8") as f:
        signatures = json.load(f)["signatures"]
    print(f"Exported {args.run} to {path}")
    for key, spec in sorted(signatures.items()):
        inputs = ", ".join(f"{k}: {v}" for k, v in sorted(spec["inputs"].items()))
        outputs = ", ".join(sorted(spec["outputs"]))
        print(f"  {key}({inputs}) -> {outputs}")
    base = os.path.abspath(os.path.dirname(path))
    name = os.path.basename(base)
    print(
        "Serve it with:\n"
        f"  docker run -p 8501:8501 -v {base}:/models/{name} "
        f"-e MODEL_NAME={name} tensorflow/serving"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
