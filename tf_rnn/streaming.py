"""Streaming (WIP, issue 25): a model's recurrent layers one step at a time, with every layer's state explicit.

`step(inputs_t, state) -> (outputs, state)` and `zero_state(batch)`, from the trained Keras cells themselves (so the
arithmetic is Keras'): feeding a sequence step by step gives the full-sequence model's features at every step.
Not yet in the SavedModel: the head, the image views and the signatures' names are the remaining work.
"""

from __future__ import annotations


def zero_state(rnn_layer, batch: int) -> list:
    """The zero state of a StackedRNN: per layer `[h, c]` (LSTM) or `[h]` (GRU, vanilla), `<float32>[batch, units]`."""
    import keras
    import tensorflow as tf

    return [[tf.zeros([batch, r.cell.units]) for _ in range(2 if isinstance(r.cell, keras.layers.LSTMCell) else 1)]
            for r in rnn_layer.rnns]


def step(rnn_layer, inputs_t, state: list):
    """One step through every layer: `<float32>[batch, F]`, state → top layer's `<float32>[batch, units]`, state."""
    x, new_state = inputs_t, []
    for r, layer_state in zip(rnn_layer.rnns, state):
        x, s = r.cell(x, layer_state if len(layer_state) > 1 else layer_state[0], training=False)
        new_state.append(list(s) if isinstance(s, (list, tuple)) else [s])
    return x, new_state
