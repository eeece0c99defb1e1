import dataclasses
import json

import pytest
import yaml

from tfchat import config as config_lib
from tfchat import fit
from tfchat.data.files import write_json_atomic
from tfchat.config import Config, ModelConfig
from tfchat.errors import TfchatError


def write_yaml(path, values):
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def write_json(path, values):
    path.write_text(json.dumps(values), encoding="utf-8")
    return str(path)


def parse(argv):
    return fit.make_config(fit.build_parser().parse_args(argv))


@pytest.mark.parametrize("writer,suffix", [(write_yaml, "yaml"), (write_json, "json")])
def test_load_file(tmp_path, writer, suffix):
    path = writer(
        tmp_path / f"c.{suffix}",
        {"name": "x", "model": {"num_layers": 3, "hidden_dim": 48},
         "train": {"learning_rate": 0.01, "jit_compile": True}},
    )
    config = config_lib.build_config([path])
    assert config.name == "x"
    assert config.model.num_layers == 3
    assert config.model.hidden_dim == 48
    assert config.train.learning_rate == 0.01
    assert config.train.jit_compile is True
    # Fields the file does not give keep their defaults.
    assert config.model.num_heads == ModelConfig().num_heads
    assert config.data == Config().data


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-3` as a string; the config must still take it.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n", encoding="utf-8")
    assert config_lib.build_config([str(path)]).train.learning_rate == 1e-3


def test_later_files_and_cli_overrides_win(tmp_path):
    first = write_yaml(tmp_path / "a.yaml", {"model": {"num_layers": 5, "num_heads": 8}})
    second = write_json(tmp_path / "b.json", {"model": {"num_layers": 6}})
    config = parse(["--config", first, "--config", second])
    assert (config.model.num_layers, config.model.num_heads) == (6, 8)

    config = parse(["--config", first, "--config", second, "--model.num_layers", "3",
                    "--train.jit_compile", "false", "--train.sample_prompt", "a\\nb"])
    assert config.model.num_layers == 3
    assert config.model.num_heads == 8  # from the file, not overridden
    assert config.train.jit_compile is False
    assert config.train.sample_prompt == "a\nb"


def test_cli_values_are_typed():
    config = parse(["--train.learning_rate", "2e-4", "--train.max_steps", "7",
                    "--train.warmup_steps", "1", "--model.dropout", "0.25"])
    assert config.train.learning_rate == pytest.approx(2e-4)
    assert isinstance(config.train.max_steps, int) and config.train.max_steps == 7
    assert config.model.dropout == 0.25


@pytest.mark.parametrize(
    "values,key,section_keys",
    [
        ({"model": {"num_layer": 3}}, "model.num_layer", ModelConfig),
        ({"nmae": "x"}, "nmae", Config),
    ],
)
def test_unknown_key_in_file_names_it_and_lists_valid_keys(tmp_path, values, key, section_keys):
    path = write_yaml(tmp_path / "c.yaml", values)
    with pytest.raises(TfchatError) as info:
        config_lib.build_config([path])
    message = str(info.value)
    assert f"'{key}'" in message
    for f in dataclasses.fields(section_keys):
        assert f.name in message


@pytest.mark.parametrize(
    "values,key",
    [
        ({"model": {"num_layers": "three"}}, "model.num_layers"),
        ({"model": {"num_layers": 2.5}}, "model.num_layers"),
        ({"model": {"num_layers": True}}, "model.num_layers"),
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate"),
        ({"train": {"jit_compile": "maybe"}}, "train.jit_compile"),
        ({"data": {"path": ["a.txt", "b.txt"]}}, "data.path"),
        ({"data": {"path": None}}, "data.path"),
    ],
)
def test_bad_types_raise(tmp_path, values, key):
    path = write_yaml(tmp_path / "c.yaml", values)
    with pytest.raises(TfchatError, match=key.replace(".", r"\.")):
        config_lib.build_config([path])


def test_bad_type_on_command_line_raises():
    with pytest.raises(TfchatError, match="model.num_layers"):
        parse(["--model.num_layers", "abc"])


def test_section_must_be_a_mapping(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"model": 3})
    with pytest.raises(TfchatError, match="'model' must be a mapping"):
        config_lib.build_config([path])


def test_missing_or_unparsable_file(tmp_path):
    with pytest.raises(TfchatError, match="not found"):
        config_lib.build_config([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(TfchatError, match="does not parse"):
        config_lib.build_config([str(bad)])


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model": {"hidden_dim": 30, "num_heads": 4}}, "divisible"),
        ({"train": {"warmup_steps": 10, "max_steps": 10}}, "warmup_steps"),
        ({"data": {"val_fraction": 0.0}}, "val_fraction"),
        ({"tokenizer": {"kind": "word"}}, "tokenizer.kind"),
        ({"model": {"dropout": 1.0}}, "dropout"),
        ({"train": {"learning_rate": 0.0}}, "learning_rate"),
    ],
)
def test_validate(overrides, message):
    with pytest.raises(TfchatError, match=message):
        config_lib.validate(config_lib.build_config(overrides=overrides))


def test_validate_accepts_a_good_config():
    config = config_lib.build_config(
        overrides={"model": {"hidden_dim": 32, "num_heads": 4}}
    )
    config_lib.validate(config)
    config.model.num_heads = 5
    with pytest.raises(TfchatError, match="divisible"):
        config_lib.validate(config)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"mlm": {"mask_rate": 0.0}}, r"^mlm\.mask_rate must be between 0 and 1\.$"),
        ({"mlm": {"mask_token_rate": 0.9, "random_token_rate": 0.2}}, "sum to at most 1"),
        ({"dpo": {"loss": "kto"}}, r"^dpo\.loss must be one of sigmoid, ipo, apo_zero\.$"),
        ({"dpo": {"beta": 0.0}}, r"^dpo\.beta must be positive\.$"),
        ({"dpo": {"loss": "ipo", "label_smoothing": 0.1}}, "applies to dpo.loss sigmoid only"),
        ({"distill": {"alpha": 1.5}}, r"^distill\.alpha must be in \[0, 1\]\.$"),
        ({"distill": {"temperature": 0.0}}, r"^distill\.temperature must be positive\.$"),
    ],
)
def test_objective_sections_are_checked_by_their_objectives(overrides, message):
    """An objective's own section is checked by its module
    (`Objective.check_settings`), on every config whatever it trains."""
    from tfchat import objectives

    config = config_lib.build_config(overrides={"objective": "causal", **overrides})
    config_lib.validate(config)  # the other sections are fine
    with pytest.raises(TfchatError, match=message):
        objectives.check(config)


def test_save_load_round_trip(tmp_path):
    config = parse(["--model.num_layers", "3", "--train.sample_prompt", "x\\ny",
                    "--name", "saved"])
    path = str(tmp_path / "config.json")
    write_json_atomic(path, config.to_dict())  # as tfchat.run.RunFolder writes it
    assert config_lib.load(path) == config


def test_help_lists_every_config_key():
    text = fit.build_parser().format_help()
    for key, *_ in config_lib.flat_keys():
        assert f"--{key}" in text
    assert "--resume" in text


def test_precision_advice_only_for_bfloat16_with_xla_on_a_cpu():
    from tfchat.job import precision_advice

    def advice(gpus=0, **train):
        return precision_advice(config_lib.build_config(overrides={"train": train}).train, gpus)

    assert "jit_compile false" in advice(precision="mixed_bfloat16", jit_compile=True)
    assert advice(precision="mixed_bfloat16", jit_compile=False) is None
    assert advice(precision="mixed_bfloat16", jit_compile=True, gpus=1) is None
    assert advice(precision="float32", jit_compile=True) is None


def test_chat_template_choices_are_the_templates():
    """tfchat.convert's --chat_template choices (read before TensorFlow
    loads) are exactly tfchat.data.chat_template.TEMPLATES, plus auto, and
    an unknown name is refused naming them."""
    from tfchat.convert import build_parser
    from tfchat.data.chat_template import TEMPLATES, get_template

    choices = next(a.choices for a in build_parser()._actions if a.dest == "chat_template")
    assert set(choices) == {"auto", *TEMPLATES}
    with pytest.raises(TfchatError, match="gemma"):
        get_template("vicuna")
