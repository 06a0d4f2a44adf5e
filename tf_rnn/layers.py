"""Layers: a stacked RNN with dropout only between layers, sequence views and output heads, the seed's LSTM cell."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings

import keras
import numpy as np
from keras import ops

CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple": keras.layers.SimpleRNN}
ACTIVATIONS = ("tanh", "softsign")

_warned_softsign = False

# How an export writes each recurrent layer for a runtime that cannot take Keras' own graph (tf_rnn.litert: the
# fused LSTM's annotated function; tf_rnn.onnx_export: ops tf2onnx's rewriters match): a function
# `(keras RNN layer, x) -> y`, or None for Keras' layers.
_LAYER_WRITER = contextvars.ContextVar("tf_rnn_layer_writer", default=None)


@contextlib.contextmanager
def layers_written_by(writer):
    """Inside, every StackedRNN computes each recurrent layer as `writer(rnn, x)` (inference only; dropout is off).

    Args:
      writer: `(keras.layers.LSTM | GRU | SimpleRNN, <float32>[batch, T, F]) -> [batch, T, units]` or
        `[batch, units]`, as the layer's `return_sequences` says.
    """
    token = _LAYER_WRITER.set(writer)
    try:
        yield
    finally:
        _LAYER_WRITER.reset(token)


def _warn_softsign_once() -> None:
    # softsign is the seed's tip (cheaper, saturates more slowly), but cuDNN only implements tanh: on a GPU every
    # layer silently falls back to the generic kernel, several times slower. Say so, once per process, and only
    # where a GPU is visible: on a CPU there is no cuDNN to give up, and the line would be noise.
    import tensorflow as tf

    global _warned_softsign
    if not _warned_softsign and tf.config.list_logical_devices("GPU"):
        _warned_softsign = True
        warnings.warn(
            "activation='softsign' disables the cuDNN kernel (it needs tanh): recurrent layers use the generic "
            "implementation, which is much slower on a GPU.",
            stacklevel=3,
        )


@keras.saving.register_keras_serializable(package="tf_rnn")
class StackedRNN(keras.layers.Layer):
    """N recurrent layers with dropout on the vertical (between-layer) connections only.

    The seed's regularisation rule: drop out the outputs that flow *up* from one layer to the next and to the
    classifier, never the state that flows *along* time. Every sub-layer therefore has `dropout == 0` and
    `recurrent_dropout == 0`, which also keeps LSTM/GRU eligible for the cuDNN kernel on a GPU.

    Input `<float32>[batch, time, features]`; output `<float32>[batch, units[-1]]`, or
    `<float32>[batch, time, units[-1]]` with `return_sequences=True`.

    Args:
      cell: `lstm`, `gru` or `simple`.
      units: units of each layer; an int repeats it for `num_layers` layers.
      num_layers: number of stacked layers (ignored when `units` is a list).
      dropout: rate of the Dropout applied after every layer (between layers and on the output).
      activation: `tanh` or `softsign` (softsign gives up cuDNN; a warning says so once).
      l1, l2: kernel regularisation factors of every sub-layer's input and recurrent kernels.
      return_sequences: return every time step of the last layer instead of only the last step.
      precision: `float32`, or `bfloat16`: in training steps through the fused LSTM kernel, its products'
        operands are rounded to bfloat16 on AMX tiles (sums, state and weights stay float32; evaluation and every
        export run Keras' float32 layers). The layer itself stays float32 under any dtype policy.
    """

    def __init__(
        self,
        cell: str = "lstm",
        units: int | list[int] = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
        activation: str = "tanh",
        l1: float = 0.0,
        l2: float = 0.0,
        return_sequences: bool = False,
        precision: str = "float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r}; choose one of: {', '.join(CELLS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}; must be in [0, 1)")
        units_list = [int(units)] * int(num_layers) if isinstance(units, int) else [int(u) for u in units]
        if not units_list or min(units_list) < 1:
            raise ValueError(f"units={units}, num_layers={num_layers}; need at least one layer of >= 1 unit")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision={precision!r}; choose float32 or bfloat16")
        if activation == "softsign":
            _warn_softsign_once()
        self.cell, self.units, self.num_layers = cell, units_list, len(units_list)
        self.dropout, self.activation, self.l1, self.l2 = float(dropout), activation, float(l1), float(l2)
        self.return_sequences = bool(return_sequences)
        self.precision = precision

        regularizer = keras.regularizers.L1L2(l1=self.l1, l2=self.l2) if (self.l1 or self.l2) else None
        self.rnns, self.dropouts = [], []
        for i, n in enumerate(units_list):
            last = i == len(units_list) - 1
            self.rnns.append(
                CELLS[cell](
                    n,
                    activation=activation,
                    return_sequences=self.return_sequences or not last,
                    kernel_regularizer=regularizer,
                    recurrent_regularizer=regularizer,
                    dropout=0.0,
                    recurrent_dropout=0.0,
                    name=f"{cell}_{i}",
                    dtype=self.dtype_policy,  # Not the global policy at construction: the layer's own.
                )
            )
            self.dropouts.append(keras.layers.Dropout(self.dropout, name=f"dropout_{i}", dtype=self.dtype_policy))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for rnn in self.rnns:
            rnn.build(shape)
            shape = (shape[0], shape[1], rnn.units)
        self.built = True

    def _fused_op(self, rnn, x, training):
        """`tf_rnn.fused.lstm` or `.gru` when this layer runs through the compiled kernel, else None: only in a
        training step (so that no save path — tf_rnn.export,
        `model.export()`, `tf.saved_model.save` — ever traces the compiled ops, and every SavedModel serves without
        tf_rnn), not under XLA (`jit_compile=True`: XLA has no kernel for them), not switched off, on a CPU host,
        in float32, unless the layer was told to use generic TensorFlow ops only (`use_cudnn=False`, as the
        export does)."""
        from tf_rnn import fused  # Here, not at the top: `python -m tf_rnn.fused` must not find itself imported.

        if not (isinstance(training, bool) and training) or fused.in_xla_context():
            return None
        cell = rnn.cell
        # Keras' defaults are what the kernels compute: tanh, sigmoid gates, a bias, and for GRU reset_after=True.
        supported = (isinstance(rnn, keras.layers.LSTM) or (isinstance(rnn, keras.layers.GRU) and cell.reset_after)) \
            and self.activation == "tanh" and cell.use_bias and rnn.use_cudnn == "auto"
        # The kernels are float32 only: a mixed-precision policy keeps Keras' layers.
        if not (supported and x.dtype == "float32" and cell.compute_dtype == "float32" and fused.available()):
            return None
        if isinstance(rnn, keras.layers.GRU):
            return fused.gru
        return functools.partial(fused.lstm, precision=self.precision)

    def call(self, inputs, training=None):
        x, writer = inputs, _LAYER_WRITER.get()
        for rnn, drop in zip(self.rnns, self.dropouts):
            if writer:
                x = writer(rnn, x)
            elif op := self._fused_op(rnn, x, training):
                x = op(x, rnn.cell.kernel, rnn.cell.recurrent_kernel, rnn.cell.bias, rnn.return_sequences)
            else:
                x = rnn(x, training=training)
            x = drop(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units[-1])
        return (input_shape[0], self.units[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "cell": self.cell,
            "units": list(self.units),
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "activation": self.activation,
            "l1": self.l1,
            "l2": self.l2,
            "return_sequences": self.return_sequences,
            "precision": self.precision,
        }


# The fixed permutation of `--sequence permuted`: numpy's `default_rng(PERMUTATION_SEED).permutation(784)`.
PERMUTATION_SEED = 1997  # Hochreiter & Schmidhuber's year; any fixed number would do, this one is documented.


def pixel_permutation(length: int, seed: int = PERMUTATION_SEED) -> np.ndarray:
    """`<int64>[length]`: step t of a permuted sequence reads pixel `permutation[t]` of the row-major image."""
    return np.random.default_rng(seed).permutation(length)


@keras.saving.register_keras_serializable(package="tf_rnn")
class SequenceView(keras.layers.Layer):
    """How the model reads an image as a sequence. Inside the model, so the SavedModel still takes images.

    `<float32>[batch, 28, 28]` → `rows`: unchanged (28 steps of 28 pixels); `pixels`: `[batch, 784, 1]` in
    row-major order; `permuted`: `[batch, 784, 1]` in the fixed order `pixel_permutation(784, seed)`.
    """

    def __init__(self, view: str = "rows", seed: int = PERMUTATION_SEED, **kwargs):
        super().__init__(**kwargs)
        if view not in ("rows", "pixels", "permuted"):
            raise ValueError(f"view={view!r}; choose one of: rows, pixels, permuted")
        self.view, self.seed = view, int(seed)

    def call(self, images):
        if self.view == "rows":
            return images
        steps = images.shape[1] * images.shape[2]
        pixels = ops.reshape(images, (-1, steps, 1))
        if self.view == "pixels":
            return pixels
        return ops.take(pixels, pixel_permutation(steps, self.seed), axis=1)

    def compute_output_shape(self, input_shape):
        if self.view == "rows":
            return tuple(input_shape)
        return (input_shape[0], input_shape[1] * input_shape[2], 1)

    def get_config(self):
        return {**super().get_config(), "view": self.view, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tf_rnn")
class LastSteps(keras.layers.Layer):
    """`<float32>[batch, time, features]` → `[batch, steps, features]`, the last `steps` steps: a per-step task
    that is scored on its final steps only (the copy problem's recall) leaves the others out of loss and metric."""

    def __init__(self, steps: int, **kwargs):
        super().__init__(**kwargs)
        self.steps = int(steps)

    def call(self, x):
        return x[:, -self.steps:]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.steps, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "steps": self.steps}


@keras.saving.register_keras_serializable(package="tf_rnn")
class Denormalize(keras.layers.Layer):
    """`mean + std * z`: the regression head's linear layer predicts standardised targets `z` (the seed's advice:
    normalise, MSE, identity output), while the model's output, its loss and every metric are in the targets' own
    units. `mean` and `std` are constants from the training set, not weights."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]

    def call(self, z):
        return z * np.array(self.std, np.float32) + np.array(self.mean, np.float32)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="tf_rnn")
class SeedLSTMCell(keras.layers.Layer):
    """The seed's LSTM equations, written out: a readable reference, not a fast kernel.

    With `p = x W + h U + b` split into the input, forget, candidate and output parts (Keras' i, f, c, o order):

        f_t = sigmoid(p_f + forget_bias)          # forget gate: 1 keeps, 0 erases the old cell state
        i_t = sigmoid(p_i) * tanh(p_c)            # input gate times the new candidate values
        c_t = f_t * c_{t-1} + i_t                 # the cell state: the "conveyor belt"
        h_t = tanh(c_t) * sigmoid(p_o)            # output gate filters the cell state

    The weights have `keras.layers.LSTM`'s layout (`kernel <[input, 4·units]>`, `recurrent_kernel <[units,
    4·units]>`, `bias <[4·units]>`), so they transplant directly; `forget_bias` is a constant added at every step as
    in TF1's BasicLSTMCell, where Keras instead initialises the forget part of the bias to 1 (`unit_forget_bias`).

    Use as `keras.layers.RNN(SeedLSTMCell(units))`: input `<float32>[batch, time, input]`.
    """

    def __init__(self, units: int, forget_bias: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.forget_bias = float(forget_bias)
        self.state_size = [self.units, self.units]
        self.output_size = self.units

    def build(self, input_shape):
        n = self.units
        self.kernel = self.add_weight(shape=(input_shape[-1], 4 * n), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(n, 4 * n), initializer="orthogonal", name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * n,), initializer="zeros", name="bias")
        self.built = True

    def call(self, inputs, states, training=None):
        h_prev, c_prev = states
        p = ops.matmul(inputs, self.kernel) + ops.matmul(h_prev, self.recurrent_kernel) + self.bias
        p_i, p_f, p_c, p_o = ops.split(p, 4, axis=-1)
        f = ops.sigmoid(p_f + self.forget_bias)
        i = ops.sigmoid(p_i) * ops.tanh(p_c)
        c = f * c_prev + i
        h = ops.tanh(c) * ops.sigmoid(p_o)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "forget_bias": self.forget_bias}
