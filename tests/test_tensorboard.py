"""A run's TensorBoard logs, read back with TensorBoard's own reader."""

import glob
import os

import pytest

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from tfchat.job import train


def _read_logs(run_dir):
    (events,) = glob.glob(os.path.join(run_dir, "logs", "events.out.tfevents.*"))
    accumulator = event_accumulator.EventAccumulator(events, size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_run_logs_scalars_text_samples_graph_and_hparams(make_config):
    config = make_config({"train.max_steps": 10, "train.log_interval": 5,
                          "train.eval_interval": 10, "train.sample_tokens": 12,
                          "train.sample_prompt": "the ", "name": "tb"})
    history = train(config, verbose=0)
    logs = _read_logs(config.run_dir)
    tags = logs.Tags()

    scalars = {"train/loss", "train/perplexity", "train/accuracy", "train/lr",
               "train/tokens_per_s", "val/val_loss", "val/val_perplexity"}
    assert scalars <= set(tags["tensors"])
    losses = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in logs.Tensors("train/loss")]
    assert losses == [h["loss"] for h in history]  # what was printed is what is logged

    (sample,) = logs.Tensors("sample")
    text = tensor_util.make_ndarray(sample.tensor_proto).item().decode("utf-8")
    assert text.startswith("the ") and len(text) > len("the ")
    assert sample.step == 10

    # The traced train step's graph, for the Graphs tab.
    assert "train_step" in tags["tensors"]
    plugin = logs.SummaryMetadata("train_step").plugin_data.plugin_name
    assert plugin == "graph_run_metadata_graph"

    (hparams_tag,) = logs.PluginTagToContent("hparams").items()
    data = plugin_data_pb2.HParamsPluginData.FromString(hparams_tag[1])
    logged = data.session_start_info.hparams
    assert logged["model.num_layers"].number_value == config.model.num_layers
    assert logged["train.learning_rate"].number_value == config.train.learning_rate
    assert logged["tokenizer.kind"].string_value == config.tokenizer.kind


@pytest.mark.slow
def test_profiler_window_writes_a_trace(make_config):
    config = make_config({"train.max_steps": 10, "train.log_interval": 5,
                          "train.eval_interval": 10, "train.profile_steps": "5,10",
                          "name": "profiled"})
    train(config, verbose=0)
    traces = glob.glob(os.path.join(config.run_dir, "logs", "plugins", "profile", "*", "*"))
    assert traces, "no profile was written"
