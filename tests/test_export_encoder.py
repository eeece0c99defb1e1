"""Exported masked-LM and classifier runs serve without tfchat or Keras.

The session's tiny MLM and classify runs (conftest) are exported once; the
fill_mask and classify signatures are called in a fresh process that cannot
import Keras or tfchat, and through TensorFlow's v1 Session SignatureDef
path (TF Serving's C++ loader path), and compared with the Keras models in
the runs (`tfchat.fill_mask.FillMask`, the classifier on its training
encoding).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the WordPiece ops for the Session loads)
from tensorflow.core.protobuf import saved_model_pb2

from serving_calls import serve_in_fresh_process, session_run
from conftest import ANIMALS, LONG, PEOPLE
from tfchat import export
from tfchat.serving.export import export_run
from tfchat.data.pipeline import add_cls_and_sep, classification_dataset
from tfchat.inference.fill_mask import FillMask
from tfchat.run import load_run

# With one [MASK], two, and one at each end.
MASKED = ["the cat sat on the [MASK] .", "the [MASK] sat on the [MASK] .",
          "[MASK] brother plays the old piano .", "a bird flew over the [MASK]"]
# The same batch with texts that have no [MASK] among them.
MIXED = [MASKED[0], "no mask here", MASKED[1], ""]
CLASSIFIED = [ANIMALS[0], PEOPLE[1], "the dog", "", LONG]
TOP_K = 3


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    return str(tmp_path_factory.mktemp("saved_models"))


@pytest.fixture(scope="module")
def mlm(mlm_run, saved_models):
    run = load_run(mlm_run)
    return {"run": run, "path": export_run(run, saved_models_dir=saved_models),
            "fill": FillMask(run.model, run.tokenizer)}


@pytest.fixture(scope="module")
def clf(clf_run, saved_models):
    run = load_run(clf_run[0].run_dir)
    return {"run": run, "path": export_run(run, saved_models_dir=saved_models)}


def _keras_probabilities(run, texts):
    """The classifier's softmax over texts encoded as in training."""
    dataset = classification_dataset(texts, [0] * len(texts), run.tokenizer,
                                     run.config.model.block_size, batch_size=len(texts))
    x, _ = next(iter(dataset))
    return tf.nn.softmax(run.model(x, training=False)).numpy()


def _decode(values):
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, list):
        return [_decode(v) for v in values]
    return values.decode("utf-8") if isinstance(values, bytes) else values


def _check_fill_mask(out, fill, texts, top_k):
    """Exported outputs for `texts` (each with a [MASK]) against FillMask."""
    expected = fill.predict(texts, top_k)
    tokens, probabilities = _decode(out["tokens"]), np.asarray(out["probabilities"])
    assert list(out["num_masks"]) == [len(masks) for masks in expected]
    for row, masks in enumerate(expected):
        for slot, candidates in enumerate(masks):
            assert tokens[row][slot] == [piece for piece, _ in candidates], (row, slot)
            np.testing.assert_allclose(
                probabilities[row][slot], [p for _, p in candidates], rtol=1e-5, atol=1e-7)
        # Slots past a row's own masks are padding.
        assert all(t == [""] * top_k for t in tokens[row][len(masks):])
        assert not probabilities[row][len(masks):].any()
    assert _decode(out["filled"]) == [fill.fill(t, m) for t, m in zip(texts, expected)]


def _fresh_process(path, calls):
    out = serve_in_fresh_process(path, calls)
    # The only ops beyond core TensorFlow: the WordPiece tokenizer's.
    assert out["not_core"] and all(op.startswith("Fast") for op in out["not_core"]), out["not_core"]
    return out


def test_fresh_process_fill_mask_matches_keras(mlm):
    text = (MASKED, "string")
    out = _fresh_process(mlm["path"], [
        ["signature", "serving_default", {"text": text, "top_k": ([TOP_K], "int32")}],
        ["signature", "fill_mask", {"text": text, "top_k": ([TOP_K], "int32")}],
        ["function", "fill_mask", {"text": text}],
        ["function", "fill_mask", {"text": (MIXED, "string")}],
    ])
    assert out["signatures"] == ["fill_mask", "serving_default"]
    default, fill_mask, defaults, mixed = out["calls"]
    assert default == fill_mask
    _check_fill_mask(fill_mask, mlm["fill"], MASKED, TOP_K)
    # Left out, top_k is the signature's default.
    _check_fill_mask(defaults, mlm["fill"], MASKED, 5)
    # The tiny model learned its sentences.
    assert [row[0][0] for row in fill_mask["tokens"]] == ["mat", "cat", "her", "sea"]
    assert fill_mask["filled"][1] == "the cat sat on the mat ."

    # Texts without [MASK]: no masks, blank candidates, the text unchanged;
    # the others in the batch are as if alone.
    assert mixed["num_masks"] == [1, 0, 2, 0]
    assert mixed["filled"][1::2] == MIXED[1::2]
    for row in (1, 3):
        assert mixed["tokens"][row] == [[""] * 5] * 2
        assert mixed["probabilities"][row] == [[0.0] * 5] * 2
    np.testing.assert_allclose(mixed["probabilities"][2], defaults["probabilities"][1], rtol=1e-5)
    assert mixed["tokens"][0][0] == defaults["tokens"][0][0]


def test_fresh_process_classify_matches_keras(clf):
    run = clf["run"]
    out = _fresh_process(clf["path"], [
        ["signature", "serving_default", {"text": (CLASSIFIED, "string")}],
        ["signature", "classify", {"text": (CLASSIFIED, "string")}],
    ])
    assert out["signatures"] == ["classify", "serving_default"]
    default, classify = out["calls"]
    assert default == classify
    expected = _keras_probabilities(run, CLASSIFIED)
    np.testing.assert_allclose(classify["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert classify["label"] == [run.labels[i] for i in expected.argmax(axis=1)]
    assert classify["labels"] == [list(run.labels)] * len(CLASSIFIED)
    # The tiny classifier learned its sentences.
    assert classify["label"][:2] == ["animal", "person"]


def test_session_signature_path_matches_keras(mlm, clf):
    # top_k left out: the SignatureDef default applies.
    out = session_run(mlm["path"], "serving_default", {"text": MASKED})
    _check_fill_mask(out, mlm["fill"], MASKED, 5)
    out = session_run(mlm["path"], "fill_mask", {"text": MASKED, "top_k": [1]})
    _check_fill_mask(out, mlm["fill"], MASKED, 1)

    run = clf["run"]
    out = session_run(clf["path"], "serving_default", {"text": CLASSIFIED})
    expected = _keras_probabilities(run, CLASSIFIED)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert _decode(out["label"]) == [run.labels[i] for i in expected.argmax(axis=1)]
    assert _decode(out["labels"]) == [list(run.labels)] * len(CLASSIFIED)


@pytest.fixture(scope="module")
def fill_mask(mlm):
    model = tf.saved_model.load(mlm["path"])

    def call(texts, top_k=None):
        args = [tf.constant(texts, tf.string)]
        if top_k is not None:
            args.append(tf.constant(top_k if isinstance(top_k, list) else [top_k], tf.int32))
        out = model.fill_mask(*args)
        return {k: v.numpy() for k, v in out.items()}

    return call


def test_fill_mask_top_k_per_text_and_clamped(mlm, fill_mask):
    run = mlm["run"]
    # One top_k per text: K is the largest; the others are padded.
    out = fill_mask(MASKED[:3], top_k=[1, 2, 4])
    assert out["tokens"].shape == (3, 2, 4)
    for row, k in enumerate([1, 2, 4]):
        _check_fill_mask({key: value[row:row + 1, ..., :k] if value.ndim == 3 else value[row:row + 1]
                          for key, value in out.items()}, mlm["fill"], MASKED[row:row + 1], k)
        assert not out["probabilities"][row, :, k:].any()
        assert (out["tokens"][row, :, k:] == b"").all()
    # At least one candidate; at most every ordinary piece, whose
    # probabilities then sum to 1.
    assert fill_mask(MASKED[:1], top_k=0)["tokens"].shape == (1, 1, 1)
    ordinary = run.tokenizer.vocabulary_size - run.tokenizer.num_special_tokens
    everything = fill_mask(MASKED[:1], top_k=10_000)
    assert everything["tokens"].shape == (1, 1, ordinary)
    assert everything["probabilities"].sum() == pytest.approx(1.0, rel=1e-5)
    special = set(run.tokenizer.vocabulary[:run.tokenizer.num_special_tokens])
    assert not special & set(_decode(everything["tokens"][0, 0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one per prompt"):
        fill_mask(MASKED, top_k=[1, 2])


def test_fill_mask_without_masks_and_past_the_context(mlm, fill_mask):
    run = mlm["run"]
    context = run.config.model.block_size
    # No [MASK] anywhere in the batch: no mask slots at all. The marker is
    # matched as written: "[mask]" is plain text.
    none = fill_mask(["no mask here", "", "a [mask] b"])
    assert none["tokens"].shape == (3, 0, 5) and none["probabilities"].shape == (3, 0, 5)
    assert none["num_masks"].tolist() == [0, 0, 0]
    assert _decode(none["filled"]) == ["no mask here", "", "a [mask] b"]

    # A text longer than the context is cut as in training: [CLS], its first
    # context - 2 tokens, [SEP]. A [MASK] in the kept part is predicted from
    # it; one past the cut is not read and stays in `filled`.
    early = "the cat sat on the [MASK] . " + " ".join(ANIMALS * 3)
    late = " ".join(ANIMALS * 3) + " the cat sat on the [MASK] ."
    both = "the [MASK] sat " + " ".join(ANIMALS * 3) + " on the [MASK] ."
    out = fill_mask([early, late, both])
    assert out["num_masks"].tolist() == [1, 0, 1]
    assert (out["tokens"][1] == b"").all() and not out["probabilities"][1].any()
    filled = _decode(out["filled"])
    assert filled[1] == late
    best = _decode(out["tokens"][:, 0, 0])
    assert filled[0] == early.replace("[MASK]", best[0])
    assert filled[2] == both.replace("[MASK]", best[2], 1)
    assert filled[2].endswith("on the [MASK] .")

    # The Keras model on the same cut tokens.
    tokenizer = run.tokenizer
    for row, text in ((0, early), (2, both)):
        pieces = text.split("[MASK]")
        ids = []
        for i, piece_ids in enumerate(tokenizer.tokenize(tf.constant(pieces)).to_list()):
            ids += ([tokenizer.mask_id] if i else []) + piece_ids
        assert len(ids) > context - 2
        token_ids, padding_mask = add_cls_and_sep(tf.ragged.constant([ids]), context, tokenizer)
        position = token_ids.numpy()[0].tolist().index(tokenizer.mask_id)
        logits = run.model({"token_ids": token_ids, "padding_mask": padding_mask,
                            "mask_positions": tf.constant([[position]])}, training=False)
        logits = logits.numpy()[0, 0]
        logits[:tokenizer.num_special_tokens] = -np.inf
        probabilities = tf.nn.softmax(logits).numpy()
        top = np.argsort(-probabilities)[:5]
        assert _decode(out["tokens"][row, 0]) == [tokenizer.vocabulary[i] for i in top]
        np.testing.assert_allclose(out["probabilities"][row, 0], probabilities[top], rtol=1e-5)


def test_classify_cuts_long_texts_as_training_does(clf):
    run = clf["run"]
    model = tf.saved_model.load(clf["path"])
    context = run.config.model.block_size
    assert len(run.tokenizer.tokenize(tf.constant([LONG]))[0]) > context - 2
    # What follows the first context - 2 tokens changes nothing.
    texts = [LONG, LONG + " " + " ".join(PEOPLE * 3), ""]
    out = model.classify(tf.constant(texts))
    probabilities = out["probabilities"].numpy()
    np.testing.assert_allclose(probabilities[0], probabilities[1], rtol=1e-6)
    np.testing.assert_allclose(probabilities, _keras_probabilities(run, texts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert _decode(out["label"].numpy())[0] == "animal"


def _signature_defs(path):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto.meta_graphs[0].signature_def


def _spec(tensor_info):
    dims = tuple(d.size for d in tensor_info.tensor_shape.dim)
    return tf.dtypes.as_dtype(tensor_info.dtype).name, dims


def test_signature_defs_and_metadata(mlm, clf, capsys):
    fill_mask = _signature_defs(mlm["path"])["fill_mask"]
    assert {k: _spec(v) for k, v in fill_mask.inputs.items()} == {
        "text": ("string", (-1,)), "top_k": ("int32", (-1,))}
    assert {k: _spec(v) for k, v in fill_mask.outputs.items()} == {
        "tokens": ("string", (-1, -1, -1)), "probabilities": ("float32", (-1, -1, -1)),
        "num_masks": ("int32", (-1,)), "filled": ("string", (-1,))}
    assert tf.make_ndarray(fill_mask.defaults["top_k"]).tolist() == [5]
    classify = _signature_defs(clf["path"])["classify"]
    assert {k: _spec(v) for k, v in classify.inputs.items()} == {"text": ("string", (-1,))}
    assert {k: _spec(v) for k, v in classify.outputs.items()} == {
        "label": ("string", (-1,)), "probabilities": ("float32", (-1, 2)),
        "labels": ("string", (-1, 2))}

    for exported, signatures in ((mlm, {"serving_default", "fill_mask"}),
                                 (clf, {"serving_default", "classify"})):
        run = exported["run"]
        with open(os.path.join(exported["path"], "assets.extra", "tfchat.json"), encoding="utf-8") as f:
            metadata = json.load(f)
        assert metadata["objective"] == run.config.objective
        assert metadata["training_step"] == run.step
        assert set(metadata["signatures"]) == signatures
        assert metadata["tokenizer"]["kind"] == "wordpiece"
        assert metadata["tokenizer"]["special_tokens"]["[MASK]"] == run.tokenizer.mask_id
        assert os.path.isfile(os.path.join(exported["path"], "assets.extra", "tokenizer",
                                           "wordpiece_vocab.txt"))
    with open(os.path.join(mlm["path"], "assets.extra", "tfchat.json"), encoding="utf-8") as f:
        assert json.load(f)["mask_token"] == "[MASK]"
    with open(os.path.join(clf["path"], "assets.extra", "tfchat.json"), encoding="utf-8") as f:
        assert json.load(f)["labels"] == ["animal", "person"]

    # The command line lists the signatures.
    saved = os.path.dirname(os.path.dirname(clf["path"]))
    assert export.main(["--run", clf["run"].path, "--saved-models-dir", saved, "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "  classify(text: string) -> label, labels, probabilities" in out
    assert "  serving_default(text: string)" in out



def test_serve_client_asks_encoder_exports(mlm, clf, capsys):
    from test_export import SessionServable, _serve_grpc, _serve_rest

    from tfchat import serve_client
    from tfchat.serving import client

    for exported, name in ((mlm, "enc"), (clf, "clf")):
        exported["servable"] = SessionServable(exported["path"])
        exported["server"] = _serve_rest(exported["servable"], name)
        exported["grpc"], port = _serve_grpc(exported["servable"])
        exported["target"] = f"127.0.0.1:{port}"
    try:
        url = f"http://127.0.0.1:{mlm['server'].server_address[1]}"
        expected = mlm["fill"].predict(MASKED, 2)
        for form in ("instances", "inputs", "grpc"):
            if form == "grpc":
                rows = client.predict_grpc(mlm["target"], "enc", MASKED, {"top_k": 2}, "fill_mask")
            else:
                rows = client.predict_rest(url, "enc", MASKED, {"top_k": 2}, "fill_mask", form)
            assert [row["num_masks"] for row in rows] == [len(masks) for masks in expected]
            assert [row["tokens"][0] for row in rows] == [
                [piece for piece, _ in masks[0]] for masks in expected], form
        code = serve_client.main(["--url", url, "--model", "enc", "--signature", "fill_mask",
                                  "--top-k", "1", MASKED[0]])
        row = json.loads(capsys.readouterr().out)
        assert code == 0 and row["text"] == MASKED[0] and row["tokens"] == [[expected[0][0][0][0]]]

        url = f"http://127.0.0.1:{clf['server'].server_address[1]}"
        probabilities = _keras_probabilities(clf["run"], CLASSIFIED)
        for form in ("instances", "inputs", "grpc"):
            if form == "grpc":
                rows = client.predict_grpc(clf["target"], "clf", CLASSIFIED, signature="classify")
            else:
                rows = client.predict_rest(url, "clf", CLASSIFIED, signature="classify", form=form)
            np.testing.assert_allclose([r["probabilities"] for r in rows], probabilities,
                                       rtol=1e-5, atol=1e-6)
            assert [r["labels"] for r in rows] == [["animal", "person"]] * len(CLASSIFIED), form
            assert [r["label"] for r in rows][:2] == ["animal", "person"]
    finally:
        for exported in (mlm, clf):
            exported.pop("server").shutdown()
            exported.pop("grpc").stop(None)
            exported.pop("servable").session.close()
            exported.pop("target")
