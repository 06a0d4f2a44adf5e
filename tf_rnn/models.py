"""Models: the many-to-one row-sequence classifier and its optimizer, built from a TrainConfig."""

from __future__ import annotations

import keras

from tf_rnn.config import TrainConfig
from tf_rnn.data import IMAGE_SHAPE, NUM_CLASSES
from tf_rnn.layers import StackedRNN


def make_optimizer(config: TrainConfig, decay_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The optimizer the config names, with its learning-rate schedule.

    Args:
      config: uses `optimizer`, `lr` and `lr_schedule`.
      decay_steps: length of the cosine schedule in optimizer steps; without it the rate is constant.
    """
    lr = config.lr
    if config.lr_schedule == "cosine" and decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=decay_steps)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    if config.optimizer == "adagrad":
        return keras.optimizers.Adagrad(lr)
    if config.optimizer == "nesterov":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer={config.optimizer!r}")  # unreachable: TrainConfig validates choices.


@keras.saving.register_keras_serializable(package="tf_rnn")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits with integer labels and label smoothing.

    Keras' SparseCategoricalCrossentropy has no `label_smoothing`; one-hot labels in the pipeline would cost 10x
    the label memory and a second code path, so the one-hot happens here.

    Args:
      label_smoothing: the target is `(1 - s) * one_hot + s / 10`.
    """

    def __init__(self, label_smoothing: float = 0.0, name="sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        """`<int>[batch]` labels, `<float32>[batch, classes]` logits → `<float32>[batch]` losses."""
        if not self.label_smoothing:
            return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"), y_pred.shape[-1])
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def build_model(config: TrainConfig, decay_steps: int | None = None) -> keras.Model:
    """Builds and compiles the classifier: each image row is one time step.

    `<float32>[batch, 28, 28]` (28 steps of 28 pixels in [0, 1]) → StackedRNN → `<float32>[batch, units]` (last
    step) → Dense → `<float32>[batch, 10]` logits.

    Args:
      config: architecture and optimizer settings.
      decay_steps: total optimizer steps of the run, for the cosine schedule.

    Returns:
      A compiled model: sparse categorical cross-entropy on logits, accuracy metric. Build it inside
      `strategy.scope()` when training distributed.
    """
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="images")
    features = StackedRNN(
        cell=config.cell,
        units=config.units,
        num_layers=config.layers,
        dropout=config.dropout,
        activation=config.activation,
        l1=config.l1,
        l2=config.l2,
        name="rnn",
    )(inputs)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(features)
    model = keras.Model(inputs, logits, name=f"{config.cell}_row_classifier")
    model.compile(
        optimizer=make_optimizer(config, decay_steps),
        loss=SparseSmoothedCrossentropy(config.label_smoothing),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model
