"""Train: fit the model for a dataset's task, evaluate it once on the test set, and log the run to its workdir."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tf_rnn import cli
from tf_rnn import config as config_lib
from tf_rnn import data, fused
from tf_rnn import datasets as datasets_lib
from tf_rnn.callbacks import EpochSeeds, NaNGuard, RunState, StepBudget, Throughput, optimizer_steps, write_json
from tf_rnn.cli import RunError
from tf_rnn.config import TrainConfig
from tf_rnn.datasets import PER_STEP, REGRESSION, DataSpec
from tf_rnn.summaries import confusion_matrix, write_run_header, write_test_summaries

# Files a run writes into its workdir.
CONFIG_FILE = "config.json"
DATA_SPEC_FILE = "data_spec.json"  # What the model takes and returns (tf_rnn.export reads it).
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
BACKUP_DIR = "backup"  # Keras BackupAndRestore state; removed once metrics.json is written.
TRAIN_STATE_FILE = "train_state.json"  # Per-epoch history (best model, early stopping), beside the backup.
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "saved_model"  # Portable SavedModel of the best model (tf_rnn.export).


# --- workdir ------------------------------------------------------------------------------------------------------


def prepare_workdir(config: TrainConfig, workdir: Path) -> None:
    """Creates the workdir, or checks that it holds an unfinished run of this same config.

    Raises:
      RunError: the workdir holds a finished run, or a run of another config.
    """
    if (workdir / METRICS_FILE).exists():
        raise RunError(
            f"--workdir {workdir} holds a finished run ({METRICS_FILE} exists); choose a new --workdir "
            "(nothing was overwritten)"
        )
    saved = workdir / CONFIG_FILE
    if saved.exists():
        old = json.loads(saved.read_text())
        new = config.to_dict()
        # The data folder and the strategy may change between attempts without changing the run itself.
        # So may the steps per execution: the weights are the same bits whatever it is (tests/test_train.py).
        ignored = {"data_dir", "strategy", "steps_per_execution"}
        changes = config_lib.changed_fields(old, new, ignore=ignored, cls=TrainConfig)
        if changes:
            raise RunError(
                f"--workdir {workdir} holds an unfinished run with another config ({changes}); "
                "re-run with the same flags to resume it, or choose a new --workdir"
            )
    elif (workdir / MODEL_FILE).exists():
        raise RunError(f"--workdir {workdir} holds a {MODEL_FILE} but no {CONFIG_FILE}; choose a new --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(saved, config.to_dict())


def execution_steps(requested: int, steps_per_epoch: int) -> int:
    """The largest divisor of `steps_per_epoch` that is at most `requested`.

    Keras runs whole executions (`range(0, steps_per_epoch, steps_per_execution)`, each up to that many steps while
    data lasts), and our stream is endless: an execution straddling an epoch's end would train on the next
    epoch's batches inside this one and shift every later epoch.
    """
    return max(d for d in range(1, min(requested, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


def finished_epochs_in_backup(workdir: Path) -> int | None:
    """The number of finished epochs recorded by BackupAndRestore, or None when there is no backup."""
    meta = workdir / BACKUP_DIR / "training_metadata.json"
    if not meta.exists():
        return None
    return int(json.loads(meta.read_text())["epoch"])


# --- the job ------------------------------------------------------------------------------------------------------


def weights_digest(model) -> str:
    """SHA-256 of all weights' bytes: equal digests mean bit-identical models (multi-worker checks use it)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def evaluate_once(model, test_ds, spec: DataSpec) -> tuple[dict, np.ndarray | None]:
    """One pass over the test set: every test metric, from the same outputs.

    Returns:
      (metrics, confusion matrix or None). Classification: `test_accuracy`, `test_loss` (cross-entropy, no label
      smoothing). Per-step: the same over the recalled steps, plus `baseline_loss` = ln(classes) (a uniform guess).
      Regression: `test_mse` (= `test_loss`), `test_mae` and `baseline_mse` (predicting the training targets'
      mean), in the targets' units.
    """
    outputs, targets = [], []
    for x, y in test_ds:
        outputs.append(np.asarray(model(x, training=False)))
        targets.append(np.asarray(y))
    outputs, targets = np.concatenate(outputs).astype(np.float64), np.concatenate(targets)
    if spec.task == REGRESSION:
        mse = float(((outputs - targets) ** 2).mean())
        return {
            "test_mse": mse,
            "test_loss": mse,
            "test_mae": float(np.abs(outputs - targets).mean()),
            "baseline_mse": float(((np.asarray(spec.target_mean) - targets) ** 2).mean()),
            "test_examples": int(len(targets)),
        }, None
    logits, labels = outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    predictions = logits.argmax(axis=1)
    metrics = {
        "test_accuracy": float((predictions == labels).mean()),
        "test_loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
        "test_examples": int(len(targets)),
    }
    if spec.task == PER_STEP:
        metrics["baseline_loss"] = float(np.log(spec.num_classes))
    return metrics, confusion_matrix(labels, predictions, spec.num_classes)


def train_and_evaluate(
    config: TrainConfig, workdir, *, datasets: data.Arrays | None = None, strategy=None, extra_callbacks=()
) -> dict:
    """Trains `config` in `workdir`, resuming an interrupted run there, and evaluates once on the test set.

    Args:
      config: the resolved run config.
      workdir: where config.json, model.keras, TensorBoard logs, backups and metrics.json go.
      datasets: in-memory arrays to use instead of loading `config.dataset` (tests inject tiny data here); they
        are checked against what `config.dataset` is.
      strategy: a tf.distribute strategy to use instead of `config.strategy`.
      extra_callbacks: Keras callbacks added after ours (tests use one to interrupt a run).

    Returns:
      The metrics also written to `metrics.json`.

    Raises:
      RunError: finished run or other config in the workdir, or the loss became NaN.
      data.DataError: the dataset is missing or corrupt.
    """
    import keras
    import tensorflow as tf

    from tf_rnn.distribute import barrier, fit_custom_loop, get_strategy, is_chief, needs_custom_loop, strategy_name
    from tf_rnn.export import export_saved_model
    from tf_rnn.models import build_model

    workdir = Path(workdir)
    # First: a multi-worker strategy must configure the TF runtime before anything else touches it.
    strategy = strategy or get_strategy(config.strategy)
    chief = is_chief(strategy)  # Only the chief writes files; the other workers train in lock-step.
    if datasets is None:
        arrays, spec = datasets_lib.load(config)
        print(f"Loaded {config.dataset} from {arrays.source}")
    else:
        arrays, spec = datasets_lib.validate(config, datasets, "datasets=")
    if chief:  # After the data loaded: a run that could not start leaves no workdir behind.
        prepare_workdir(config, workdir)
        write_json(workdir / DATA_SPEC_FILE, spec.to_dict())
    keras.utils.set_random_seed(config.seed)
    # Bit-identical reruns on a CPU (same seed, same metrics.json); cost measured here: ~2% of throughput.
    tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    resumed_from = finished_epochs_in_backup(workdir)
    splits = data.make_splits(
        arrays, global_batch, config.validation_split, config.seed, resumed_from or 0, config.hflip
    )
    steps_per_epoch = math.ceil(splits.train_examples / global_batch)
    total_steps = config.epochs * steps_per_epoch
    if config.steps:
        total_steps = min(total_steps, config.steps)
    epochs = math.ceil(total_steps / steps_per_epoch)

    custom_loop = needs_custom_loop(strategy)
    if custom_loop or replicas > 1:
        # Our multi-worker loop steps once per call, and Keras' multi-step loop fails under MirroredStrategy with
        # several replicas ("You must feed a value for placeholder tensor", keras-team/keras#19246, open).
        per_call, why = 1, f"{strategy_name(strategy)} with {replicas} replica(s) runs one step per call"
    else:
        per_call = execution_steps(config.steps_per_execution, steps_per_epoch)
        why = f"it must divide the {steps_per_epoch} steps of an epoch"
    if per_call != config.steps_per_execution:
        print(f"--steps-per-execution {config.steps_per_execution} runs as {per_call}: {why}")
    # The stream ends where the budget does, so Keras cuts the last execution short instead of overrunning it.
    train_ds = splits.train.take(max(0, total_steps - (resumed_from or 0) * steps_per_epoch))

    fused.prepare(config)  # A first build of the CPU kernel happens here, announced, not inside the first step.
    with strategy.scope():
        model = build_model(config, decay_steps=total_steps, spec=spec, steps_per_execution=per_call)

    tb_dir = workdir / TENSORBOARD_DIR
    if resumed_from is not None:
        print(f"Resuming from epoch {resumed_from}")
    elif chief:
        write_run_header(tb_dir, config, model)
    nan_guard = NaNGuard()
    throughput = Throughput(global_batch, splits.train_examples, steps_per_epoch)
    # Every worker tracks the best epoch (early stopping must stop all of them at once); only the chief saves.
    monitor, mode = spec.monitor
    state = RunState(workdir / MODEL_FILE, workdir / BACKUP_DIR / TRAIN_STATE_FILE, config.early_stopping_patience,
                     first_epoch=resumed_from or 0, monitor=monitor, mode=mode, save=chief)
    backup = keras.callbacks.BackupAndRestore(str(workdir / BACKUP_DIR), delete_checkpoint=False)
    if not chief:
        # Workers restore from the chief's backup (same --workdir, shared storage across machines) but never write.
        backup._save_model = lambda: None
    callbacks = [
        EpochSeeds(config.seed),
        nan_guard,
        throughput,
        StepBudget(total_steps),
        # At an epoch's end the run state is written before the backup: a kill in between re-runs that epoch
        # (identically) rather than resuming past an epoch the history does not have.
        state,
        backup,
        *([keras.callbacks.TensorBoard(str(tb_dir), histogram_freq=1, write_graph=True)] if chief else []),
        *extra_callbacks,
    ]
    # A progress bar rewrites its line with control characters: right for a terminal, noise in a log file or CI.
    verbose = 1 if sys.stdout.isatty() else 2
    start = time.perf_counter()
    if custom_loop:
        fit_custom_loop(
            model, strategy, train_ds, splits.validation,
            epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose,
        )
    else:
        model.fit(
            train_ds,
            validation_data=splits.validation,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # The stream is already shuffled per epoch (see data.training_stream).
            callbacks=callbacks,
            verbose=verbose,
        )
    train_seconds = time.perf_counter() - start
    if nan_guard.bad_steps is not None:
        where = (f"the best model so far (epoch {state.best_epoch}) is in {workdir / MODEL_FILE}" if state.best_epoch
                 else "no epoch finished with a finite loss, so no model was saved")
        raise RunError(
            f"loss became NaN {nan_guard.where()}; lower --lr (now {config.lr:g}) or add --l2, then rerun "
            f"with a new --workdir ({where})"
        )
    if not chief:
        digest = weights_digest(model)
        print(f"worker finished {optimizer_steps(model)} steps; weights sha256 {digest}")
        barrier(strategy)
        return {"weights_sha256": digest, "chief": False}

    best_model = keras.saving.load_model(workdir / MODEL_FILE)
    metrics, cm = evaluate_once(best_model, splits.test, spec)
    metrics.update(
        dataset=config.dataset,
        task=spec.task,
        preset=config.preset,
        epochs=state.epochs,
        steps=optimizer_steps(model),
        best_epoch=state.best_epoch,
        **{f"best_validation_{monitor[4:]}": state.best_value},
        validation_examples=splits.validation_examples,
        train_examples=splits.train_examples,
        train_seconds=round(train_seconds, 2),
        train_samples_per_second=throughput.samples_per_second and round(throughput.samples_per_second, 1),
        num_replicas_in_sync=replicas,
        steps_per_execution=per_call,
        weights_sha256=weights_digest(model),
        # Every epoch's, including those run before a restart: time to a given accuracy is computable from them.
        history={k: [round(v, 6) for v in vs] for k, vs in state.history.items()},
        epoch_seconds=state.epoch_seconds,
        global_batch_size=global_batch,
        strategy=strategy_name(strategy),
        strategy_requested=config.strategy,
        resumed_from_epoch=resumed_from,
        confusion_matrix=None if cm is None else cm.tolist(),
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
    )
    write_test_summaries(tb_dir, metrics, cm, spec.class_names, step=state.epochs)
    # An export left by an attempt that died before metrics.json is this run's own, unfinished: replace it.
    shutil.rmtree(workdir / EXPORT_DIR, ignore_errors=True)
    export_saved_model(best_model, workdir / EXPORT_DIR, spec)
    write_json(workdir / METRICS_FILE, metrics)
    shutil.rmtree(workdir / BACKUP_DIR, ignore_errors=True)
    barrier(strategy)
    print(f"{summary_line(metrics)}; {state.epochs} epochs in {train_seconds:.0f}s; wrote {workdir}")
    return metrics


def summary_line(metrics: dict) -> str:
    """`test accuracy 0.9026 (loss 0.2790) on 10000 examples`, or the regression/per-step equivalent."""
    n = metrics["test_examples"]
    if "test_mse" in metrics:
        return (f"test MSE {metrics['test_mse']:.4f} (MAE {metrics['test_mae']:.4f}; predicting the mean: "
                f"{metrics['baseline_mse']:.4f}) on {n} examples")
    text = f"test accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) on {n} examples"
    if "baseline_loss" in metrics:
        text += f"; guessing: loss {metrics['baseline_loss']:.4f}"
    return text


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
