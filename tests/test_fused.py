"""tf_rnn.fused: the CPU LSTM path equals keras.layers.LSTM (forward and gradients), falls back cleanly, and
never reaches an export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rnn import export, fused
from tf_rnn.config import resolve
from tf_rnn.layers import StackedRNN
from tf_rnn.models import build_model


@pytest.fixture
def fresh(monkeypatch):
    """tf_rnn.fused as a new process would find it, with no switch set (on by default)."""
    monkeypatch.setattr(fused, "_module", None)
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.delenv(fused.ENV_SWITCH, raising=False)


@pytest.fixture
def kernels(fresh):
    if fused.kernels() is None:
        if os.environ.get("CI"):
            pytest.fail("the fused LSTM kernel did not build in CI (g++ and TensorFlow's headers are needed)")
        pytest.skip("fused LSTM kernel not buildable here")
    return fused.kernels()


# (batch, time, features, units): the seed's shape at an odd batch; units not a multiple of 4 (the kernel's
# narrow last column panel) with a single step; batches that leave 1- and 2-row remainders in each thread's block.
SHAPES = [(9, 28, 28, 64), (1, 1, 3, 5), (13, 4, 7, 16), (130, 3, 5, 8)]


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("batch,time,features,units", SHAPES)
def test_fused_lstm_equals_keras_lstm_forward_and_gradients(kernels, return_sequences, batch, time, features, units):
    x = tf.constant(np.random.default_rng(0).random((batch, time, features)).astype("float32"))
    layer = keras.layers.LSTM(units, return_sequences=return_sequences)
    layer.build(x.shape)
    cell = layer.cell
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        expected = layer(x)
        got = fused.lstm(x, cell.kernel, cell.recurrent_kernel, cell.bias, return_sequences)
        # A loss that weighs every output differently, so that no gradient can cancel out.
        loss_expected, loss_got = tf.reduce_sum(tf.sin(3 * expected)), tf.reduce_sum(tf.sin(3 * got))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    sources = [x, cell.kernel, cell.recurrent_kernel, cell.bias]
    got_grads = tape.gradient(loss_got, sources)
    for a, b in zip(got_grads, tape.gradient(loss_expected, sources)):
        b = np.asarray(b)
        scale = np.abs(b).max() or 1.0  # One step: the recurrent kernel's gradient is exactly 0.
        np.testing.assert_allclose(np.asarray(a) / scale, b / scale, atol=1e-5)
    # Bitwise the same again: each thread sums its rows in a fixed order (resumed runs rely on it).
    with tf.GradientTape() as tape:
        tape.watch(x)
        again = tape.gradient(tf.reduce_sum(tf.sin(3 * fused.lstm(x, *sources[1:], return_sequences))), sources)
    for a, b in zip(got_grads, again):
        np.testing.assert_array_equal(a, b)


def test_kernel_refuses_inconsistent_shapes(kernels):
    x, kernel = tf.zeros([2, 3, 4]), tf.zeros([5, 8])  # kernel should be [4, 8]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"need x \[batch, time, features\], kernel \[features"):
        kernels.tf_rnn_lstm_forward(x, kernel, tf.zeros([2, 8]), tf.zeros([8]))


def test_stacked_rnn_trains_through_the_fused_path_on_a_cpu_and_infers_without_it(kernels, monkeypatch):
    calls = []
    real = fused.lstm
    monkeypatch.setattr(fused, "lstm", lambda *a, **k: calls.append(1) or real(*a, **k))
    rnn = StackedRNN(units=[8, 8])
    x = np.random.rand(2, 28, 28).astype("float32")
    out = rnn(x, training=True)
    assert len(calls) == 2 and out.shape == (2, 8)
    # Inference (and so every trace a save path makes) never uses the compiled ops, and gives the same numbers.
    for training in (False, None):
        np.testing.assert_allclose(rnn(x, training=training), out, atol=1e-5)
    assert len(calls) == 2
    StackedRNN(cell="gru", units=4)(np.ones((1, 28, 28), "float32"), training=True)
    assert len(calls) == 2


def test_training_through_the_fused_path_equals_keras(kernels, monkeypatch):
    """Two fit steps of a 2-layer model, fused vs Keras' LSTM from the same weights: the same weights after.
    The second layer's input gradient (dx) is what trains the first layer."""
    config = resolve(overrides=dict(units=8, layers=2, dropout=0.0, lr=0.05))
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 28, 28)).astype("float32"), rng.integers(0, 10, 32)
    trained = []
    for use_fused in (True, False):
        monkeypatch.setattr(fused, "available", lambda: use_fused)
        keras.utils.set_random_seed(0)
        model = build_model(config)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        trained.append(model.get_weights())
    keras.utils.set_random_seed(0)
    before = build_model(config).get_weights()
    for a, b, w0 in zip(*trained, before):
        assert not np.allclose(b, w0)  # Every weight moved, so agreeing means something.
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_falls_back_to_keras_when_the_kernel_cannot_be_built(fresh, monkeypatch):
    monkeypatch.setattr(fused, "build", lambda: (_ for _ in ()).throw(RuntimeError("no C++ compiler (g++) on PATH")))
    with pytest.warns(UserWarning, match="fused CPU LSTM kernel unavailable .*no C\\+\\+ compiler.*keras.layers.LSTM"):
        assert not fused.available()
    rnn = StackedRNN(units=[8])
    x = np.random.rand(3, 28, 28).astype("float32")
    np.testing.assert_allclose(rnn(x), rnn.rnns[0](x), atol=1e-6)  # The Keras layer itself computed it.


def test_on_by_default_and_off_when_switched_off(kernels, monkeypatch):
    assert fused.available()
    monkeypatch.setattr(fused, "_module", None)
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    assert fused.kernels() is None and not fused.available()


def test_export_contains_no_custom_ops(kernels, tmp_path):
    model = build_model(resolve(overrides=dict(units=8, layers=2)))
    x = np.random.rand(4, 28, 28).astype("float32")
    ops = export.saved_model_op_types(export.export_saved_model(model, tmp_path / "sm"))
    assert not [op for op in ops if op.startswith("TfRnn")]  # Servable without tf_rnn's compiled kernels.
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["logits"], model(x, training=True), atol=1e-5)  # Fused, without dropout.
