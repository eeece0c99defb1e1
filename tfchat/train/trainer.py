"""How to run training: tfchat's own loop over `strategy.run`.

The loop calls the task's `train_step` through `strategy.run` inside a
`tf.function`, pulling batches from a distributed iterator, as Keras' own
TensorFlow trainer does, but without `model.fit`, which fails under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585). One loop serves the
default strategy, `MirroredStrategy` and `MultiWorkerMirroredStrategy`.

Every `log_interval` steps it reads the metrics, prints progress and writes
TensorBoard scalars (tokens/s counts every position of every block;
useful_tokens/s only those that are not padding, useful_fraction of them);
every `eval_interval` steps it evaluates, logs a text
sample and saves a checkpoint holding the model, the optimizer (its step
counter included) and the input pipeline's position.

A step's logs are written before its checkpoint, and a resume drops what
was logged after the checkpoint it restores, so a run killed at any moment
logs every step once (`metrics.jsonl` and TensorBoard alike).
"""

import json
import math
import os
import time

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from tfchat.errors import TfchatError
from tfchat.train.distribute import is_chief, local_replicas, task_id


class Trainer:
    """Runs `task` (built, compiled with its optimizer, under `strategy`) on
    batches of `train_ds`, evaluating on `val_ds`.

    `folder` is the run's `tfchat.run.RunFolder` (where checkpoints, logs
    and metrics go); `sample`, if given, returns the text logged at each
    evaluation (the objective's sampler). `selection_loss(results)` ranks
    evaluations for the best checkpoint and early stopping, lower is better,
    the later of equals (default: the validation loss); `warning(results)` returns a message
    to print after an evaluation, or None.
    """

    def __init__(self, config, strategy, task, train_ds, val_ds, folder, sample=None, verbose=1,
                 selection_loss=None, warning=None):
        self.config = config
        self.selection_loss = selection_loss or (lambda results: results["val_loss"])
        self.warning = warning or (lambda results: None)
        # The last evaluation's warning, for the job's closing lines.
        self.last_warning = None
        self.train_config = config.train
        self.strategy = strategy
        self.task = task
        self.optimizer = task.optimizer
        self.folder = folder
        self.sample_fn = sample
        self.verbose = verbose
        self.is_chief = is_chief(strategy)
        t = self.train_config
        # Every position of every row the model reads (a preference pair is two).
        self.tokens_per_step = (t.batch_size * config.model.block_size
                                * getattr(task, "sequences_per_example", 1))

        # A plain iterator, not a distributed one: its position can be
        # checkpointed (a DistributedIterator's cannot). Each worker's
        # `train_ds` is its own share of the data in its share of every
        # global batch (`tfchat.train.distribute.input_shard`), which it
        # splits over its own devices; `val_ds` is the same global batches
        # on every worker, each taking its replicas' rows (`_distribute`).
        self.train_iterator = iter(train_ds)
        self.local_replicas = local_replicas(strategy)
        if t.eval_batches:
            val_ds = val_ds.take(t.eval_batches)
        self.val_dataset = val_ds

        # The model's weights do not include the state of its seed
        # generators (dropout's), which `tf.train.Checkpoint(model=...)`
        # therefore skips; without it a resumed run draws the dropout masks
        # of step 0 again and leaves the uninterrupted run's curve.
        self.random_state = RandomState(task)
        self.checkpoint = tf.train.Checkpoint(
            model=task, optimizer=self.optimizer, data=self.train_iterator,
            random=self.random_state,
        )
        # Non-chief workers write to their own folders (every worker must
        # take part in saving under MultiWorkerMirroredStrategy), which hold
        # the one copy of their input position.
        checkpoint_dir = folder.checkpoints
        best_dir = folder.best
        if not self.is_chief:
            checkpoint_dir = folder.worker_checkpoints(task_id(strategy))
            best_dir = os.path.join(checkpoint_dir, os.path.basename(folder.best))
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, checkpoint_dir, max_to_keep=t.keep_checkpoints
        )
        # The checkpoint with the lowest selection loss so far.
        self.best_manager = tf.train.CheckpointManager(self.checkpoint, best_dir, max_to_keep=1)
        self.best_selection_loss = math.inf
        # For train.early_stopping_patience.
        self.evaluations_since_best = 0
        # The event files of the folder's earlier processes, which a resume
        # may trim; the writer's own file, still being written, never.
        self.earlier_event_files = _event_files(folder.logs) if self.is_chief else []
        self.writer = (
            tf.summary.create_file_writer(folder.logs) if self.is_chief
            else tf.summary.create_noop_writer()
        )

        self._one_step = tf.function(
            lambda batch: strategy.run(task.train_step, args=(batch,)),
            jit_compile=t.jit_compile,
        )
        self._train_steps = tf.function(self._train_steps_fn)
        self._evaluate = tf.function(self._evaluate_fn)

    # --- compiled pieces ---

    def _distribute(self, batch, local=False):
        """A global batch -> per-replica slices of it (a no-op on one
        replica); a `local` batch (this worker's share of one) -> slices
        for this worker's replicas."""
        replicas = self.strategy.num_replicas_in_sync
        if replicas == 1:
            return batch
        share = self.local_replicas if local else replicas

        def replica_rows(context):
            # Replica ids run worker by worker, so this worker's are
            # consecutive.
            index = context.replica_id_in_sync_group % share
            return tf.nest.map_structure(lambda t: _rows(t, index, share), batch)

        return self.strategy.experimental_distribute_values_from_function(replica_rows)

    def _train_steps_fn(self, iterator, steps):
        for _ in tf.range(steps):
            logs = self._one_step(self._distribute(next(iterator), local=True))
            if self.train_config.on_nonfinite == "stop":
                # A non-finite loss ends the chunk at the step that produced
                # it, so the message can name that step.
                bad = self.strategy.reduce("SUM", logs["nonfinite_steps"], axis=None)
                if bad > 0:
                    break

    def _evaluate_fn(self, dataset):
        for batch in dataset:
            self.strategy.run(self.task.test_step, args=(self._distribute(batch),))

    # --- state ---

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def restore(self):
        """Restores the newest readable checkpoint; returns its step (0 if
        none). A checkpoint that cannot be read (a write cut short) is
        skipped, with a message, in favour of the one before it. Under
        several workers, all of them resume from the newest step every one
        of them has (one killed while saving has an older newest)."""
        step = self._restore_newest(self.manager.checkpoints)
        steps = self._steps_of_all_workers(step)
        if len(set(steps)) > 1:
            agreed = min(steps)
            lacking = [i for i, s in enumerate(steps) if s == 0]
            if agreed == 0:
                raise TfchatError(
                    f"Worker(s) {lacking} have no checkpoint to resume from, so their "
                    "position in their share of the input is lost; their checkpoints "
                    f"go to {os.path.dirname(self.folder.worker_checkpoints(0))}/ in the run "
                    "folder, which must be on storage every worker shares and keeps."
                )
            if self.verbose and self.is_chief:
                print(f"Workers' newest checkpoints are at steps {steps}; "
                      f"all resume from step {agreed}.")
            wanted = [p for p in self.manager.checkpoints if p.endswith(f"-{agreed}")]
            if not wanted:
                raise TfchatError(f"No checkpoint of step {agreed} in {self.manager.directory}, "
                                  f"where the other workers resume; start over with --overwrite.")
            step = self._restore_newest(wanted)
            if step != agreed:
                raise TfchatError(f"The step {agreed} checkpoint in {self.manager.directory} "
                                  "cannot be read; start over with --overwrite.")
        if step:
            best = self.folder.read_best(self.best_manager.directory)
            if best is not None:
                self.best_selection_loss = best.get("selection_loss", best["val_loss"])
        if self.is_chief:
            self._drop_logs_after(step)
        return step

    def _drop_logs_after(self, step):
        """Drops the metrics lines and TensorBoard events of the steps after
        `step`, the restored checkpoint's: the resumed run logs those steps
        again, and two entries for one step would leave scripts and
        TensorBoard to guess which one counts."""
        path = self.folder.metrics
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
            kept = []
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    # A line the kill cut short: every line of a step is
                    # written before its checkpoint, so it is after `step`.
                    continue
                if entry["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            if kept != lines:
                def write(tmp):
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.writelines(kept)
                _replace_file(path, write)
        for events in self.earlier_event_files:
            _drop_events_after(events, step)

    def _restore_newest(self, paths):
        for path in reversed(paths):
            try:
                self._checkpoint_for(path).restore(path).assert_existing_objects_matched()
            # A torn file surfaces in several ways (TF's reader raises
            # IndexError on a truncated data file).
            except (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError) as e:
                print(f"Skipping unreadable checkpoint {path}: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]}")
                continue
            return self.step
        if paths:
            raise TfchatError(
                f"No readable checkpoint in {self.manager.directory}; "
                "start over with --overwrite."
            )
        return 0

    def _steps_of_all_workers(self, step):
        """Each worker's `step`, in worker order (just [step] on one)."""
        if self.local_replicas == self.strategy.num_replicas_in_sync:
            return [step]
        value = self.strategy.run(lambda: tf.constant([step], tf.int64))
        gathered = self.strategy.gather(value, axis=0).numpy()
        # One entry per replica; a worker's replicas agree.
        return [int(s) for s in gathered[::self.local_replicas]]

    def _checkpoint_for(self, path):
        """The checkpoint object that reads `path`: a checkpoint written
        before tfchat saved the random state has none to restore (nor has
        one of a model without dropout, which has no state to save)."""
        if not self.random_state.seeds or self.random_state.in_checkpoint(path):
            return self.checkpoint
        if self.verbose and self.is_chief:
            print(f"Note: {path} predates saved random state; dropout will draw "
                  "other masks than an uninterrupted run would.")
        return tf.train.Checkpoint(
            model=self.task, optimizer=self.optimizer, data=self.train_iterator
        )

    def save(self):
        return self.manager.save(checkpoint_number=self.step)

    def _read_metrics(self):
        values = {k: float(v) for k, v in self.task.metric_results().items()}
        for metric in self.task.metrics:
            metric.reset_state()
        return values

    # --- the loop ---

    def fit(self):
        t = self.train_config
        progbar = keras.utils.Progbar(
            t.max_steps, verbose=self.verbose if self.is_chief else 0,
            # Every value is the interval's own, not to be averaged again.
            stateful_metrics=[*self.task.metric_results(), "lr", "tokens/s", "useful_tokens/s",
                              "skipped_steps"],
        )
        history = []
        step = self.step
        self._write_hparams()
        profile = [int(v) for v in t.profile_steps.split(",")] if t.profile_steps else None
        profiling = False
        trace_graph = self.is_chief
        try:
            while step < t.max_steps:
                if profile and not profiling and profile[0] <= step < profile[1]:
                    tf.profiler.experimental.start(self.folder.logs)
                    profiling = True
                # Run up to the next log, evaluation or the end, whichever is first.
                steps = min(
                    t.log_interval - step % t.log_interval,
                    t.eval_interval - step % t.eval_interval,
                    t.max_steps - step,
                )
                if trace_graph:
                    # The first call traces the step: keep its graph for
                    # TensorBoard's Graphs tab.
                    tf.summary.trace_on(graph=True)
                start = time.perf_counter()
                self._train_steps(self.train_iterator, tf.constant(steps))
                metrics = self._read_metrics()
                seconds = time.perf_counter() - start
                step = self.step
                if trace_graph:
                    with self.writer.as_default():
                        tf.summary.trace_export("train_step", step=step)
                    trace_graph = False
                if profiling and step >= profile[1]:
                    tf.profiler.experimental.stop()
                    profiling = False
                skipped = metrics.pop("nonfinite_steps")
                if skipped and t.on_nonfinite == "stop":
                    raise TfchatError(self._non_finite_message(step))
                if skipped:
                    metrics["skipped_steps"] = skipped
                    if self.verbose and self.is_chief:
                        print(f"\nSkipped {skipped:.0f} step(s) with a non-finite loss before step {step}.")
                metrics["lr"] = float(self.optimizer.learning_rate)
                metrics["tokens/s"] = steps * self.tokens_per_step / seconds
                # The tokens that are not padding: what packing raises.
                metrics["useful_tokens/s"] = metrics["useful_fraction"] * metrics["tokens/s"]
                history.append({"step": step, **metrics})
                self._write_scalars("train", metrics, step)
                self._append_metrics_line({"step": step, **metrics})
                progbar.update(step, list(metrics.items()))
                if step % t.eval_interval == 0 or step == t.max_steps:
                    results = self.evaluate_and_save()
                    history[-1].update(results)
                    if self._should_stop_early():
                        break
        except KeyboardInterrupt:
            if profiling:
                tf.profiler.experimental.stop()
            path = self.save()
            raise TfchatError(
                f"Interrupted at step {self.step}; saved {path}. "
                "Continue with --resume."
            ) from None
        if profiling:  # stopped early, or the profiled steps run past the end
            tf.profiler.experimental.stop()
        return history

    def evaluate(self):
        """Validation loss, perplexity and accuracy over the validation split."""
        for metric in self.task.metrics:
            metric.reset_state()
        self._evaluate(self.val_dataset)
        results = self._read_metrics()
        results.pop("nonfinite_steps", None)
        results.pop("useful_fraction", None)  # counted in training only
        return {f"val_{k}": v for k, v in results.items()}

    def evaluate_and_save(self):
        step = self.step
        results = self.evaluate()
        # Everything this step logs goes out before its checkpoint becomes
        # the latest: a run resumed from that checkpoint does not evaluate
        # this step again, so what a kill cut off after it would be lost.
        self._write_scalars("val", results, step)
        self._append_metrics_line({"step": step, **results})
        sample = self.sample()
        if sample is not None:
            with self.writer.as_default():
                tf.summary.text("sample", sample, step=step)
            self.writer.flush()
        # The best checkpoint too: a kill between the two saves then resumes
        # from the checkpoint before this one and evaluates this step again;
        # the other way round it would resume past this step with its
        # checkpoint never kept as the best.
        selection_loss = self.selection_loss(results)
        # A tie goes to the later evaluation (dpo's ranks whole stretches of
        # training equal; a tie of two validation losses is rare).
        if selection_loss <= self.best_selection_loss:
            self.best_selection_loss = selection_loss
            self.best_manager.save(checkpoint_number=step)
            if self.is_chief:
                self.folder.write_best(self.best_manager.directory, step, results["val_loss"],
                                       self.best_manager.latest_checkpoint, selection_loss)
            self.evaluations_since_best = 0
        else:
            self.evaluations_since_best += 1
        path = self.save()
        if self.verbose and self.is_chief:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items())
            print(f"\nstep {step}: {shown}; checkpoint {path}")
            if sample:
                print(f"--- sample ---\n{sample}\n--------------")
        self.last_warning = self.warning(results)
        if self.last_warning and self.verbose and self.is_chief:
            print(f"\nWarning at step {step}: {self.last_warning}")
        return results

    def _should_stop_early(self):
        patience = self.train_config.early_stopping_patience
        if not patience or self.evaluations_since_best < patience:
            return False
        if self.verbose and self.is_chief:
            print(
                f"\nStopping early at step {self.step}: no better validation result "
                f"in {patience} evaluation(s); the best is in {self.best_manager.directory}."
            )
        return True

    def sample(self):
        if self.sample_fn is None or not self.is_chief:
            return None
        return self.sample_fn()

    def _write_hparams(self):
        """The run's config for TensorBoard's HParams tab, to compare runs."""
        if not self.is_chief:
            return
        values = {}
        for section, fields in self.config.to_dict().items():
            for key, value in (fields.items() if isinstance(fields, dict) else [("", fields)]):
                name = f"{section}.{key}" if key else section
                values[name] = value
        with self.writer.as_default():
            hparams_api.hparams(values, trial_id=self.config.name)

    def _append_metrics_line(self, values):
        if self.is_chief:
            self.folder.append_metrics(values)

    def _write_scalars(self, prefix, values, step):
        with self.writer.as_default():
            for name, value in values.items():
                name = name.replace("/", "_per_")
                tf.summary.scalar(f"{prefix}/{name}", value, step=step)
        self.writer.flush()

    def _non_finite_message(self, step):
        latest = self.manager.latest_checkpoint
        kept = (
            f"the last good checkpoint, {latest}, is intact"
            if latest else "no checkpoint had been saved yet"
        )
        return (
            f"The loss was not finite (nan or inf) at step {step}; training "
            f"stopped and {kept}. Try a lower train.learning_rate, "
            "train.on_nonfinite skip, or check the data."
        )


class RandomState(tf.Module):
    """Every piece of random state a training step consumes, to checkpoint.

    Keras keeps each random layer's stream (every `Dropout`) in a seed
    generator whose state variable is in `layer.variables` but not in
    `layer.weights`, and not in what `tf.train.Checkpoint` saves of a model.
    The rest of training's randomness is stateless or checkpointed
    elsewhere: the input pipeline's shuffles live in the iterator's
    checkpoint, masked-LM masking is a function of the seed and the batch
    index, and sampled text is reseeded at every call (no training op draws
    from Keras' unseeded global generator).
    """

    def __init__(self, model):
        super().__init__(name="random_state")
        weights = {id(w) for w in model.weights}
        # In the order of the model's layers, the same for every build of
        # one config.
        self.seeds = [v for v in model.variables if id(v) not in weights]

    @staticmethod
    def in_checkpoint(path):
        return any(name.startswith("random/") for name, _ in tf.train.list_variables(path))


def _event_files(logs):
    """The TensorBoard event files in `logs`, oldest first."""
    if not os.path.isdir(logs):
        return []
    return [os.path.join(logs, name) for name in sorted(os.listdir(logs))
            if "tfevents" in name and os.path.isfile(os.path.join(logs, name))]


def _drop_events_after(path, step):
    """Rewrites the TensorBoard event file at `path` without its events of
    the steps after `step` (left as it is when it has none)."""
    kept, dropped = [], False
    try:
        for record in tf.data.TFRecordDataset(path):
            record = record.numpy()
            if tf.compat.v1.Event.FromString(record).step > step:
                dropped = True
            else:
                kept.append(record)
    except tf.errors.DataLossError:
        # A record the kill cut short: events are flushed before their
        # step's checkpoint, so it is after `step`.
        dropped = True
    if dropped:
        def write(tmp):
            with tf.io.TFRecordWriter(tmp) as writer:
                for record in kept:
                    writer.write(record)
        _replace_file(path, write)


def _replace_file(path, write):
    """Has `write` write a temporary file beside `path`, then renames it to
    `path`, so that a kill leaves the old file or the new one, never half of
    one. The temporary name has no "tfevents" in it: TensorBoard would read
    it as a second copy of the events."""
    tmp = os.path.join(os.path.dirname(path), ".partial.tmp")
    write(tmp)
    os.replace(tmp, path)


def _rows(tensor, index, replicas):
    """Replica `index`'s share of a batch's rows; the last share may be short
    or empty when the batch does not divide evenly (a final eval batch)."""
    per_replica = -(-tf.shape(tensor)[0] // replicas)
    return tensor[index * per_replica:(index + 1) * per_replica]
