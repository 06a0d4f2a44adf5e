"""tf_rnn.layers and tf_rnn.models: shapes, parameter counts, where dropout is, the seed cell, serialization."""

import warnings

import keras
import numpy as np
import pytest

from tf_rnn import layers
from tf_rnn.config import resolve
from tf_rnn.layers import SeedLSTMCell, StackedRNN
from tf_rnn.models import build_model


def lstm_params(n_in, n):
    return 4 * (n_in * n + n * n + n)


def gru_params(n_in, n):  # reset_after=True (the cuDNN-compatible form) keeps two bias vectors.
    return 3 * (n_in * n + n * n + 2 * n)


@pytest.mark.parametrize(
    "cell, units, expected",
    [
        ("lstm", [128], lstm_params(28, 128)),
        ("lstm", [64, 32], lstm_params(28, 64) + lstm_params(64, 32)),
        ("gru", [16, 16, 8], gru_params(28, 16) + gru_params(16, 16) + gru_params(16, 8)),
        ("simple", [10], 28 * 10 + 10 * 10 + 10),
    ],
)
def test_shapes_and_parameter_counts(cell, units, expected):
    rnn = StackedRNN(cell=cell, units=units)
    x = np.random.rand(3, 28, 28).astype("float32")
    assert tuple(rnn(x).shape) == (3, units[-1])
    assert rnn.count_params() == expected
    seq = StackedRNN(cell=cell, units=units, return_sequences=True)
    assert tuple(seq(x).shape) == (3, 28, units[-1])


def test_seed_preset_model_is_the_seeds():
    model = build_model(resolve("seed"))
    assert model.output_shape == (None, 10)
    # BasicLSTMCell(128) over 28 inputs (4 gates x (28 + 128 + 1) x 128) plus the 128 x 10 output layer.
    assert model.count_params() == 4 * (28 + 128 + 1) * 128 + 128 * 10 + 10
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1e-3)
    assert not [l for l in model.get_layer("rnn").dropouts if l.rate > 0]


def test_dropout_only_between_layers_never_in_the_recurrence():
    rnn = StackedRNN(cell="lstm", units=[8, 8, 8], dropout=0.5)
    rnn.build((None, 28, 28))
    for sub in rnn.rnns:
        assert sub.dropout == 0 and sub.recurrent_dropout == 0
    assert [d.rate for d in rnn.dropouts] == [0.5, 0.5, 0.5]  # After each layer: between layers and on the output.


def test_no_dropout_at_inference_but_dropout_in_training():
    rnn = StackedRNN(units=[16, 16], dropout=0.5)
    x = np.random.rand(4, 28, 28).astype("float32")
    np.testing.assert_array_equal(rnn(x, training=False), rnn(x, training=False))
    assert not np.allclose(rnn(x, training=True), rnn(x, training=False))


def test_cudnn_conditions_hold_for_lstm_and_gru():
    # keras.layers.LSTM/GRU pick cuDNN only with tanh/sigmoid, no recurrent dropout, no unroll, use_bias
    # (and reset_after for GRU). Our stacked layers must keep all of them.
    for cell in ("lstm", "gru"):
        rnn = StackedRNN(cell=cell, units=[8, 8], dropout=0.3)
        for sub in rnn.rnns:
            c = sub.cell
            assert c.activation is keras.activations.tanh and c.recurrent_activation is keras.activations.sigmoid
            assert c.recurrent_dropout == 0 and not sub.unroll and c.use_bias
            if cell == "gru":
                assert c.reset_after


@pytest.mark.parametrize("gpus, warnings_expected", [([], 0), (["/device:GPU:0"], 1)])
def test_softsign_warns_once_where_a_gpu_is_visible_and_applies(monkeypatch, gpus, warnings_expected):
    import tensorflow as tf

    monkeypatch.setattr(layers, "_warned_softsign", False)
    real = tf.config.list_logical_devices
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: gpus if kind == "GPU" else real(kind))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = StackedRNN(units=4, activation="softsign")
        StackedRNN(units=4, activation="softsign")
    assert len([w for w in caught if "cuDNN" in str(w.message)]) == warnings_expected
    assert a.rnns[0].cell.activation is keras.activations.softsign


@pytest.mark.parametrize("kwargs, message", [
    (dict(cell="rnn"), "cell='rnn'; choose one of: lstm, gru, simple"),
    (dict(activation="relu"), "activation='relu'; choose one of: tanh, softsign"),
    (dict(dropout=1.0), r"dropout=1.0; must be in \[0, 1\)"),
    (dict(units=[]), "need at least one layer"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StackedRNN(**kwargs)


def test_l1_l2_regularisation_adds_losses():
    rnn = StackedRNN(units=[4, 4], l1=1e-3, l2=1e-2)
    rnn(np.ones((1, 28, 28), "float32"))
    expected = 0.0
    for sub in rnn.rnns:
        for w in (sub.cell.kernel, sub.cell.recurrent_kernel):
            w = np.asarray(w)
            expected += 1e-3 * np.abs(w).sum() + 1e-2 * np.square(w).sum()
    np.testing.assert_allclose(float(sum(rnn.losses)), expected, rtol=1e-5)


def test_seed_cell_equals_keras_lstm_with_transplanted_weights():
    units, forget_bias = 32, 1.0
    x = np.random.default_rng(0).random((5, 28, 28)).astype("float32")
    reference = keras.layers.LSTM(units)
    expected = np.asarray(reference(x))
    kernel, recurrent, bias = (np.asarray(w) for w in reference.get_weights())
    seed_rnn = keras.layers.RNN(SeedLSTMCell(units, forget_bias=forget_bias))
    seed_rnn.build(x.shape)
    # The seed adds the forget bias as a constant; Keras keeps all of it in the variable: subtract it out.
    bias = bias.copy()
    bias[units:2 * units] -= forget_bias
    seed_rnn.set_weights([kernel, recurrent, bias])
    np.testing.assert_allclose(np.asarray(seed_rnn(x)), expected, atol=1e-5)
    assert np.abs(expected).max() > 0.05  # Not a vacuous comparison of near-zero outputs.


def test_get_config_round_trip():
    rnn = StackedRNN(cell="gru", units=[8, 4], dropout=0.25, activation="tanh", l1=0.1, l2=0.2,
                     return_sequences=True, name="r")
    clone = StackedRNN.from_config(rnn.get_config())
    assert clone.get_config() == rnn.get_config()
    cell = SeedLSTMCell(7, forget_bias=0.5)
    assert SeedLSTMCell.from_config(cell.get_config()).get_config() == cell.get_config()


def test_keras_file_save_and_load(tmp_path):
    model = build_model(resolve(overrides=dict(units=8, layers=2, cell="gru", dropout=0.1)))
    x = np.random.rand(3, 28, 28).astype("float32")
    path = tmp_path / "m.keras"
    model.optimizer.build(model.trainable_variables)  # As a trained model's: no optimizer mismatch on loading.
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert isinstance(loaded.get_layer("rnn"), StackedRNN)
    seed_model = keras.Sequential([keras.Input((28, 28)), keras.layers.RNN(SeedLSTMCell(6))])
    seed_model.save(tmp_path / "s.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "s.keras").predict(x, verbose=0),
                               seed_model.predict(x, verbose=0), atol=1e-6)


def test_label_smoothing_loss_against_numpy():
    from tf_rnn.models import SparseSmoothedCrossentropy

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 10)).astype("float32"), rng.integers(0, 10, 6)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    for s in (0.0, 0.1):
        target = (1 - s) * np.eye(10)[labels] + s / 10
        expected = -(target * log_p).sum(1).mean()
        loss = SparseSmoothedCrossentropy(s)
        np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
        assert SparseSmoothedCrossentropy.from_config(loss.get_config()).label_smoothing == s


def test_augment_auto_flips_fashion_only():
    from tf_rnn import datasets

    def mirrors(config):
        return datasets.get(config.dataset).mirrors(config.augment)

    assert mirrors(resolve(overrides=dict(dataset="fashion_mnist")))
    assert not mirrors(resolve(overrides=dict(dataset="mnist")))
    assert not mirrors(resolve("seed", overrides=dict(dataset="fashion_mnist")))
    assert mirrors(resolve(overrides=dict(dataset="mnist", augment="hflip")))
