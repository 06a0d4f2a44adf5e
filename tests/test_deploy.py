"""Deployment: every cell and depth in LiteRT and ONNX, the export and predict CLIs on every format, a fixed LiteRT
batch, quantized files, bad input to each runtime. (Every task and dataset kind: tests/test_contracts.py.)"""

import shutil

import keras
import numpy as np
import onnx
import pytest

from support import op_determinism_restored
from tf_rnn import cli, datasets, export, litert, onnx_export, predict, train
from tf_rnn.config import resolve
from tf_rnn.models import build_model

ADDING = dict(dataset="adding", seq_len=7)


def _model(**overrides):
    config = resolve("seed", overrides={"units": 6, **overrides})
    spec = datasets.get(config.dataset).spec(config, None)
    return build_model(config, spec=spec), spec


def _keras(model, spec, x):
    return {k: np.asarray(v) for k, v in spec.task_type.serving_outputs(model(x, training=False)).items()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
@pytest.mark.parametrize("layers, activation", [(1, "tanh"), (2, "tanh"), (2, "softsign")])
def test_every_cell_and_depth_becomes_built_in_ops_and_onnx_recurrent_ops_matching_keras(cell, layers, activation):
    model, spec = _model(cell=cell, layers=layers, activation=activation, **ADDING)
    x = np.random.default_rng(0).normal(size=(2, 7, 2)).astype(np.float32)
    tflite = litert.convert(model, spec, batch=2)
    ops = litert.op_names(tflite)["serving_default"]
    assert not litert.disallowed(ops), ops
    # The fused op computes tanh only: a softsign LSTM is unrolled like the GRU and vanilla layers.
    fused = layers if cell == "lstm" and activation == "tanh" else 0
    assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == fused, ops
    runner = litert.Runner(tflite)
    expected = _keras(model, spec, x)
    for _ in range(2):
        np.testing.assert_allclose(runner(sequences=x)["predictions"], expected["predictions"], atol=1e-5)
    proto = onnx_export.convert(model, spec)
    kinds = [node.op_type for node in proto.graph.node]
    assert kinds.count(onnx_export.RECURRENT_OPS[cell]) == layers and not {"Loop", "Scan"} & set(kinds), kinds
    session = onnx_export.Runner(proto.SerializeToString())
    np.testing.assert_allclose(session(sequences=x)["predictions"], expected["predictions"], atol=1e-5)


def test_a_pixel_sequence_lstm_is_one_fused_op_over_784_steps():
    model, spec = _model(dataset="fashion_mnist", sequence="pixels")
    x = np.random.default_rng(1).random((1, 28, 28)).astype(np.float32)
    tflite = litert.convert(model, spec, batch=1)
    assert litert.op_names(tflite)["serving_default"].count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    np.testing.assert_allclose(litert.Runner(tflite)(images=x)["logits"], _keras(model, spec, x)["logits"], atol=1e-5)


@pytest.fixture(scope="module")
def adding_run(tmp_path_factory):
    """A tiny adding-problem run: its workdir (model.keras, config.json, saved_model/)."""
    workdir = tmp_path_factory.mktemp("adding_run") / "run"
    with op_determinism_restored():
        train.train_and_evaluate(resolve("seed", overrides=dict(units=6, steps=4, **ADDING)), workdir)
    return workdir


def test_export_writes_every_format_and_predict_answers_the_same_from_each(adding_run, tmp_path, capsys):
    out = tmp_path / "export"
    argv = [str(adding_run / "model.keras"), "--out", str(out), "--format", "saved_model", "litert", "onnx",
            "--batch", "2", "--quantize", "float16", "dynamic", "int8"]
    assert export.main(argv) == 0
    printed = capsys.readouterr().out
    files = ["model.tflite", "model_float16.tflite", "model_dynamic.tflite", "model_int8.tflite", "model.onnx"]
    assert all((out / f).is_file() and f in printed for f in files) and (out / "saved_model.pb").is_file()
    for f in files[:4]:
        meta = litert.read_metadata((out / f).read_bytes())
        assert meta["batch"] == 2 and meta["quantize"] == (f[6:-7] or None) and meta["spec"]["task"] == "regression"
    x = np.random.default_rng(2).random((5, 7, 2)).astype(np.float32)  # 5: the 2-batch file pads its last batch.
    x[:, :, 1] = 0
    x[:, [1, 4], 1] = 1
    np.save(tmp_path / "x.npy", x)
    answers = {}
    for model in (out, out / "model.tflite", out / "model.onnx", adding_run / "model.keras"):
        assert predict.main([str(model), str(tmp_path / "x.npy"), "--batch-size", "3"]) == 0
        result = capsys.readouterr()
        answers[model.name] = result.out
        runtime = {"export": "TensorFlow", "model.tflite": "LiteRT", "model.onnx": "ONNX Runtime",
                   "model.keras": "Keras"}[model.name]
        assert result.err.startswith(f"answered by {runtime}") and result.err.count("\n") == 1, result.err
    assert len(set(answers.values())) == 1 and answers["export"].count("\n") == 5, answers


def test_a_tflite_alone_carries_what_predict_needs(adding_run, tmp_path, capsys):
    export.export_litert(keras.saving.load_model(adding_run / "model.keras"), tmp_path / "e", export.read_spec(adding_run, None))
    lonely = tmp_path / "elsewhere" / "m.tflite"
    lonely.parent.mkdir()
    shutil.copy(tmp_path / "e" / "model.tflite", lonely)
    np.save(tmp_path / "x.npy", np.zeros((7, 2), np.float32))
    assert predict.main([str(lonely), str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.count("\n") == 1


def test_int8_is_integer_throughout_and_close_to_float(adding_run, tmp_path):
    spec = export.read_spec(adding_run, None)
    model = keras.saving.load_model(adding_run / "model.keras")
    sample = export.representative_inputs(adding_run, spec)
    assert sample.shape == (256, 7, 2) and sample.dtype == np.float32
    written = export.export_litert(model, tmp_path, spec, quantize=["int8"], representative=sample)
    float_file, int8_file = (p.read_bytes() for p in written)
    assert "step" not in litert.op_names(int8_file) and {"QUANTIZE", "DEQUANTIZE"} <= set(
        litert.op_names(int8_file)["serving_default"])
    from ai_edge_litert.interpreter import Interpreter

    weights = {d["dtype"] for d in Interpreter(model_content=int8_file).get_tensor_details()
               if len(d["shape"]) == 2 and d["shape"][0] > 1}
    assert np.int8 in weights, weights
    x = sample[:20]
    reference = np.concatenate([litert.Runner(float_file)(sequences=x[i:i + 1])["predictions"] for i in range(20)])
    quantized = np.concatenate([litert.Runner(int8_file)(sequences=x[i:i + 1])["predictions"] for i in range(20)])
    scale = np.abs(reference).max()
    assert 0 < np.abs(quantized - reference).max() < 0.05 * scale


@pytest.mark.parametrize("runtime", ["litert", "onnx"])
@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 7, 2), np.float32), r"sequences is \[3, 7, 2\]; this \.(tflite|onnx) takes"),
    (np.zeros((2, 8, 2), np.float32), r"sequences is \[2, 8, 2\]"),
    (np.zeros((2, 7, 2), np.float64), r"sequences is float64; this \.(tflite|onnx) takes float32"),
])
def test_each_runtime_refuses_a_wrong_shape_or_dtype_in_one_line(runtime, bad, message):
    model, spec = _model(**ADDING)
    if runtime == "litert":
        runner = litert.Runner(litert.convert(model, spec, batch=2))
    else:
        runner = onnx_export.Runner(onnx_export.convert(model, spec).SerializeToString())
        if bad.shape[0] == 3:  # The ONNX batch is dynamic: 3 is as good as 2.
            assert runner(sequences=bad)["predictions"].shape == (3, 1)
            return
    with pytest.raises(cli.RunError, match=message) as e:
        runner(sequences=bad)
    assert "\n" not in str(e.value)
    if runtime == "litert" and bad.shape[0] == 3:
        assert "export with --batch 3" in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--quantize", "int8"], "--quantize applies to --format litert"),
    (["--format", "litert", "--batch", "0"], "--batch 0: must be >= 1"),
    (["--format", "tflite"], "invalid choice: 'tflite'"),
])
def test_export_refuses_bad_flags_in_one_line(adding_run, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        export.main([str(adding_run / "model.keras"), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt, package", [("litert", "ai_edge_litert"), ("onnx", "tf2onnx")])
def test_a_missing_runtime_names_the_extra_in_one_line(adding_run, tmp_path, capsys, monkeypatch, fmt, package):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(SystemExit) as e:
        export.main([str(adding_run / "model.keras"), "--out", str(tmp_path / "o"), "--format", fmt])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install -e '.[export]'" in err and err.count("\n") == 1, err


def test_predict_refuses_a_file_it_cannot_read_in_one_line(tmp_path, capsys):
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    np.save(tmp_path / "x.npy", np.zeros((7, 2), np.float32))
    with pytest.raises(SystemExit) as e:
        predict.main([str(tmp_path / "bad.tflite"), str(tmp_path / "x.npy")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "bad.tflite: cannot be loaded" in err and err.count("\n") == 1, err


def test_the_onnx_recurrent_nodes_are_checked_against_the_layers():
    """A layer tf2onnx left as a loop is an error, never a file."""
    model, spec = _model(cell="gru", **ADDING)
    proto = onnx.ModelProto()
    with pytest.raises(ValueError, match="1 recurrent layers became 0 ONNX recurrent ops"):
        onnx_export._finish_recurrent_nodes(proto, model.get_layer("rnn").rnns)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_per_step_models_step_signature_gives_each_scored_steps_outputs(cell):
    """Wider than the recalled steps (12 units > 10 steps), so a head that still slices steps would slice units."""
    import tensorflow as tf

    from tf_rnn import streaming

    model, spec = _model(cell=cell, units=12, dataset="copy", seq_len=3)
    x = np.eye(10, dtype=np.float32)[np.random.default_rng(3).integers(0, 10, (2, 23))]
    full = _keras(model, spec, x)
    runner = litert.Runner(litert.convert(model, spec, batch=2))
    state = {k: v.numpy() for k, v in streaming.zero_state(model, 2).items()}
    lite_state = dict(state)
    for t in range(23):
        outputs, state = streaming.step(model, tf.constant(x[:, t]), state)
        lite = runner("step", inputs_t=x[:, t], **lite_state)
        lite_state = {k: lite.pop(k) for k in lite_state}
        if t >= 23 - spec.output_steps:
            expected = full["logits"][:, t - (23 - spec.output_steps)]
            np.testing.assert_allclose(np.asarray(outputs), expected, atol=1e-5)
            np.testing.assert_allclose(lite["logits"], expected, atol=1e-5)


SERVE_WITHOUT_TENSORFLOW = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
import onnxruntime

x, expected = np.load(sys.argv[3]), np.load(sys.argv[4])
interpreter = Interpreter(sys.argv[1])
runner = interpreter.get_signature_runner("serving_default")
runner(sequences=np.zeros_like(x[:1]))  # Allocates the signature's tensors, which resetting needs.
lite = []
for row in x:
    interpreter.reset_all_variables()  # As the README says: before every request.
    lite.append(runner(sequences=row[None])["predictions"][0])
session = onnxruntime.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
onnx_out = session.run(["predictions"], {"sequences": x})[0]
assert not {"tensorflow", "keras", "tf_rnn"} & set(sys.modules), sorted(sys.modules)
np.testing.assert_allclose(np.array(lite), expected, atol=1e-5)
np.testing.assert_allclose(onnx_out, expected, atol=1e-5)
print("served", len(x))
"""


def test_a_process_without_tensorflow_serves_the_tflite_and_onnx_as_the_readme_says(adding_run, tmp_path):
    import subprocess
    import sys

    model = keras.saving.load_model(adding_run / "model.keras")
    spec = export.read_spec(adding_run, None)
    tflite, = export.export_litert(model, tmp_path, spec)
    onnx_file = export.export_onnx(model, tmp_path, spec)
    x = np.random.default_rng(4).random((4, 7, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", _keras(model, spec, x)["predictions"])
    done = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_TENSORFLOW, str(tflite), str(onnx_file),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "served 4" in done.stdout, done.stderr[-3000:]


def test_the_metadata_rewrite_drops_only_buffers_no_tensor_uses():
    from ai_edge_litert import schema_py_generated as schema

    model, spec = _model(**ADDING)
    raw = litert.convert(model, spec, batch=2, quantize="int8",
                         representative=np.random.default_rng(5).random((8, 7, 2)).astype(np.float32))
    final = litert.with_metadata(raw, {"answer": 42})
    parsed = schema.Model.GetRootAsModel(final, 0)
    used = {0} | {parsed.Subgraphs(g).Tensors(i).Buffer() for g in range(parsed.SubgraphsLength())
                  for i in range(parsed.Subgraphs(g).TensorsLength())}
    used |= {parsed.Metadata(i).Buffer() for i in range(parsed.MetadataLength())}
    assert used == set(range(parsed.BuffersLength())) and litert.read_metadata(final) == {"answer": 42}
    x = np.random.default_rng(6).random((2, 7, 2)).astype(np.float32)
    np.testing.assert_array_equal(litert.Runner(final)(sequences=x)["predictions"],
                                  litert.Runner(raw)(sequences=x)["predictions"])


def test_an_export_that_fails_midway_leaves_no_folder_behind(adding_run, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise cli.RunError("tf2onnx failed")

    monkeypatch.setattr(export, "export_onnx", broken)
    with pytest.raises(SystemExit):
        export.main([str(adding_run / "model.keras"), "--out", str(tmp_path / "o"), "--format", "saved_model", "onnx"])
    assert "tf2onnx failed" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_predict_names_the_extra_a_tflite_needs_and_refuses_a_broken_keras_file(tmp_path, capsys, monkeypatch):
    import importlib.util

    np.save(tmp_path / "x.npy", np.zeros((7, 2), np.float32))
    (tmp_path / "m.tflite").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else
                        real(name, *a))
    with pytest.raises(SystemExit) as e:
        predict.main([str(tmp_path / "m.tflite"), str(tmp_path / "x.npy")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "m.tflite (.tflite) needs ai-edge-litert" in err and err.count("\n") == 1, err
    monkeypatch.undo()
    (tmp_path / "model.keras").write_bytes(b"not a zip")  # No data_spec.json beside: an image classifier.
    np.save(tmp_path / "image.npy", np.zeros((28, 28), np.uint8))
    with pytest.raises(SystemExit) as e:
        predict.main([str(tmp_path / "model.keras"), str(tmp_path / "image.npy")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "cannot be loaded as a Keras model" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("batch, flex", [(None, True), (2, False)])
def test_the_op_check_names_the_flex_ops_and_the_while_of_keras_own_lstm_graph(batch, flex):
    """Keras 3's own LSTM graph, converted as upstream converts it: with Flex allowed it holds Flex TensorList ops
    and a WHILE; at a fixed batch, built-ins only, a WHILE. The check every export test relies on must name them."""
    import tensorflow as tf

    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, keras.layers.LSTM(4)(inputs))
    holder = tf.Module()
    holder.variables_ = [w.value for w in model.weights]
    function = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([batch, 5, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                           *([tf.lite.OpsSet.SELECT_TF_OPS] if flex else [])]
    ops, = litert.op_names(converter.convert()).values()
    bad = litert.disallowed(ops)
    assert "WHILE" in bad and "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops
    assert any(op.startswith("CUSTOM:Flex") for op in bad) == flex, bad
