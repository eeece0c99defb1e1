"""Call an exported SavedModel the two ways that show stock TF Serving can
serve it: `session_run`, through the v1 loader that TF Serving's C++ code
uses, and `serve_in_fresh_process`, in a fresh Python process that cannot
import Keras, keras-hub or tfchat (`None` in
sys.modules makes their import fail). `import tensorflow` still works (it
loads Keras' optimizers only if it can), and so does the model, if it needs
nothing from them. Importing the tensorflow_text package would pull in Keras
(its Keras layers), so its op kernels are loaded directly, as TF Serving
links them.

Used by tests/test_export.py and tests/test_export_encoder.py.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import glob, json, os, sys
    for name in ("keras", "keras_hub", "tf_keras", "tfchat", "tensorflow_text"):
        sys.modules[name] = None
    import importlib.machinery
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    path, calls = json.loads(sys.argv[1])
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for function in graph.library.function:
        ops |= {n.op for n in function.node_def}
    not_core = sorted(op for op in ops if op_def_registry.get(op) is None)
    # Where tensorflow_text is installed, found without importing it.
    text_spec = importlib.machinery.PathFinder.find_spec("tensorflow_text")
    text_dir = os.path.dirname(text_spec.origin)
    for library in sorted(glob.glob(os.path.join(text_dir, "python", "ops", "_*.so"))):
        tf.load_op_library(library)
    unregistered = sorted(op for op in ops if op_def_registry.get(op) is None)

    model = tf.saved_model.load(path)
    out = {"signatures": sorted(model.signatures), "ops": sorted(ops),
           "not_core": not_core, "unregistered": unregistered, "calls": []}
    for kind, key, inputs in calls:
        tensors = {k: tf.constant(v, dtype) for k, (v, dtype) in inputs.items()}
        if kind == "signature":
            result = model.signatures[key](**tensors)
        else:  # the restored tf.function, with the signature's defaults
            result = getattr(model, key)(**tensors)
        out["calls"].append({k: v.numpy().tolist() for k, v in result.items()})
    out["modules"] = sorted(
        name for name, module in sys.modules.items()
        if module is not None and name.split(".")[0] in
        ("keras", "keras_hub", "tf_keras", "tfchat", "tensorflow_text"))
    print("RESULT " + json.dumps(out, default=lambda b: b.decode("utf-8", "replace")))
    """
)


def serve_in_fresh_process(path, calls):
    """Loads the SavedModel at `path` and makes `calls`, each (kind, name,
    {input: (value, dtype)}) with kind "signature" (a SignatureDef) or
    "function" (the restored tf.function, which keeps the signature's
    defaults). Returns {"signatures", "ops", "not_core" (ops that are not
    core TensorFlow), "unregistered" (not core and not tensorflow-text),
    "modules" (any of the forbidden ones that got imported), "calls" (each
    call's outputs as lists)}."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([str(path), calls])],
        capture_output=True, text=True, env=env, timeout=300, cwd=str(path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(row for row in proc.stdout.splitlines() if row.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["modules"] == []
    # Nothing XLA-only (TF Serving runs with XLA off) and no Python.
    assert out["unregistered"] == []
    assert not [op for op in out["ops"] if op.startswith("Xla") or "PyFunc" in op]
    return out


def session_run(path, signature_key, feeds):
    """Runs a signature the way TF Serving's C++ loader does: the v1
    SavedModel loader restores the variables into a Session, then the
    SignatureDef's tensor names are fed and fetched."""
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta_graph.signature_def[signature_key]
        feed = {signature.inputs[k].name: v for k, v in feeds.items()}
        fetch = {k: v.name for k, v in signature.outputs.items()}
        return session.run(fetch, feed)
