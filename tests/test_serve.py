"""`python -m tfchat.serve` as its users' programs talk to it: a real server
process on a loopback port, and the official `openai` client.

Replies are checked against `python -m tfchat.chat` and the Python
generator, log-probabilities against the model's own forward pass, usage
against the tokenizer; then 16 concurrent streams, the bad inputs (each a
400 with OpenAI's error body, the server still answering after them), the
API key, and a causal run that serves completions only."""

import concurrent.futures
import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import tensorflow as tf

from conftest import CHAT_PAIRS, TINY, nest
from served import free_port, running_server
from tfchat import config as config_lib

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(chat_run):
    with running_server(chat_run, "--api-key", KEY, "--max-batch", "8") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def run(chat_run):
    from tfchat.run import load_run

    return load_run(chat_run)


def terminal_chat(run_path, message, *args):
    out = subprocess.run(
        [sys.executable, "-m", "tfchat.chat", "--run", run_path, "--temperature", "0", *args,
         message], capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.rstrip("\n")


def chat(client, messages, **fields):
    return client.chat.completions.create(model="chat", messages=messages, **fields)


def user(text):
    return [{"role": "user", "content": text}]


def streamed(client, messages, **fields):
    stream = chat(client, messages, stream=True, **fields)
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return "".join(pieces), finish, usage


@pytest.mark.slow  # three terminal chats, each a process that loads TensorFlow
def test_chat_replies_equal_the_terminal_chat(chat_run, client):
    for question, answer in CHAT_PAIRS:
        expected = terminal_chat(chat_run, question)
        assert expected == answer  # the run learnt its conversations
        reply = chat(client, user(question), temperature=0)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"
        text, finish, usage = streamed(client, user(question), temperature=0,
                                       stream_options={"include_usage": True})
        assert (text, finish) == (expected, "stop")
        assert usage.completion_tokens == reply.usage.completion_tokens


def test_a_system_message_and_a_second_turn_as_the_generator_renders_them(run, client):
    from tfchat.data.chat_template import Message
    from tfchat.inference.generator import Generator

    messages = [{"role": "system", "content": "be brief"}, *user("ping"),
                {"role": "assistant", "content": "pong"}, *user("how are you?")]
    expected = Generator(run.backbone, run.tokenizer).chat(
        [[Message(m["role"], m["content"]) for m in messages]], temperature=0)[0]
    assert chat(client, messages, temperature=0).choices[0].message.content == expected


def test_usage_counts_are_the_tokenizers(run, client):
    from tfchat.data.chat_template import Message, encode_conversation

    reply = chat(client, user("what is your name?"), temperature=0)
    prompt = encode_conversation(run.tokenizer, [Message("user", "what is your name?")],
                                 add_generation_prompt=True)
    content = reply.choices[0].message.content
    completion = len(run.tokenizer.tokenize(tf.constant(content)).numpy())
    assert reply.usage.prompt_tokens == len(prompt.ids)
    assert reply.usage.completion_tokens == completion
    assert reply.usage.total_tokens == len(prompt.ids) + completion


def rendered(run, question):
    from tfchat.data.chat_template import Message, render_text

    return render_text([Message("user", question)], run.tokenizer.chat_template,
                       add_generation_prompt=True)


def test_completion_logprobs_equal_the_models(run, client):
    prompt = rendered(run, "how are you?") + "i am"
    response = client.completions.create(model="chat", prompt=prompt, max_tokens=6,
                                         temperature=0, echo=True, logprobs=2)
    choice = response.choices[0]
    ids = run.tokenizer.tokenize(tf.constant(prompt)).numpy().tolist()
    assert choice.text.startswith(prompt)
    assert response.usage.prompt_tokens == len(ids)
    completion = run.tokenizer.tokenize(tf.constant(choice.text[len(prompt):])).numpy().tolist()
    full = ids + completion
    logits = run.backbone(tf.constant([full]), training=False)
    expected = tf.nn.log_softmax(logits, axis=-1).numpy()[0]
    logprobs = choice.logprobs.token_logprobs
    assert len(logprobs) == len(full) and logprobs[0] is None
    np.testing.assert_allclose(logprobs[1:], [expected[p - 1, full[p]] for p in range(1, len(full))],
                               atol=1e-4)
    assert "".join(choice.logprobs.tokens) == choice.text
    # Greedy: each completion token is its position's best.
    for p in range(len(ids), len(full)):
        assert max(choice.logprobs.top_logprobs[p].values()) == pytest.approx(logprobs[p], abs=1e-6)


def test_stop_strings_cut_where_the_generator_cuts(run, client):
    from tfchat.data.chat_template import Message
    from tfchat.inference.generator import Generator

    generator = Generator(run.backbone, run.tokenizer)
    for stop in (["fine"], [",", "zzz"]):
        expected = generator.chat([[Message("user", "how are you?")]], temperature=0,
                                  stop_strings=stop)[0]
        reply = chat(client, user("how are you?"), temperature=0, stop=stop)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"
        assert streamed(client, user("how are you?"), temperature=0, stop=stop)[0] == expected
    prompt = rendered(run, "what is your name?")
    expected = generator.generate([prompt], 30, temperature=0, stop_strings=["tiny"])[0]
    response = client.completions.create(model="chat", prompt=prompt, max_tokens=30,
                                         temperature=0, stop="tiny")
    assert response.choices[0].text == expected
    assert expected == "my name is "
    # A chat run's completion ends where its turn ends, as its chat does.
    whole = client.completions.create(model="chat", prompt=prompt, max_tokens=40, temperature=0)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == ("my name is tiny bot.", "stop")


def test_sixteen_concurrent_streams_get_their_own_replies(server, client):
    questions = [CHAT_PAIRS[i % 3] for i in range(16)]

    def ask(pair):
        return streamed(client, user(pair[0]), temperature=0)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, questions))
    assert [r[0] for r in results] == [a for _, a in questions]
    assert all(r[1] == "stop" for r in results)
    health = json.load(urllib.request.urlopen(server + "/health"))
    assert (health["generating"], health["waiting"]) == (0, 0)


def test_n_choices_and_seeds(client):
    fields = dict(temperature=1.0, n=3, seed=11, max_tokens=12)
    first = chat(client, user("ping"), **fields)
    second = chat(client, user("ping"), **fields)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in second.choices]
    # vLLM's top_k -1 means off, as 0 does.
    third = chat(client, user("ping"), **fields, extra_body={"top_k": -1})
    assert texts == [c.message.content for c in third.choices]


def post(url, body, key=KEY, raw=None):
    """(status, JSON body) of a POST; `raw` sends bytes as they are."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


HI = user("ping")
BAD_CHAT = {
    "malformed JSON": (None, b'{"messages": [', None),
    "not an object": ([1, 2], None, None),
    "no messages": ({"model": "chat"}, None, "messages"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, None,
                     "messages[0].role"),
    "content not text": ({"messages": [{"role": "user", "content": 3}]}, None,
                         "messages[0].content"),
    "negative temperature": ({"messages": HI, "temperature": -1}, None, "temperature"),
    "NaN temperature": (None, b'{"messages": [{"role": "user", "content": "hi"}], '
                              b'"temperature": NaN}', "temperature"),
    "top_p above 1": ({"messages": HI, "top_p": 1.5}, None, "top_p"),
    "n over the limit": ({"messages": HI, "n": 100}, None, "n"),
    "negative max_tokens": ({"messages": HI, "max_tokens": -5}, None, "max_tokens"),
    "huge max_tokens": ({"messages": HI, "max_tokens": 10**9}, None, "max_tokens"),
    "stop not text": ({"messages": HI, "stop": 5}, None, "stop"),
    "frequency penalty": ({"messages": HI, "frequency_penalty": 1.0}, None,
                          "frequency_penalty"),
    "too long for the context": ({"messages": user("ping " * 200)}, None, "messages"),
    "logprobs": ({"messages": HI, "logprobs": True}, None, "logprobs"),
}


@pytest.mark.parametrize("case", list(BAD_CHAT))
def test_bad_chat_input_is_a_400_and_the_server_goes_on(server, client, case):
    body, raw, param = BAD_CHAT[case]
    status, error = post(server + "/v1/chat/completions", body, raw=raw)
    assert status == 400, error
    assert set(error["error"]) >= {"message", "type", "param"}
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert chat(client, HI, temperature=0).choices[0].message.content == "pong"


BAD_COMPLETIONS = {
    "no prompt": ({"max_tokens": 3}, "prompt"),
    "prompt longer than the context": ({"prompt": "ping " * 20}, "prompt"),
    "token id out of range": ({"prompt": [1, 2, 10**6]}, "prompt"),
    "too many logprobs": ({"prompt": "hi", "logprobs": 99}, "logprobs"),
    "echo with stream": ({"prompt": "hi", "echo": True, "stream": True}, "stream"),
}


@pytest.mark.parametrize("case", list(BAD_COMPLETIONS))
def test_bad_completion_input_is_a_400(server, case):
    body, param = BAD_COMPLETIONS[case]
    status, error = post(server + "/v1/completions", body)
    assert status == 400, error
    assert error["error"]["param"] == param


def test_unknown_routes_and_methods_answer_in_the_apis_shape(server):
    request = urllib.request.Request(server + "/v1/nothing", headers={
        "Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.code == 404 and "/v1/nothing" in json.load(caught.value)["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server + "/v1/chat/completions")  # GET
    assert caught.value.code == 405 and json.load(caught.value)["error"]["type"]


def test_the_api_key_is_required(server):
    for path in ("/v1/chat/completions", "/v1/completions"):
        status, error = post(server + path, {"messages": HI, "prompt": "hi"}, key=None)
        assert status == 401
        assert "API key" in error["error"]["message"]
        assert post(server + path, {"messages": HI, "prompt": "hi"}, key="wrong")[0] == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()
    assert urllib.request.urlopen(server + "/health").status == 200  # no key needed


def test_models_lists_the_run(client):
    assert [m.id for m in client.models.list().data] == ["chat"]


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    from conftest import REPETITIVE_TEXT, write_text
    from tfchat.job import train

    root = tmp_path_factory.mktemp("causal_serve")
    settings = {**TINY, "objective": "causal", "name": "causal", "runs_dir": str(root / "runs"),
                "data.path": write_text(root / "fox.txt", REPETITIVE_TEXT)}
    train(config_lib.build_config(overrides=nest(settings)), verbose=0)
    return str(root / "runs" / "causal")


@pytest.mark.slow  # trains a run and starts a second server
def test_a_causal_run_serves_completions_only(causal_run):
    with running_server(causal_run) as url:
        status, error = post(url + "/v1/chat/completions", {"messages": HI}, key=None)
        assert status == 404
        assert "only /v1/completions" in error["error"]["message"]
        status, body = post(url + "/v1/completions",
                            {"prompt": "the quick", "max_tokens": 5, "temperature": 0}, key=None)
        assert status == 200
    from tfchat.inference.generator import Generator
    from tfchat.run import load_run

    run = load_run(causal_run)
    expected = Generator(run.backbone, run.tokenizer).generate(["the quick"], 5, temperature=0)
    assert body["choices"][0]["text"] == expected[0]


def test_a_stop_id_that_ends_a_completion_is_scored(run):
    """lm-evaluation-harness drops the last position of an echo request as
    the generated one; when generation stopped at once on a stop id, that
    position must be the stop id's, not the prompt's last token."""
    from tfchat.serving import openai_api

    served = openai_api.ServedRun(run, "chat")
    try:
        request = openai_api.completion_request(
            {"prompt": "ping", "max_tokens": 1, "echo": True, "logprobs": 1}, served)
        (job,) = request.jobs
        job.completion_ids, job.stop_token, job.finish_reason = [], run.tokenizer.eos_id, "stop"
        body = openai_api.completion_response(request, served)["choices"][0]
        prompt = request.prompt_ids[0]
        logprobs = body["logprobs"]["token_logprobs"]
        assert len(logprobs) == len(prompt) + 1
        full = prompt + [run.tokenizer.eos_id]
        expected = tf.nn.log_softmax(run.backbone(tf.constant([full])), axis=-1).numpy()[0]
        assert logprobs[-1] == pytest.approx(expected[-2, full[-1]], abs=1e-4)
        assert body["text"] == "ping" and body["finish_reason"] == "stop"
    finally:
        served.engine.close()


def test_clients_that_disconnect_free_their_rows(server, client):
    import http.client
    import time
    import urllib.parse

    body = json.dumps({"prompt": "ping", "max_tokens": 2048, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    address = urllib.parse.urlparse(server)
    for _ in range(4):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        connection.request("POST", "/v1/completions", body=body, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"data: ")  # the first chunk came
        connection.close()  # and the client goes
    # A client waiting for a whole (non-streamed) reply that goes away.
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.request("POST", "/v1/completions", body=json.dumps(
        {"prompt": "ping", "max_tokens": 2048, "ignore_eos": True}), headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    time.sleep(0.5)
    connection.close()
    assert json.load(urllib.request.urlopen(server + "/health"))["generating"] > 0
    # Five rows of 2,048 tokens would take many seconds; they go within a
    # second or so.
    deadline = time.monotonic() + 3
    while json.load(urllib.request.urlopen(server + "/health"))["generating"]:
        assert time.monotonic() < deadline, "the disconnected rows are still generating"
        time.sleep(0.05)
    assert chat(client, HI, temperature=0).choices[0].message.content == "pong"


def test_a_port_in_use_or_a_missing_run_is_one_line(chat_run, tmp_path, capsys):
    import socket

    from tfchat import serve

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert serve.main(["--run", chat_run, "--port", port]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1
    assert serve.main(["--run", str(tmp_path / "nope"), "--port", str(free_port())]) == 1
    assert "No tfchat run at" in capsys.readouterr().err


def test_feedback_records_are_the_terminal_chats_and_empty_replies_are_refused():
    from tfchat.data.chat_template import Message
    from tfchat.data.preferences import labelled_record, pair_record
    from tfchat.serving.openai_api import ApiError, feedback_record

    assert feedback_record({"messages": HI, "reply": "pong", "label": True}) == labelled_record(
        [Message("user", "ping")], [Message("assistant", "pong")], True)
    assert feedback_record({"messages": HI, "chosen": "pong", "rejected": "pang"}) == pair_record(
        [Message("user", "ping")], [Message("assistant", "pong")], [Message("assistant", "pang")])
    for bad in ({"messages": HI, "reply": "  ", "label": False},
                {"messages": HI, "chosen": "pong", "rejected": ""},
                {"messages": HI, "chosen": "pong", "rejected": "pong"},
                {"messages": [], "reply": "pong", "label": True}):
        with pytest.raises(ApiError):
            feedback_record(bad)
