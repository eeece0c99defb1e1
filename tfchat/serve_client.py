"""Ask a running TF Serving for text: REST or gRPC requests to an exported model.

    python -m tfchat.serve_client --url http://localhost:8501 --model default "ROMEO:"
    python -m tfchat.serve_client --url http://localhost:8501 --model default \\
        --max-new-tokens 100 --temperature 0.8 --top-k 40 --seed 1 "Hello" "Hi there"
    python -m tfchat.serve_client --grpc localhost:8500 --model default "ROMEO:"
    python -m tfchat.serve_client --url http://localhost:8501 --model default \\
        --signature score "the text to score"
    python -m tfchat.serve_client --url http://localhost:8501 --model enc \\
        --signature fill_mask --top-k 3 "to be or not to [MASK] ."
    python -m tfchat.serve_client --url http://localhost:8501 --model clf \\
        --signature classify "a text to label"

REST requests go to `/v1/models/<model>[/versions/<n>]:predict` in either of
TF Serving's two body forms: `instances` (one object per prompt) or `inputs`
(one list per input name). gRPC requests are `PredictRequest`s from
`tensorflow-serving-api`. Settings left out fall back to the defaults
written into the exported signature.

REST needs only the standard library; gRPC needs the `serving` extra
(`pip install "tfchat[serving]"`: tensorflow-serving-api and grpcio).
"""

import argparse
import json
import sys
import urllib.error
import urllib.request

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.serve_client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT",
                        help="Prompts (or texts to score); \\n is a newline.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="TF Serving's REST address, e.g. http://localhost:8501.")
    where.add_argument("--grpc", metavar="HOST:PORT", help="TF Serving's gRPC address, e.g. localhost:8500.")
    parser.add_argument("--model", required=True, help="The model name TF Serving serves (MODEL_NAME).")
    parser.add_argument("--version", type=int, default=None, help="A model version (default: the newest).")
    parser.add_argument("--signature", default="serving_default",
                        help="serving_default (generate) or score; fill_mask or classify "
                             "for exports of mlm or classify runs.")
    parser.add_argument("--form", choices=("instances", "inputs"), default="instances",
                        help="REST body form: row (instances) or column (inputs).")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy.")
    parser.add_argument("--top-k", type=int, default=None,
                        help="Sampling top-k; with fill_mask, the candidates per [MASK].")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="Same seed, same text.")
    parser.add_argument("--timeout", type=float, default=60.0)
    quiet.add_verbose_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    texts = [t.replace("\\n", "\n") for t in args.texts]
    settings = {}
    if args.signature in ("serving_default", "generate"):
        settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                    "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    elif args.signature == "fill_mask":
        settings = {"top_k": args.top_k}
    try:
        if args.url:
            rows = predict_rest(args.url, args.model, texts, settings, args.signature,
                                args.form, args.version, args.timeout)
        else:
            rows = predict_grpc(args.grpc, args.model, texts, settings, args.signature,
                                args.version, args.timeout)
    except TfchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for text, row in zip(texts, rows):
        if "text" in row:
            print(text + row["text"])
        else:
            print(json.dumps({"text": text, **row}, ensure_ascii=False))
        if len(rows) > 1:
            print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
