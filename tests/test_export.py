"""tf_rnn.export and tf_rnn.predict: signatures, portability, serving without tf_rnn, and bad inputs."""

import gzip
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from support import idx_bytes, synthetic_arrays
from tf_rnn import datasets, export, fused, predict
from tf_rnn.config import resolve
from tf_rnn.models import build_model


@pytest.fixture(scope="module")
def model():
    return build_model(resolve(overrides=dict(units=8, layers=2, cell="lstm")))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export.export_saved_model(model, tmp_path_factory.mktemp("e") / "sm", "fashion_mnist")


@pytest.fixture(scope="module")
def images():
    return synthetic_arrays(n_train=1, n_test=5).x_test


def test_export_never_contains_cudnn_ops_even_when_a_gpu_is_seen(model, tmp_path):
    # Make Keras believe a GPU is present, as on a training host: its LSTM would then trace CudnnRNNV3.
    # (On such a host tf_rnn's fused CPU path is off too, since a GPU is visible.)
    keras_tf_rnn = sys.modules["keras.src.backend.tensorflow.rnn"]
    with mock.patch.object(keras_tf_rnn, "_is_gpu_available", return_value=True), \
            mock.patch.object(fused, "available", return_value=False):
        traced = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec([None, 28, 28]))
        graph = traced.graph.as_graph_def()
        traced_ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
        assert any("Cudnn" in op for op in traced_ops)  # The hazard is real...
        ops = export.saved_model_op_types(export.export_saved_model(model, tmp_path / "sm"))
    assert not [op for op in ops if "Cudnn" in op]  # ...and the export avoids it.
    assert {"While", "MatMul", "Sigmoid"} <= ops  # The generic LSTM loop is what got saved.
    assert all(layer.use_cudnn == "auto" for layer in model.get_layer("rnn").rnns)  # Restored for training.


SERVE_WITHOUT_TF_RNN = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf, keras
    export_dir, images_path, expected_path = sys.argv[1:]
    images, expected = np.load(images_path), np.load(expected_path)
    loaded = tf.saved_model.load(export_dir)
    out = loaded.signatures["serving_default"](images=tf.constant(images.astype("float32") / 255))
    raw = loaded.signatures["serve_uint8"](images=tf.constant(images))
    layer = keras.layers.TFSMLayer(export_dir, call_endpoint="serve_uint8")
    via_layer = layer(images)
    assert "tf_rnn" not in sys.modules and "legacy_port" not in sys.modules
    for logits in (out["logits"], raw["logits"], via_layer["logits"]):
        np.testing.assert_allclose(logits.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(1), 1, atol=1e-5)
    assert (out["classes"].numpy() == expected.argmax(1)).all()
    print("served", len(images))
""")


def test_serving_process_without_tf_rnn_gets_the_keras_logits(model, exported, images, tmp_path):
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", model.predict(images.astype("float32") / 255, verbose=0))
    out = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TF_RNN, str(exported), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0 and "served 5" in out.stdout, out.stderr[-3000:]


def test_saved_model_cli_finds_both_signatures(exported):
    cli = Path(sys.executable).parent / "saved_model_cli"
    out = subprocess.run([str(cli), "show", "--dir", str(exported), "--all"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for signature in ("signature_def['serving_default']", "signature_def['serve_uint8']"):
        assert signature in out.stdout
    assert "DT_UINT8" in out.stdout and "shape: (-1, 28, 28)" in out.stdout
    for output in ("outputs['logits']", "outputs['probabilities']", "outputs['classes']"):
        assert output in out.stdout


def test_signatures_refuse_wrong_shape_dtype_and_range(exported, images):
    loaded = tf.saved_model.load(str(exported))
    serve, serve_uint8 = loaded.signatures["serving_default"], loaded.signatures["serve_uint8"]
    assert serve(images=tf.zeros([7, 28, 28]))["logits"].shape == (7, 10)  # Dynamic batch.
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(images=tf.zeros([2, 28, 27]))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(images=tf.zeros([2, 28, 28], tf.int32))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve_uint8(images=tf.zeros([2, 28, 28], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"float32 in \[0, 1\].*serve_uint8"):
        serve(images=tf.constant(images.astype("float32")))  # 0-255 floats: refused, not silently misread.
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(images=tf.fill([1, 28, 28], float("nan")))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"float32 in \[0, 1\]"):
        serve(images=tf.fill([1, 28, 28], -0.5))  # Negative values: refused too, not answered.


def test_export_never_overwrites(model, exported, capsys, tmp_path):
    with pytest.raises(FileExistsError):
        export.export_saved_model(model, exported)
    path = tmp_path / "m.keras"
    model.save(path)
    with pytest.raises(SystemExit) as e:
        export.main([str(path), "--out", str(exported)])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err


def test_predict_reads_every_format_and_agrees_with_the_model(model, exported, images, tmp_path, capsys):
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "b.npz", x_test=images[:2])
    (tmp_path / "c-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images[:3], "images")))
    (tmp_path / "d.png").write_bytes(tf.io.encode_png(images[0][..., None]).numpy())
    assert predict.main([str(exported)] + [str(tmp_path / f) for f in ("a.npy", "b.npz", "c-idx3-ubyte.gz", "d.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 + 2 + 3 + 1
    expected = model.predict(images / 255, verbose=0).argmax(1)
    names = datasets.image_spec("fashion_mnist").class_names
    got = [int(line.split("\t")[1].split()[0]) for line in lines]
    assert got == list(expected) + list(expected[:2]) + list(expected[:3]) + [expected[0]]
    assert f"({names[expected[0]]})" in lines[0] and lines[-1].startswith(str(tmp_path / "d.png") + "\t")


@pytest.mark.parametrize("name, content, message", [
    ("nan.npy", np.full((2, 28, 28), np.nan, np.float32), "contains NaN"),
    ("big.npy", np.zeros((2, 32, 32), np.uint8), r"shape \[2, 32, 32\]; expected \[28, 28\]"),
    ("range.npy", np.full((1, 28, 28), 255.0, np.float32), r"values in \[255, 255\]; expected uint8"),
    ("negative.npy", np.full((1, 28, 28), -0.25, np.float32), r"values in \[-0.25, -0.25\]; expected uint8"),
    ("bad.png", b"not a png", "bad.png: cannot be decoded"),
    ("trunc-idx3-ubyte", idx_bytes(np.zeros((3, 28, 28)), "images")[:-5], "header promises 3x28x28"),
    ("notes.txt", b"hello", "unknown file type"),
    ("missing.png", None, "cannot be read"),
])
def test_predict_bad_inputs_get_one_line(exported, tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        predict.main([str(exported), str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    import re
    assert re.search(message, err), err


def test_predict_numbers_each_image_by_its_index_in_the_file_across_batches(model, exported, tmp_path, capsys):
    # Five different images sent in batches of 2: the index column must count across batches (0..4), and each
    # line's class must be the model's answer for that very image.
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "five.npy", images)
    assert predict.main([str(exported), str(tmp_path / "five.npy"), "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = model.predict(images / 255, verbose=0)
    assert [line.split("\t")[0] for line in lines] == [f"{tmp_path / 'five.npy'}[{k}]" for k in range(5)]
    for k, line in enumerate(lines):
        cls, prob = int(line.split("\t")[1].split()[0]), float(line.split("\t")[2][2:])
        assert cls == expected[k].argmax()
        assert prob == pytest.approx(float(tf.nn.softmax(expected[k])[cls]), abs=1e-4)


def test_predict_refuses_a_zero_batch_size(exported, tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(SystemExit) as e:
        predict.main([str(exported), str(tmp_path / "a.npy"), "--batch-size", "0"])
    assert e.value.code == 2 and "--batch-size 0: must be >= 1" in capsys.readouterr().err
