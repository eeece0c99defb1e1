"""`objective: distill`: a smaller student GPT (its own `model` settings)
trained on the mix of the KL divergence to `distill.teacher`'s softened
next-token distribution and the usual next-token loss
(`tfchat.model.distill`), on the data pipeline the data calls for: chat's
(assistant-only weights) for dialogue data, causal LM's otherwise.

The student uses the teacher's tokenizer. The teacher is checked
(`check_teacher`), then loaded by the training job under the same strategy
(`Objective.teacher`) and runs in inference mode on each batch. A distilled
run is then an ordinary GPT run: it generates, chats, evaluates and exports
as causal and chat runs do.
"""

import tensorflow as tf

from tfchat.data.dialogues import is_dialogue_data
from tfchat.data.prepared import is_prepared
from tfchat.data.sharding import WHOLE
from tfchat.errors import TfchatError
from tfchat.model.distill import DistillLM
from tfchat.model.gpt import GPT
from tfchat.objectives import causal, chat
from tfchat.objectives.base import Objective, backbone_args, decoder_args
from tfchat.run_folder import RunFolder, same_files


def _data_objective(config):
    """The objective whose data pipeline the student trains on."""
    dialogue = not is_prepared(config.data.path) and is_dialogue_data(config.data)
    return (chat if dialogue else causal).OBJECTIVE


def check_config(config):
    problems = []
    if not config.distill.teacher:
        problems.append("objective distill needs distill.teacher, the run to learn from")
    if config.init_from:
        problems.append("objective distill trains a new student from scratch; leave out "
                        "init_from (distill.teacher is the model it learns from)")
    return problems + _data_objective(config).check_config(config)


def check_settings(config):
    """The values of the `distill` section that a type alone cannot check."""
    d = config.distill
    checks = [
        (0 <= d.alpha <= 1, "distill.alpha must be in [0, 1]"),
        (d.temperature > 0, "distill.temperature must be positive"),
    ]
    return [message for ok, message in checks if not ok]


def check_teacher(config, resumed_folder=None):
    """Checks that the run at `distill.teacher` can teach `config`'s student
    (a GPT with a checkpoint, positions for the student's context, and the
    resumed run's tokenizer); `resumed_folder` is the run being resumed."""
    from tfchat import objectives  # the registry, which imports this module

    teacher_path = config.distill.teacher
    if not teacher_path:
        return  # check_config says so
    teacher_folder = RunFolder(teacher_path)
    teacher_config = teacher_folder.read_config()
    if not objectives.get(teacher_config.objective).generates:
        raise TfchatError(f"distill.teacher {teacher_path} is a {teacher_config.objective} "
                          "run; the teacher must be a GPT (a causal, chat or dpo run).")
    teacher_folder.latest_checkpoint()  # fails clearly if it has none
    tm = teacher_config.model
    if tm.position == "learned" and config.model.block_size > tm.block_size:
        raise TfchatError(
            f"model.block_size {config.model.block_size} is longer than distill.teacher "
            f"{teacher_path}'s {tm.block_size} (it has no positions beyond); use at most "
            f"{tm.block_size}."
        )
    if resumed_folder and not same_files(resumed_folder.tokenizer, teacher_folder.tokenizer):
        raise TfchatError(f"The tokenizer in {resumed_folder.tokenizer} differs from "
                          f"distill.teacher {teacher_path}'s; a student shares its teacher's "
                          "vocabulary.")


def read_data(config):
    return _data_objective(config).read_data(config)


def tokenizer_texts(data):
    raise TfchatError("objective distill uses its teacher's tokenizer.")


def check_data(config, data, tokenizer, workers=1):
    _data_objective(config).check_data(config, data, tokenizer, workers=workers)


def datasets(config, data, tokenizer, verbose=0, batch_size=None, splits=("train", "val"),
             shard=WHOLE):
    return _data_objective(config).datasets(config, data, tokenizer, verbose=verbose,
                                            batch_size=batch_size, splits=splits, shard=shard)


def build_model(config, vocabulary_size, labels=None, forward_pass=True):
    """The student, a `DistillLM` over a `GPT` of `config.model`'s shape
    (the teacher is attached by the training job)."""
    backbone = GPT(**backbone_args(config, vocabulary_size), **decoder_args(config), name="gpt")
    d = config.distill
    model = DistillLM(backbone, alpha=d.alpha, temperature=d.temperature,
                      grad_accumulation_steps=config.train.grad_accumulation_steps,
                      dtype=config.train.precision, name="causal_lm")
    if forward_pass:
        model(tf.zeros((1, config.model.block_size), tf.int32))
    else:
        backbone.build((None, config.model.block_size))
        model.built = True
    return model


def sampler(model, tokenizer, config):
    return _data_objective(config).sampler(model, tokenizer, config)


def evaluate(run, **options):
    """What the data's own objective reports (causal: loss, perplexity and
    accuracy; chat: those on assistant tokens, and the reply scores)."""
    return _data_objective(run.config).evaluate(run, **options)


def describe(config, data, model):
    d = config.distill
    what = _data_objective(config).describe(config, data, model)
    return (f"student of {d.teacher}, alpha {d.alpha}, temperature {d.temperature}"
            + (f"; {what}" if what else ""))


def next_steps(config):
    return _data_objective(config).next_steps(config)


OBJECTIVE = Objective(
    name="distill",
    augments=True,
    init_from=(),
    generates=True,
    check_config=check_config,
    read_data=read_data,
    tokenizer_texts=tokenizer_texts,
    check_data=check_data,
    datasets=datasets,
    build_model=build_model,
    sampler=sampler,
    describe=describe,
    evaluate=evaluate,
    # A chat run's: generate, chat and score (chat works on any GPT with the
    # template's markers, which every tfchat tokenizer reserves).
    signatures=chat.OBJECTIVE.signatures,
    next_steps=next_steps,
    chats=True,
    reads_prepared=True,
    # A student uses its teacher's tokenizer (a pretrained checkpoint is
    # converted into a run first).
    settings_from=(("distill.teacher", ("tokenizer",)), ("init_from", ("model", "tokenizer"))),
    teacher="distill.teacher",
    check_sources=check_teacher,
    check_settings=check_settings,
)
