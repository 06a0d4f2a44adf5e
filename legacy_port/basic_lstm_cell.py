"""TF1's BasicLSTMCell rebuilt from tf.compat.v1 ops, with its exact variable layout (Keras 3 removed the original)."""

from __future__ import annotations

import collections

import tensorflow as tf

v1 = tf.compat.v1

# TF1's state tuple: c first, then h (state_is_tuple=True, the default since TF 1.0).
LSTMStateTuple = collections.namedtuple("LSTMStateTuple", ("c", "h"))


class BasicLSTMCell:
    """Drop-in for `tf.compat.v1.nn.rnn_cell.BasicLSTMCell(num_units, forget_bias)` inside `static_rnn`.

    Variables, as TF1 names and shapes them under `static_rnn`'s `rnn/` scope:
      `rnn/basic_lstm_cell/kernel <float32>[input + units, 4·units]` multiplies `concat([x, h])`;
      `rnn/basic_lstm_cell/bias <float32>[4·units]`, initialised to zero.
    The 4·units columns are the gates in TF1's order i, j, f, o (input, candidate, forget, output), and
    `forget_bias` is a constant added to f at every step, not part of the variable. A checkpoint written with
    this cell therefore loads into the real TF1 cell and back.
    """

    def __init__(self, num_units: int, forget_bias: float = 1.0, name: str = "basic_lstm_cell"):
        self.num_units, self.forget_bias, self.name = num_units, forget_bias, name

    @property
    def state_size(self):
        return LSTMStateTuple(self.num_units, self.num_units)

    @property
    def output_size(self):
        return self.num_units

    def zero_state(self, batch_size, dtype):
        zeros = tf.zeros([batch_size, self.num_units], dtype=dtype)
        return LSTMStateTuple(zeros, zeros)

    def __call__(self, inputs, state, scope=None):
        """One step: `<float32>[batch, input]`, (c, h) → h `<float32>[batch, units]`, (c, h)."""
        c, h = state
        with v1.variable_scope(scope or self.name):
            # static_rnn re-enters its scope with reuse=True after step 0, so every step shares these variables.
            kernel = v1.get_variable(
                "kernel", [inputs.shape[-1] + self.num_units, 4 * self.num_units], dtype=inputs.dtype,
                initializer=v1.glorot_uniform_initializer(),  # get_variable's default, as TF1 used.
            )
            bias = v1.get_variable("bias", [4 * self.num_units], dtype=inputs.dtype, initializer=v1.zeros_initializer())
        gates = tf.matmul(tf.concat([inputs, h], axis=1), kernel) + bias
        i, j, f, o = tf.split(gates, num_or_size_splits=4, axis=1)
        new_c = c * tf.sigmoid(f + self.forget_bias) + tf.sigmoid(i) * tf.tanh(j)
        new_h = tf.tanh(new_c) * tf.sigmoid(o)
        return new_h, LSTMStateTuple(new_c, new_h)
