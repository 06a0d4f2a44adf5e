"""LiteRT (WIP, issue 25): a trained model as a .tflite of built-in ops, each LSTM layer one fused LSTM op.

Not wired into `python -m tf_rnn.export` yet. What it shows: Keras 3's LSTM no longer converts to the fused
`UNIDIRECTIONAL_SEQUENCE_LSTM`, but the converter still fuses a function annotated the way Keras 2 annotated its
LSTM. The converter's prepare-composite pass (TF 2.21) needs, all measured:

- `api_implements` "lstm_<uuid>" (+ `api_preferred_device`, `time_major`, `go_backwards`) on a tf.function of
  `(inputs, init_h, init_c, kernel, recurrent_kernel, bias)` returning five *ranked* tensors
  `(last, sequence, h, c, runtime)`;
- a `tf.while_loop` body: an unrolled body is inlined before the pass sees the function;
- tensors for the weights (a variable passed as a resource arrives unranked, and the pass segfaults);
- separate `init_h`, `init_c` of a static batch (the fused op keeps its state in tensors of that size);
- conversion through a SavedModel: `from_concrete_functions([f], trackable)` with a `tf.Module` as trackable.

GRU and vanilla layers have no fused op: they are unrolled over the static time axis into FULLY_CONNECTED,
LOGISTIC, TANH, MUL, ADD (at 784 steps: a large file and graph; to measure).
"""

from __future__ import annotations

import uuid

import numpy as np


def _lstm_function():
    import tensorflow as tf

    def lstm(inputs, init_h, init_c, kernel, recurrent_kernel, bias):
        steps = inputs.shape[1]
        xs = tf.transpose(inputs, [1, 0, 2])

        def body(t, h, c, out):
            z = tf.matmul(xs[t], kernel) + tf.matmul(h, recurrent_kernel) + bias
            i, f, g, o = tf.split(z, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            return t + 1, h, c, out.write(t, h)

        out = tf.TensorArray(tf.float32, size=steps)
        _, h, c, out = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), init_h, init_c, out))
        h, c = tf.ensure_shape(h, init_h.shape), tf.ensure_shape(c, init_c.shape)
        sequence = tf.ensure_shape(tf.transpose(out.stack(), [1, 0, 2]), [*inputs.shape[:2], init_h.shape[1]])
        return sequence[:, -1], sequence, h, c, tf.constant(1.0)

    return tf.function(lstm, autograph=False, experimental_attributes={
        "api_implements": f"lstm_{uuid.uuid4()}", "api_preferred_device": "CPU",
        "time_major": False, "go_backwards": False})


def lstm_layer(x, cell, return_sequences: bool):
    """One Keras LSTM layer's computation as the function the converter fuses. x: `<float32>[batch, T, F]`."""
    import tensorflow as tf

    # Two distinct, non-constant zero states: the fused op keeps its state in them (variable tensors), and a state
    # folded into a shared constant produced NaN.
    shape = [tf.shape(x)[0], cell.units]
    h0, c0 = tf.zeros(shape), tf.zeros(shape) + 0.0
    # Constants: the file carries the trained weights (Keras 3's variables are not tracked by a tf.Module, and would
    # stay uninitialised resource variables in the .tflite).
    with tf.init_scope():  # Read the values eagerly, outside the function being traced.
        values = [np.asarray(w) for w in (cell.kernel, cell.recurrent_kernel, cell.bias)]
    weights = [tf.constant(v) for v in values]
    last, sequence, _, _, _ = _lstm_function()(x, h0, c0, *weights)
    return sequence if return_sequences else last


def convert(forward, model, input_spec) -> bytes:
    """`forward` (a Python function of one tensor, computing `model`) at `input_spec`'s fixed batch → .tflite bytes,
    built-ins only. The tf.Module tracks the tf.Variables behind `model`'s Keras variables: the converter then takes
    the SavedModel path (which keeps the LSTM function's annotation) and freezes them into the file."""
    import tensorflow as tf

    function = tf.function(forward, input_signature=[input_spec], autograph=False)
    holder = tf.Module()
    holder.variables_ = [w.value for w in model.weights]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def op_names(tflite: bytes) -> list[str]:
    """Every op of a .tflite (with repeats), as the standalone interpreter reads them."""
    from ai_edge_litert.interpreter import Interpreter

    return sorted(d["op_name"] for d in Interpreter(model_content=tflite)._get_ops_details())


def run(tflite: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    interpreter.reset_all_variables()  # The fused LSTM's state tensors: zero before every sequence.
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
