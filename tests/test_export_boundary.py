"""Exported `generate` and `chat` write what `tfchat.generate` writes at and
past the end of the context.

The graphs in `tfchat/serving/graphs.py` slide their own windows; their
greedy ids must be those of `Generator.iter_generate_ids`, which reads a
prompt whole while it fits with room for a new token, a longer one from its
last half context, and goes on in windows of the last half context. Each
export (a learned-position and a rotary chat run, a converted Llama-layout
checkpoint, an int8 export) is written once and asked, through TF Serving's
v1 Session SignatureDef path (as `serving_calls.session_run` runs it), for
prompt + max_new_tokens below, exactly at and above its context, and for
several windows past it.

The references are the Generator on one prompt at a time: the graph gives
each row of a batch its own windows, while the Generator, given a prompt
longer than the context, also cuts the other prompts of its batch to their
last half context.
"""

import types

import pytest
import tensorflow as tf

from conftest import CHAT_TINY, nest, write_jsonl
from pretrained_checkpoints import CHATML_LLAMA, make_causal_lm
from tfchat import config as config_lib
from tfchat.data.chat_template import TEMPLATES, Message, chat_stop_ids, get_template
from tfchat.data.tokenizer import PretrainedTokenizer
from tfchat.inference.generator import Generator
from tfchat.job import train
from tfchat.pretrained import convert
from tfchat.run import load_run, quantized_run
from tfchat.serving.export import export_run

# Every test here exports or converts whole runs (module fixtures).
pytestmark = pytest.mark.slow

# Among the cases: a 7-token chat prompt ("<|user|>ping<|end|><|assistant|>"
# in tfchat's template) with 30 new tokens in a 32-token context, where the
# exported reply lost its first token (the prompt was cut to leave room
# for all 30).
CONTEXT = 32
PROMPTS = ["", "the quick", "fox jumps over the lazy", "the lazy dog. the quick brown fox"]
CONVERSATIONS = [[Message("user", "ping")], [Message("user", "fox")]]


def _budgets(window, context):
    """max_new_tokens putting a first window of `window` prompt tokens
    below, exactly at and just above the context, further above (still
    under the context alone), then several windows past it."""
    above = context - window + 1
    return [m for m in (context - window - 1, context - window, above,
                        max(context - 2, above + 1), 2 * context + 3) if m > 0]


# A short reply, and one that runs far past the context: both trained
# models keep writing across the boundary, where the windows matter.
FOX = "the quick brown fox jumps over the lazy dog. " * 3
DIALOGUES = [("ping", "pong"), ("fox", FOX.strip())]


@pytest.fixture(scope="module")
def chat_runs(tmp_path_factory):
    """position (learned, rope) -> a tiny chat run with a 32-token context;
    each trains once."""
    root = tmp_path_factory.mktemp("boundary_runs")
    data = write_jsonl(root / "chats.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in DIALOGUES * 20])
    runs = {}

    def get(position):
        if position not in runs:
            settings = {**CHAT_TINY, "name": position, "runs_dir": str(root / "runs"),
                        "data.path": data, "model.position": position,
                        "model.block_size": CONTEXT, "train.max_steps": 60}
            train(config_lib.build_config(overrides=nest(settings)), verbose=0)
            runs[position] = str(root / "runs" / position)
        return runs[position]

    return get


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """A random Llama-layout checkpoint (ChatML markers as special tokens,
    so a chat run) converted with a 32-token context: random weights write
    varied text that seldom ends, so it runs through many windows."""
    root = tmp_path_factory.mktemp("llama_boundary")
    preset = str(root / "preset")
    make_causal_lm(CHATML_LLAMA).save_to_preset(preset)
    convert(preset, str(root / "runs" / "llama"), block_size=CONTEXT, verbose=False)
    return str(root / "runs" / "llama")


# The learned-position run covers the reported case in the quick loop; the
# other three exports take about two minutes more.
@pytest.fixture(scope="module", params=[
    "learned",
    pytest.param("rope", marks=pytest.mark.slow),
    pytest.param("llama", marks=pytest.mark.slow),
    pytest.param("int8", marks=pytest.mark.slow),
])
def served(request, tmp_path_factory):
    """The run (`int8`: the learned one, quantized) and its export."""
    if request.param == "llama":
        run = load_run(request.getfixturevalue("llama_run"))
    else:
        position = "learned" if request.param == "int8" else request.param
        run = load_run(request.getfixturevalue("chat_runs")(position))
    if request.param == "int8":
        run = quantized_run(run)
    saved = str(tmp_path_factory.mktemp("boundary_saved"))
    path = export_run(run, saved_models_dir=saved, name=request.param)
    # As `serving_calls.session_run` runs a signature, but loaded once: a
    # load per call was most of this file's time. The Session's graph is
    # not made the default, so the Generator still runs eagerly.
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)

    def call(signature_key, feeds):
        signature = meta_graph.signature_def[signature_key]
        feed = {signature.inputs[k].name: v for k, v in feeds.items()}
        return session.run({k: v.name for k, v in signature.outputs.items()}, feed)

    yield {"name": request.param, "run": run, "call": call,
           "generator": Generator(run.backbone, run.tokenizer),
           "context": run.backbone.block_size}
    session.close()


def _generator_ids(served, prompt_ids, max_new_tokens, stop_ids):
    generator = served["generator"]
    return generator.generate_ids([prompt_ids], max_new_tokens, generator.sampler(temperature=0),
                                  stop_at_eos=False, stop_token_ids=stop_ids)[0]


def _first_window(prompt_ids, context):
    return len(prompt_ids) if len(prompt_ids) < context else context // 2


def test_generate_matches_generator_below_at_and_past_the_context(served):
    run, context = served["run"], served["context"]
    tokenizer = run.tokenizer
    # The signature ends a row at the end tokens and the end-of-turn.
    stops = chat_stop_ids(tokenizer)
    cases = []
    for prompt, ids in zip(PROMPTS, tokenizer.tokenize_prompts(tf.constant(PROMPTS)).to_list()):
        ids = ids or [tokenizer.first_id]
        cases += [(prompt, ids, m) for m in _budgets(_first_window(ids, context), context)]
    # One prompt longer than the context, read from its last half context.
    ids = tokenizer.tokenize_prompts(tf.constant([FOX]))[0].numpy().tolist()
    assert len(ids) > context
    cases += [(FOX, ids, m) for m in _budgets(context // 2, context)]
    cases.append((PROMPTS[1], None, 0))

    # One batch, a max_new_tokens per row: each row's windows are its own.
    out = served["call"]("generate", {
        "prompt": [p for p, _, _ in cases], "max_new_tokens": [m for _, _, m in cases],
        "temperature": [0.0]})
    texts = [t.decode("utf-8", "replace") for t in out["text"].tolist()]
    crossed = 0
    for row, (prompt, ids, m) in enumerate(cases):
        case = f"{served['name']}: {len(ids or [])}-token prompt {prompt!r}, max_new_tokens {m}"
        if m == 0:
            assert (texts[row], out["num_tokens"][row]) == ("", 0), case
            continue
        expected = _generator_ids(served, ids, m, stops)
        assert texts[row] == served["generator"].decode([expected])[0], case
        assert out["num_tokens"][row] == len(expected), case
        window = _first_window(ids, context)
        assert out["num_prompt_tokens"][row] == window, case
        crossed += window + len(expected) > context
    # The comparison is only as good as the text that reached the boundary.
    assert crossed >= 3, served["name"]


def test_chat_matches_generator_below_at_and_past_the_context(served):
    generator, context = served["generator"], served["context"]
    crossed = 0
    for messages in CONVERSATIONS:
        ids = generator.chat_prompt(messages).ids
        for m in _budgets(len(ids), context):
            case = f"{served['name']}: {len(ids)}-token chat prompt, max_new_tokens {m}"
            # The Generator reads this conversation whole too (no old turns
            # to drop), so the replies differ only if the windows do.
            assert generator.chat_prompt(messages, m).ids == ids, case
            expected = generator.chat([messages], max_new_tokens=m, temperature=0)[0]
            out = served["call"]("chat", {
                "roles": [x.role for x in messages], "contents": [x.content for x in messages],
                "max_new_tokens": [m], "temperature": [0.0]})
            assert out["text"][0].decode("utf-8", "replace") == expected, case
            assert out["num_prompt_tokens"][0] == len(ids), case
            crossed += len(ids) + out["num_tokens"][0] > context
    assert crossed >= 1, served["name"]


# Conversations too long for the room a reply leaves: old exchanges go
# first, and a last message too long alone is cut from its start.
LONG_CONVERSATIONS = [
    [Message("user", "the cat sat on the mat " * 4)],
    [Message("system", "Be brief."), Message("user", "hello world, how are you? " * 3)],
    [Message("user", "how are you?"), Message("assistant", "fine, thank you."),
     Message("user", "and the weather there?"), Message("assistant", "sunny."),
     Message("user", "good.")],
    [Message("system", "Be brief."), Message("assistant", "hello."),
     Message("user", "the cat sat on the mat"), Message("assistant", "a quick brown fox"),
     Message("user", "hi")],
    [],
]


@pytest.mark.parametrize("family, template, system", [
    # Llama 3: a start token the cut keeps, and stripped contents.
    ("llama", "llama3", ""),
    # ChatML with a default system message, kept as the leading one.
    pytest.param("qwen2", "chatml", "You are a helpful assistant.", marks=pytest.mark.slow),
])
def test_in_graph_chat_prompt_is_fitted_as_the_generators(family, template, system):
    """The chat signature's prompt (`chat_prompt_tf`) is `Generator.chat_prompt`'s
    for every room the reply asks for: the windows no longer cut it."""
    from tfchat.serving.export import chat_prompt_tf

    tokenizer = PretrainedTokenizer(make_causal_lm(family).preprocessor.tokenizer)
    tokenizer.chat_template = get_template(template, system)
    assert TEMPLATES[template].add_start_token == (family == "llama")
    # Traced once, as in the export (a trace per conversation took minutes).
    fit = tf.function(
        lambda roles, contents, max_new_tokens: chat_prompt_tf(
            tokenizer, roles, contents, max_new_tokens, CONTEXT),
        input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string),
                         tf.TensorSpec([], tf.int32)])
    generator = Generator(types.SimpleNamespace(block_size=CONTEXT), tokenizer)
    cut = dropped = 0
    for messages in CONVERSATIONS + LONG_CONVERSATIONS:
        roles = tf.constant([m.role for m in messages], tf.string)
        contents = tf.constant([m.content for m in messages], tf.string)
        for m in (1, CONTEXT // 4, CONTEXT // 4 + 1, CONTEXT // 2, CONTEXT, 3 * CONTEXT):
            expected = generator.chat_prompt(messages, m)
            ids = fit(roles, contents, tf.constant(m)).numpy().tolist()
            assert ids == expected.ids, (messages, m)
            cut += bool(expected.cut_tokens)
            dropped += bool(expected.dropped_messages)
    assert cut and dropped


def test_exported_text_is_valid_utf8_where_a_reply_ends_mid_character():
    """A byte-level BPE reply cut by max_new_tokens may end inside a
    character; the signatures' text replaces the torn bytes as Python's
    decoding does, so TF Serving's JSON can carry it."""
    from tfchat.serving.graphs import valid_utf8

    torn = ["héllo".encode() + "€".encode()[:2], "ok 🙂".encode()[:-1], "fine".encode(),
            b"\xff mid \xe2\x82 end"]
    got = [t.decode("utf-8") for t in valid_utf8(tf.constant(torn)).numpy()]
    assert got == [t.decode("utf-8", errors="replace") for t in torn]
