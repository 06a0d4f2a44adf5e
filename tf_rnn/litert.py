"""LiteRT: a trained model as a .tflite of built-in ops only — each LSTM layer one fused LSTM op — and a runner.

Keras 3's LSTM no longer converts to LiteRT's fused `UNIDIRECTIONAL_SEQUENCE_LSTM` (google-ai-edge/LiteRT#41), but
the converter still fuses a function annotated the way Keras 2 annotated its LSTM. Its prepare-composite pass
(TF 2.21) needs, all measured:

- `api_implements` "lstm_<uuid>" (+ `api_preferred_device`, `time_major`, `go_backwards`) on a tf.function of
  `(inputs, init_h, init_c, kernel, recurrent_kernel, bias)` returning five *ranked* tensors
  `(last, sequence, h, c, runtime)`;
- a `tf.while_loop` body: an unrolled body is inlined before the pass sees the function;
- tensors for the weights (a variable passed as a resource arrives unranked, and the pass segfaults);
- separate `init_h`, `init_c` of a static batch: the fused op keeps its state in *variable tensors* of that size,
  so a file runs at the batch it was converted at, and the state must be zeroed before every sequence
  (`Interpreter.reset_all_variables()`, as `Runner` does; tensorflow#47813);
- conversion through a SavedModel that tracks the variables (else they stay resource variables in the file).

GRU and vanilla layers have no fused op the converter can target: they are unrolled over the static time axis into
FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD (at 784 steps that is thousands of ops; benchmarks/README.md measures it).
"""

from __future__ import annotations

import json
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np

from tf_rnn.cli import RunError, native_stderr_silenced

QUANTIZATIONS = ("float16", "dynamic", "int8")
METADATA_NAME = "tf_rnn"  # The .tflite's metadata entry holding the export's tf_rnn.json (what tf_rnn.predict reads).
# What a file of built-ins only must not hold: the loop and resource ops Keras 3's LSTM converts to; and any custom
# op (`op_names` writes them `CUSTOM:<code>`: Flex ops, which need TensorFlow inside the app, are custom ops).
FORBIDDEN_OPS = ("WHILE", "READ_VARIABLE", "VAR_HANDLE", "ASSIGN_VARIABLE", "CALL_ONCE")


def _fused_lstm_function():
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

    # The converter replaces the whole function by the fused op; the body above is what TensorFlow runs meanwhile.
    return tf.function(lstm, autograph=False, experimental_attributes={
        "api_implements": f"lstm_{uuid.uuid4()}", "api_preferred_device": "CPU",
        "time_major": False, "go_backwards": False})


def fusable(rnn) -> bool:
    """Whether LiteRT's fused LSTM computes this layer: an LSTM with Keras' default tanh/sigmoid and a bias."""
    import keras

    cell = rnn.cell
    return (isinstance(rnn, keras.layers.LSTM) and cell.use_bias
            and cell.activation is keras.activations.tanh and cell.recurrent_activation is keras.activations.sigmoid)


def fused_lstm(rnn, x):
    """A Keras LSTM layer as the function the converter fuses. `x <float32>[batch, T, F]` of a static batch."""
    import tensorflow as tf

    cell = rnn.cell
    # Two distinct, non-constant zero states: the fused op keeps its state in them (variable tensors), and a state
    # folded into one shared constant produced NaN.
    shape = [tf.shape(x)[0], cell.units]
    h0, c0 = tf.zeros(shape), tf.zeros(shape) + 0.0
    with tf.init_scope():  # The weights' values, read eagerly: the file holds them as constants.
        values = [np.asarray(w) for w in (cell.kernel, cell.recurrent_kernel, cell.bias)]
    last, sequence, _, _, _ = _fused_lstm_function()(x, h0, c0, *(tf.constant(v) for v in values))
    return sequence if rnn.return_sequences else last


def unrolled(rnn, x):
    """Any Keras recurrent layer as its own cell applied T times (T static): built-in ops, no loop."""
    import tensorflow as tf

    cell, outputs = rnn.cell, []
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    state = [tf.zeros([tf.shape(x)[0], n]) for n in sizes]
    for t in range(x.shape[1]):
        y, state = cell(x[:, t], state if len(state) > 1 else state[0], training=False)
        state = list(state) if isinstance(state, (list, tuple)) else [state]
        outputs.append(y)
    return tf.stack(outputs, axis=1) if rnn.return_sequences else outputs[-1]


def write_layer(rnn, x):
    """`layers.layers_written_by`'s writer for LiteRT: the fused LSTM where it applies, else the unrolled cell."""
    return fused_lstm(rnn, x) if fusable(rnn) else unrolled(rnn, x)


def signature_functions(model, spec, batch: int, names=None) -> dict:
    """The file's signatures as concrete functions at a fixed `batch`, named and shaped as the SavedModel's.

    `serving_default`: `<float32>[batch, T, F]` (`images` or `sequences`) → the task's outputs; images also
    `serve_uint8` (`<uint8>[batch, 28, 28]`); tf_rnn's models also `step(inputs_t <float32>[batch, F], h_0, c_0,
    …)` → the task's outputs for that step and the new state (tf_rnn.streaming). `names`: only these (default all).
    """
    import tensorflow as tf

    from tf_rnn import streaming
    from tf_rnn.layers import layers_written_by

    task = spec.task_type

    def serve(inputs):
        with layers_written_by(write_layer):
            return task.serving_outputs(model(inputs, training=False))

    shape = [batch, *spec.input_shape]
    functions = {"serving_default": tf.function(
        serve, input_signature=[tf.TensorSpec(shape, tf.float32, name=spec.input_name)], autograph=False)}
    if spec.image:
        functions["serve_uint8"] = tf.function(
            lambda x: serve(tf.cast(x, tf.float32) / 255.0),
            input_signature=[tf.TensorSpec(shape, tf.uint8, name=spec.input_name)], autograph=False)
    if streaming.supports(model):
        function, signature = streaming.signature(model, spec, batch)
        functions["step"] = tf.function(function, autograph=False, input_signature=signature)
    # Traced only when kept (get_concrete_function traces): an unrolled 784-step signature takes a minute.
    return {name: f.get_concrete_function() for name, f in functions.items() if names is None or name in names}


def convert(model, spec, batch: int = 1, quantize: str | None = None, representative=None,
            signatures=None) -> bytes:
    """`model` → .tflite bytes of built-in ops at a fixed `batch`.

    Args:
      spec: the run's `datasets.DataSpec`: input name and shape, task outputs.
      quantize: None (float32), `float16` (weights), `dynamic` (int8 weights, float activations) or `int8`
        (integers throughout, float input and output; calibrated on `representative`).
      representative: `int8`: `<float32>[N, T, F]` training inputs (a few hundred).
      signatures: the names to keep (default: all of `signature_functions`; int8: `serving_default` only, as TF
        2.21's calibrator fails to prepare a second signature holding the fused LSTM's variable state, measured,
        and calibrating `step` would need states drawn from real sequences).

    Returns:
      The file's bytes, with the tf_rnn metadata (`read_metadata`) not yet added.
    """
    import tensorflow as tf

    functions = signature_functions(model, spec, batch,
                                    signatures or (("serving_default",) if quantize == "int8" else None))
    holder = tf.Module()
    holder.variables_ = [w.value for w in model.weights]
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(holder, tmp, signatures=functions)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(functions))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: _calibration(representative, spec, batch)
        with native_stderr_silenced(), warnings.catch_warnings():
            # The calibrator runs TF's own (deprecated) interpreter, which warns so, and prints its settings.
            warnings.simplefilter("ignore")
            return converter.convert()


def _calibration(x: np.ndarray, spec, batch: int):
    for start in range(0, len(x) - batch + 1, batch):
        yield "serving_default", {spec.input_name: x[start:start + batch].astype(np.float32)}


def with_metadata(tflite: bytes, meta: dict) -> bytes:
    """The file with `meta` (JSON) as its `tf_rnn` metadata entry (what the model is, read by tf_rnn.predict), and
    without the buffers no tensor uses: the converter leaves some behind (77 KB in the default model's int8 file,
    a quarter of it; measured), which a phone would download for nothing."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    tensors = [t for graph in model.subgraphs for t in graph.tensors or []]
    used = sorted({0} | {t.buffer for t in tensors} | {m.buffer for m in model.metadata}
                  | set(model.metadataBuffer if model.metadataBuffer is not None else []))
    new_index = {old: new for new, old in enumerate(used)}  # Buffer 0 stays the empty sentinel.
    model.buffers = [model.buffers[i] for i in used]
    for item in (*tensors, *model.metadata):
        item.buffer = new_index[item.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [new_index[i] for i in model.metadataBuffer]
    builder = flatbuffers.Builder(len(tflite) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(tflite: bytes) -> dict | None:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(tflite, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def op_names(tflite: bytes) -> dict[str, list[str]]:
    """`{signature: [op name, …]}` (with repeats, sorted) of every signature's subgraph, read from the file."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(tflite, 0)

    def op_name(op):
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        return f"CUSTOM:{code.CustomCode().decode()}" if builtin == schema.BuiltinOperator.CUSTOM else names[builtin]

    result = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        graph = model.Subgraphs(signature.SubgraphIndex())
        result[signature.SignatureKey().decode()] = sorted(op_name(graph.Operators(k))
                                                           for k in range(graph.OperatorsLength()))
    return result


def check_inputs(signature: str, inputs: dict, expected: dict, kind: str) -> None:
    """The one-line refusal both runners give before a runtime sees a wrong input.

    Args:
      expected: `{name: (shape, dtype)}`; a None dimension takes any size (ONNX's batch). A fixed batch that is the
        only mismatch gets the hint to export at another.
      kind: the file's suffix for the message, `.tflite` or `.onnx`.

    Raises:
      RunError: another set of input names, a wrong shape or a wrong dtype.
    """
    if set(inputs) != set(expected):
        raise RunError(f"{signature}: inputs {sorted(inputs)}; this {kind} takes {sorted(expected)}")
    for name, value in inputs.items():
        shape, dtype = expected[name]
        value = np.asarray(value)
        if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            fixed_batch = shape[0] is not None and value.shape[1:] == shape[1:]
            hint = f" (exported at batch {shape[0]}: export with --batch {value.shape[0]} for another)" \
                if fixed_batch else ""
            takes = ["batch" if s is None else s for s in shape]
            raise RunError(f"{signature}: {name} is {list(value.shape)}; this {kind} takes {takes}{hint}")
        if value.dtype != dtype:
            raise RunError(f"{signature}: {name} is {value.dtype}; this {kind} takes {dtype}")


def disallowed(ops) -> list[str]:
    """The ops of `ops` (from `op_names`) that a file of built-ins only must not hold: loops, resource variables,
    custom and Flex ops."""
    return sorted({op for op in ops if op in FORBIDDEN_OPS or op.startswith("CUSTOM:")})


class Runner:
    """A .tflite in the standalone LiteRT interpreter (`ai-edge-litert`; no TensorFlow), one signature at a time.

    Inputs are checked before they reach the interpreter (it would fail on some with a C++ message, and give
    silently wrong outputs on others): shape — including the batch the file was converted at — and dtype.
    """

    def __init__(self, path_or_bytes, num_threads: int | None = None):
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        self.runtime = f"LiteRT interpreter (ai-edge-litert {version('ai-edge-litert')})"
        content = Path(path_or_bytes).read_bytes() if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
        self.meta = read_metadata(content) or {}
        with native_stderr_silenced():
            self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
            self._runners = {name: self.interpreter.get_signature_runner(name)
                             for name in self.interpreter.get_signature_list()}
            # `{signature: {input: (shape, dtype)}}`, read once: every request is checked against it.
            self._inputs = {name: {k: (tuple(int(d) for d in v["shape"]), np.dtype(v["dtype"]))
                                   for k, v in runner.get_input_details().items()}
                            for name, runner in self._runners.items()}
            # Resetting the variables (below, per request) needs every signature's tensors allocated, and LiteRT
            # allocates them at a signature's first call (`allocate_tensors()` does the first signature only).
            for name, runner in self._runners.items():
                runner(**{k: np.zeros(shape, dtype) for k, (shape, dtype) in self._inputs[name].items()})

    def inputs(self, signature: str = "serving_default") -> dict:
        """`{name: (shape, dtype)}` the signature takes."""
        return self._inputs[signature]

    def __call__(self, signature: str = "serving_default", **inputs) -> dict:
        if signature not in self._runners:
            raise RunError(f"signature {signature!r}: this .tflite has {', '.join(self._runners)}")
        check_inputs(signature, inputs, self._inputs[signature], ".tflite")
        runner = self._runners[signature]
        # The fused LSTM keeps its state in variable tensors that outlive an invoke: zero them for every request.
        self.interpreter.reset_all_variables()
        return runner(**inputs)
