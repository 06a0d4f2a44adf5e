"""Train: fit the model for a dataset's task, evaluate it once on the test set, and log the run to its workdir."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tf_rnn import cli
from tf_rnn import config as config_lib
from tf_rnn import datasets as datasets_lib
from tf_rnn import fused, pipeline, tasks
from tf_rnn import workdir as workdir_lib
from tf_rnn.arrays import Arrays
from tf_rnn.cli import RunError
from tf_rnn.config import TrainConfig
from tf_rnn.datasets import DataSpec
from tf_rnn.workdir import (BACKUP_DIR, DATA_SPEC_FILE, EXPORT_DIR, METRICS_FILE, MODEL_FILE, TENSORBOARD_DIR,
                            TRAIN_STATE_FILE, write_json)

if TYPE_CHECKING:  # Keras loads TensorFlow: the CLI imports it only after parsing its flags.
    from tf_rnn.callbacks import RunState, Throughput


def execution_steps(requested: int, steps_per_epoch: int) -> int:
    """The largest divisor of `steps_per_epoch` that is at most `requested`: the steps per execution of a run whose
    `--steps` budget ends mid-epoch, which reads the endless stream (whole epochs read one dataset each, see prepare).

    Keras runs whole executions (`range(0, steps_per_epoch, steps_per_execution)`, each up to that many steps while
    data lasts), and our stream is endless: an execution straddling an epoch's end would train on the next
    epoch's batches inside this one and shift every later epoch.
    """
    return max(d for d in range(1, min(requested, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


def remaining_steps(total_steps: int, resumed_from: int | None, steps_per_epoch: int) -> int:
    """Optimizer steps left in the budget for a run that restarts after `resumed_from` finished epochs."""
    return max(0, total_steps - (resumed_from or 0) * steps_per_epoch)


def weights_digest(model) -> str:
    """SHA-256 of all weights' bytes: equal digests mean bit-identical models (multi-worker checks use it)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


# --- the job, in four phases: prepare, build, fit, finalize ---------------------------------------------------


@dataclasses.dataclass
class Run:
    """What `prepare` decides and the later phases read."""

    config: TrainConfig
    workdir: Path
    strategy: object
    chief: bool  # Only the chief writes files; the other workers train in lock-step.
    spec: DataSpec
    splits: pipeline.Splits
    global_batch: int
    steps_per_epoch: int
    total_steps: int  # The whole run's budget, epochs before a restart included.
    epochs: int
    resumed_from: int | None  # Finished epochs in the backup, or None for a fresh run.
    per_call: int  # Optimizer steps per call of Keras' train function.
    custom_loop: bool  # Multi-worker: tf_rnn's own loop instead of Keras' fit (distribute.needs_custom_loop).
    by_epoch: bool  # fit reads splits.train_epochs, one dataset per epoch (else the endless splits.train).


def prepare(config: TrainConfig, workdir: Path, arrays: Arrays | None = None, strategy=None) -> Run:
    """Strategy, data, workdir, seeds, pipelines and the step budget.

    Raises:
      RunError: finished run or other config in the workdir; DataError: the dataset is missing or corrupt.
    """
    import keras
    import tensorflow as tf

    from tf_rnn.distribute import get_strategy, is_chief, needs_custom_loop, strategy_name

    print(f"run directory: {workdir}", flush=True)
    # First: a multi-worker strategy must configure the TF runtime before anything else touches it.
    strategy = strategy or get_strategy(config.strategy)
    chief = is_chief(strategy)
    entry = datasets_lib.get(config.dataset)
    if chief:  # A finished or foreign workdir is refused before the data loads (or downloads), not after.
        workdir_lib.check(config, workdir)
    if arrays is None:
        arrays, spec = datasets_lib.load(config, entry)
        print(f"Loaded {config.dataset} from {arrays.source}")
    else:
        arrays, spec = datasets_lib.validate(config, arrays, "arrays=", entry)
    # The kernel built (announced) and a bad $TF_RNN_KERNEL_ISA refused before the workdir exists.
    fused.prepare(config)
    if chief:  # After the data loaded: a run that could not start leaves no workdir behind.
        workdir_lib.prepare(config, workdir)
        write_json(workdir / DATA_SPEC_FILE, spec.to_dict())
    keras.utils.set_random_seed(config.seed)
    # Bit-identical reruns on a CPU (same seed, same metrics.json); cost measured here: ~2% of throughput.
    tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    resumed_from = workdir_lib.finished_epochs_in_backup(workdir)
    splits = pipeline.make_splits(
        arrays, global_batch, config.validation_split, config.seed, resumed_from or 0, entry.mirrors(config.augment)
    )
    steps_per_epoch = math.ceil(splits.train_examples / global_batch)
    total_steps = config.epochs * steps_per_epoch
    if config.steps:
        total_steps = min(total_steps, config.steps)
    custom_loop = needs_custom_loop(strategy)
    # Whole epochs through Keras' fit: one finite dataset per epoch (pipeline.training_epochs), whose last execution
    # stops where the epoch does, so any number of steps per execution keeps epochs exact.
    by_epoch = not custom_loop and replicas == 1 and total_steps % steps_per_epoch == 0
    if custom_loop or replicas > 1:
        # Our multi-worker loop steps once per call, and Keras' multi-step loop fails under MirroredStrategy with
        # several replicas ("You must feed a value for placeholder tensor", keras-team/keras#19246, open).
        per_call, why = 1, f"{strategy_name(strategy)} with {replicas} replica(s) runs one step per call"
    elif by_epoch:
        per_call = min(config.steps_per_execution, steps_per_epoch)
        why = f"an epoch has {cli.plural(steps_per_epoch, 'step')}"
    else:  # The budget ends mid-epoch: the endless stream, cut at the budget (see fit).
        per_call = execution_steps(config.steps_per_execution, steps_per_epoch)
        why = (f"it must divide the {steps_per_epoch} steps of an epoch when --steps {config.steps} ends the run "
               "mid-epoch")
    # Said only of a value the user chose: the default adapting to the epoch is no news.
    if per_call != config.steps_per_execution and config.steps_per_execution != TrainConfig.steps_per_execution:
        print(f"--steps-per-execution {config.steps_per_execution} runs as {per_call}: {why}")
    return Run(config, workdir, strategy, chief, spec, splits, global_batch, steps_per_epoch, total_steps,
               epochs=math.ceil(total_steps / steps_per_epoch), resumed_from=resumed_from, per_call=per_call,
               custom_loop=custom_loop, by_epoch=by_epoch)


def build(run: Run):
    """The compiled model and the run header (the kernel was built in prepare, announced, not in the first step)."""
    from tf_rnn.models import build_model
    from tf_rnn.summaries import write_run_header

    with run.strategy.scope():
        model = build_model(run.config, decay_steps=run.total_steps, spec=run.spec, steps_per_execution=run.per_call)
    if run.resumed_from is not None:
        print(f"Resuming from epoch {run.resumed_from}")
    elif run.chief:
        write_run_header(run.workdir / TENSORBOARD_DIR, run.config, model, run.spec)
    return model


@dataclasses.dataclass
class Fitted:
    state: RunState
    throughput: Throughput
    seconds: float


def fit(run: Run, model, extra_callbacks=()) -> Fitted:
    """Trains to the budget (or early stop), saving the best model and a backup every epoch.

    Raises:
      RunError: the loss became NaN (the message says where the best model so far is).
    """
    import keras

    from tf_rnn.callbacks import DataEpoch, EpochSeeds, NaNGuard, Progress, RunState, StepBudget, Throughput
    from tf_rnn.distribute import fit_custom_loop

    config, workdir = run.config, run.workdir
    nan_guard = NaNGuard()
    throughput = Throughput(run.global_batch, run.splits.train_examples, run.steps_per_epoch)
    # Every worker tracks the best epoch (early stopping must stop all of them at once); only the chief saves.
    monitor, mode = run.spec.task_type.monitor
    state = RunState(workdir / MODEL_FILE, workdir / BACKUP_DIR / TRAIN_STATE_FILE, config.early_stopping_patience,
                     first_epoch=run.resumed_from or 0, monitor=monitor, mode=mode, save=run.chief)
    backup = keras.callbacks.BackupAndRestore(str(workdir / BACKUP_DIR), delete_checkpoint=False)
    if not run.chief:
        # Workers restore from the chief's backup (same --workdir, shared storage across machines) but never write.
        backup._save_model = lambda: None
    callbacks = [
        EpochSeeds(config.seed),
        nan_guard,
        throughput,
        StepBudget(run.total_steps),
        Progress(run.total_steps, run.steps_per_epoch),
        # At an epoch's end the run state is written before the backup: a kill in between re-runs that epoch
        # (identically) rather than resuming past an epoch the history does not have.
        state,
        backup,
        *([keras.callbacks.TensorBoard(str(workdir / TENSORBOARD_DIR), histogram_freq=1, write_graph=True)]
          if run.chief else []),
        *extra_callbacks,
    ]
    if run.by_epoch:  # Each epoch a dataset of its own, its epoch set by DataEpoch; Keras counts its batches.
        train_ds, steps_per_epoch = run.splits.train_epochs, None
        callbacks.insert(0, DataEpoch(run.splits.train_epoch))
    else:
        # The stream ends where the budget does, so Keras cuts the last execution short instead of overrunning it.
        train_ds = run.splits.train.take(remaining_steps(run.total_steps, run.resumed_from, run.steps_per_epoch))
        steps_per_epoch = run.steps_per_epoch
    # A progress bar rewrites its line with control characters: right for a terminal, noise in a log file or CI.
    verbose = 1 if sys.stdout.isatty() else 2
    start = time.perf_counter()
    if run.custom_loop:
        fit_custom_loop(model, run.strategy, train_ds, run.splits.validation, task=run.spec.task_type,
                        epochs=run.epochs, steps_per_epoch=run.steps_per_epoch, callbacks=callbacks, verbose=verbose)
    else:
        model.fit(
            train_ds,
            validation_data=run.splits.validation,
            epochs=run.epochs,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # The stream is already shuffled per epoch (see pipeline.training_stream).
            callbacks=callbacks,
            verbose=verbose,
        )
    seconds = time.perf_counter() - start
    if nan_guard.bad_steps is not None:
        where = (f"the best model so far (epoch {state.best_epoch}) is in {workdir / MODEL_FILE}" if state.best_epoch
                 else "no epoch finished with a finite loss, so no model was saved")
        raise RunError(
            f"loss became NaN {nan_guard.where()}; lower --lr (now {config.lr:g}) or add --l2, then rerun "
            f"with a new --workdir ({where})"
        )
    return Fitted(state, throughput, seconds)


def finalize(run: Run, model, fitted: Fitted) -> dict:
    """The chief evaluates the best model once on the test set, exports it and writes metrics.json; a worker
    reports its weights' digest. Every process meets at a barrier before returning."""
    import keras
    import tensorflow as tf

    from tf_rnn.callbacks import optimizer_steps
    from tf_rnn.distribute import barrier, strategy_name
    from tf_rnn.export import export_saved_model
    from tf_rnn.summaries import write_test_summaries

    if not run.chief:
        digest = weights_digest(model)
        print(f"worker finished {cli.plural(optimizer_steps(model), 'step')}; weights sha256 {digest}")
        barrier(run.strategy)
        return {"weights_sha256": digest, "chief": False}
    config, workdir, state = run.config, run.workdir, fitted.state
    print(f"evaluating the best model (epoch {state.best_epoch}) on "
          f"{cli.plural(run.splits.test_examples, 'test example')}", flush=True)
    best_model = keras.saving.load_model(workdir / MODEL_FILE)
    metrics = tasks.evaluate(best_model, run.splits.test, run.spec)
    monitor = run.spec.task_type.monitor[0]
    metrics.update(
        dataset=config.dataset,
        task=run.spec.task,
        preset=config.preset,
        epochs=state.epochs,
        steps=optimizer_steps(model),
        best_epoch=state.best_epoch,
        **{f"best_validation_{monitor[4:]}": state.best_value},
        validation_examples=run.splits.validation_examples,
        train_examples=run.splits.train_examples,
        train_seconds=round(fitted.seconds, 2),
        train_samples_per_second=fitted.throughput.samples_per_second and round(
            fitted.throughput.samples_per_second, 1),
        num_replicas_in_sync=run.strategy.num_replicas_in_sync,
        steps_per_execution=run.per_call,
        weights_sha256=weights_digest(model),
        # Every epoch's, including those run before a restart: time to a given accuracy is computable from them.
        history={k: [round(v, 6) for v in vs] for k, vs in state.history.items()},
        epoch_seconds=state.epoch_seconds,
        global_batch_size=run.global_batch,
        strategy=strategy_name(run.strategy),
        strategy_requested=config.strategy,
        resumed_from_epoch=run.resumed_from,
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
    )
    write_test_summaries(workdir / TENSORBOARD_DIR, metrics, run.spec, step=state.epochs)
    # An export left by an attempt that died before metrics.json is this run's own, unfinished: replace it.
    shutil.rmtree(workdir / EXPORT_DIR, ignore_errors=True)
    print(f"exporting the SavedModel to {workdir / EXPORT_DIR}", flush=True)
    export_saved_model(best_model, workdir / EXPORT_DIR, run.spec)
    write_json(workdir / METRICS_FILE, metrics)
    shutil.rmtree(workdir / BACKUP_DIR, ignore_errors=True)
    barrier(run.strategy)
    print(f"{summary_line(metrics)}; {cli.plural(state.epochs, 'epoch')} in {fitted.seconds:.0f}s; wrote {workdir}")
    return metrics


def train_and_evaluate(
    config: TrainConfig, workdir, *, arrays: Arrays | None = None, strategy=None, extra_callbacks=()
) -> dict:
    """Trains `config` in `workdir`, resuming an interrupted run there, and evaluates once on the test set.

    Args:
      config: the resolved run config.
      workdir: where config.json, model.keras, TensorBoard logs, backups and metrics.json go.
      arrays: in-memory arrays to use instead of loading `config.dataset` (tests inject tiny data here); they
        are checked against what `config.dataset` is.
      strategy: a tf.distribute strategy to use instead of `config.strategy`.
      extra_callbacks: Keras callbacks added after ours (tests use one to interrupt a run).

    Returns:
      The metrics also written to `metrics.json`.

    Raises:
      RunError: finished run or other config in the workdir, or the loss became NaN.
      DataError: the dataset is missing or corrupt.
    """
    run = prepare(config, Path(workdir), arrays, strategy)
    model = build(run)
    fitted = fit(run, model, extra_callbacks)
    return finalize(run, model, fitted)


def summary_line(metrics: dict) -> str:
    """`test accuracy 0.9026 (loss 0.2790) on 10000 examples`, or the task's equivalent (metrics.json's `task`)."""
    return tasks.get(metrics.get("task", "classification")).summary(metrics)  # Older runs: classifiers.


# --- command line -------------------------------------------------------------------------------------------------


def parse_flags(argv: list[str] | None = None) -> tuple[TrainConfig, Path]:
    """Flags → (resolved config, workdir). Raises ConfigError for bad values; argparse exits 2 for bad flags."""
    parser = cli.OneLineParser(
        prog="python -m tf_rnn.train",
        description="Train an RNN on a sequence dataset (images read row by row by default); evaluate once on the "
        "test set.",
    )
    parser.add_argument("--workdir", default=None, help="run directory (default: runs/<timestamp>)")
    parser.add_argument("--config", default=None, help="a saved config.json; flags given here override it")
    config_lib.add_dataclass_flags(parser, TrainConfig)
    args = vars(parser.parse_args(argv))
    workdir = args.pop("workdir") or Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    file_values = config_lib.load_json(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    return config_lib.resolve(file_values=file_values, overrides=args), Path(workdir)


@cli.entry_point(on_interrupt="interrupted; re-run the same command to resume from the last finished epoch")
def main(argv: list[str] | None = None) -> int:
    config, workdir = parse_flags(argv)
    train_and_evaluate(config, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
