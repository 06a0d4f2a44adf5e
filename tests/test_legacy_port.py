"""legacy_port: the TF1 program on TF 2, its bug fixes, its cell against the real TF1 cell, and the Keras bridge."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import synthetic_arrays, skip_or_fail
from legacy_port import mnist_lstm
from tf_rnn import convert_tf1, datasets

v1 = tf.compat.v1


def tiny_mnist():
    arrays = synthetic_arrays()
    return mnist_lstm.argparse.Namespace(
        train=mnist_lstm.DataSet(arrays.x_train, arrays.y_train), test=mnist_lstm.DataSet(arrays.x_test, arrays.y_test)
    )


def test_log_fires_every_10th_step_exactly():
    lines = []
    with tf.Graph().as_default():
        g = mnist_lstm.build_graph()
        with v1.Session() as sess:
            sess.run(g.init)
            logged = mnist_lstm.train(sess, g, tiny_mnist(), iters=128 * 36, log=lines.append)
    # The seed's `step & display_step == 0` would have logged at 1, 4, 5, 16, 17, 20, 21, 32, 33.
    assert logged == [10, 20, 30] and len(lines) == 4 and lines[-1] == "Optimization Finished!"
    assert lines[0].startswith("Iter 1280, Minibatch Loss= ")


def test_reported_accuracy_is_on_all_test_images_and_graph_is_fixed():
    mnist = tiny_mnist()
    with tf.Graph().as_default():
        g = mnist_lstm.build_graph()
        assert g.x.op.type == "Placeholder" and g.x.shape.as_list() == [None, 28, 28]  # x is not rebound.
        with v1.Session() as sess:
            sess.run(g.init)
            # The output layer starts small (the seed's std-1.0 normal gave weights of std 1).
            assert sess.run(g.weights).std() < 0.2 and not sess.run(g.biases).any()
            mnist_lstm.train(sess, g, mnist, iters=128 * 3, log=lambda s: None)
            accuracy, logits = mnist_lstm.evaluate(sess, g, mnist.test.images, mnist.test.labels, chunk=64)
    assert logits.shape == (200, 10)  # All test images, in chunks that do not divide 200.
    expected = (logits.argmax(1) == synthetic_arrays().y_test).mean()
    assert accuracy == pytest.approx(expected)


CELL_CHECK = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    from legacy_port.basic_lstm_cell import BasicLSTMCell
    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    x_val = rng.normal(size=(4, 28, 28)).astype(np.float32)
    results = []
    for make in (lambda: v1.nn.rnn_cell.BasicLSTMCell(16, forget_bias=1.0), lambda: BasicLSTMCell(16, 1.0)):
        with tf.Graph().as_default():
            x = v1.placeholder(tf.float32, [None, 28, 28])
            outputs, state = v1.nn.static_rnn(make(), tf.unstack(tf.transpose(x, [1, 0, 2])), dtype=tf.float32)
            variables = {v.name: v for v in v1.global_variables()}
            assert sorted(variables) == ["rnn/basic_lstm_cell/bias:0", "rnn/basic_lstm_cell/kernel:0"], variables
            with v1.Session() as sess:
                sess.run(variables["rnn/basic_lstm_cell/kernel:0"].assign(rng_k := np.random.default_rng(1).normal(0, 0.3, (44, 64)).astype(np.float32)))
                sess.run(variables["rnn/basic_lstm_cell/bias:0"].assign(np.random.default_rng(2).normal(0, 0.3, 64).astype(np.float32)))
                results.append(sess.run([outputs, state], {x: x_val}))
    (out_a, st_a), (out_b, st_b) = results
    diff = max(np.abs(np.array(out_a) - np.array(out_b)).max(), np.abs(np.array(st_a) - np.array(st_b)).max())
    print("real cell:", type(v1.nn.rnn_cell.BasicLSTMCell(1)).__module__, "max abs diff:", diff)
    assert diff <= 1e-6 and np.abs(np.array(out_a)).max() > 0.1
""")


def test_cell_matches_the_real_tf1_basic_lstm_cell():
    if importlib.util.find_spec("tf_keras") is None:
        skip_or_fail("tf-keras not installed", "pip install --no-deps tf-keras==2.21.0")
    # The real cell exists only with the legacy Keras 2 switched on, which must happen before TF is imported:
    # hence a separate process.
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", CELL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "real cell: tf_keras" in out.stdout


@pytest.mark.slow
def test_bridge_gives_identical_logits_on_real_test_images(fashion_dir, tmp_path):
    workdir = tmp_path / "port"
    assert mnist_lstm.main(["--dataset", "fashion_mnist", "--data-dir", str(fashion_dir), "--workdir", str(workdir),
                            "--training-iters", str(128 * 40)]) == 0
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["test_examples"] == 10_000
    images = datasets.load_images("fashion_mnist", fashion_dir).x_test[:2000].astype(np.float32) / 255
    with tf.Graph().as_default():
        g = mnist_lstm.build_graph()
        with v1.Session() as sess:
            v1.train.Saver().restore(sess, str(workdir / "model.ckpt"))
            tf1_logits = sess.run(g.pred, {g.x: images})
    assert convert_tf1.main([str(workdir), "--out", str(tmp_path / "seed.keras")]) == 0
    model = keras.saving.load_model(tmp_path / "seed.keras")
    keras_logits = model.predict(images, verbose=0)
    assert np.abs(tf1_logits - keras_logits).max() <= 1e-5
    assert np.abs(tf1_logits).max() > 1  # Trained, not near-zero logits.
    # The port's reported accuracy on all 10,000 images is the converted model's too.
    all_images = datasets.load_images("fashion_mnist", fashion_dir)
    acc = (model.predict(all_images.x_test / 255, verbose=0).argmax(1) == all_images.y_test).mean()
    assert acc == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_bridge_refuses_another_shape_naming_found_and_expected(tmp_path, capsys):
    with tf.Graph().as_default():
        v1.get_variable("rnn/basic_lstm_cell/kernel", [30, 64])  # 30 = 14 inputs + 16 units: not 28 inputs.
        v1.get_variable("rnn/basic_lstm_cell/bias", [64])
        v1.get_variable("weights", [16, 10])
        v1.get_variable("biases", [10])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(tmp_path / "ck" / "model.ckpt"))
    with pytest.raises(convert_tf1.ConversionError, match=r"found variables .*'rnn/basic_lstm_cell/kernel': \[30, 64\].*expected rnn/basic_lstm_cell/kernel \[28\+U, 4U\]"):
        convert_tf1.convert(tmp_path / "ck")
    with pytest.raises(SystemExit) as e:
        convert_tf1.main([str(tmp_path / "ck"), "--out", str(tmp_path / "x.keras")])
    assert e.value.code == 1 and capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "x.keras").exists()
    with pytest.raises(convert_tf1.ConversionError, match="no TF1 checkpoint found"):
        convert_tf1.convert(tmp_path)


def test_bridge_never_overwrites(tmp_path, capsys):
    out = tmp_path / "m.keras"
    out.write_text("mine")
    with pytest.raises(SystemExit) as e:
        convert_tf1.main([str(tmp_path), "--out", str(out)])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err and out.read_text() == "mine"


def test_gate_reorder_against_the_seed_equations():
    # Independent reference: one TF1 step written in numpy from the seed's equations, from a non-zero state so
    # that every gate (the forget gate and its bias included) shapes the output.
    rng = np.random.default_rng(0)
    units, kernel, bias = 8, rng.normal(0, 0.5, (36, 32)).astype("float32"), rng.normal(0, 0.5, 32).astype("float32")
    x = rng.normal(size=(3, 1, 28)).astype("float32")
    h0, c0 = rng.normal(size=(3, units)).astype("float32"), rng.normal(size=(3, units)).astype("float32")
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    i, j, f, o = np.split(np.concatenate([x[:, 0], h0], 1) @ kernel + bias, 4, axis=1)
    c = sig(f + 1.0) * c0 + sig(i) * np.tanh(j)
    expected = np.tanh(c) * sig(o)
    lstm = keras.layers.LSTM(units)
    lstm.build(x.shape)
    lstm.set_weights(convert_tf1.tf1_to_keras_lstm(kernel, bias, forget_bias=1.0))
    np.testing.assert_allclose(lstm(x, initial_state=[h0, c0]), expected, atol=1e-5)


def test_main_reports_accuracy_against_the_true_test_labels(tmp_path, monkeypatch):
    """The port's own run on tiny data: its metrics.json accuracy equals an independent count — the converted
    Keras model's predictions against the labels the data set holds."""
    arrays = synthetic_arrays()
    monkeypatch.setattr(mnist_lstm, "read_data_sets", lambda dataset, data_dir, seed=0: tiny_mnist())
    assert mnist_lstm.main(["--workdir", str(tmp_path / "w"), "--training-iters", str(128 * 25)]) == 0
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    model = convert_tf1.convert(tmp_path / "w")
    predicted = model.predict(arrays.x_test.astype("float32") / 255, verbose=0).argmax(1)
    assert metrics["test_examples"] == 200
    assert metrics["test_accuracy"] == pytest.approx((predicted == arrays.y_test).mean(), abs=1e-6)
    assert metrics["test_accuracy"] > 0.3  # It learned something: a wrong label set would sit near 0.1.


def tf1_reference(x, kernel, bias, forget_bias):
    """TF1 BasicLSTMCell over every step, in numpy: `<float32>[batch, time, units]` outputs."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    units = kernel.shape[1] // 4
    h = c = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        i, j, f, o = np.split(np.concatenate([x[:, t], h], 1) @ kernel + bias, 4, axis=1)
        c = c * sig(f + forget_bias) + sig(i) * np.tanh(j)
        h = np.tanh(c) * sig(o)
        outputs.append(h)
    return np.stack(outputs, 1)


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, 2.5])
def test_conversion_matches_tf1_over_many_steps_from_a_nonzero_state(forget_bias):
    # From step 2 on the cell state is non-zero, so the forget gate (and the forget bias folded into Keras' bias)
    # shapes every output; a one-step check from a zero state cannot see it.
    rng = np.random.default_rng(1)
    units, steps = 8, 12
    kernel = rng.normal(0, 0.5, (28 + units, 4 * units)).astype("float32")
    bias = rng.normal(0, 0.5, 4 * units).astype("float32")
    x = rng.normal(size=(3, steps, 28)).astype("float32")
    expected = tf1_reference(x.astype(np.float64), kernel, bias, forget_bias)
    lstm = keras.layers.LSTM(units, return_sequences=True)
    lstm.build(x.shape)
    lstm.set_weights(convert_tf1.tf1_to_keras_lstm(kernel, bias, forget_bias=forget_bias))
    got = np.asarray(lstm(x))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # The check has teeth: the forget bias left out changes the later steps measurably.
    wrong = tf1_reference(x.astype(np.float64), kernel, bias, forget_bias + 1.0)
    assert np.abs(wrong[:, 3:] - expected[:, 3:]).max() > 1e-2


def test_fix_markers_match_the_numbers_in_bugs_md():
    import re
    from pathlib import Path

    root = Path(mnist_lstm.__file__).parent
    bugs = [int(n) for n in re.findall(r"^\| (\d+) \|", (root / "BUGS.md").read_text(), flags=re.M)]
    source = (root / "mnist_lstm.py").read_text()
    marked = [int(n) for n in re.findall(r"FIX\((\d+)\)", source)]
    assert bugs == list(range(1, len(bugs) + 1))
    # Every defect with a code change is marked, and no marker names a defect that BUGS.md does not list.
    assert set(marked) == set(bugs) and len(marked) == len(set(marked))
    # Spot checks that the numbers point at the right lines (BUGS.md: 1 is `&`, 8 the std-1.0 init, 12 nn.rnn).
    line_of = {int(n): line for line in source.splitlines() for n in re.findall(r"FIX\((\d+)\)", line)}
    assert "display_step" in line_of[1] and "std-1.0" in line_of[8] and "static_rnn" in line_of[12]
    assert "softmax" in source.split("FIX(7)")[1].splitlines()[1] and "global_variables" in line_of[9]
