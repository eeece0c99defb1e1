"""Exported SavedModels serve without tfchat or Keras, as TF Serving runs them.

One tiny run per tokenizer (char, bpe) is trained and exported once; the
tests load the export in a fresh process that cannot import Keras or tfchat,
through TensorFlow's v1 Session SignatureDef path (TF Serving's C++ loader
path), and with `saved_model_cli`, and compare with the Keras model.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops for the Session loads)

from conftest import REPETITIVE_TEXT, REPO_ROOT, TINY, nest, write_text
from serving_calls import serve_in_fresh_process, session_run
from tfchat import config as config_lib
from tfchat import export
from tfchat.serving import graphs
from tfchat.serving.export import export_run, next_version
from tfchat.errors import TfchatError
from tfchat.job import train
from tfchat.inference.generator import Generator, make_sampler
from tfchat.run import load_run
from tfchat.model.tasks import token_loss_and_accuracy

# Every test here exports or converts whole runs (module fixtures).
pytestmark = pytest.mark.slow

# Subprocesses must import this worktree's tfchat, whatever is installed.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
CONTEXT = int(TINY["model.block_size"])
MAX_NEW = 5
# Each fits with room for MAX_NEW tokens in the 16-token context, in both
# tokenizers; lengths differ, so they batch with padding.
PROMPTS = ["the quick", "", "dog. the"]
SCORED = ["the quick brown fox", "", "the lazy dog. " * 3]
SIGNATURES = {"serving_default", "generate", "score"}


def _train(base, kind):
    data = write_text(os.path.join(base, "corpus.txt"), REPETITIVE_TEXT)
    flat = {
        **TINY, "name": kind, "runs_dir": os.path.join(base, "runs"), "data.path": data,
        "tokenizer.kind": kind, "tokenizer.vocab_size": 320,
        "train.max_steps": 60, "train.eval_interval": 60, "train.log_interval": 20,
    }
    history = train(config_lib.build_config(overrides=nest(flat)), verbose=0)
    return os.path.join(base, "runs", kind), history


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """kind -> (run folder, training history); each kind trains once."""
    base = str(tmp_path_factory.mktemp("export_runs"))
    runs = {}

    def get(kind):
        if kind not in runs:
            runs[kind] = _train(base, kind)
        return runs[kind]

    return get


def _keras_scores(run, texts):
    """Mean log-likelihood of each text under the Keras model, with <eos>
    before it, in consecutive windows of the context."""
    scores = []
    for text in texts:
        ids = [run.tokenizer.eos_id] + run.tokenizer.tokenize(tf.constant([text]))[0].numpy().tolist()
        total = 0.0
        for start in range(0, len(ids) - 1, CONTEXT):
            window = ids[start:start + CONTEXT + 1]
            logits = run.model(tf.constant([window[:-1]]))
            loss, _, count = token_loss_and_accuracy(tf.constant([window[1:]]), logits)
            total += -float(loss) * float(count)
        scores.append(total / max(len(ids) - 1, 1))
    return scores


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """kind -> the path of the run's export; each kind exports once."""
    saved = str(tmp_path_factory.mktemp("saved_models"))
    paths = {}

    def get(kind):
        if kind not in paths:
            paths[kind] = export_run(load_run(trained(kind)[0]), saved_models_dir=saved)
        return paths[kind]

    return get


@pytest.fixture(scope="module", params=["char", "bpe"])
def exported(request, trained, exports):
    run_dir, history = trained(request.param)
    path = exports(request.param)
    run = load_run(run_dir)
    greedy = Generator(run.backbone, run.tokenizer).generate(PROMPTS, MAX_NEW, temperature=0)
    return {
        "kind": request.param, "run_dir": run_dir, "path": path, "run": run,
        "history": history, "greedy": greedy, "scores": _keras_scores(run, SCORED),
    }


def _decode(values):
    """Bytes to str, in lists nested to any depth (encoder exports return
    [B, K] and [B, M, K] strings)."""
    return [v.decode("utf-8") if isinstance(v, bytes) else _decode(v) if isinstance(v, list) else v
            for v in values]


def test_fresh_process_without_keras_serves_every_signature(exported):
    generate = {"prompt": (PROMPTS, "string"), "max_new_tokens": ([MAX_NEW], "int32"),
                "temperature": ([0.0], "float32"), "top_k": ([0], "int32"),
                "top_p": ([1.0], "float32"), "seed": ([0], "int64")}
    calls = [("signature", "serving_default", generate), ("signature", "generate", generate),
             ("signature", "score", {"text": (SCORED, "string")}),
             # The restored function keeps the signature's defaults: prompts only.
             ("function", "generate", {"prompt": (PROMPTS, "string")})]
    out = serve_in_fresh_process(exported["path"], calls)
    assert set(out["signatures"]) == SIGNATURES
    out.update(zip(("serving_default", "generate", "score", "defaults"), out["calls"]))

    # Only core TensorFlow and tensorflow-text ops.
    if exported["kind"] == "bpe":
        assert out["not_core"] and all(op.startswith("Sentencepiece") for op in out["not_core"])
    else:
        assert out["not_core"] == []

    # Greedy text is the Keras model's (KV-cached generation in the run).
    for key in ("serving_default", "generate"):
        assert out[key]["text"] == exported["greedy"], key
        assert out[key]["num_tokens"] == [MAX_NEW] * len(PROMPTS)
    assert any(exported["greedy"]), "the model generated nothing to compare"
    np.testing.assert_allclose(out["score"]["log_likelihood"], exported["scores"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        out["score"]["perplexity"], np.exp(-np.array(exported["scores"])), rtol=1e-4
    )
    # Left-out settings take the signature's defaults: at most half the
    # context of new tokens; prompts that fit the context are read whole.
    half = CONTEXT // 2
    run = exported["run"]
    lengths = [max(len(ids), 1) for ids in run.tokenizer.tokenize(tf.constant(PROMPTS)).to_list()]
    assert out["defaults"]["num_prompt_tokens"] == lengths
    assert all(0 <= n <= half for n in out["defaults"]["num_tokens"])


def test_session_signature_path_matches_keras(exported):
    # Only the inputs given are fed; the rest take the SignatureDef defaults.
    out = session_run(
        exported["path"], "serving_default",
        {"prompt": PROMPTS, "max_new_tokens": [MAX_NEW], "temperature": [0.0]},
    )
    assert _decode(out["text"].tolist()) == exported["greedy"]
    scores = session_run(exported["path"], "score", {"text": SCORED})
    np.testing.assert_allclose(scores["log_likelihood"], exported["scores"], rtol=1e-4, atol=1e-5)
    assert scores["num_tokens"].tolist()[1] == 0


def test_plain_tf_saved_model_save_is_caught_by_the_session_check(trained, exports, tmp_path):
    """Why the export goes through ExportArchive: the same function saved
    with `tf.saved_model.save` from a plain tf.Module loads in Python, but
    its Keras 3 variables are not restored on the Session path."""
    run = load_run(trained("char")[0])
    module = tf.Module()
    module.model, module.tokenizer = run.model, run.tokenizer
    module.score = tf.function(
        graphs.make_score_function(run.backbone, run.tokenizer),
        input_signature=graphs.score_input_signature(),
    )
    path = str(tmp_path / "plain")
    tf.saved_model.save(module, path, signatures={"score": module.score})
    assert tf.saved_model.load(path).signatures["score"](text=tf.constant(["the"]))
    with pytest.raises(tf.errors.FailedPreconditionError, match="Could not find variable"):
        session_run(path, "score", {"text": ["the"]})
    # The ExportArchive export of the same run restores there.
    assert session_run(exports("char"), "score", {"text": ["the"]})["num_tokens"].tolist() == [
        len(run.tokenizer.tokenize(tf.constant(["the"]))[0])
    ]


def test_saved_model_cli_lists_signatures(exports):
    proc = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show",
         "--dir", exports("bpe"), "--all"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    listing = proc.stdout
    blocks = {}
    for block in listing.split("signature_def[")[1:]:
        blocks[block.split("'")[1]] = block
    assert SIGNATURES <= set(blocks)

    def tensor(block, kind, name):
        part = block.split(f"{kind}['{name}'] tensor_info:")[1]
        lines = [row.strip() for row in part.strip().splitlines()[:2]]
        return lines[0].split(": ")[1], lines[1].split(": ")[1]

    generate = blocks["serving_default"]
    assert tensor(generate, "inputs", "prompt") == ("DT_STRING", "(-1)")
    assert tensor(generate, "inputs", "max_new_tokens") == ("DT_INT32", "(-1)")
    assert tensor(generate, "inputs", "temperature") == ("DT_FLOAT", "(-1)")
    assert tensor(generate, "inputs", "top_k") == ("DT_INT32", "(-1)")
    assert tensor(generate, "inputs", "top_p") == ("DT_FLOAT", "(-1)")
    assert tensor(generate, "inputs", "seed") == ("DT_INT64", "(-1)")
    assert tensor(generate, "outputs", "text") == ("DT_STRING", "(-1)")
    assert tensor(generate, "outputs", "num_tokens") == ("DT_INT32", "(-1)")
    score = blocks["score"]
    assert tensor(score, "inputs", "text") == ("DT_STRING", "(-1)")
    assert tensor(score, "outputs", "log_likelihood") == ("DT_FLOAT", "(-1)")
    assert tensor(score, "outputs", "perplexity") == ("DT_FLOAT", "(-1)")


@pytest.fixture(scope="module")
def loaded(exported):
    model = tf.saved_model.load(exported["path"])

    def generate(prompts, max_new_tokens=MAX_NEW, temperature=0.0, top_k=0, top_p=1.0, seed=0):
        def column(value, dtype):
            return tf.constant(value if isinstance(value, list) else [value], dtype)

        out = model.generate(
            tf.constant(prompts), column(max_new_tokens, tf.int32),
            column(temperature, tf.float32), column(top_k, tf.int32),
            column(top_p, tf.float32), column(seed, tf.int64),
        )
        return {k: _decode(v.numpy().tolist()) for k, v in out.items()}

    return generate


def test_sampling_is_seeded_per_row(exported, loaded):
    settings = {"max_new_tokens": 8, "temperature": 1.5}
    first = loaded(PROMPTS, seed=[11, 12, 13], **settings)["text"]
    assert loaded(PROMPTS, seed=[11, 12, 13], **settings)["text"] == first
    # A row's text depends on its own seed only, not on the rest of the batch.
    assert loaded([PROMPTS[2]], seed=13, **settings)["text"] == [first[2]]
    assert loaded(PROMPTS[::-1], seed=[13, 12, 11], **settings)["text"] == first[::-1]
    others = [loaded(PROMPTS, seed=s, **settings)["text"] for s in (1, 2, 3)]
    assert any(o != first for o in others)
    # Top-k 1 and a tiny top-p leave one candidate: the greedy one.
    greedy = loaded(PROMPTS, max_new_tokens=8)["text"]
    assert loaded(PROMPTS, top_k=1, seed=5, **settings)["text"] == greedy
    assert loaded(PROMPTS, top_p=1e-6, seed=5, **settings)["text"] == greedy
    assert first != greedy
    # Per-row settings: a greedy row next to sampled rows stays greedy.
    mixed = loaded(PROMPTS, temperature=[0.0, 1.5, 1.5], seed=[1, 2, 3], max_new_tokens=8)
    assert mixed["text"][0] == loaded(PROMPTS[:1], max_new_tokens=8)["text"][0]
    per_row = loaded(PROMPTS, max_new_tokens=[1, 2, 3])
    assert per_row["num_tokens"] == [1, 2, 3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="one per prompt"):
        loaded(PROMPTS, max_new_tokens=[1, 2])


def test_empty_and_too_long_prompts(exported, loaded):
    run = exported["run"]
    generator = Generator(run.backbone, run.tokenizer)
    # Empty: generation starts from <eos>, as after a document.
    empty = loaded([""])
    assert empty["num_prompt_tokens"] == [1]
    assert empty["text"] == generator.generate([""], MAX_NEW, temperature=0)
    assert empty["text"] == [exported["greedy"][1]]

    # Longer than the context: read from its last half context, and more
    # new tokens than the context holds go on in windows, as in
    # tfchat.generate (tests/test_export_boundary.py covers the boundary).
    long_prompt = "the quick brown fox jumps over the lazy dog. the quick"
    ids = run.tokenizer.tokenize(tf.constant([long_prompt]))[0].numpy().tolist()
    assert len(ids) > CONTEXT
    for max_new_tokens in (MAX_NEW, 3 * CONTEXT):
        out = loaded([long_prompt], max_new_tokens=max_new_tokens)
        assert out["num_prompt_tokens"] == [CONTEXT // 2]
        expected = generator.generate_ids([ids], max_new_tokens, make_sampler(0))
        expected_text = run.tokenizer.detokenize(tf.ragged.constant(expected)).numpy()[0].decode()
        assert out["text"] == [expected_text]
        assert out["num_tokens"] == [len(expected[0])]
    assert loaded(["the"], max_new_tokens=0) == {"text": [""], "num_tokens": [0], "num_prompt_tokens": [
        len(run.tokenizer.tokenize(tf.constant(["the"]))[0])]}


def test_metadata_records_the_run(exported):
    with open(os.path.join(exported["path"], "assets.extra", "tfchat.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    import tfchat

    assert metadata["tfchat_version"] == tfchat.__version__
    assert metadata["training_step"] == 60
    assert metadata["config"] == exported["run"].config.to_dict()
    assert metadata["tokenizer"]["kind"] == exported["kind"]
    assert metadata["tokenizer"]["vocabulary_size"] == exported["run"].tokenizer.vocabulary_size
    last = exported["history"][-1]
    assert metadata["validation"]["metrics"]["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert metadata["validation"]["metrics"]["val_perplexity"] == pytest.approx(last["val_perplexity"], rel=1e-6)
    assert set(metadata["signatures"]) == SIGNATURES
    assert metadata["signatures"]["serving_default"]["defaults"]["max_new_tokens"] == [CONTEXT // 2]
    assert os.path.isfile(os.path.join(exported["path"], "assets.extra", "tokenizer", "tokenizer.json"))


@pytest.fixture(scope="module")
def char_run(trained):
    return trained("char")[0]


def _export_cli(argv, capsys):
    code = export.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_versions_are_atomic_and_never_overwritten_without_force(char_run, tmp_path, capsys):
    saved = str(tmp_path / "saved_models")
    code, out, err = _export_cli(["--run", char_run, "--saved-models-dir", saved], capsys)
    assert code == 0, err
    first = os.path.join(saved, "char", "1")
    assert f"Exported {char_run} (latest checkpoint, step " in out and f") to {first}\n" in out
    assert "tensorflow/serving" in out
    metadata = os.path.join(first, "assets.extra", "tfchat.json")
    with open(metadata, encoding="utf-8") as f:
        written = json.load(f)["exported_at"]

    # An existing version is refused without --force, and left as it was.
    code, out, err = _export_cli(
        ["--run", char_run, "--saved-models-dir", saved, "--version", "1"], capsys)
    assert code == 1
    assert err.startswith("error: ") and "already exists" in err and "--force" in err
    assert "Traceback" not in err
    with open(metadata, encoding="utf-8") as f:
        assert json.load(f)["exported_at"] == written

    # --force replaces it; a second plain export takes the next version.
    path = export_run(load_run(char_run), saved_models_dir=saved, version=1, force=True)
    with open(metadata, encoding="utf-8") as f:
        assert json.load(f)["exported_at"] != written
    reloaded = tf.saved_model.load(path)
    assert reloaded.score(tf.constant(["the"]))["num_tokens"].numpy().tolist() == [3]
    # TF Serving only looks at integer folders; no temporary ones are left.
    os.makedirs(os.path.join(saved, "char", "notes"))
    assert next_version(os.path.join(saved, "char")) == 2
    assert sorted(os.listdir(os.path.join(saved, "char"))) == ["1", "notes"]


def test_bad_exports_fail_with_one_line(char_run, tmp_path, capsys):
    # A run without a checkpoint (training never reached one).
    bare = str(tmp_path / "bare")
    shutil.copytree(char_run, bare, ignore=shutil.ignore_patterns("checkpoints"))
    saved = str(tmp_path / "saved_models")
    code, _, err = _export_cli(["--run", bare, "--saved-models-dir", saved], capsys)
    assert code == 1 and err == f"error: The run at {bare} has no checkpoint yet.\n"
    assert not os.path.exists(os.path.join(saved, "bare"))
    # No run at all.
    code, _, err = _export_cli(["--run", str(tmp_path / "nothing")], capsys)
    assert code == 1 and "No tfchat run at" in err
    # An unwritable destination: the saved models folder is a file.
    blocked = write_text(tmp_path / "blocked", "not a folder")
    with pytest.raises(TfchatError, match="Cannot write to"):
        export_run(load_run(char_run), saved_models_dir=blocked)
    code, _, err = _export_cli(["--run", char_run, "--saved-models-dir", blocked], capsys)
    assert code == 1 and err.startswith("error: Cannot write to") and len(err.splitlines()) == 1
    # Bad names and versions.
    with pytest.raises(TfchatError, match="plain folder name"):
        export_run(load_run(char_run), name="../up", saved_models_dir=saved)
    with pytest.raises(TfchatError, match="positive integer"):
        export_run(load_run(char_run), version=0, saved_models_dir=saved)


# --- tfchat.serve_client against stand-ins that answer like TF Serving ---


class SessionServable:
    """An export loaded the way TF Serving loads it (v1 Session, SignatureDefs),
    answering predict calls with only the inputs a request gives."""

    def __init__(self, path):
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)

    def predict(self, signature_key, inputs):
        signature = self.meta_graph.signature_def[signature_key]
        unknown = set(inputs) - set(signature.inputs)
        if unknown:
            raise KeyError(f"unknown inputs {sorted(unknown)}")
        feed = {signature.inputs[k].name: v for k, v in inputs.items()}
        fetch = {k: v.name for k, v in signature.outputs.items()}
        return self.session.run(fetch, feed)


def _serve_rest(servable, model_name):
    """A local HTTP server speaking TF Serving's REST predict API."""
    import http.server
    import re
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code, body):
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", self.path)
            if not match or match.group(1) != model_name:
                return self.answer(404, {"error": f"Servable not found for request: {self.path}"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if ("instances" in body) == ("inputs" in body):
                return self.answer(400, {"error": "Missing 'inputs' or 'instances' key"})
            signature = body.get("signature_name", "serving_default")
            if "instances" in body:
                rows = body["instances"]
                inputs = {k: [row[k] for row in rows] for k in rows[0]}
            else:
                inputs = body["inputs"]
            try:
                outputs = servable.predict(signature, inputs)
            except (KeyError, tf.errors.OpError) as e:
                return self.answer(400, {"error": str(e)})
            columns = {k: _decode(v.tolist()) for k, v in outputs.items()}
            if "instances" in body:
                count = len(next(iter(columns.values())))
                return self.answer(200, {"predictions": [
                    {k: v[i] for k, v in columns.items()} for i in range(count)]})
            return self.answer(200, {"outputs": columns})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _serve_grpc(servable):
    """A local gRPC server with TF Serving's PredictionService.Predict."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = servable.predict(request.model_spec.signature_name or "serving_default", inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_serve_client_end_to_end(trained, exports, capsys):
    from tfchat import serve_client
    from tfchat.serving import client

    run = load_run(trained("char")[0])
    greedy = Generator(run.backbone, run.tokenizer).generate(PROMPTS, MAX_NEW, temperature=0)
    servable = SessionServable(exports("char"))
    http_server = _serve_rest(servable, "tiny")
    grpc_server, grpc_port = _serve_grpc(servable)
    url = f"http://127.0.0.1:{http_server.server_address[1]}"
    settings = {"max_new_tokens": MAX_NEW, "temperature": 0.0}
    try:
        for form in ("instances", "inputs"):
            rows = client.predict_rest(url, "tiny", PROMPTS, settings, form=form)
            assert [r["text"] for r in rows] == greedy, form
            assert [r["num_tokens"] for r in rows] == [MAX_NEW] * 3
        rows = client.predict_grpc(f"127.0.0.1:{grpc_port}", "tiny", PROMPTS, settings)
        assert [r["text"] for r in rows] == greedy
        scores = client.predict_rest(url, "tiny", SCORED, signature="score", form="inputs")
        np.testing.assert_allclose(
            [r["log_likelihood"] for r in scores], _keras_scores(run, SCORED), rtol=1e-4, atol=1e-5)
        scores = client.predict_grpc(f"127.0.0.1:{grpc_port}", "tiny", SCORED, signature="score")
        assert [r["num_tokens"] for r in scores] == [r["num_tokens"] for r in client.predict_rest(
            url, "tiny", SCORED, signature="score")]

        code = serve_client.main(["--url", url, "--model", "tiny", "--max-new-tokens", str(MAX_NEW),
                                  "--temperature", "0", PROMPTS[0]])
        assert code == 0 and capsys.readouterr().out == PROMPTS[0] + greedy[0] + "\n"
        code = serve_client.main(["--url", url, "--model", "missing", "hi"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: TF Serving at") and "404" in err
    finally:
        http_server.shutdown()
        grpc_server.stop(None)
        servable.session.close()


def test_chat_signature_applies_the_template_in_the_graph(chat_run, tmp_path):
    from tfchat.data.chat_template import Message, render_text

    path = export_run(load_run(chat_run), saved_models_dir=str(tmp_path / "saved"))
    conversations = [
        [("user", "ping")],
        [("system", "be brief"), ("user", "what is your name?")],
        [("user", "ping"), ("assistant", "pong"), ("user", "how are you?")],
    ]
    run = load_run(chat_run)
    generator = Generator(run.backbone, run.tokenizer)
    replies = []
    for turns in conversations:
        roles, contents = [r for r, _ in turns], [c for _, c in turns]
        prompt = render_text([Message(r, c) for r, c in turns], add_generation_prompt=True)
        (expected,) = generator.generate(
            [prompt], max_new_tokens=16, temperature=0,
            stop_token_ids=generator.chat_stop_ids(),
        )
        # Through the v1 Session path, as TF Serving runs it, leaving the
        # optional inputs but two to their defaults.
        out = session_run(path, "chat", {"roles": roles, "contents": contents,
                                          "max_new_tokens": [16], "temperature": [0.0]})
        assert _decode(out["text"].tolist()) == [expected]
        replies.append(expected)
    # The tiny model learned its answers: the reply is a real one.
    assert replies[0] == "pong"
