"""Models: the recurrent model for a dataset's task (classifier, per-step classifier, regressor) and its optimizer."""

from __future__ import annotations

import keras

from tf_rnn import datasets
from tf_rnn.config import TrainConfig
from tf_rnn.datasets import PER_STEP, REGRESSION, DataSpec
from tf_rnn.layers import Denormalize, LastSteps, SequenceView, StackedRNN


def make_optimizer(config: TrainConfig, decay_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The optimizer the config names, with its learning-rate schedule.

    Args:
      config: uses `optimizer`, `lr` and `lr_schedule`.
      decay_steps: length of the cosine schedule in optimizer steps; without it the rate is constant.
    """
    lr = config.lr
    if config.lr_schedule == "cosine" and decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=decay_steps)
    clip = {"clipnorm": config.clipnorm} if config.clipnorm else {}
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr, **clip)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, **clip)
    if config.optimizer == "adagrad":
        return keras.optimizers.Adagrad(lr, **clip)
    if config.optimizer == "nesterov":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **clip)
    raise ValueError(f"optimizer={config.optimizer!r}")  # unreachable: TrainConfig validates choices.


@keras.saving.register_keras_serializable(package="tf_rnn")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits with integer labels and label smoothing.

    Keras' SparseCategoricalCrossentropy has no `label_smoothing`; one-hot labels in the pipeline would cost 10x
    the label memory and a second code path, so the one-hot happens here.

    Args:
      label_smoothing: the target is `(1 - s) * one_hot + s / classes`.
    """

    def __init__(self, label_smoothing: float = 0.0, name="sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        """`<int>[batch, ...]` labels, `<float32>[batch, ..., classes]` logits → `<float32>[batch, ...]` losses."""
        if not self.label_smoothing:
            return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        labels = keras.ops.reshape(y_true, keras.ops.shape(y_pred)[:-1])
        one_hot = keras.ops.one_hot(keras.ops.cast(labels, "int32"), y_pred.shape[-1])
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def build_model(
    config: TrainConfig, decay_steps: int | None = None, spec: DataSpec | None = None, steps_per_execution: int = 1
) -> keras.Model:
    """Builds and compiles the model for the dataset's task.

    `<float32>[batch, T, F]` (images: `[batch, 28, 28]` in [0, 1], read as `config.sequence`) → StackedRNN →
    - classification: last step → Dense → `<float32>[batch, classes]` logits;
    - per-step classification: every step → the last `spec.output_steps` → Dense →
      `<float32>[batch, steps, classes]` logits;
    - regression: last step → Dense (standardised) → Denormalize → `<float32>[batch, targets]`.

    Args:
      config: architecture and optimizer settings.
      decay_steps: total optimizer steps of the run, for the cosine schedule.
      spec: what the dataset is (`datasets.load` returns it); by default the spec of `config.dataset` that needs no
        data (images, adding, copy).
      steps_per_execution: optimizer steps per call of Keras' train function (`train.execution_steps` picks it:
        it must divide the epoch's steps).

    Returns:
      A compiled model: cross-entropy on logits with an accuracy metric, or MSE with an MAE metric. Build it
      inside `strategy.scope()` when training distributed.
    """
    spec = spec or datasets.get(config.dataset).spec(config, None)
    inputs = keras.Input(shape=spec.input_shape, dtype="float32", name=spec.input_name)
    # Rows need no layer: row-wise models stay exactly what they were (and what older tf_rnn versions load).
    x = SequenceView(config.sequence, name="sequence_view")(inputs) if config.sequence != "rows" else inputs
    features = StackedRNN(
        cell=config.cell,
        units=config.units,
        num_layers=config.layers,
        dropout=config.dropout,
        activation=config.activation,
        l1=config.l1,
        l2=config.l2,
        return_sequences=spec.task == PER_STEP,
        name="rnn",
    )(x)
    if spec.task == REGRESSION:
        z = keras.layers.Dense(spec.targets, name="standardised")(features)
        outputs = Denormalize(spec.target_mean, spec.target_std, name="predictions")(z)
        loss, metric = keras.losses.MeanSquaredError(), keras.metrics.MeanAbsoluteError(name="mae")
    else:
        if spec.task == PER_STEP:
            features = LastSteps(spec.output_steps, name="recalled_steps")(features)
        outputs = keras.layers.Dense(spec.num_classes, name="logits")(features)
        loss = SparseSmoothedCrossentropy(config.label_smoothing)
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if spec.image and config.sequence == "rows":
        name = f"{config.cell}_row_classifier"
    else:
        name = f"{config.cell}_{config.sequence + '_' if spec.image else ''}{spec.task}"
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=make_optimizer(config, decay_steps), loss=loss, metrics=[metric],
                  steps_per_execution=steps_per_execution)
    return model
