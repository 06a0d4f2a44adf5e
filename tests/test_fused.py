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
    """tf_rnn.fused as a new process would find it, switched on."""
    monkeypatch.setattr(fused, "_module", None)
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setenv(fused.ENV_SWITCH, "1")


@pytest.fixture
def kernels(fresh):
    if fused.kernels() is None:
        if os.environ.get("CI"):
            pytest.fail("the fused LSTM kernel did not build in CI (g++ and TensorFlow's headers are needed)")
        pytest.skip("fused LSTM kernel not buildable here")
    return fused.kernels()


@pytest.mark.parametrize("return_sequences", [False, True])
def test_fused_lstm_equals_keras_lstm_forward_and_gradients(kernels, return_sequences):
    x = tf.constant(np.random.default_rng(0).random((9, 28, 28)).astype("float32"))  # An odd batch.
    layer = keras.layers.LSTM(64, return_sequences=return_sequences)
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
    for a, b in zip(tape.gradient(loss_got, sources), tape.gradient(loss_expected, sources)):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a) / np.abs(b).max(), b / np.abs(b).max(), atol=1e-5)


def test_stacked_rnn_trains_through_the_fused_path_on_a_cpu(kernels, monkeypatch):
    calls = []
    real = fused.lstm
    monkeypatch.setattr(fused, "lstm", lambda *a, **k: calls.append(1) or real(*a, **k))
    rnn = StackedRNN(units=[8, 8])
    out = rnn(np.random.rand(2, 28, 28).astype("float32"))
    assert len(calls) == 2 and out.shape == (2, 8)
    assert not StackedRNN(cell="gru", units=4)(np.ones((1, 28, 28), "float32")) is None and len(calls) == 2


def test_falls_back_to_keras_when_the_kernel_cannot_be_built(fresh, monkeypatch):
    monkeypatch.setattr(fused, "build", lambda: (_ for _ in ()).throw(RuntimeError("no C++ compiler (g++) on PATH")))
    with pytest.warns(UserWarning, match="fused CPU LSTM kernel unavailable .*no C\\+\\+ compiler.*keras.layers.LSTM"):
        assert not fused.available()
    rnn = StackedRNN(units=[8])
    x = np.random.rand(3, 28, 28).astype("float32")
    np.testing.assert_allclose(rnn(x), rnn.rnns[0](x), atol=1e-6)  # The Keras layer itself computed it.


def test_off_unless_switched_on(fresh, monkeypatch):
    monkeypatch.delenv(fused.ENV_SWITCH)
    assert fused.kernels() is None and not fused.available()


def test_export_contains_no_custom_ops(kernels, tmp_path):
    model = build_model(resolve(overrides=dict(units=8, layers=2)))
    x = np.random.rand(4, 28, 28).astype("float32")
    ops = export.saved_model_op_types(export.export_saved_model(model, tmp_path / "sm"))
    assert not [op for op in ops if op.startswith("TfRnn")]  # Servable without tf_rnn's compiled kernels.
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["logits"], model(x), atol=1e-5)  # model(x) here runs the fused path.
