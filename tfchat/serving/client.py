"""Requests to a running TF Serving: REST (standard library only) or gRPC
(`tensorflow-serving-api`, the `serving` extra), to a model tfchat exported.

REST requests go to `/v1/models/<model>[/versions/<n>]:predict` in either of
TF Serving's two body forms: `instances` (one object per prompt) or `inputs`
(one list per input name). gRPC requests are `PredictRequest`s. Settings
left out fall back to the defaults written into the exported signature.
TensorFlow is imported by the gRPC functions only, so a REST client never
loads it.
"""

import json
import urllib.error
import urllib.request

from tfchat.errors import TfchatError

# The signature input that holds the strings, per signature. The client
# cannot tell which objective an export has, so `serving_default` means a
# causal run's; encoder exports are asked by signature name.
TEXT_INPUTS = {"serving_default": "prompt", "generate": "prompt", "score": "text",
               "fill_mask": "text", "classify": "text"}
# Numeric inputs (generate's, and fill_mask's top_k) and their dtypes (as in `tfchat.serving`).
SETTING_DTYPES = {
    "max_new_tokens": "int32",
    "temperature": "float32",
    "top_k": "int32",
    "top_p": "float32",
    "seed": "int64",
}


def _text_input(signature):
    return TEXT_INPUTS.get(signature, "prompt")


def rest_path(model, version=None):
    """`/v1/models/<model>[/versions/<version>]:predict`."""
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{int(version)}"
    return path + ":predict"


def rest_body(texts, settings=None, signature="serving_default", form="instances"):
    """The JSON body of a REST predict request.

    `settings` ({"temperature": 0.8, ...}) apply to every text. `instances`
    repeats them in each row (TF Serving's row form needs every input to
    have one value per row); `inputs` sends each once, as a one-element list
    the model broadcasts.
    """
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    key = _text_input(signature)
    if form == "instances":
        body = {"instances": [{key: text, **settings} for text in texts]}
    elif form == "inputs":
        body = {"inputs": {key: list(texts), **{k: [v] for k, v in settings.items()}}}
    else:
        raise ValueError(f"form must be 'instances' or 'inputs'. Received: form={form!r}")
    if signature != "serving_default":
        body["signature_name"] = signature
    return body


def parse_rest_response(response):
    """A TF Serving predict response (`predictions` for the row form,
    `outputs` for the column form) -> a list of {output: value}, one per text."""
    if "error" in response:
        raise TfchatError(f"TF Serving answered with an error: {response['error']}")
    if "predictions" in response:
        rows = response["predictions"]
        # A single-output signature comes back as bare values.
        return [row if isinstance(row, dict) else {"output": row} for row in rows]
    if "outputs" in response:
        columns = response["outputs"]
        if not isinstance(columns, dict):
            return [{"output": value} for value in columns]
        count = len(next(iter(columns.values())))
        return [{k: v[i] for k, v in columns.items()} for i in range(count)]
    raise TfchatError(f"Not a TF Serving predict response: {str(response)[:200]}")


def predict_rest(url, model, texts, settings=None, signature="serving_default",
                 form="instances", version=None, timeout=60.0):
    """POSTs a predict request; returns one dict of outputs per text."""
    body = json.dumps(rest_body(texts, settings, signature, form)).encode("utf-8")
    request = urllib.request.Request(
        url.rstrip("/") + rest_path(model, version),
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            response = json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (json.JSONDecodeError, AttributeError):
            pass
        raise TfchatError(f"TF Serving at {url} answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TfchatError(f"Cannot reach TF Serving at {url}: {reason}") from None
    return parse_rest_response(response)


def _require_grpc():
    """Raises a TfchatError saying how to install the gRPC client, if absent."""
    try:
        import grpc  # noqa: F401
        import tensorflow_serving.apis  # noqa: F401
    except ImportError as e:
        raise TfchatError(
            f"--grpc needs tensorflow-serving-api ({e}); install it with "
            "pip install \"tfchat[serving]\", or use --url for REST."
        ) from None


def grpc_request(model, texts, settings=None, signature="serving_default", version=None):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest` for `texts`
    (settings as one-element tensors the model broadcasts)."""
    import tensorflow as tf

    _require_grpc()
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs[_text_input(signature)].CopyFrom(
        tf.make_tensor_proto([t.encode("utf-8") for t in texts], dtype=tf.string)
    )
    for key, value in (settings or {}).items():
        if value is not None:
            request.inputs[key].CopyFrom(
                tf.make_tensor_proto([value], dtype=SETTING_DTYPES[key])
            )
    return request


def parse_grpc_response(response):
    """A `PredictResponse` -> a list of {output: value}, one per text."""
    import tensorflow as tf

    def decode(value):
        # Strings come as bytes, nested as deep as the output's rank.
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

    columns = {}
    for key, proto in response.outputs.items():
        columns[key] = decode(tf.make_ndarray(proto).tolist())
    count = len(next(iter(columns.values()))) if columns else 0
    return [{k: v[i] for k, v in columns.items()} for i in range(count)]


def predict_grpc(target, model, texts, settings=None, signature="serving_default",
                 version=None, timeout=60.0):
    """Sends a gRPC Predict to `target` (host:port); one dict per text."""
    _require_grpc()
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = grpc_request(model, texts, settings, signature, version)
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            raise TfchatError(
                f"TF Serving at {target} answered {e.code().name}: {e.details()}"
            ) from None
    return parse_grpc_response(response)
