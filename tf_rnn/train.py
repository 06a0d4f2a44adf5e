"""Train: fit the row-sequence classifier, evaluate it once on the test set, and log the run to its workdir."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tf_rnn import config as config_lib
from tf_rnn import data
from tf_rnn.config import ConfigError, TrainConfig

# Files a run writes into its workdir.
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
BACKUP_DIR = "backup"  # Keras BackupAndRestore state; removed once metrics.json is written.
TRAIN_STATE_FILE = "train_state.json"  # Best-model / early-stopping state, kept beside the backup.
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "saved_model"  # Portable SavedModel of the best model (tf_rnn.export).


class RunError(Exception):
    """The run cannot start or went wrong in a way the user can fix. `str()` is one line."""


# --- workdir ------------------------------------------------------------------------------------------------------


def write_json(path: Path, obj) -> None:
    """Writes atomically, so a kill mid-write never leaves a half file that looks finished."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


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
        ignored = {"data_dir", "strategy"}
        changes = config_lib.changed_fields(old, new, ignore=ignored)
        if changes:
            raise RunError(
                f"--workdir {workdir} holds an unfinished run with another config ({changes}); "
                "re-run with the same flags to resume it, or choose a new --workdir"
            )
    elif (workdir / MODEL_FILE).exists():
        raise RunError(f"--workdir {workdir} holds a {MODEL_FILE} but no {CONFIG_FILE}; choose a new --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(saved, config.to_dict())


def optimizer_steps(model) -> int:
    """Optimizer steps so far. `.numpy()` also reads the MirroredVariable that multi-worker training makes."""
    return int(model.optimizer.iterations.numpy())


def finished_epochs_in_backup(workdir: Path) -> int | None:
    """The number of finished epochs recorded by BackupAndRestore, or None when there is no backup."""
    meta = workdir / BACKUP_DIR / "training_metadata.json"
    if not meta.exists():
        return None
    return int(json.loads(meta.read_text())["epoch"])


# --- callbacks ----------------------------------------------------------------------------------------------------


def _callbacks():
    """Callback classes live in a function so that importing this module (for --help) does not import Keras."""
    import keras

    class BestModel(keras.callbacks.Callback):
        """Saves the best-validation model and stops early; its state survives a restart.

        Keras' ModelCheckpoint and EarlyStopping forget their best value when a run resumes, and a resumed run
        would then overwrite a better model with a worse one. This one keeps `best`, `best_epoch` and `wait` in a
        JSON file next to the BackupAndRestore state.
        """

        def __init__(self, model_path: Path, state_path: Path, patience: int, monitor="val_accuracy", save=True):
            super().__init__()
            self.model_path, self.state_path, self.save = model_path, state_path, save
            self.patience, self.monitor = patience, monitor
            self.state = {"best": -math.inf, "best_epoch": None, "wait": 0}

        def on_train_begin(self, logs=None):
            if self.state_path.exists():
                self.state.update(json.loads(self.state_path.read_text()))

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            improved = value is None or value > self.state["best"]  # No validation set: keep the latest model.
            if improved and self.save:
                self.model.save(self.model_path)
            if value is None:
                self.state.update(best_epoch=epoch + 1)
            elif improved:
                self.state.update(best=float(value), best_epoch=epoch + 1, wait=0)
            else:
                self.state["wait"] += 1
                if self.patience and self.state["wait"] >= self.patience:
                    print(f"\nEarly stopping: no {self.monitor} gain for {self.patience} epochs.")
                    self.model.stop_training = True
            if self.save:
                self.state_path.parent.mkdir(parents=True, exist_ok=True)
                write_json(self.state_path, self.state)

    class StepBudget(keras.callbacks.Callback):
        """Stops after `max_steps` optimizer steps in total (counted by the optimizer, so it survives a resume)."""

        def __init__(self, max_steps: int):
            super().__init__()
            self.max_steps = max_steps

        def on_train_batch_end(self, batch, logs=None):
            if optimizer_steps(self.model) >= self.max_steps:
                self.model.stop_training = True

    class NaNGuard(keras.callbacks.Callback):
        """Stops at the first non-finite loss and remembers where, so the run can fail with a clear message."""

        def __init__(self):
            super().__init__()
            self.bad_step = None

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.bad_step = optimizer_steps(self.model)
                self.model.stop_training = True

    class Throughput(keras.callbacks.Callback):
        """Steady-state training samples/s: skips each epoch's first batches (tracing, pipeline warm-up) and
        excludes validation, which runs after the last batch."""

        def __init__(self, global_batch: int, train_examples: int, steps_per_epoch: int):
            super().__init__()
            self.global_batch, self.train_examples = global_batch, train_examples
            self.steps_per_epoch = steps_per_epoch
            self.samples, self.seconds, self.first_epoch = 0, 0.0, True

        def on_epoch_begin(self, epoch, logs=None):
            self.warmup = 3 if self.first_epoch else 1
            self.first_epoch, self.start = False, None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if batch + 1 == self.warmup:
                self.start = now
            elif self.start is not None:
                last = batch == self.steps_per_epoch - 1
                remainder = self.train_examples - (self.steps_per_epoch - 1) * self.global_batch
                self.samples += remainder if last else self.global_batch
                self.seconds, self.start = self.seconds + (now - self.start), now

        @property
        def samples_per_second(self):
            return self.samples / self.seconds if self.seconds else None

    return BestModel, StepBudget, NaNGuard, Throughput


# --- TensorBoard extras -------------------------------------------------------------------------------------------


def write_run_header(logdir: Path, config: TrainConfig, model) -> None:
    """The HParams summary (so the HParams dashboard compares runs) and the model's forward op graph.

    Keras 3's TensorBoard callback writes the conceptual (layer) graph but no longer the op graph on TF 2.21: we
    trace the inference function once and write it ourselves.
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    forward = tf.function(lambda x: model(x, training=False))
    graph = forward.get_concrete_function(tf.TensorSpec([None, *data.IMAGE_SHAPE], tf.float32)).graph

    hparams = {k: ("" if v is None else v) for k, v in config.to_dict().items()}
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hp.hparams_config(
            hparams=[hp.HParam(k) for k in hparams],
            metrics=[
                hp.Metric("epoch_accuracy", group="validation", display_name="validation accuracy"),
                hp.Metric("epoch_loss", group="validation", display_name="validation loss"),
                hp.Metric("test_accuracy", display_name="test accuracy"),
            ],
        )
        hp.hparams(hparams)
        tf.summary.graph(graph)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = data.NUM_CLASSES):
    """`<int64>[true, predicted]` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def confusion_png(cm: np.ndarray, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # No display on servers and CI.
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(len(cm)), yticks=range(len(cm)))
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > cm.max() / 2 else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_test_summaries(logdir: Path, metrics: dict, cm: np.ndarray, step: int) -> None:
    import tensorflow as tf

    with tf.summary.create_file_writer(str(logdir / "test")).as_default():
        tf.summary.scalar("test_accuracy", metrics["test_accuracy"], step=step)
        tf.summary.scalar("test_loss", metrics["test_loss"], step=step)
        image = tf.image.decode_png(confusion_png(cm, "test-set confusion matrix"), channels=4)
        tf.summary.image("confusion_matrix", image[None], step=step)
    # Also at the root run, where the HParams dashboard looks for its metrics.
    with tf.summary.create_file_writer(str(logdir)).as_default():
        tf.summary.scalar("test_accuracy", metrics["test_accuracy"], step=step)


# --- the job ------------------------------------------------------------------------------------------------------


def weights_digest(model) -> str:
    """SHA-256 of all weights' bytes: equal digests mean bit-identical models (multi-worker checks use it)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def evaluate_once(model, test_ds) -> tuple[dict, np.ndarray]:
    """One pass over the test set: loss, accuracy and confusion matrix from the same logits."""
    logits, labels = [], []
    for x, y in test_ds:
        logits.append(np.asarray(model(x, training=False)))
        labels.append(np.asarray(y))
    logits, labels = np.concatenate(logits).astype(np.float64), np.concatenate(labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    predictions = logits.argmax(axis=1)
    metrics = {
        "test_accuracy": float((predictions == labels).mean()),
        "test_loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
        "test_examples": int(len(labels)),
    }
    return metrics, confusion_matrix(labels, predictions)


def train_and_evaluate(
    config: TrainConfig, workdir, *, datasets: data.Arrays | None = None, strategy=None, extra_callbacks=()
) -> dict:
    """Trains `config` in `workdir`, resuming an interrupted run there, and evaluates once on the test set.

    Args:
      config: the resolved run config.
      workdir: where config.json, model.keras, TensorBoard logs, backups and metrics.json go.
      datasets: in-memory arrays to use instead of loading `config.dataset` (tests inject tiny data here).
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

    from tf_rnn.distribute import barrier, fit_custom_loop, get_strategy, is_chief, needs_custom_loop
    from tf_rnn.export import export_saved_model
    from tf_rnn.models import build_model

    workdir = Path(workdir)
    # First: a multi-worker strategy must configure the TF runtime before anything else touches it.
    strategy = strategy or get_strategy(config.strategy)
    chief = is_chief(strategy)  # Only the chief writes files; the other workers train in lock-step.
    if datasets is None:
        datasets = data.load(config.dataset, config.data_dir)
        print(f"Loaded {config.dataset} from {datasets.source}")
    else:
        datasets = data.validate_arrays(datasets, "datasets=")
    if chief:  # After the data loaded: a run that could not start leaves no workdir behind.
        prepare_workdir(config, workdir)
    keras.utils.set_random_seed(config.seed)
    # Bit-identical reruns on a CPU (same seed, same metrics.json); cost measured here: ~2% of throughput.
    tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    resumed_from = finished_epochs_in_backup(workdir)
    splits = data.make_splits(
        datasets, global_batch, config.validation_split, config.seed, resumed_from or 0, config.hflip
    )
    steps_per_epoch = math.ceil(splits.train_examples / global_batch)
    total_steps = config.epochs * steps_per_epoch
    if config.steps:
        total_steps = min(total_steps, config.steps)
    epochs = math.ceil(total_steps / steps_per_epoch)

    with strategy.scope():
        model = build_model(config, decay_steps=total_steps)

    BestModel, StepBudget, NaNGuard, Throughput = _callbacks()
    tb_dir = workdir / TENSORBOARD_DIR
    if resumed_from is not None:
        print(f"Resuming from epoch {resumed_from}")
    elif chief:
        write_run_header(tb_dir, config, model)
    nan_guard = NaNGuard()
    throughput = Throughput(global_batch, splits.train_examples, steps_per_epoch)
    # Every worker tracks the best epoch (early stopping must stop all of them at once); only the chief saves.
    best = BestModel(
        workdir / MODEL_FILE, workdir / BACKUP_DIR / TRAIN_STATE_FILE, config.early_stopping_patience, save=chief
    )
    backup = keras.callbacks.BackupAndRestore(str(workdir / BACKUP_DIR), delete_checkpoint=False)
    if not chief:
        # Workers restore from the chief's backup (same --workdir, shared storage across machines) but never write.
        backup._save_model = lambda: None
    callbacks = [
        # Order matters: the backup must be restored before BestModel reads its state and before the budget runs.
        backup,
        nan_guard,
        throughput,
        StepBudget(total_steps),
        best,
        *([keras.callbacks.TensorBoard(str(tb_dir), histogram_freq=1, write_graph=True)] if chief else []),
        *extra_callbacks,
    ]
    start = time.perf_counter()
    if needs_custom_loop(strategy):
        history = fit_custom_loop(
            model, strategy, splits.train, splits.validation,
            epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
        )
    else:
        history = model.fit(
            splits.train,
            validation_data=splits.validation,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # The stream is already shuffled per epoch (see data.training_stream).
            callbacks=callbacks,
            verbose="auto",
        )
    train_seconds = time.perf_counter() - start
    if nan_guard.bad_step is not None:
        raise RunError(
            f"loss became NaN at step {nan_guard.bad_step}; lower --lr (now {config.lr:g}) or add --l2, then rerun "
            f"with a new --workdir (the best model so far is in {workdir / MODEL_FILE})"
        )
    if not chief:
        digest = weights_digest(model)
        print(f"worker finished {optimizer_steps(model)} steps; weights sha256 {digest}")
        barrier(strategy)
        return {"weights_sha256": digest, "chief": False}

    best_model = keras.saving.load_model(workdir / MODEL_FILE)
    metrics, cm = evaluate_once(best_model, splits.test)
    epochs_done = (resumed_from or 0) + len(history.epoch)
    metrics.update(
        dataset=config.dataset,
        preset=config.preset,
        epochs=epochs_done,
        steps=optimizer_steps(model),
        best_epoch=best.state["best_epoch"],
        best_validation_accuracy=None if best.state["best"] == -math.inf else best.state["best"],
        validation_examples=splits.validation_examples,
        train_examples=splits.train_examples,
        train_seconds=round(train_seconds, 2),
        train_samples_per_second=throughput.samples_per_second and round(throughput.samples_per_second, 1),
        num_replicas_in_sync=replicas,
        weights_sha256=weights_digest(model),
        history={k: [round(float(v), 6) for v in vs] for k, vs in history.history.items()},
        global_batch_size=global_batch,
        strategy=config.strategy,
        resumed_from_epoch=resumed_from,
        confusion_matrix=cm.tolist(),
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
    )
    write_test_summaries(tb_dir, metrics, cm, step=epochs_done)
    # An export left by an attempt that died before metrics.json is this run's own, unfinished: replace it.
    shutil.rmtree(workdir / EXPORT_DIR, ignore_errors=True)
    export_saved_model(best_model, workdir / EXPORT_DIR, config.dataset)
    write_json(workdir / METRICS_FILE, metrics)
    shutil.rmtree(workdir / BACKUP_DIR, ignore_errors=True)
    barrier(strategy)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) on "
        f"{metrics['test_examples']} images; {epochs_done} epochs in {train_seconds:.0f}s; wrote {workdir}"
    )
    return metrics


# --- command line -------------------------------------------------------------------------------------------------


def parse_flags(argv: list[str] | None = None) -> tuple[TrainConfig, Path]:
    """Flags → (resolved config, workdir). Raises ConfigError for bad values; argparse exits 2 for bad flags."""
    parser = config_lib.OneLineParser(
        prog="python -m tf_rnn.train",
        description="Train an RNN that reads 28x28 images row by row; evaluate once on the test set.",
    )
    parser.add_argument("--workdir", default=None, help="run directory (default: runs/<timestamp>)")
    parser.add_argument("--config", default=None, help="a saved config.json; flags given here override it")
    config_lib.add_dataclass_flags(parser, TrainConfig)
    args = vars(parser.parse_args(argv))
    workdir = args.pop("workdir") or Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    file_values = config_lib.load_json(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    return config_lib.resolve(file_values=file_values, overrides=args), Path(workdir)


def main(argv: list[str] | None = None) -> int:
    try:
        config, workdir = parse_flags(argv)
    except ConfigError as e:
        config_lib.fail(str(e), 2)
    try:
        train_and_evaluate(config, workdir)
    except (RunError, data.DataError) as e:
        config_lib.fail(str(e), 1)
    except KeyboardInterrupt:
        config_lib.fail("interrupted; re-run the same command to resume from the last finished epoch", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
