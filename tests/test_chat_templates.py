"""Chat templates of pretrained families (issue 16): tfchat's ChatML and
Llama 3 renderings against `jinja2` rendering the kind of `chat_template`
Hugging Face checkpoints ship (the strings below are written here in that
form, as transformers renders them), the assistant-only weights, and the
in-graph prompt against the Python one."""

import jinja2
import jinja2.sandbox
import pytest
import tensorflow as tf

from pretrained_checkpoints import make_causal_lm
from tfchat.data.chat_template import (
    TEMPLATES, Message, encode_conversation, encode_prompt_tf, get_template,
    render_prompt_tf, render_text, template_from_jinja,
)
from tfchat.data.tokenizer import PretrainedTokenizer
from tfchat.errors import TfchatError

# Qwen2.5-Instruct's form (without its tools branch): a default system message.
QWEN_CHATML = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# SmolLM2-Instruct's form.
SMOLLM_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# A ChatML form without a default system message.
PLAIN_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama 3 Instruct's form.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Gemma instruct's form (gemma-1.1 / gemma-2 -it tokenizer_config.json).
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Mistral-7B-Instruct-v0.1's form: no generation prompt (a prompt ends at
# [/INST]), the reply closed by the end token.
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)
JINJA = {"qwen": QWEN_CHATML, "smollm": SMOLLM_CHATML, "chatml": PLAIN_CHATML, "llama3": LLAMA3,
         "gemma": GEMMA, "mistral": MISTRAL}
BOS = {"llama3": "<|begin_of_text|>", "gemma": "<bos>", "mistral": "<s>"}
EOS = {"mistral": "</s>"}

CONVERSATIONS = [
    [Message("user", "Hi!")],
    [Message("system", "Be brief."), Message("user", "Hi!"), Message("assistant", "Hello.")],
    [Message("user", "How are you?"), Message("assistant", "Fine, thanks."),
     Message("user", "And the weather\nthere?"), Message("assistant", "Sunny; café open. 🙂")],
    [Message("user", ""), Message("assistant", "")],
    [Message("system", "Réponds en français."), Message("user", "  spaced out  \n"),
     Message("assistant", "中文 and 日本語\n\nlines")],
]


class TemplateError(Exception):
    pass


def _raise_exception(message):
    raise TemplateError(message)


def jinja_render(source, messages, add_generation_prompt, bos_token="", eos_token=""):
    """As transformers renders a chat_template (its `raise_exception` too)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source).render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token,
    )


@pytest.mark.parametrize("form", sorted(JINJA))
def test_renders_as_the_checkpoints_jinja_template(form):
    name, system = template_from_jinja(JINJA[form])
    assert name == (form if form in ("llama3", "gemma", "mistral") else "chatml")
    template = get_template(name, system)
    bos = BOS.get(form, "")
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            try:
                expected = jinja_render(JINJA[form], messages, prompt, bos_token=bos,
                                        eos_token=EOS.get(form, ""))
            except TemplateError:
                # The original refuses the conversation (a system turn in a
                # format without one); so does tfchat, in Python and in graph.
                assert any(m.role == "system" for m in messages)
                with pytest.raises(TfchatError, match="no system turn"):
                    render_text(messages, template, prompt, start=bos)
                with pytest.raises(tf.errors.InvalidArgumentError, match="no system role"):
                    render_prompt_tf([m.role for m in messages], [m.content for m in messages],
                                     template)
                continue
            assert render_text(messages, template, prompt, start=bos) == expected
            if prompt:  # the in-graph rendering (the start token is the tokenizer's)
                rendered = render_prompt_tf([m.role for m in messages], [m.content for m in messages],
                                            template).numpy().decode("utf-8")
                assert rendered == expected[len(bos):]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_exported_jinja_renders_as_tfchat(name):
    """What an export to Hugging Face form writes as its chat_template
    renders, in jinja2, what tfchat renders; and is recognised again."""
    for system in ("", "You are a helpful assistant."):
        if system and not TEMPLATES[name].system_role:
            with pytest.raises(TfchatError, match="no system turn"):
                get_template(name, system)
            continue
        template = get_template(name, system)
        bos = "<s>" if template.add_start_token else ""
        for messages in CONVERSATIONS:
            if not template.system_role and any(m.role == "system" for m in messages):
                with pytest.raises(TemplateError):
                    jinja_render(template.to_jinja(), messages, False, bos_token="<s>")
                continue
            for prompt in (False, True):
                assert jinja_render(template.to_jinja(), messages, prompt, bos_token="<s>") == \
                    render_text(messages, template, prompt, start=bos)
        if template.markers:
            assert template_from_jinja(template.to_jinja()) == (name, system)


def test_unknown_jinja_is_plain():
    assert template_from_jinja("{{ messages[0].content }}") == ("plain", "")
    assert template_from_jinja(None) == ("plain", "")


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def tokenizer(request):
    family = {"chatml": "qwen2", "llama3": "llama"}[request.param]
    tokenizer = PretrainedTokenizer(make_causal_lm(family).preprocessor.tokenizer)
    tokenizer.chat_template = TEMPLATES[request.param]
    return tokenizer


def test_weights_cover_exactly_the_replies_and_their_end_markers(tokenizer):
    template = tokenizer.chat_template
    for messages in CONVERSATIONS:
        encoded = encode_conversation(tokenizer, messages)
        if not any(m.role == "assistant" for m in messages):
            assert not any(encoded.weights)
            continue
        # The ids are the rendered text's (start token, then the template).
        start = (tokenizer.hub_tokenizer.id_to_token(tokenizer.bos_id)
                 if tokenizer.bos_id is not None and template.add_start_token else "")
        text = render_text(messages, template, start=start)
        assert encoded.ids == tokenizer.tokenize(tf.constant(text)).numpy().tolist()
        # Each maximal run of weight-1 tokens is one reply and its marker.
        spans, current = [], []
        for token, weight in zip(encoded.ids, encoded.weights):
            if weight:
                current.append(token)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        replies = [tokenizer.tokenize(tf.constant(template.content(m.content) + template.end_of_turn))
                   .numpy().tolist() for m in messages if m.role == "assistant"]
        assert spans == replies


def test_in_graph_prompt_ids_are_the_python_ones(tokenizer):
    for system in ("", "You are a helpful assistant."):
        tokenizer.chat_template = get_template(tokenizer.chat_template.name, system)
        for messages in CONVERSATIONS:
            expected = encode_conversation(tokenizer, messages, add_generation_prompt=True).ids
            ids = encode_prompt_tf(tokenizer, [m.role for m in messages], [m.content for m in messages])
            assert ids.numpy().tolist() == expected


@pytest.mark.slow
def test_exported_chatml_llama_serves_the_keras_text_and_replies(tmp_path):
    """A converted Llama-family checkpoint in SmolLM2-Instruct's layout
    (ChatML markers as special tokens, so a ChatML chat run), exported once
    and run through TF Serving's v1 Session SignatureDef path: `generate`
    writes the Keras model's greedy text (issue 15) and `chat` its greedy
    reply (issue 16)."""
    from pretrained_checkpoints import CHATML_LLAMA
    from serving_calls import session_run
    from tfchat.inference.generator import Generator
    from tfchat.pretrained import convert
    from tfchat.run import load_run
    from tfchat.serving.export import export_run

    model = make_causal_lm(CHATML_LLAMA)
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    convert(preset, str(tmp_path / "runs" / "smol"), block_size=48, verbose=False)
    run = load_run(str(tmp_path / "runs" / "smol"))
    assert (run.config.objective, run.config.tokenizer.chat_template) == ("chat", "chatml")
    generator = Generator(run.backbone, run.tokenizer)
    prompts = ["the cat sat", "hé 中"]
    texts = generator.generate(prompts, 10, temperature=0)
    messages = [Message("system", "Be brief."), Message("user", "the cat sat")]
    reply = generator.chat([messages], max_new_tokens=10)[0]
    assert any(len(t) > 3 for t in texts) and reply
    path = export_run(run, saved_models_dir=str(tmp_path / "saved"))
    out = session_run(path, "serving_default",
                      {"prompt": prompts, "max_new_tokens": [10], "temperature": [0.0]})
    assert [t.decode("utf-8", "replace") for t in out["text"].tolist()] == texts
    out = session_run(path, "chat", {"roles": [m.role for m in messages],
                                     "contents": [m.content for m in messages],
                                     "max_new_tokens": [10], "temperature": [0.0]})
    assert out["text"][0].decode("utf-8", "replace") == reply
