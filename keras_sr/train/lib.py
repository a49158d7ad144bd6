"""The training loop shared by all three stages.

A stage differs only in how its model is built (`keras_sr.train.stages`) and in its loss; the loop itself
(distribution, checkpoints and resume, progress, TensorBoard, validation, the NaN guard) is this module.
"""
import math
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from keras_sr import evaluate, losses
from keras_sr import workdir as wd
from keras_sr.common import fileio, lock, progress
from keras_sr.data import pipeline
from keras_sr.train import stages

STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name):
    """Returns the `tf.distribute` strategy for `--strategy`.

    `mirrored` replicates over all visible GPUs (or the CPU when there are none); `multiworker` reads the
    cluster from the `TF_CONFIG` environment variable.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multiworker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


@keras.utils.register_keras_serializable(package="keras_sr")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to `final` at `total_steps`.

    `total_steps` is a variable so that a time budget can shorten the run (and its decay) once the
    step rate is known; it is saved with the checkpoints.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, final=0.0):
        self.peak, self.warmup_steps, self.final = float(peak), int(warmup_steps), float(final)
        self.total_steps = tf.Variable(int(total_steps), trainable=False, dtype=tf.int64,
                                       name="total_steps")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_steps = tf.maximum(tf.cast(self.total_steps, tf.float32) - self.warmup_steps, 1.0)
        fraction = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = self.final + 0.5 * (self.peak - self.final) * (1.0 + tf.cos(math.pi * fraction))
        return tf.where(step < self.warmup_steps, self.peak * (step + 1.0) / warmup, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": int(self.total_steps.numpy()),
                "warmup_steps": self.warmup_steps, "final": self.final}


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


# Steps timed before a time budget fixes the run length, or fewer when they take longer than
# the probe's share of the budget (a slow machine, a short stage of a job). The first step is left
# out of the rate: it includes tracing, which takes longer for some block types than for others.
_BUDGET_PROBE_STEPS = 200
_BUDGET_PROBE_MIN_STEPS = 10
_BUDGET_PROBE_FRACTION = 0.1
# Time kept for the final validation and checkpoint when fitting a run to its budget (at most
# this fraction of the budget).
_BUDGET_RESERVE_SECONDS = 30.0
_BUDGET_RESERVE_FRACTION = 0.1


def _probe_done(config, steps_done, seconds_since_first_step):
    """Whether a time-budgeted run has been timed long enough to fix its length."""
    if steps_done >= _BUDGET_PROBE_STEPS:
        return True
    return (steps_done >= _BUDGET_PROBE_MIN_STEPS and seconds_since_first_step
            >= _BUDGET_PROBE_FRACTION * 60.0 * config.time_budget_minutes)


def _fit_to_budget(config, schedule, current, start_step, start_time, first_step_done):
    """Shortens the run (and its learning-rate decay) so that it ends within its time budget.

    The step rate is timed from the end of the run's first step (`first_step_done`) to now.
    """
    now = time.time()
    rate = (current - start_step - 1) / max(now - first_step_done, 1e-9)
    budget = 60.0 * config.time_budget_minutes
    remaining = budget - (now - start_time) - min(_BUDGET_RESERVE_SECONDS,
                                                  _BUDGET_RESERVE_FRACTION * budget)
    total = max(current + 1, min(config.steps, current + int(rate * remaining)))
    schedule.total_steps.assign(total)
    logging.info("Time budget %.1f min at %.2f steps/s: the run ends at step %d (config: %d).",
                 config.time_budget_minutes, rate, total, config.steps)
    return total


class _Offset(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule `offset` steps further on: the learning rate of an optimizer made mid-run."""

    def __init__(self, schedule, offset):
        self.schedule, self.offset = schedule, int(offset)

    def __call__(self, step):
        return self.schedule(step + self.offset)

    def get_config(self):
        return {"schedule": self.schedule.get_config(), "offset": self.offset}


class _TrainState:
    """The optimizer, checkpoint and compiled train step of one model (`stages.Stage`).

    Args:
        strategy: the tf.distribute strategy (the optimizer is made in its scope).
        stage: the `stages.Stage` to train.
        schedule: the run's `WarmupCosine`.
        step: the run's global step variable.
        loss_fn: the `losses.CompositeLoss`.
        config: the `TrainConfig`.
        fuse_offset: the global step at which this model's optimizer was made: 0, or the fuse
            step of a `fuse_at` run whose Adam starts afresh there, with the learning rate the
            schedule has reached (0 also when `_carry_adam_state` continues it).
    """

    def __init__(self, strategy, stage, schedule, step, loss_fn, config, fuse_offset=0):
        self.stage = stage
        model = stage.model
        with strategy.scope():
            self.optimizer = keras.optimizers.Adam(
                _Offset(schedule, fuse_offset) if fuse_offset else schedule)
            # Adam's moments exist from the start (instead of in the first compiled step), so the
            # strict restore of a resumed run checks them too.
            self.optimizer.build(model.trainable_variables)
        self.objects = dict(model=model, optimizer=self.optimizer, step=step,
                            total_steps=schedule.total_steps)
        self.checkpoint = tf.train.Checkpoint(**self.objects)
        trainable = model.trainable_variables
        replicas = strategy.num_replicas_in_sync

        # XLA compiles the forward/backward pass; the update stays outside it because
        # cross-replica gradient aggregation cannot run inside a compiled function.
        @tf.function(jit_compile=config.jit_compile and stage.jit_ok)
        def forward_backward(batch):
            with tf.GradientTape() as tape:
                output = model(batch["lr"], training=True)
                total, terms = loss_fn(output, batch)
                # Each replica's loss is a mean over its own part of the global batch; the
                # gradients of all replicas are summed, so each contributes 1/replicas.
                replica_loss = total / replicas
            grads = tape.gradient(replica_loss, trainable)
            return grads, dict(terms, loss=total)

        def replica_step(batch):
            grads, terms = forward_backward(batch)
            self.optimizer.apply_gradients(zip(grads, trainable))
            stage.post_update()
            return terms

        @tf.function
        def train_step(iterator):
            terms = strategy.run(replica_step, args=(next(iterator),))
            step.assign_add(1)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                    for k, v in terms.items()}

        self.train_step = train_step


# Block types whose Adam moments carry over to the deploy form at a `fuse_at` switch (see
# `OnlineMobileOneConv2D.fused_kernel_moment`); BN (batch statistics in the gradient) and expanded
# branches (products of two factors) make the others' deploy form restart Adam (`_Offset`).
_ADAM_CARRIES = ("mobileone_linear",)


def _adam_slots(optimizer, variable):
    # tf-keras 2.21 (pinned) keeps Adam's moments in lists indexed by a variable key.
    index = optimizer._index_dict[optimizer._var_key(variable)]  # pylint: disable=protected-access
    return optimizer._momentums[index], optimizer._velocities[index]  # pylint: disable=protected-access


def _carry_adam_state(old, new):
    """Sets the deploy form's Adam moments and step count from the training form's.

    Layers of the same class (stem, tail) keep theirs; a linear online block's fused kernel gets
    the moments `fused_kernel_moment` estimates from its branch kernels, its bias keeps its own.

    Args:
        old: the `_TrainState` of the training form at the switch.
        new: the `_TrainState` of its deploy form (unchanged optimizer, made without an offset).
    """
    sources = {layer.name: layer for layer in old.stage.model.layers}
    values = []
    for layer in new.stage.model.layers:
        source = sources[layer.name]
        if type(source) is type(layer):
            values += [(var, [s.numpy() for s in _adam_slots(old.optimizer, ref)])
                       for var, ref in zip(layer.trainable_weights, source.trainable_weights)]
            continue
        kernel, bias = layer.trainable_weights
        branch = _adam_slots(old.optimizer, source.kernel_kxk)
        centre = _adam_slots(old.optimizer, source.kernel_1x1) if source.kernel_1x1 is not None \
            else (None, None)
        values.append((kernel, [source.fused_kernel_moment(
            branch[i].numpy(), None if centre[i] is None else centre[i].numpy(), power=i + 1)
            for i in (0, 1)]))
        values.append((bias, [s.numpy() for s in _adam_slots(old.optimizer, source.bias)]))
    for var, moments in values:
        for slot, moment in zip(_adam_slots(new.optimizer, var), moments):
            slot.assign(moment)
    new.optimizer.iterations.assign(old.optimizer.iterations)


def _fused_stage(stage, input_pipeline, config):
    """The `fuse_at` switch: the deploy form of a training-form stage, BN recalibrated first."""
    _, fused = stages.fuse(stage.model, input_pipeline(), config.bn_recalibration_batches)
    return stages.Stage(fused)


def train(config, workdir, train_records, val_data=None, init_from=None, teacher_records=None,
          strategy="default", run_info=None, on_step=None):
    """Runs (or resumes) one training stage.

    Args:
        config: a `keras_sr.configs.TrainConfig`.
        workdir: output folder; rerunning with the same folder resumes from its latest checkpoint.
        train_records: SR TFRecords (folder, file or glob) made by `tools/prepare_data.py`.
        val_data: optional EDSR-layout folder (HR/, LR_bicubic/X3/) for validation PSNR.
        init_from: work directory or checkpoint of the previous stage (Stages 2 and 3).
        teacher_records: optional teacher TFRecords (Stages 2 and 3) for the distillation term.
        strategy: "default", "mirrored" or "multiworker".
        run_info: extra JSON-serializable facts (e.g. the resolved flags) written to flags.json.
        on_step: optional callable (step, total_steps) called after every step, e.g. a job's
            progress view (`total_steps` may shrink once when a time budget fixes the run).

    Returns:
        The final metrics dict (also written to WORKDIR/metrics.json).

    Raises:
        lock.LockHeld: another process trains in `workdir` (see `keras_sr.common.lock`).
    """
    start_time = time.time()
    strategy = make_strategy(strategy) if isinstance(strategy, str) else strategy
    chief = _is_chief(strategy)
    # Only the chief writes the folder; other workers save (collective ops) into a scratch folder.
    with lock.WorkdirLock(workdir) if chief else tempfile.TemporaryDirectory() as scratch:
        return _train(config, workdir, train_records, val_data, init_from, teacher_records,
                      strategy, chief, scratch, run_info, on_step, start_time)


def _train(config, workdir, train_records, val_data, init_from, teacher_records, strategy, chief,
           scratch, run_info, on_step, start_time):
    """`train` once the folder is locked (`scratch`: a non-chief worker's checkpoint folder)."""
    config, source = stages.starting_point(config, init_from)
    if chief:
        fileio.write_json(os.path.join(workdir, wd.FLAGS), run_info or {})
        fileio.write_json(os.path.join(workdir, wd.CONFIG), config.to_dict())
    keras.utils.set_random_seed(config.seed)

    # --- Input pipeline. ---
    if config.stage >= 2 and not teacher_records:
        logging.warning("No --teacher_records: Stage %d trains without the distillation term.",
                        config.stage)

    # Every iterator of a tf.data pipeline draws a new shuffle order, so the training stream gets
    # a pipeline of its own: it is then the same whether or not Stage 3 calibrated first, and a
    # resumed run can skip to where it stopped.
    def input_pipeline():
        return pipeline.make_train_dataset(
            train_records, lr_patch=config.lr_patch, batch_size=config.batch_size,
            scale=config.model.scale, teacher_records=teacher_records,
            shuffle_buffer=config.shuffle_buffer, seed=config.seed)

    dataset = input_pipeline()
    loss_fn = losses.make_loss(config.loss, with_teacher=bool(teacher_records))

    # --- Model, optimizer, checkpoint (resume first, then initialise). ---
    checkpoint_dir = os.path.join(workdir, wd.CHECKPOINTS) if chief else scratch
    latest = tf.train.latest_checkpoint(os.path.join(workdir, wd.CHECKPOINTS))
    fused = bool(latest) and wd.holds_fused_student(config, latest)
    with strategy.scope():
        stage = stages.build(config, source, calibration_data=input_pipeline,
                             resume=latest is not None, fused=fused)
        schedule = WarmupCosine(config.learning_rate, config.steps, config.warmup_steps,
                                config.final_learning_rate)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # A run past its fuse step trains with the optimizer made at that step (see `_fused_stage`):
    # one that carried the training form's Adam state over, or one restarted there.
    restarts_adam = fused and config.model.block_type not in _ADAM_CARRIES
    fuse_offset = config.fuse_step(wd.checkpoint_value(latest, "total_steps")) if restarts_adam \
        else 0
    state = _TrainState(strategy, stage, schedule, step, loss_fn, config, fuse_offset)
    manager = tf.train.CheckpointManager(state.checkpoint, checkpoint_dir, config.max_checkpoints)
    start_step = 0
    if latest:
        wd.restore(latest, f"the training state that {os.path.join(workdir, wd.CONFIG)} describes",
                   **state.objects)
        start_step = int(step.numpy())
        logging.info("Resumed from %s at step %d.", latest, start_step)
    # The input stream is a fixed function of the seed: a resumed run skips the batches it already
    # trained on, so it sees what an uninterrupted run would have seen. Each worker of a multiworker
    # run makes it all and keeps its slice of every global batch (AUTO would shard it by file).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(
        dataset.skip(start_step).with_options(options)))
    predictor = evaluate.keras_model_predictor(state.stage.model) if val_data else None
    replicas = strategy.num_replicas_in_sync

    # --- Loop. ---
    writer = tf.summary.create_file_writer(os.path.join(workdir, wd.TENSORBOARD)) if chief else \
        tf.summary.create_noop_writer()
    pending, last_log_step, last_log_time = [], start_step, time.time()
    first_step_done = None
    if config.time_budget_minutes <= 0:
        schedule.total_steps.assign(config.steps)  # a rerun may extend a finished run
    total = int(schedule.total_steps.numpy())
    fit_to_budget = config.time_budget_minutes > 0 and total == config.steps
    metrics = {"loss_history": []}
    logging.info("Stage %d: steps %d -> %d, global batch %d over %d replica(s), LR patch %d.",
                 config.stage, start_step, total, config.batch_size, replicas, config.lr_patch)
    while int(step.numpy()) < total:
        current = int(step.numpy()) + 1
        state.stage.on_step(current, total)
        pending.append(state.train_step(iterator))
        if current == start_step + 1:
            first_step_done = time.time()
        if fit_to_budget and _probe_done(config, current - start_step,
                                         time.time() - first_step_done):
            total = _fit_to_budget(config, schedule, current, start_step, start_time,
                                   first_step_done)
            fit_to_budget = False
        if current == config.fuse_step(total) and not fused:
            carries = config.model.block_type in _ADAM_CARRIES
            with strategy.scope():
                fused_state = _TrainState(
                    strategy, _fused_stage(state.stage, input_pipeline, config), schedule, step,
                    loss_fn, config, fuse_offset=0 if carries else current)
                if carries:
                    _carry_adam_state(state, fused_state)
            state = fused_state
            manager = tf.train.CheckpointManager(state.checkpoint, checkpoint_dir,
                                                 config.max_checkpoints)
            predictor = evaluate.keras_model_predictor(state.stage.model) if val_data else None
            fused = True
            logging.info("step %d: fused; the rest of the run trains the deploy form.", current)
        last = current == total
        if on_step is not None:
            on_step(current, total)
        if current % config.log_every == 0 or last:
            means = {k: float(np.mean([p[k].numpy() for p in pending])) for k in pending[0]}
            if not all(math.isfinite(v) for v in means.values()):
                raise FloatingPointError(f"non-finite loss {means} between steps {last_log_step + 1} "
                                         f"and {current}")
            now = time.time()
            rate = (current - last_log_step) / max(now - last_log_time, 1e-9)
            eta = (total - current) / rate if rate > 0 else float("inf")
            lr = float(schedule(current))
            logging.info("step %d/%d | %s | lr %.2e | %.2f steps/s | ETA %s", current, total,
                         " ".join(f"{k} {v:.5f}" for k, v in sorted(means.items())), lr, rate,
                         progress.format_duration(eta))
            with writer.as_default(step=current):
                for k, v in means.items():
                    tf.summary.scalar(f"train/{k}", v)
                tf.summary.scalar("train/learning_rate", lr)
                tf.summary.scalar("train/steps_per_second", rate)
            metrics.update({f"train_{k}": v for k, v in means.items()}, steps_per_second=rate)
            metrics["loss_history"].append(means["loss"])
            pending, last_log_step, last_log_time = [], current, now
        if val_data and (current % config.eval_every == 0 or last):
            scores = evaluate.evaluate_benchmark(predictor, val_data, config.model.scale)
            logging.info("step %d validation on %s: PSNR-Y %.3f dB, SSIM-Y %.4f, PSNR-RGB %.3f dB",
                         current, val_data, scores["psnr_y"], scores["ssim_y"], scores["psnr_rgb"])
            with writer.as_default(step=current):
                for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
                    tf.summary.scalar(f"val/{k}", scores[k])
            metrics.update({f"val_{k}": scores[k] for k in ("psnr_y", "ssim_y", "psnr_rgb",
                                                             "ssim_rgb")})
        if current % config.checkpoint_every == 0 or last:
            manager.save(checkpoint_number=current)
    writer.flush()
    metrics.update(step=int(step.numpy()), wall_seconds=time.time() - start_time,
                   parameters=int(state.stage.model.count_params()), fused=fused)
    if chief:
        fileio.write_json(os.path.join(workdir, wd.METRICS), metrics)
    return metrics
