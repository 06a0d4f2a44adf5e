"""Tasks: what differs between classification, per-step classification and regression — head, loss, metrics, outputs.

A dataset's `DataSpec.task` names one `Task` in `REGISTRY`; every other module asks the task and never branches on
its name. A new kind of task is one subclass registered here (or, in a test, with `register`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tf_rnn.arrays import DataError, first_nonfinite
from tf_rnn.cli import plural

if TYPE_CHECKING:  # Only for annotations: tasks must not import the modules that use it.
    from tf_rnn.datasets import DataSpec


class Task:
    """One kind of task. Subclasses set the class attributes and implement the methods.

    Attributes:
      name: what `DataSpec.task`, `data_spec.json` and `metrics.json` call it.
      metric: the compiled metric's name: logs and TensorBoard have `metric` and `val_<metric>`.
      monitor: (validation metric, `max` or `min`) for the best model, early stopping and tune's objective.
      return_sequences: whether the head reads every step of the last recurrent layer (else its last step).
      test_scalars: the `metrics.json` keys written to TensorBoard's `test/` run (the first ones also to the root
        run, where the HParams dashboard finds them: `hparams_metrics`).
    """

    name: str = ""
    metric: str = "accuracy"
    monitor: tuple[str, str] = ("val_accuracy", "max")
    return_sequences: bool = False
    test_scalars: tuple[str, ...] = ()
    hparams_metrics: tuple[str, ...] = ()

    # --- the model ---

    def head(self, features, spec: DataSpec):
        """Keras layers from the recurrent features to the model's outputs.

        Args:
          features: `<float32>[batch, units]` (or `[batch, T, units]` with `return_sequences`).
        """
        raise NotImplementedError

    def loss(self, config):
        """The Keras loss (a `keras.losses.Loss`: the multi-worker loop calls it per example)."""
        raise NotImplementedError

    def compiled_metrics(self) -> list:
        raise NotImplementedError

    def batch_scores(self, targets, outputs):
        """`<float32>[batch, ...]` per-example values of `metric` (the multi-worker loop averages them)."""
        raise NotImplementedError

    # --- data and evaluation ---

    def check_targets(self, y: np.ndarray, n: int, spec: DataSpec, where: str) -> np.ndarray:
        """`y` checked against the spec for `n` examples, in the dtype the pipeline feeds.

        Raises:
          DataError: one line naming `where`, what `y` is and what was expected.
        """
        raise NotImplementedError

    def evaluate(self, outputs: np.ndarray, targets: np.ndarray, spec: DataSpec) -> dict:
        """The test metrics from all test outputs at once (float64); `confusion_matrix` (a list, or None) included."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        """The run's last line: `test accuracy 0.9026 (loss 0.2790) on 10000 examples`."""
        raise NotImplementedError

    # --- serving ---

    def serving_outputs(self, outputs) -> dict:
        """The SavedModel's named outputs from the model's outputs (TensorFlow ops)."""
        raise NotImplementedError

    def describe_outputs(self, spec: DataSpec) -> str:
        raise NotImplementedError

    def format_output(self, out: dict, k: int, spec: DataSpec) -> str:
        """Example `k` of a batch of serving outputs as `tf_rnn.predict` prints it."""
        raise NotImplementedError


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """`<int64>[true, predicted]` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


class Classification(Task):
    """One label per sequence: Dense logits `<float32>[batch, classes]`, cross-entropy with label smoothing."""

    name = "classification"
    test_scalars = ("test_accuracy", "test_loss")
    hparams_metrics = ("test_accuracy",)

    def head(self, features, spec):
        import keras

        return keras.layers.Dense(spec.num_classes, name="logits")(features)

    def loss(self, config):
        from tf_rnn.models import SparseSmoothedCrossentropy

        return SparseSmoothedCrossentropy(config.label_smoothing)

    def compiled_metrics(self):
        import keras

        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def batch_scores(self, targets, outputs):
        import tensorflow as tf

        return tf.cast(tf.equal(tf.argmax(outputs, -1), tf.cast(targets, tf.int64)), tf.float32)

    def label_shape(self, n: int, spec) -> tuple[int, ...]:
        return (n,)

    def check_targets(self, y, n, spec, where):
        expected = self.label_shape(n, spec)
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where} is {y.dtype}; expected integer labels in [0, {spec.num_classes})")
        if y.shape != expected:
            raise DataError(f"{where} is {list(y.shape)}; expected {list(expected)}")
        bad = y[(y < 0) | (y >= spec.num_classes)]
        if bad.size:
            raise DataError(f"{where}: label {int(bad.flat[0])} out of range [0, {spec.num_classes}); "
                            "labels must be 0..classes-1")
        return y.astype(np.int64)

    def evaluate(self, outputs, targets, spec):
        logits, labels = outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
        log_probs = _log_softmax(logits)
        predictions = logits.argmax(axis=1)
        return {
            "test_accuracy": float((predictions == labels).mean()),
            "test_loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
            "confusion_matrix": confusion_matrix(labels, predictions, spec.num_classes).tolist(),
        }

    def summary(self, metrics):
        return (f"test accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) "
                f"on {plural(metrics['test_examples'], 'example')}")

    def serving_outputs(self, outputs):
        import tensorflow as tf

        return {"logits": outputs, "probabilities": tf.nn.softmax(outputs), "classes": tf.argmax(outputs, axis=-1)}

    def describe_outputs(self, spec):
        return "classes [batch]"

    def format_output(self, out, k, spec):
        cls, names = out["classes"][k], spec.class_names
        label = f"{cls} ({names[cls]})" if names else str(cls)
        return f"{label}\tp={out['probabilities'][k][cls]:.4f}"


class PerStep(Classification):
    """One label for each of the last `spec.output_steps` steps (the copy problem's recall); the other steps are
    outside loss and metric. Logits `<float32>[batch, steps, classes]`."""

    name = "per_step"
    return_sequences = True
    test_scalars = ("test_accuracy", "test_loss", "baseline_loss")

    def head(self, features, spec):
        from tf_rnn.layers import LastSteps

        return super().head(LastSteps(spec.output_steps, name="recalled_steps")(features), spec)

    def label_shape(self, n, spec):
        return (n, spec.output_steps)

    def evaluate(self, outputs, targets, spec):
        # A uniform guess over the classes: the loss a model that learned nothing has.
        return {**super().evaluate(outputs, targets, spec), "baseline_loss": float(np.log(spec.num_classes))}

    def summary(self, metrics):
        return f"{super().summary(metrics)}; guessing: loss {metrics['baseline_loss']:.4f}"

    def describe_outputs(self, spec):
        return f"classes [batch, {spec.output_steps}]"

    def format_output(self, out, k, spec):
        names = spec.class_names
        return " ".join(names[c] if names else str(c) for c in out["classes"][k])


class Regression(Task):
    """`spec.targets` floats per sequence, in the targets' own units: a Dense layer predicts them standardised and
    `Denormalize` maps back, so every reported number is in those units. MSE loss, MAE metric."""

    name = "regression"
    metric = "mae"
    monitor = ("val_loss", "min")
    test_scalars = ("test_mse", "test_mae", "baseline_mse")
    hparams_metrics = ("test_mse", "test_mae")

    def head(self, features, spec):
        import keras

        from tf_rnn.layers import Denormalize

        z = keras.layers.Dense(spec.targets, name="standardised")(features)
        return Denormalize(spec.target_mean, spec.target_std, name="predictions")(z)

    def loss(self, config):
        import keras

        return keras.losses.MeanSquaredError()

    def compiled_metrics(self):
        import keras

        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def batch_scores(self, targets, outputs):
        import tensorflow as tf

        return tf.abs(outputs - tf.cast(targets, outputs.dtype))

    def check_targets(self, y, n, spec, where):
        if not np.issubdtype(y.dtype, np.floating):
            raise DataError(f"{where} is {y.dtype}; expected float targets for this regression dataset")
        y = y.reshape(len(y), -1) if y.ndim == 1 else y
        if y.shape != (n, spec.targets):
            raise DataError(f"{where} is {list(y.shape)}; expected [{n}] or [{n}, {spec.targets}]")
        y = y.astype(np.float32)
        if not np.isfinite(y).all():
            raise DataError(f"{where} has NaN or infinite values (first at index {first_nonfinite(y)}); "
                            "clean them first")
        return y

    def evaluate(self, outputs, targets, spec):
        mse = float(((outputs - targets) ** 2).mean())
        return {
            "test_mse": mse,
            "test_loss": mse,
            "test_mae": float(np.abs(outputs - targets).mean()),
            # Predicting the training targets' mean: what a model that learned nothing scores.
            "baseline_mse": float(((np.asarray(spec.target_mean) - targets) ** 2).mean()),
            "confusion_matrix": None,
        }

    def summary(self, metrics):
        return (f"test MSE {metrics['test_mse']:.4f} (MAE {metrics['test_mae']:.4f}; predicting the mean: "
                f"{metrics['baseline_mse']:.4f}) on {plural(metrics['test_examples'], 'example')}")

    def serving_outputs(self, outputs):
        return {"predictions": outputs}

    def describe_outputs(self, spec):
        return f"predictions [batch, {spec.targets}]"

    def format_output(self, out, k, spec):
        return "\t".join(f"{v:.4f}" for v in out["predictions"][k])


REGISTRY: dict[str, Task] = {task.name: task for task in (Classification(), PerStep(), Regression())}
CLASSIFICATION, PER_STEP, REGRESSION = REGISTRY


def register(task: Task) -> Task:
    """Adds a task kind (tests register toy ones; `monkeypatch.setitem(tasks.REGISTRY, ...)` undoes it)."""
    REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    if name not in REGISTRY:
        raise DataError(f"task {name!r} is not known to this tf_rnn ({', '.join(REGISTRY)}); "
                        "was the file written by a newer version?")
    return REGISTRY[name]


def evaluate(model, test_ds, spec: DataSpec) -> dict:
    """One pass over the test set; the task's metrics from the same outputs, and `test_examples`, the number of
    test sequences (whatever the task scores per sequence)."""
    from tf_rnn.models import inference_function  # Here: models imports the modules that import tasks.

    forward = inference_function(model)
    outputs, targets = [], []
    for x, y in test_ds:
        outputs.append(np.asarray(forward(x)))
        targets.append(np.asarray(y))
    outputs, targets = np.concatenate(outputs).astype(np.float64), np.concatenate(targets)
    return {**spec.task_type.evaluate(outputs, targets, spec), "test_examples": int(len(targets))}
