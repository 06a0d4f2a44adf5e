"""ONNX: a trained model as an .onnx whose recurrent layers are the ONNX `LSTM`, `GRU` and `RNN` ops (no `Loop`).

Through tf2onnx (the library Keras itself uses for ONNX). Its rewriters turn a loop into a recurrent op only when the
loop's ops match the patterns Keras 2 produced: Keras 3's LSTM still matches; its GRU and SimpleRNN do not (they
became `Loop`s, measured). So while tracing for ONNX each layer is written in a form a rewriter matches:

- LSTM: Keras' own layer;
- GRU (`reset_after=True`, Keras' default): its equations in the ops of Keras 2's GRU (`linear_before_reset=1`);
- vanilla RNN: no rewriter exists, so it is traced as that GRU with its update gate shut and its reset gate open
  (which computes `tanh(x W + h U + b)`), and the GRU node is then replaced by an ONNX `RNN` node with the layer's
  own weights.

Softsign layers are traced with tanh and the node's `activations` set to Softsign afterwards (ONNX's recurrent
ops take it; the rewriters do not).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

OPSET = 17  # ONNX Runtime 1.31 runs it; LSTM/GRU/RNN have had their current form since opset 14.
RECURRENT_OPS = {"lstm": "LSTM", "gru": "GRU", "simple": "RNN"}


def _gru_loop(x, kernel, recurrent_kernel, input_bias, recurrent_bias, return_sequences):
    """Keras 2's GRU (reset_after) as a while loop over a TensorList: the graph tf2onnx's GRU rewriter matches."""
    import tensorflow as tf

    steps = x.shape[1]
    xs = tf.TensorArray(tf.float32, size=steps).unstack(tf.transpose(x, [1, 0, 2]))
    consts = [tf.constant(v) for v in (kernel, recurrent_kernel, input_bias, recurrent_bias)]

    def body(t, h, out):
        k, rk, ib, rb = consts
        x_z, x_r, x_h = tf.split(tf.nn.bias_add(tf.matmul(xs.read(t), k), ib), 3, axis=1)
        r_z, r_r, r_h = tf.split(tf.nn.bias_add(tf.matmul(h, rk), rb), 3, axis=1)
        z, r = tf.sigmoid(x_z + r_z), tf.sigmoid(x_r + r_r)
        h = z * h + (1.0 - z) * tf.tanh(x_h + r * r_h)
        return t + 1, h, out.write(t, h)

    h0 = tf.zeros([tf.shape(x)[0], recurrent_kernel.shape[0]])
    _, h, out = tf.while_loop(lambda t, *_: t < steps, body,
                              (tf.constant(0), h0, tf.TensorArray(tf.float32, size=steps)))
    return tf.transpose(out.stack(), [1, 0, 2]) if return_sequences else h


def _gru_weights(cell):
    kernel, recurrent, bias = (np.asarray(w) for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
    return kernel, recurrent, bias[0], bias[1]


def _vanilla_as_gru(cell):
    """A vanilla cell's weights as a GRU whose update gate is 0 and reset gate 1 (sigmoid of ∓1e4 is exactly 0/1 in
    float32): `h = tanh(x W + b + h U)`."""
    kernel, recurrent = np.asarray(cell.kernel), np.asarray(cell.recurrent_kernel)
    bias = np.asarray(cell.bias) if cell.use_bias else np.zeros(recurrent.shape[0], np.float32)
    n = recurrent.shape[0]
    pad = lambda w: np.concatenate([np.zeros_like(w), np.zeros_like(w), w], axis=1)  # noqa: E731 - z, r, h blocks.
    gates = np.concatenate([np.full(n, -1e4), np.full(n, 1e4), bias]).astype(np.float32)
    return pad(kernel), pad(recurrent), gates, np.zeros(3 * n, np.float32)


class _Writer:
    """`layers.layers_written_by`'s writer for ONNX; remembers every layer it wrote, in order."""

    def __init__(self):
        self.layers = []

    def __call__(self, rnn, x):
        import keras
        import tensorflow as tf

        self.layers.append(rnn)
        if isinstance(rnn, keras.layers.LSTM):
            with _tanh(rnn.cell):
                return rnn(x, training=False)
        with tf.init_scope():  # The weights' values, read eagerly: the loop holds them as constants.
            weights = _gru_weights(rnn.cell) if isinstance(rnn, keras.layers.GRU) else _vanilla_as_gru(rnn.cell)
        return _gru_loop(x, *weights, rnn.return_sequences)


@contextlib.contextmanager
def _tanh(cell):
    import keras

    saved, cell.activation = cell.activation, keras.activations.tanh
    try:
        yield
    finally:
        cell.activation = saved


def convert(model, spec, metadata: dict | None = None):
    """`model` → an ONNX ModelProto: input `images`/`sequences <float32>[batch, T, F]` (batch dynamic), the task's
    outputs by name (`logits`, `probabilities`, `classes`; or `predictions`), `metadata` as `tf_rnn` metadata.

    Raises:
      ValueError: a recurrent layer did not become its ONNX op (a `Loop` would be left; never written).
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from tf_rnn.layers import layers_written_by

    writer = _Writer()

    def serve(inputs):
        with layers_written_by(writer):
            return spec.task_type.serving_outputs(model(inputs, training=False))

    signature = [tf.TensorSpec([None, *spec.input_shape], tf.float32, name=spec.input_name)]
    proto, _ = tf2onnx.convert.from_function(tf.function(serve, autograph=False), input_signature=signature,
                                             opset=OPSET)
    _finish_recurrent_nodes(proto, writer.layers)
    if metadata:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "tf_rnn", json.dumps(metadata)
    onnx.checker.check_model(proto)
    return proto


def _finish_recurrent_nodes(proto, layers) -> None:
    """Checks one recurrent node per layer, in order; swaps the vanilla layers' stand-in GRUs for `RNN` nodes and
    sets every node's activations to its layer's."""
    import keras
    from onnx import helper, numpy_helper

    nodes = [n for n in proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    leftover = sorted({n.op_type for n in proto.graph.node if n.op_type in ("Loop", "Scan")})
    if len(nodes) != len(layers) or leftover:
        raise ValueError(f"{len(layers)} recurrent layers became {len(nodes)} ONNX recurrent ops"
                         f"{' and ' + ', '.join(leftover) if leftover else ''}; tf2onnx did not match them")
    initializers = {init.name: init for init in proto.graph.initializer}
    for node, rnn in zip(nodes, layers):
        act = "Softsign" if rnn.cell.activation is keras.activations.softsign else "Tanh"
        attrs = {a.name: a for a in node.attribute}
        if isinstance(rnn, keras.layers.SimpleRNN):
            cell = rnn.cell
            kernel, recurrent = np.asarray(cell.kernel), np.asarray(cell.recurrent_kernel)
            bias = np.asarray(cell.bias) if cell.use_bias else np.zeros(recurrent.shape[0], np.float32)
            for index, value in ((1, kernel.T[None]), (2, recurrent.T[None]),
                                 (3, np.concatenate([bias, np.zeros_like(bias)])[None])):
                initializers[node.input[index]].CopyFrom(numpy_helper.from_array(value.astype(np.float32),
                                                                                 node.input[index]))
            node.op_type = "RNN"
            del node.attribute[:]
            node.attribute.extend([attrs["hidden_size"], helper.make_attribute("activations", [act])])
        else:
            acts = ["Sigmoid", act, act] if isinstance(rnn, keras.layers.LSTM) else ["Sigmoid", act]
            kept = [a for a in node.attribute if a.name != "activations"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("activations", acts)])


def read_metadata(proto) -> dict | None:
    for entry in proto.metadata_props:
        if entry.key == "tf_rnn":
            return json.loads(entry.value)
    return None


class Runner:
    """An .onnx in ONNX Runtime (no TensorFlow), with the LiteRT runner's input checks (`litert.check_inputs`)."""

    def __init__(self, path_or_bytes):
        import onnx
        import onnxruntime

        self.runtime = f"ONNX Runtime {onnxruntime.__version__}"
        content = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        self.meta = read_metadata(onnx.load_from_string(content)) or {}
        self.session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
        # `{input: (shape, dtype)}`, None for the dynamic batch; the file's one signature is serving_default.
        self._inputs = {i.name: (tuple(d if isinstance(d, int) else None for d in i.shape), np.dtype(np.float32))
                        for i in self.session.get_inputs()}
        self._outputs = [o.name for o in self.session.get_outputs()]

    def inputs(self, signature: str = "serving_default") -> dict:
        return self._inputs

    def __call__(self, signature: str = "serving_default", **inputs) -> dict:
        from tf_rnn.cli import RunError
        from tf_rnn.litert import check_inputs

        if signature != "serving_default":
            raise RunError(f"signature {signature!r}: this .onnx has serving_default")
        check_inputs(signature, inputs, self._inputs, ".onnx")
        return dict(zip(self._outputs, self.session.run(self._outputs, inputs)))
