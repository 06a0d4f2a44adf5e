"""Models: the recurrent model for a dataset's task (classifier, per-step classifier, regressor) and its optimizer."""

from __future__ import annotations

import keras

from tf_rnn import datasets
from tf_rnn.config import TrainConfig
from tf_rnn.datasets import DataSpec
from tf_rnn.layers import SequenceView, StackedRNN


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
    the task's head (`tasks.Task.head`): classification `<float32>[batch, classes]` logits, per-step
    classification `[batch, steps, classes]`, regression `[batch, targets]` in the targets' units.

    Args:
      config: architecture and optimizer settings.
      decay_steps: total optimizer steps of the run, for the cosine schedule.
      spec: what the dataset is (`datasets.load` returns it); by default the spec of `config.dataset` that needs no
        data (images, adding, copy).
      steps_per_execution: optimizer steps per call of Keras' train function (`train.execution_steps` picks it:
        it must divide the epoch's steps).

    Returns:
      A model compiled with the task's loss and metric. Build it inside `strategy.scope()` when training
      distributed.
    """
    policy = keras.config.dtype_policy()
    # `--precision bfloat16`: every layer under mixed_bfloat16 (float32 weights, bfloat16 arithmetic) but the
    # recurrent stack, whose float32 state the kernel keeps while its products take bfloat16 operands, and the
    # outputs, float32 as Keras' mixed-precision guide keeps them (and every consumer of the model expects).
    if config.precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        return _build_model(config, decay_steps, spec, steps_per_execution)
    finally:
        keras.config.set_dtype_policy(policy)


def _build_model(config, decay_steps, spec, steps_per_execution):
    spec = spec or datasets.get(config.dataset).spec(config, None)
    task = spec.task_type
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
        return_sequences=task.return_sequences,
        precision=config.precision,
        dtype="float32",
        name="rnn",
    )(x)
    outputs = task.head(features, spec)
    if config.precision == "bfloat16":
        outputs = keras.layers.Activation("linear", dtype="float32", name="float32_outputs")(outputs)
    if spec.image and config.sequence == "rows":
        name = f"{config.cell}_row_classifier"
    else:
        name = f"{config.cell}_{config.sequence + '_' if spec.image else ''}{spec.task}"
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=make_optimizer(config, decay_steps), loss=task.loss(config),
                  metrics=task.compiled_metrics(), steps_per_execution=steps_per_execution)
    return model


def float32_model(model: keras.Model) -> keras.Model:
    """`model`, or where some layer computes in another dtype (`--precision bfloat16`'s mixed_bfloat16 layers) a copy
    of it with the same layers and weights computing in float32: what every export serves (ONNX Runtime and LiteRT
    have no bfloat16 kernels for these layers, and the weights are float32 under mixed_bfloat16 anyway)."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def in_float32(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=in_float32)
    copy.set_weights(model.get_weights())
    return copy


def inference_function(model: keras.Model, outputs=None):
    """`model(x, training=False)`, then `outputs` of it, as one tf.function for every batch size.

    Args:
      model: a model with a fixed input shape; x is <float32>[batch, *model.input_shape[1:]] (Keras casts its
        inputs to float32 too).
      outputs: maps the model's outputs to what is returned (e.g. a task's serving outputs); default: as they are.
    """
    import tensorflow as tf

    # Traced once: eagerly a recurrent layer runs its time loop op by op from Python (the adding task's 10,000 test
    # sequences of 100 steps took 35 s so, after 4 s of training; 3.8 s traced).
    return tf.function(lambda x: (outputs or (lambda y: y))(model(x, training=False)),
                       input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
