"""Where training runs: the `tf.distribute` strategy.

One training loop serves every strategy (`tfchat.train.trainer`); this module
only chooses one:

  * default       one device (CPU or one GPU)
  * mirrored      `MirroredStrategy`: every GPU of this machine
  * multi_worker  `MultiWorkerMirroredStrategy`: several machines, each
                  described by the `TF_CONFIG` environment variable
  * auto          mirrored when more than one GPU is visible, else default

Launching two machines (run the same command on each, with its own index):

    export TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    python -m tfchat.fit --config my.yaml --train.strategy multi_worker

Worker 0 is the chief: it alone writes checkpoints and TensorBoard logs to
the run folder, which should be on storage every worker can read for resume.
Each worker reads only its share of the training data (`input_shard`) and
checkpoints its own position in it (`runs/<name>/workers/worker_<i>/`).
"""

import json
import os

import tensorflow as tf

from tfchat.config import STRATEGIES
from tfchat.data.sharding import InputShard
from tfchat.errors import TfchatError


def choose_strategy(name="auto"):
    if name not in STRATEGIES:
        raise TfchatError(
            f"Unknown train.strategy {name!r}; use one of {', '.join(STRATEGIES)}."
        )
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise TfchatError(
            "train.strategy multi_worker needs the TF_CONFIG environment "
            "variable (see `python -m tfchat.fit --help` and README)."
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise TfchatError(f"TF_CONFIG is not valid JSON: {e}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """Whether this process writes the run's checkpoints and logs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type in (None, "worker") and resolver.task_id in (None, 0)


def local_replicas(strategy):
    """The replicas on this worker's own devices."""
    try:
        return len(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: one device
        return 1


def input_shard(strategy):
    """This worker's part of the training input: one part per worker
    (not per replica: a worker splits its own batches over its devices)."""
    workers = strategy.num_replicas_in_sync // local_replicas(strategy)
    if workers == 1:
        return InputShard()
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    # A "chief" task, where there is one, is worker 0 of the input.
    chief = 1 if "chief" in cluster else 0
    index = 0 if resolver.task_type == "chief" else resolver.task_id + chief
    return InputShard(count=workers, index=index)


def task_id(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return getattr(resolver, "task_id", 0) or 0
