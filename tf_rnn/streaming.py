"""Streaming: a trained model one step at a time, every layer's state explicit — the export's `step` signature.

`step(inputs_t, state) -> (outputs, state)` runs the trained Keras cells themselves (so the arithmetic is Keras'),
then the task's head: fed a sequence step by step from `zero_state`, it gives the full-sequence model's outputs at
the last step (and at every step for per-step tasks). For a server that sees a sensor stream or decodes online: it
keeps the state between requests, the model keeps none.
"""

from __future__ import annotations


def supports(model) -> bool:
    """Whether `model` can be stepped: tf_rnn's models (one StackedRNN, then head layers) can."""
    from tf_rnn.layers import StackedRNN

    return sum(isinstance(layer, StackedRNN) for layer in model.layers) == 1


def _rnn(model):
    """The model's StackedRNN (tf_rnn's models have exactly one)."""
    from tf_rnn.layers import StackedRNN

    found = [layer for layer in model.layers if isinstance(layer, StackedRNN)]
    if len(found) != 1:
        raise ValueError(f"model {model.name!r} has {len(found)} StackedRNN layers; step signatures need one")
    return found[0]


def head_layers(model) -> list:
    """The layers after the recurrent stack, in order (tf_rnn's models are a chain), less those that only select
    time steps (`LastSteps`: a step is already one time step)."""
    from tf_rnn.layers import LastSteps

    layers = model.layers
    after = layers[layers.index(_rnn(model)) + 1:]
    return [layer for layer in after if not isinstance(layer, LastSteps)]


def _layers(model) -> list:
    """`[(recurrent layer, its state names)]` in order: per layer its output state `h_i`, and for LSTM its cell
    state `c_i`."""
    import keras

    return [(r, [f"h_{i}", f"c_{i}"] if isinstance(r.cell, keras.layers.LSTMCell) else [f"h_{i}"])
            for i, r in enumerate(_rnn(model).rnns)]


def state_names(model) -> list[str]:
    """`h_0`, `c_0`, `h_1`, …: every state tensor's name, in order."""
    return [name for _, names in _layers(model) for name in names]


def state_specs(model, batch: int | None) -> dict:
    """`{name: TensorSpec <float32>[batch, units]}` for every state tensor, in `state_names` order."""
    import tensorflow as tf

    return {name: tf.TensorSpec([batch, r.cell.units], tf.float32, name=name)
            for r, names in _layers(model) for name in names}


def step_features(model) -> int:
    """F, the width of one step of the sequence the recurrent stack reads (`rows`: 28; `pixels`/`permuted`: 1)."""
    return int(_rnn(model).rnns[0].cell.kernel.shape[0])


def zero_state(model, batch) -> dict:
    """The state before the first step: zeros `<float32>[batch, units]` for every name of `state_names`."""
    import tensorflow as tf

    return {name: tf.zeros([batch, spec.shape[1]]) for name, spec in state_specs(model, None).items()}


def step(model, inputs_t, state: dict):
    """One step through every layer and the head.

    Args:
      inputs_t: `<float32>[batch, F]`, one step of the sequence the recurrent stack reads (for images: one row, or
        one pixel in the view's order).
      state: `{name: <float32>[batch, units]}` as `zero_state` or the previous step returned.

    Returns:
      The head's output for this step (`[batch, classes]` logits or `[batch, targets]` predictions; the export
      passes it through `tasks.Task.serving_outputs`) and the new state under the same names.
    """
    x, new_state = inputs_t, {}
    for r, names in _layers(model):
        given = [state[n] for n in names]
        x, s = r.cell(x, given if len(given) > 1 else given[0], training=False)
        new_state.update(zip(names, s if isinstance(s, (list, tuple)) else [s]))
    for layer in head_layers(model):
        x = layer(x, training=False)
    return x, new_state


def signature(model, spec, batch: int | None):
    """The `step` signature: `(function, input_signature)`, the function `(inputs_t, state) -> {the task's outputs
    for the step, and the new state by name}` — one definition for the SavedModel and the .tflite."""
    import tensorflow as tf

    def serve_step(inputs_t, state):
        outputs, state = step(model, inputs_t, state)
        return {**spec.task_type.serving_outputs(outputs), **state}

    return serve_step, [tf.TensorSpec([batch, step_features(model)], tf.float32, name="inputs_t"),
                        state_specs(model, batch)]
