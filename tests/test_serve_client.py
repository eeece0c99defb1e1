"""Request building of tfchat.serve_client (end to end: tests/test_export.py)."""

import json
import socket

import numpy as np
import pytest
import tensorflow as tf

from tfchat import serve_client
from tfchat.serving import client
from tfchat.errors import TfchatError


def test_rest_path():
    assert client.rest_path("chat") == "/v1/models/chat:predict"
    assert client.rest_path("chat", 3) == "/v1/models/chat/versions/3:predict"


def test_rest_body_row_and_column_forms():
    settings = {"temperature": 0.5, "seed": 7, "top_k": None}
    rows = client.rest_body(["a", "b"], settings, form="instances")
    # Row form: every input has one value per row; left-out settings stay out.
    assert rows == {"instances": [{"prompt": "a", "temperature": 0.5, "seed": 7},
                                  {"prompt": "b", "temperature": 0.5, "seed": 7}]}
    columns = client.rest_body(["a", "b"], settings, form="inputs")
    assert columns == {"inputs": {"prompt": ["a", "b"], "temperature": [0.5], "seed": [7]}}
    score = client.rest_body(["x"], signature="score", form="inputs")
    assert score == {"inputs": {"text": ["x"]}, "signature_name": "score"}
    json.dumps(rows), json.dumps(columns)  # bodies are plain JSON
    with pytest.raises(ValueError, match="form must be"):
        client.rest_body(["a"], form="rows")


def test_parse_rest_responses():
    rows = client.parse_rest_response(
        {"predictions": [{"text": "x", "num_tokens": 1}, {"text": "yz", "num_tokens": 2}]})
    columns = client.parse_rest_response(
        {"outputs": {"text": ["x", "yz"], "num_tokens": [1, 2]}})
    assert rows == columns == [{"text": "x", "num_tokens": 1}, {"text": "yz", "num_tokens": 2}]
    with pytest.raises(TfchatError, match="answered with an error: bad"):
        client.parse_rest_response({"error": "bad"})


def test_grpc_request():
    request = client.grpc_request(
        "chat", ["héllo", ""], {"max_new_tokens": 9, "temperature": 0.25, "seed": 3, "top_p": None},
        version=2,
    )
    assert request.model_spec.name == "chat"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 2
    assert set(request.inputs) == {"prompt", "max_new_tokens", "temperature", "seed"}
    assert tf.make_ndarray(request.inputs["prompt"]).tolist() == ["héllo".encode(), b""]
    assert request.inputs["max_new_tokens"].dtype == tf.int32.as_datatype_enum
    assert request.inputs["seed"].dtype == tf.int64.as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["temperature"]), np.float32([0.25]))
    score = client.grpc_request("chat", ["t"], signature="score")
    assert list(score.inputs) == ["text"] and score.model_spec.signature_name == "score"


def test_unreachable_server_is_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = serve_client.main(["--url", f"http://127.0.0.1:{port}", "--model", "m", "--timeout", "5", "hi"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: Cannot reach TF Serving") and len(err.splitlines()) == 1


def test_encoder_signatures_send_text():
    body = client.rest_body(["a [MASK] b"], {"top_k": 3}, signature="fill_mask")
    assert body == {"instances": [{"text": "a [MASK] b", "top_k": 3}], "signature_name": "fill_mask"}
    body = client.rest_body(["x", "y"], signature="classify", form="inputs")
    assert body == {"inputs": {"text": ["x", "y"]}, "signature_name": "classify"}
    request = client.grpc_request("enc", ["a [MASK] b"], {"top_k": 3}, signature="fill_mask")
    assert set(request.inputs) == {"text", "top_k"}
    assert request.inputs["top_k"].dtype == tf.int32.as_datatype_enum


def test_parse_grpc_response_decodes_nested_strings():
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.outputs["label"].CopyFrom(tf.make_tensor_proto([b"a", "é".encode()]))
    response.outputs["labels"].CopyFrom(tf.make_tensor_proto([[b"a", b"b"], [b"a", b"b"]]))
    response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(np.float32([[1, 0], [0, 1]])))
    rows = client.parse_grpc_response(response)
    assert rows == [{"label": "a", "labels": ["a", "b"], "probabilities": [1.0, 0.0]},
                    {"label": "é", "labels": ["a", "b"], "probabilities": [0.0, 1.0]}]
    json.dumps(rows)
