"""Writes the notebooks from the cell sources below (outputs cleared).

    python notebooks/make_notebooks.py

Keeping the sources here means a notebook's diff is plain Python; the .ipynb
files are what users open.
"""

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''import os
# Small settings (the default) run top to bottom in a few minutes on 2 CPU
# cores; set TFCHAT_NOTEBOOK_SMALL=0 for a real run.
SMALL = os.environ.get("TFCHAT_NOTEBOOK_SMALL", "1") == "1"
RUNS = os.path.abspath(os.environ.get("TFCHAT_NOTEBOOK_RUNS", "runs"))
SHAKESPEARE = os.path.abspath(os.path.join("..", "..", "shared", "data", "tinyshakespeare", "input.txt"))
if not os.path.exists(SHAKESPEARE):  # started from the repository root
    SHAKESPEARE = os.path.abspath(os.path.join("..", "shared", "data", "tinyshakespeare", "input.txt"))

import tfchat  # sets the Keras backend to TensorFlow
import keras
import tensorflow as tf
print("TensorFlow", tf.__version__, "| Keras", keras.__version__, "| small settings:", SMALL)'''


def pretrain_gpt():
    return [
        new_markdown_cell(
            "# 1. Pretrain a GPT on your own text\n\n"
            "Corpus → tokenizer → `tf.data` pipeline → model → `fit` → sample, with the same "
            "public pieces `python -m tfchat.fit` wires together. The corpus is tiny-shakespeare."
        ),
        new_code_cell(SETUP),
        new_markdown_cell(
            "**Config.** One typed structure; here we set fields in Python, the CLI sets "
            "them with `--model.num_layers 4` and the like."
        ),
        new_code_cell('''from tfchat.config import Config

config = Config(name="notebook_gpt", runs_dir=RUNS)
config.data.path = SHAKESPEARE
config.tokenizer.kind = "char"
config.model.num_layers, config.model.num_heads, config.model.hidden_dim = (2, 2, 64) if SMALL else (4, 4, 128)
config.model.block_size = 64
config.model.dropout = 0.0
config.train.batch_size = 12
config.train.max_steps = 150 if SMALL else 2000
config.train.warmup_steps = 20 if SMALL else 100
config'''),
        new_markdown_cell(
            "**Corpus.** The file is streamed, never read whole; the first 90% of its "
            "characters train, the last 10% validate."
        ),
        new_code_cell('''from tfchat.data.corpus import Corpus

corpus = Corpus(config.data)
print(f"{corpus.num_chars:,} characters in {corpus.files}")
print(next(corpus.iter_texts("train"))[:80])'''),
        new_markdown_cell(
            "**Tokenizer.** A character vocabulary built from the training split; it "
            "tokenizes inside the TensorFlow graph, so it also runs inside `tf.data` and "
            "inside an exported SavedModel."
        ),
        new_code_cell('''from tfchat.data.tokenizer import train_tokenizer

tokenizer = train_tokenizer(config.tokenizer, corpus.iter_texts("train"))
ids = tokenizer.tokenize(tf.constant(["To be, or not to be"]))
print("vocabulary:", tokenizer.vocabulary_size, "| ids:", ids.numpy()[0][:10])
print("round trip:", tokenizer.detokenize(ids).numpy()[0].decode())'''),
        new_markdown_cell(
            "**Pipeline.** Tokenize, pack into blocks of `block_size + 1`, shift by one for "
            "next-token targets, shuffle, batch, prefetch."
        ),
        new_code_cell('''from tfchat.data.pipeline import causal_lm_dataset

m, t = config.model, config.train
train_ds = causal_lm_dataset(corpus.texts("train"), tokenizer, m.block_size, t.batch_size,
                             shuffle_buffer=t.shuffle_buffer, seed=t.seed, repeat=True)
val_ds = causal_lm_dataset(corpus.texts("val"), tokenizer, m.block_size, t.batch_size,
                           drop_remainder=False)
x, y = next(iter(train_ds))
print(x.shape, y.shape, "targets are inputs shifted:", bool(tf.reduce_all(x[:, 1:] == y[:, :-1])))'''),
        new_markdown_cell(
            "**Model.** A GPT backbone inside the `CausalLM` task, whose `train_step` is the "
            "one tfchat's own distributed loop runs; here `model.fit` runs it."
        ),
        new_code_cell('''from tfchat.run import build_model
from tfchat.train.optim import build_optimizer

keras.utils.set_random_seed(t.seed)
model = build_model(config, tokenizer.vocabulary_size)
model.compile(optimizer=build_optimizer(t, model))
print(f"{model.backbone.num_params() / 1e6:.2f}M parameters")'''),
        new_markdown_cell("**Train**, logging to TensorBoard as it goes."),
        new_code_cell('''%load_ext tensorboard
log_dir = os.path.join(RUNS, config.name, "logs")
steps_per_epoch = 50
history = model.fit(train_ds, steps_per_epoch=steps_per_epoch, epochs=t.max_steps // steps_per_epoch,
                    validation_data=val_ds, validation_steps=10, verbose=2,
                    callbacks=[keras.callbacks.TensorBoard(log_dir)])
if not SMALL:
    get_ipython().run_line_magic("tensorboard", f"--logdir {log_dir}")'''),
        new_markdown_cell("**Loss curve.**"),
        new_code_cell('''import matplotlib.pyplot as plt

losses, val_losses = history.history["loss"], history.history["val_loss"]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(1, len(losses) + 1), losses, label="train")
ax.plot(range(1, len(val_losses) + 1), val_losses, label="validation")
ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.legend()
plt.show()
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
assert losses[-1] < losses[0]'''),
        new_markdown_cell(
            "**Sample** with the KV cache (keras-hub samplers over `GPT.call_with_cache`)."
        ),
        new_code_cell('''from tfchat.inference.generator import Generator

generator = Generator(model.backbone, tokenizer)
print(generator.generate(["ROMEO:"], max_new_tokens=120, temperature=0.8, top_k=20, seed=1)[0])'''),
    ]


def masked_lm_bert():
    return [
        new_markdown_cell(
            "# 2. Pretrain a BERT encoder with masked-LM, then fine-tune a classifier\n\n"
            "A small BERT encoder learns tiny-shakespeare by predicting masked words, fills in "
            "`[MASK]` in a cell, then learns to sort the chatterbot utterances by category, with "
            "the same public pieces `python -m tfchat.fit --objective mlm|classify`, "
            "`python -m tfchat.fill_mask` and `python -m tfchat.evaluate` use."
        ),
        new_code_cell(SETUP),
        new_markdown_cell(
            "**Config.** Objective `mlm` needs the WordPiece tokenizer (BERT's, with `[CLS]`, "
            "`[SEP]` and `[MASK]`, its vocabulary learnt from the corpus); "
            "`--config shakespeare_mlm` is the command line's version of this run."
        ),
        new_code_cell('''from tfchat.config import Config

mlm = Config(name="notebook_mlm", runs_dir=RUNS, objective="mlm")
mlm.data.path = SHAKESPEARE
mlm.tokenizer.kind, mlm.tokenizer.vocab_size = "wordpiece", 1000 if SMALL else 2000
mlm.model.num_layers, mlm.model.num_heads, mlm.model.hidden_dim = (2, 4, 64) if SMALL else (2, 4, 128)
mlm.model.block_size, mlm.model.dropout = 32 if SMALL else 64, 0.0
mlm.train.batch_size = 32
mlm.train.max_steps = 200 if SMALL else 2000
mlm.train.learning_rate, mlm.train.min_learning_rate = 3e-3, 3e-4
mlm.train.warmup_steps = 20 if SMALL else 100
mlm.train.log_interval, mlm.train.eval_interval, mlm.train.eval_batches = 25, 200 if SMALL else 500, 20
mlm.mlm'''),
        new_markdown_cell(
            "**Pretrain** with the same `train` the command line runs: it learns the WordPiece "
            "vocabulary from the training split, then predicts the tokens it masks in every batch, "
            "logging to TensorBoard in the run's `logs/` folder."
        ),
        new_code_cell('''import math
from tfchat.job import train
from tfchat.run import load_run

mlm_history = train(mlm, overwrite=True, verbose=0)
mlm_run = load_run(mlm.run_dir)
first, last = mlm_history[0], mlm_history[-1]
uniform = math.log(mlm_run.tokenizer.vocabulary_size)  # the loss of guessing uniformly
print(f"masked LM: loss {first['loss']:.3f} -> {last['loss']:.3f}; validation loss "
      f"{last['val_loss']:.3f}, masked-token accuracy {last['val_accuracy']:.3f}; "
      f"ln(vocabulary size) {uniform:.3f}")
assert last["loss"] < first["loss"] and last["val_loss"] < uniform'''),
        new_markdown_cell(
            "**What it learnt from.** The WordPiece tokenizer splits rarer words into `##` pieces, "
            "and each batch hides 15% of the ordinary tokens (80% of them become `[MASK]`, 10% a "
            "random token, 10% stay) for the model to predict at `mask_positions`."
        ),
        new_code_cell('''from tfchat.data.corpus import Corpus
from tfchat.data.pipeline import masked_lm_dataset

tokenizer = mlm_run.tokenizer
ids = tokenizer.tokenize(tf.constant(["To be, or not to be: that is the question."]))
print([tokenizer.vocabulary[i] for i in ids.to_list()[0]])
batches = masked_lm_dataset(Corpus(mlm.data).texts("val"), tokenizer, mlm.model.block_size, 2, seed=1)
inputs, targets, weights = next(iter(batches))
print("input: ", " ".join(tokenizer.vocabulary[i] for i in inputs["token_ids"][0].numpy()))
print("asked: ", [(int(p), tokenizer.vocabulary[t]) for p, t, w in
                  zip(inputs["mask_positions"][0].numpy(), targets[0].numpy(), weights[0].numpy()) if w])'''),
        new_markdown_cell(
            "**TensorBoard** plots every run under `RUNS` (loss, masked-token accuracy, perplexity, "
            "learning rate); the small settings list the logged scalars instead of starting it."
        ),
        new_code_cell('''%load_ext tensorboard
import glob

tags = set()
for record in tf.data.TFRecordDataset(glob.glob(os.path.join(mlm.run_dir, "logs", "events.out.tfevents.*"))):
    tags.update(value.tag for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value)
print(sorted(tag for tag in tags if tag.startswith(("train/", "val/"))))
if not SMALL:
    %tensorboard --logdir {RUNS}'''),
        new_markdown_cell(
            "**Fill in `[MASK]`** with `FillMask`, what `python -m tfchat.fill_mask` runs: the "
            "top-k vocabulary pieces for each mask, best first, with their probabilities (the small "
            "run has learnt little more than which pieces are frequent)."
        ),
        new_code_cell('''from tfchat.inference.fill_mask import FillMask

fill = FillMask(mlm_run.model, tokenizer)
texts = ["To be, or not to [MASK]: that is the question.", "O Romeo, Romeo! wherefore art [MASK] Romeo?"]
k = 5
for text, masks in zip(texts, fill.predict(texts, top_k=k)):
    candidates = masks[0]
    print(text, "\\n  [MASK]:", [(piece, round(p, 4)) for piece, p in candidates])
    print("  ->", fill.fill(text, masks))
    probabilities = [p for _, p in candidates]
    print(f"  {len(candidates)} candidates, probabilities summing to {sum(probabilities):.4f}")
    assert len(candidates) == k and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1'''),
        new_markdown_cell(
            "**Fine-tune a classifier** from the MLM run (`init_from`): objective `classify` on "
            "every English chatterbot utterance labelled with its file's category, reusing the "
            "run's tokenizer and encoder weights under a new classification head."
        ),
        new_code_cell('''classifier = Config(name="notebook_classifier", runs_dir=RUNS, objective="classify",
                    init_from=mlm.run_dir)
classifier.data.path = "chatterbot:english"
classifier.tokenizer, classifier.model = mlm.tokenizer, mlm.model  # init_from needs the same ones
classifier.train.batch_size = 32
classifier.train.max_steps = 150 if SMALL else 1000
classifier.train.learning_rate, classifier.train.min_learning_rate = 3e-3, 3e-4
classifier.train.warmup_steps, classifier.train.log_interval = 20, 25
classifier.train.eval_interval = 50 if SMALL else 250
classifier_history = train(classifier, overwrite=True, verbose=0)
for h in classifier_history:
    if "val_loss" in h:
        print(f"step {h['step']}: validation loss {h['val_loss']:.3f}, accuracy {h['val_accuracy']:.3f}")'''),
        new_markdown_cell(
            "**Evaluate** the best checkpoint (lowest validation loss) on the validation split, as "
            "`python -m tfchat.evaluate` does: accuracy, macro-F1, per-class scores and the "
            "confusion matrix."
        ),
        new_code_cell('''from tfchat.evaluation.classification import format_report

best = load_run(classifier.run_dir, checkpoint="best")
report = best.objective.evaluate(best)
print(f"best checkpoint: step {best.step}; {len(best.labels)} classes")
print(format_report(report))
assert 0 <= report["accuracy"] <= 1 and 0 <= report["macro_f1"] <= 1'''),
        new_markdown_cell(
            "**The confusion matrix** as a picture: one row per true category, one column per "
            "predicted category, so a good classifier lights up the diagonal."
        ),
        new_code_cell('''import matplotlib.pyplot as plt
import numpy as np

matrix = np.array(report["confusion_matrix"])
fig, ax = plt.subplots(figsize=(7, 6))
image = ax.imshow(matrix, cmap="Blues")
ax.set_xticks(range(len(best.labels)), best.labels, rotation=90)
ax.set_yticks(range(len(best.labels)), best.labels)
ax.set_xlabel("predicted"); ax.set_ylabel("true")
ax.set_title(f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
fig.colorbar(image)
plt.show()
print(f"confusion matrix {matrix.shape[0]} x {matrix.shape[1]}, {matrix.sum()} validation examples")
assert matrix.shape == (len(best.labels),) * 2 and matrix.sum() == report["examples"]'''),
    ]


def export_and_serve():
    return [
        new_markdown_cell(
            "# 4. Export a run and serve it with TF Serving\n\n"
            "`python -m tfchat.export` writes a self-contained SavedModel whose signatures take "
            "and return strings: tokenizer, KV-cached sampling loop and detokenizer all run "
            "inside the graph, so stock TF Serving serves it as it is."
        ),
        new_code_cell(SETUP),
        new_markdown_cell("**A small run to export**, trained with the same `train` the CLI calls."),
        new_code_cell('''from tfchat.config import Config
from tfchat.job import train

config = Config(name="notebook_export", runs_dir=RUNS)
config.data.path = SHAKESPEARE
config.model.num_layers, config.model.num_heads, config.model.hidden_dim = 2, 2, 64
config.model.block_size, config.model.dropout = 64, 0.0
config.train.batch_size = 12
config.train.max_steps = 100 if SMALL else 2000
config.train.warmup_steps, config.train.eval_interval, config.train.eval_batches = 10, 100, 5
config.train.sample_tokens = 0
history = train(config, overwrite=True, verbose=0)
print("validation loss", round(history[-1]["val_loss"], 3))'''),
        new_markdown_cell(
            "**Export** to TF Serving's layout, `saved_models/<name>/<version>/` (here under the "
            "notebook's runs folder). Writing is atomic; an existing version needs `force=True`."
        ),
        new_code_cell('''from tfchat.run import load_run
from tfchat.serving.export import export_run

saved_models = os.path.join(RUNS, "saved_models")
path = export_run(load_run(config.run_dir), name="shakespeare", saved_models_dir=saved_models)
print(path)
print(sorted(os.listdir(path)))'''),
        new_markdown_cell("**Inspect the signatures**, as `saved_model_cli show --all` would."),
        new_code_cell('''loaded = tf.saved_model.load(path)
for name, fn in loaded.signatures.items():
    inputs = {k: (v.dtype.name, v.shape.as_list()) for k, v in fn.structured_input_signature[1].items()}
    outputs = {k: (v.dtype.name, v.shape.as_list()) for k, v in fn.structured_outputs.items()}
    print(name, "\\n  in: ", inputs, "\\n  out:", outputs)'''),
        new_markdown_cell(
            "**Call it as TF Serving does**: through the signature, every input a tensor. "
            "Greedy decoding (temperature 0) must give exactly the Keras model's text."
        ),
        new_code_cell('''from tfchat.inference.generator import Generator
from tfchat.run import load_run

prompts = ["ROMEO:", "To be"]
serve = loaded.signatures["serving_default"]
out = serve(prompt=tf.constant(prompts), max_new_tokens=tf.constant([40]), temperature=tf.constant([0.0]),
            top_k=tf.constant([0]), top_p=tf.constant([1.0]), seed=tf.constant([0], tf.int64))
exported = [t.decode() for t in out["text"].numpy()]
run = load_run(config.run_dir)
in_python = Generator(run.backbone, run.tokenizer).generate(prompts, max_new_tokens=40, temperature=0)
for p, e in zip(prompts, exported):
    print(repr(p + e))
assert exported == in_python, (exported, in_python)
scores = loaded.signatures["score"](text=tf.constant(["To be, or not to be", "zzzz qqqq xxxx"]))
print("perplexity:", scores["perplexity"].numpy())'''),
        new_markdown_cell(
            "**Requests for a TF Serving server** (started with the `docker run ... tensorflow/serving` "
            "command in the README): the REST body in both of its forms, and a gRPC `PredictRequest`."
        ),
        new_code_cell('''import json
from tfchat.serving.client import grpc_request, rest_body, rest_path

settings = {"max_new_tokens": 40, "temperature": 0.8, "top_k": 20}
print("POST http://localhost:8501" + rest_path("shakespeare"))
print(json.dumps(rest_body(prompts, settings, form="instances"), indent=1))
print(json.dumps(rest_body(prompts, settings, form="inputs")))
request = grpc_request("shakespeare", prompts, settings)
print(request.model_spec.name, request.model_spec.signature_name, sorted(request.inputs))'''),
    ]


def chat_finetune():
    return [
        new_markdown_cell(
            "# 3. Fine-tune a chat model\n\n"
            "Supervised fine-tuning on dialogues: a chat template with role tokens, and a loss "
            "on the assistant's tokens only. Then chatting in cells, LoRA adapters, and "
            "preference tuning (DPO) from the SFT run."
        ),
        new_code_cell(SETUP),
        new_markdown_cell(
            "**The chat template.** One renderer serves training and prompting, so both agree; "
            "the assistant's tokens (and its end-of-turn) get weight 1, the rest 0."
        ),
        new_code_cell('''from tfchat.data.chat_template import Message, encode_conversation, render_text
from tfchat.data.tokenizer import CharTokenizer

conversation = [Message("user", "Hi!"), Message("assistant", "Hello.")]
print(render_text(conversation))
toy = CharTokenizer.train([render_text(conversation)])
encoded = encode_conversation(toy, conversation)
print("weighted text:", repr("".join(c for c, w in zip(render_text(conversation), encoded.weights) if w)))'''),
        new_markdown_cell(
            "**Data hygiene.** Before a corpus of your own reaches the model: duplicates, "
            "mojibake and personal data. The stage `tfchat.fit` and `tfchat.prepare` run with "
            "`--data.dedup`, `--data.fix_unicode`, `--data.scrub_pii` (README, Data hygiene), on "
            "a small dirty corpus, and its report."
        ),
        new_code_cell('''import json
from tfchat.config import DataConfig
from tfchat.data.cleaned import clean_corpus

os.makedirs(RUNS, exist_ok=True)
dirty = os.path.join(RUNS, "dirty_chats.jsonl")
rows = [("hi", "hello!"), ("hi", "hello!"), ("where do i write?", "to ann@example.com, or call +44 20 7946 0958."),
        ("caf\u00c3\u00a9?", "the caf\u00c3\u00a9 opens at 9.")]
with open(dirty, "w") as f:
    for question, answer in rows:
        f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": answer}]}) + "\\n")
cleaned = clean_corpus(DataConfig(path=dirty, fix_unicode=True, dedup="exact", scrub_pii="all"),
                       os.path.join(RUNS, ".cleaned"))
print(json.dumps({k: cleaned.report[k] for k in ("documents_read", "documents_kept", "removed", "pii_found")}, indent=1))
print(open(os.path.join(cleaned.data.path, "00000.jsonl")).read())
assert cleaned.report["removed"]["duplicate_exact"] == 1 and cleaned.report["pii_found"]["EMAIL"] == 1'''),
        new_markdown_cell(
            "**Supervised fine-tuning** on the English chatterbot conversations (`objective: chat`), "
            "through the same `train` the CLI runs."
        ),
        new_code_cell('''from tfchat.config import Config
from tfchat.job import train

config = Config(name="notebook_chat", runs_dir=RUNS, objective="chat")
config.data.path = "chatterbot:english"
config.model.num_layers, config.model.num_heads, config.model.hidden_dim = (2, 2, 64) if SMALL else (4, 4, 128)
config.model.block_size, config.model.dropout = 128, 0.0
config.train.batch_size = 16
config.train.max_steps = 300 if SMALL else 3000
config.train.warmup_steps, config.train.eval_interval, config.train.eval_batches = 20, 300, 10
config.train.sample_tokens = 0
history = train(config, overwrite=True, verbose=0)
print(f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; validation {history[-1]['val_loss']:.3f}")
assert history[-1]["loss"] < history[0]["loss"]'''),
        new_markdown_cell("**Chat** in cells: the session keeps the history; replies use the KV cache."),
        new_code_cell('''from tfchat.inference.chat_session import ChatSession
from tfchat.inference.generator import Generator
from tfchat.run import load_run

run = load_run(config.run_dir)
session = ChatSession(Generator(run.backbone, run.tokenizer), max_new_tokens=60, temperature=0.0)
for question in ["Hello", "What is your name?"]:
    reply = "".join(session.reply(session.ask(question)))
    print("you:", question, "\\nbot:", reply)
print(len(session.history), "messages in the history")
assert len(session.history) == 4'''),
        new_markdown_cell(
            "**LoRA.** Start from the run (`init_from`) with low-rank adapters on the attention "
            "and MLP projections; only the adapters train."
        ),
        new_code_cell('''lora = Config(name="notebook_chat_lora", runs_dir=RUNS, objective="chat", init_from=config.run_dir)
lora.data, lora.model, lora.tokenizer = config.data, config.model, config.tokenizer
lora.model.lora_rank, lora.model.lora_alpha = 4, 8.0
lora.train.batch_size, lora.train.max_steps, lora.train.warmup_steps = 16, 60, 5
lora.train.eval_interval, lora.train.eval_batches, lora.train.sample_tokens = 60, 5, 0
lora_history = train(lora, overwrite=True, verbose=0)
print("LoRA run validation loss", round(lora_history[-1]["val_loss"], 3))'''),
        new_markdown_cell(
            "**Merge** the adapters into the base weights: an ordinary run that computes the same "
            "logits without the adapters' extra matmuls."
        ),
        new_code_cell('''import numpy as np
from tfchat.run import merge_lora_run

merged_path = merge_lora_run(lora.run_dir, lora.run_dir + "_merged", overwrite=True)
adapted, merged = load_run(lora.run_dir), load_run(merged_path)
ids = run.tokenizer.tokenize(tf.constant(["<|user|>Hello<|end|><|assistant|>"])).to_tensor()
difference = np.abs(adapted.backbone(ids).numpy() - merged.backbone(ids).numpy()).max()
print("largest logit difference after merging:", difference)
assert difference < 1e-3'''),
        new_markdown_cell(
            "**Preference tuning (DPO).** Pairs of a better and a worse reply to the same prompt. "
            "Here they come from the corpus itself: the chosen reply is the conversation's own, "
            "the rejected one another conversation's (off the subject). The policy starts from "
            "the SFT run and the reference is its weights, frozen; rewards are how much likelier "
            "the policy makes each reply than the reference, times `dpo.beta`."
        ),
        new_code_cell('''import json
from tfchat.data.dialogues import DialogueCorpus

exchanges = [(c[0].content, c[1].content) for c in DialogueCorpus(config.data).conversations("train")
             if len(c) >= 2 and c[0].role == "user"]
prefs = os.path.join(RUNS, "notebook_prefs.jsonl")
with open(prefs, "w", encoding="utf-8") as f:
    for i, (prompt, reply) in enumerate(exchanges[:64 if SMALL else 2000]):
        other = exchanges[(i + 50) % len(exchanges)][1]
        if other != reply:
            f.write(json.dumps({"prompt": prompt, "chosen": reply, "rejected": other}) + "\\n")

from tfchat import objectives
from tfchat.config import build_config

# build_config, as the command line builds it: what is not set here takes
# dpo's own defaults (learning rate, steps, schedule), printed below.
settings = {"name": "notebook_chat_dpo", "runs_dir": RUNS, "objective": "dpo",
            # The pairs quote the SFT run's replies as chatterbot writes them (two
            # spaces after a full stop, say): kept as written, not tidied, so the
            # reference scores the very texts the SFT run learnt.
            "init_from": config.run_dir, "data": {"path": prefs, "fix_unicode": False},
            # The chat run's shape and tokenizer, as `fit --init_from` takes them.
            "model": {**config.to_dict()["model"], "lora_rank": 0},
            "tokenizer": config.to_dict()["tokenizer"],
            "train": {"sample_tokens": 0, **({"max_steps": 40, "eval_interval": 20} if SMALL else {})}}
dpo = objectives.resolve(build_config(overrides=settings))
print("dpo's defaults used:", objectives.defaults_used(dpo))
dpo_history = train(dpo, overwrite=True, verbose=0)
first, last = dpo_history[0], dpo_history[-1]
print(f"loss {first['loss']:.3f} -> {last['loss']:.3f}; held-out reward accuracy "
      f"{last['val_reward_accuracy']:.2f}, margin {last['val_reward_margin']:.2f}, "
      f"chosen log-probability change {last['val_chosen_logp_change']:+.3f} nats/token")
assert last["loss"] < first["loss"] and last["val_reward_margin"] > 0
assert last["val_chosen_logp_change"] > -dpo.dpo.max_chosen_drop  # the replies stay likely'''),
        new_markdown_cell(
            "**Feedback while chatting** becomes more pairs: what `python -m tfchat.chat "
            "--feedback prefs.jsonl` does with `/retry` and `/prefer N`, here in cells."
        ),
        new_code_cell('''from tfchat.data.preferences import FeedbackLog, pair_record, read_preferences_jsonl

dpo_run = load_run(dpo.run_dir)
session = ChatSession(Generator(dpo_run.backbone, dpo_run.tokenizer), max_new_tokens=40,
                      temperature=1.0, seed=1)
first = "".join(session.reply(session.ask("Hello")))
second = "".join(session.reply(session.retry()))
print("reply 1:", first, "\\nreply 2:", second)
feedback = FeedbackLog(os.path.join(RUNS, "notebook_feedback.jsonl"))
chosen, others = session.prefer(1)  # say the first was better
for rejected in others:
    feedback.add(pair_record(session.seen, [Message("assistant", chosen)],
                             [Message("assistant", rejected)]))
pairs, _ = read_preferences_jsonl(feedback.path)
print(f"{len(pairs)} pair(s) in {feedback.path}; the last:", pairs[-1] if pairs else None)'''),
    ]


def finetune_pretrained():
    return [
        new_markdown_cell(
            "# 5. Fine-tune a pretrained model\n\n"
            "Convert a pretrained checkpoint (GPT-2, Llama-family or Qwen2; keras-hub preset, "
            "Hugging Face directory or hub handle) into a tfchat run, chat with it in its own "
            "chat format, LoRA-fine-tune it on conversations, chat again, then export it for "
            "TF Serving and back to Hugging Face form."
        ),
        new_code_cell(SETUP),
        new_markdown_cell(
            "**A checkpoint.** Set `PRETRAINED` to a downloaded one, e.g. "
            "`huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir SmolLM2`. "
            "Without one, this cell makes a tiny SmolLM2-shaped model with random weights in "
            "keras-hub and writes it in Hugging Face form with a ChatML `chat_template`, as "
            "instruct checkpoints ship it (so the notebook runs offline)."
        ),
        new_code_cell('''import json
PRETRAINED = os.environ.get("TFCHAT_PRETRAINED", "")
if not PRETRAINED:
    import keras_hub
    import numpy as np
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    keras.utils.set_random_seed(0)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "o u", "Ġ a"]
    tokens = list(bytes_to_unicode()[1]) + [m.replace(" ", "") for m in merges] + specials
    vocabulary = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary=vocabulary, merges=merges,
        misc_special_tokens={"<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "<|im_end|>"})
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=len(vocabulary), num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=64, intermediate_dim=128, tie_word_embeddings=True)
    model = keras_hub.models.Llama3CausalLM(
        backbone, keras_hub.models.Llama3CausalLMPreprocessor(tokenizer, sequence_length=64))
    PRETRAINED = os.path.join(RUNS, "tiny_smollm2")
    model.export_to_transformers(PRETRAINED)
    with open(os.path.join(PRETRAINED, "config.json")) as f:
        hf_config = json.load(f)
    hf_config["architectures"] = ["LlamaForCausalLM"]
    with open(os.path.join(PRETRAINED, "config.json"), "w") as f:
        json.dump(hf_config, f)
    with open(os.path.join(PRETRAINED, "tokenizer_config.json")) as f:
        tokenizer_config = json.load(f)
    tokenizer_config["chat_template"] = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\\\n' + message['content']"
        " + '<|im_end|>' + '\\\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\\\n' }}{% endif %}")
    with open(os.path.join(PRETRAINED, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f)
print(PRETRAINED, sorted(os.listdir(PRETRAINED)))'''),
        new_markdown_cell(
            "**Convert** (`python -m tfchat.convert PRETRAINED --name base` does the same): keras-hub "
            "reads the checkpoint, tfchat maps its weights into its own decoder and keeps the "
            "checkpoint's tokenizer and chat format."
        ),
        new_code_cell('''from tfchat.pretrained import convert
from tfchat.run import load_run

base_dir = os.path.join(RUNS, "pretrained_base")
convert(PRETRAINED, base_dir, block_size=128 if SMALL else 1024, overwrite=True)
base = load_run(base_dir)
print(base.config.objective, "run, chat template:", base.config.tokenizer.chat_template)
assert base.config.tokenizer.chat_template == "chatml"'''),
        new_markdown_cell("**Chat** with the untouched model, in its ChatML format."),
        new_code_cell('''from tfchat.data.chat_template import Message, render_text
from tfchat.inference.generator import Generator

QUESTIONS = ["ping", "how are you?", "what is your name?"]
ANSWERS = ["pong", "i am fine, thank you.", "my name is tiny bot."]
print(render_text([Message("user", "ping")], base.tokenizer.chat_template, add_generation_prompt=True))
before = Generator(base.backbone, base.tokenizer).chat([[Message("user", q)] for q in QUESTIONS], max_new_tokens=20)
before'''),
        new_markdown_cell(
            "**LoRA fine-tuning** on conversations (messages JSONL, the format most datasets "
            "come in): only low-rank adapters train; the loss covers the assistant's tokens and "
            "its `<|im_end|>`."
        ),
        new_code_cell('''from tfchat.config import Config
from tfchat.job import train

chats = os.path.join(RUNS, "chats.jsonl")
with open(chats, "w") as f:
    for _ in range(20):
        for q, a in zip(QUESTIONS, ANSWERS):
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\\n")
tuned = Config(name="pretrained_lora", runs_dir=RUNS, objective="chat", init_from=base_dir)
tuned.model, tuned.tokenizer = base.config.model, base.config.tokenizer
tuned.data.path = chats
tuned.model.lora_rank, tuned.model.lora_alpha = 8, 16.0
tuned.train.batch_size, tuned.train.max_steps = 8, 150 if SMALL else 1000
tuned.train.learning_rate, tuned.train.warmup_steps = 1e-2, 10
tuned.train.eval_interval, tuned.train.jit_compile = 150, False
history = train(tuned, overwrite=True, verbose=0)
print(f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")
assert history[-1]["loss"] < history[0]["loss"]'''),
        new_markdown_cell("**Chat again**: the adapted model answers its training conversations."),
        new_code_cell('''run = load_run(tuned.run_dir)
generator = Generator(run.backbone, run.tokenizer)
after = generator.chat([[Message("user", q)] for q in QUESTIONS], max_new_tokens=20)
print(after)
assert sum(a == b for a, b in zip(after, ANSWERS)) >= 2'''),
        new_markdown_cell(
            "**Export for TF Serving**: the `chat` signature takes roles and contents and applies "
            "the ChatML template inside the graph, so a client sends plain messages."
        ),
        new_code_cell('''from tfchat.serving.export import export_run

saved = export_run(run, saved_models_dir=os.path.join(RUNS, "saved_models"))
served = tf.saved_model.load(saved)
# The restored function keeps the signature's defaults for what a request leaves out.
reply = served.chat(roles=tf.constant(["user"]), contents=tf.constant([QUESTIONS[0]]),
                    temperature=tf.constant([0.0]), max_new_tokens=tf.constant([20]))
print(saved, "->", reply["text"].numpy()[0].decode())
assert reply["text"].numpy()[0].decode() == after[0]'''),
        new_markdown_cell(
            "**Export to Hugging Face form** (`python -m tfchat.export --run R --format hf --out DIR`; "
            "`--format keras-hub` writes a keras-hub preset): the adapters are merged into the "
            "weights, and the ChatML template goes into `tokenizer_config.json`, for transformers, "
            "vLLM or llama.cpp's converter. keras-hub reads it back and computes the same logits."
        ),
        new_code_cell('''import keras_hub
import numpy as np
from tfchat.run import merged_run
from tfchat.serving.hub_export import export_hub

hf_dir = export_hub(merged_run(run), os.path.join(RUNS, "exported_hf"), "hf", overwrite=True)
print(sorted(os.listdir(hf_dir)))
with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
    print(json.load(f)["chat_template"][:120], "...")
reloaded = keras_hub.models.CausalLM.from_preset(hf_dir)
ids = run.tokenizer.tokenize(tf.constant(["the cat sat"])).to_tensor()
theirs = reloaded.backbone.token_embedding(
    reloaded.backbone({"token_ids": ids, "padding_mask": tf.ones_like(ids, tf.bool)}), reverse=True)
difference = np.abs(np.asarray(theirs) - run.backbone(ids).numpy()).max()
print("largest logit difference, keras-hub reading the export vs tfchat:", difference)
assert difference < 1e-4'''),
    ]


def evaluate_runs():
    return [
        new_markdown_cell(
            "# 6. Evaluate: every metric, confidence intervals, fairness, pictures, a report\n\n"
            "What `python -m tfchat.evaluate --run R --plots DIR --report report.html` does, in "
            "cells: a tiny chat run's greedy replies scored by BLEU, chrF, METEOR and "
            "ROUGE-1/2/L/Lsum, each with a seeded 95% bootstrap interval; a tiny classifier "
            "scored per group of `data.group_field`; the training curves and an attention map "
            "inline; and one self-contained HTML report."
        ),
        new_code_cell(SETUP),
        new_markdown_cell(
            "**A small conversation data set**, messages JSONL. Every tenth conversation is held "
            "out for validation (`data.val_fraction` 0.1, the split `tfchat.data.files.is_val` "
            "makes); some held-out ones ask in other words, so their replies are also scored on "
            "their own, as `_unseen` (corpora that repeat their conversations, like this one and "
            "chatterbot, otherwise measure recall of the training data)."
        ),
        new_code_cell('''import json
from tfchat.data.files import is_val

PAIRS = [("hello", "hi there!"), ("how are you?", "i am fine, thank you."),
         ("what is your name?", "my name is tiny bot."), ("do you like tea?", "yes, with milk."),
         ("where do you live?", "in a notebook."), ("goodbye", "bye, see you soon!")]
REWORDED = [("hi", "hi there!"), ("how are you doing?", "i am fine, thank you."),
            ("what are you called?", "my name is tiny bot."), ("bye", "bye, see you soon!")]
os.makedirs(RUNS, exist_ok=True)
chats = os.path.join(RUNS, "eval_chats.jsonl")
held_out = [i for i in range(120) if is_val(i, 0.1)]  # the 12 validation conversations
reworded = dict(zip(held_out[1::3], REWORDED))  # 4 of them ask in other words
with open(chats, "w") as f:
    for i in range(120):
        question, answer = reworded.get(i, PAIRS[i % len(PAIRS)])
        f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": answer}]}) + "\\n")
print(open(chats).readline())'''),
        new_markdown_cell(
            "**A tiny chat run** (`objective: chat`), trained with the same `train` the command "
            "line runs; it logs loss, perplexity, learning rate and tokens/s to `metrics.jsonl`."
        ),
        new_code_cell('''from tfchat.config import Config
from tfchat.job import train

chat = Config(name="notebook_eval_chat", runs_dir=RUNS, objective="chat")
chat.data.path, chat.data.val_fraction, chat.tokenizer.kind = chats, 0.1, "char"
chat.model.num_layers, chat.model.num_heads, chat.model.hidden_dim = (2, 2, 64) if SMALL else (4, 4, 128)
chat.model.block_size, chat.model.dropout = 48, 0.0
chat.train.batch_size, chat.train.max_steps = 16, 100 if SMALL else 1000
chat.train.learning_rate, chat.train.min_learning_rate, chat.train.warmup_steps = 1e-2, 1e-3, 10
chat.train.log_interval, chat.train.eval_interval, chat.train.eval_batches = 10, 50, 2
chat.train.sample_tokens, chat.train.jit_compile = 0, False  # XLA pays off for larger models
history = train(chat, overwrite=True, verbose=0)
print(f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")
assert history[-1]["loss"] < history[0]["loss"]'''),
        new_markdown_cell(
            "**Evaluate** it: `evaluate.main` is `python -m tfchat.evaluate` itself, called with "
            "its arguments. A chat run gets the assistant-token loss, then greedy replies to every "
            "validation conversation scored by BLEU (sacrebleu, tokenised for the language), chrF, "
            "METEOR (nltk; exact and stem matching, WordNet synonyms only where a WordNet is on "
            "the machine) and ROUGE-1, -2, -L and -Lsum (rouge-score), overall and `_unseen`, and "
            "training-prompt recall. It writes `evaluation.json` into the run."
        ),
        new_code_cell('''from tfchat import evaluate

assert evaluate.main(["--run", chat.run_dir, "--max-new-tokens", "24"]) == 0
with open(os.path.join(chat.run_dir, "evaluation.json")) as f:
    results = json.load(f)
print("schema", results["schema_version"], "| BLEU tokenised", results["bleu_tokenize"],
      "| METEOR matching:", results["meteor_matching"])'''),
        new_markdown_cell(
            "**The metrics table**: `evaluation.json` keeps every score as a flat key and lists "
            "each under `\"metrics\"` with its value, sample count and 95% bootstrap interval "
            "(1,000 seeded resamples: for BLEU and chrF the sentences are resampled and the "
            "corpus score recomputed, for the averaged scores the per-example values). Losses over "
            "tokens have no interval."
        ),
        new_code_cell('''import pandas as pd

table = pd.DataFrame([{"metric": r["name"], "value": r["value"], "count": r["count"],
                       "95% low": (r["ci"] or [None, None])[0], "95% high": (r["ci"] or [None, None])[1]}
                      for r in results["metrics"]]).set_index("metric")
rows = {r["name"]: r for r in results["metrics"]}
for name in ("bleu", "chrf", "meteor", "rouge_1", "rouge_2", "rouge_l", "rouge_lsum"):
    low, high = rows[name]["ci"]
    assert low <= rows[name]["value"] <= high and rows[name]["count"] == results["replies"], name
print(f"{results['replies']} replies, {results['replies_unseen']} of them to unseen prompts")
table.round(3)'''),
        new_markdown_cell(
            "**The scores as a picture** (`scores.png` of `--plots`): each metric's value with its "
            "interval."
        ),
        new_code_cell('''from tfchat.evaluation import plots

scores = plots.score_distributions(results)
scores'''),
        new_markdown_cell(
            "**Training curves** from the run's `metrics.jsonl`: loss and perplexity (training at "
            "every log, validation at each evaluation), learning rate, tokens/s."
        ),
        new_code_cell('''curves = plots.training_curves(chat.run_dir, title=chat.name)
curves'''),
        new_markdown_cell(
            "**Attention**: `inspect_prompt` runs a user message and the greedy reply through the "
            "model once, keeping every layer's attention probabilities (`GPT.attention_maps`); "
            "the grid has a row per layer and a column per head, query tokens down, key tokens "
            "across, the white line where the reply starts. Then each reply token's "
            "log-probability."
        ),
        new_code_cell('''from tfchat.run import load_run

run = load_run(chat.run_dir)
looked = plots.inspect_prompt(run.backbone, run.tokenizer, "how are you?", chat=True)
print("reply:", looked.reply, "|", len(looked.maps), "layers of", looked.maps[0].shape, "[heads, query, key]")
attention = plots.attention_figure(looked)
attention'''),
        new_code_cell('''logprobs = plots.logprob_figure(looked)
logprobs'''),
        new_markdown_cell(
            "**Fairness across groups.** A small labelled data set whose records name a group "
            "(`data.group_field: source`), a tiny classifier (`objective: classify`, a BERT "
            "encoder with its own WordPiece vocabulary), and the same `evaluate`: beside accuracy, "
            "macro-F1 and the confusion matrix, every metric per group, the largest gap and ratio "
            "between groups, demographic parity (the share of each group predicted as each class) "
            "and equal opportunity (each class's true-positive rate per group), from fairlearn. "
            "Groups under 30 examples are flagged `*`, not hidden. A third of the `chat` "
            "group's labels are wrong here: a gap the table should find."
        ),
        new_code_cell('''import numpy as np

ANIMALS = ["the cat sat on the mat", "a dog ran to the park", "the bird flew over the sea",
           "a horse ate the hay", "the fish swam in the pond"]
PEOPLE = ["my friend reads a good book", "her brother plays the piano", "our teacher writes on the board",
          "the doctor walked to work", "his sister sang a song"]
records = []
for i in range(200):
    label, texts = ("animal", ANIMALS) if i % 2 else ("person", PEOPLE)
    source = ["news", "chat", "news", "chat", "forum"][i % 5]
    text = texts[i // 2 % len(texts)]
    if source == "chat" and i % 3 == 0:  # a third of the chat group was labelled wrongly
        label = "person" if label == "animal" else "animal"
    records.append({"text": f"{text} ({i})", "label": label, "source": source})
labelled = os.path.join(RUNS, "eval_labelled.jsonl")
with open(labelled, "w") as f:
    for j in np.random.default_rng(0).permutation(len(records)):  # mixed in both splits
        f.write(json.dumps(records[j]) + "\\n")

classifier = Config(name="notebook_eval_classifier", runs_dir=RUNS, objective="classify")
classifier.data.path, classifier.data.group_field, classifier.data.val_fraction = labelled, "source", 0.5
classifier.tokenizer.kind, classifier.tokenizer.vocab_size = "wordpiece", 200
classifier.model.num_layers, classifier.model.num_heads, classifier.model.hidden_dim = 2, 2, 32
classifier.model.block_size, classifier.model.dropout = 16, 0.0
classifier.train.batch_size, classifier.train.max_steps = 16, 40 if SMALL else 300
classifier.train.learning_rate, classifier.train.min_learning_rate = 5e-3, 5e-4
classifier.train.warmup_steps, classifier.train.log_interval, classifier.train.eval_interval = 5, 10, 40
classifier.train.jit_compile = False
train(classifier, overwrite=True, verbose=0)
assert evaluate.main(["--run", classifier.run_dir]) == 0
with open(os.path.join(classifier.run_dir, "evaluation.json")) as f:
    fair = json.load(f)
groups = fair["groups"]
assert sum(row["examples"] for row in groups["per_group"].values()) == fair["examples"]
print("\\nsmall groups:", groups["small_groups"])'''),
        new_markdown_cell(
            "**The fairness table** as a data frame, and the per-group bars (`groups.png`; small "
            "groups hatched)."
        ),
        new_code_cell('''per_group = pd.DataFrame(groups["per_group"]).T[["examples", "small", "accuracy", "macro_f1"]]
print(pd.DataFrame(groups["gaps"]).T[["difference", "ratio", "lowest", "highest", "small"]])
bars = plots.group_bars(groups, metrics=["accuracy", "macro_f1"])
per_group'''),
        new_code_cell("bars"),
        new_markdown_cell(
            "**The HTML report**: one self-contained file, the scores as tables (the metrics "
            "table with its intervals, the run, the example replies) and the pictures inlined as "
            "PNG data, so it opens anywhere, offline. `python -m tfchat.evaluate --run R --plots "
            "DIR --report report.html` writes it (`report.pictures`); `report.write_report` takes "
            "any results and figures, here the ones above."
        ),
        new_code_cell('''from tfchat.evaluation import report

html_path = report.write_report(
    os.path.join(RUNS, "report.html"), results,
    {"training_curves": curves, "scores": scores, "attention": attention, "logprobs": logprobs},
    title=f"{chat.run_dir} (chat, step {run.step})")
page = open(html_path, encoding="utf-8").read()
print(f"{html_path}: {len(page) / 1e3:.0f} kB, {page.count('data:image/png;base64,')} pictures inlined")
assert '<table id="scores">' in page and page.count("data:image/png;base64,") == 4'''),
    ]


NOTEBOOKS = {
    "01_pretrain_gpt.ipynb": pretrain_gpt,
    "02_masked_lm_bert.ipynb": masked_lm_bert,
    "03_chat_finetune.ipynb": chat_finetune,
    "04_export_and_serve.ipynb": export_and_serve,
    "05_finetune_pretrained.ipynb": finetune_pretrained,
    "06_evaluate.ipynb": evaluate_runs,
}


def main():
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells())
        for i, cell in enumerate(notebook.cells):
            cell.id = f"cell-{i:02d}"  # stable ids keep regenerated files identical
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, os.path.join(HERE, name))
        print("wrote", name)


if __name__ == "__main__":
    main()
