"""--precision bfloat16: the LSTM ops' products on AMX tiles equal their bfloat16 definition (each operand rounded to
bfloat16, float32 sums), step by step, forward and backward; gradients keep their bits across thread counts; a
machine without AMX refuses in one line."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from support import skip_or_fail
from tf_rnn import fused

# (batch, time, features, units): the test_fused shapes (odd batches, units not a multiple of 16 or of 4, a batch
# of ten 32-row gradient blocks), the seed's, and one whose 4·units columns are not a whole pair of tiles.
SHAPES = [(9, 28, 28, 64), (1, 1, 3, 5), (13, 4, 7, 16), (130, 3, 5, 8), (5, 6, 4, 12), (300, 3, 4, 8),
          (128, 28, 28, 128), (37, 5, 40, 20)]


@pytest.fixture(scope="module")
def ops():
    if fused.unsupported_reason() is not None or fused.kernels() is None:
        skip_or_fail("the fused kernel does not build here", "g++ and TensorFlow's headers are needed")
    if not fused.amx_available():
        pytest.skip("this CPU has no AMX tiles for bfloat16 (amx_bf16, amx_tile, avx512_bf16): the bfloat16 "
                    "products cannot run here; test_fused.py's test_bfloat16_runs_on_amx_tiles_or_is_refused_in_one_line "
                    "checks the refusal")
    return fused.kernels()


def bf16(a):
    """float64 values of `a` rounded to bfloat16 (round to nearest even, as the kernel's conversions)."""
    return tf.cast(tf.cast(tf.constant(a, tf.float32), tf.bfloat16), tf.float64).numpy()


def mixed_only_in_its_head(model):
    """Asserts what --precision bfloat16 builds — the recurrent stack float32, the head under mixed_bfloat16, the
    outputs float32, the global policy left float32 — and returns models.float32_model's copy, asserted all float32
    with the same weights."""
    import keras

    from tf_rnn.models import float32_model

    assert keras.config.dtype_policy().name == "float32"  # The policy was the model's, not left global.
    assert model.get_layer("rnn").dtype_policy.name == "float32"
    assert model.get_layer("logits").dtype_policy.name == "mixed_bfloat16"
    assert model.output.dtype == "float32"
    copy = float32_model(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    for a, b in zip(copy.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    return copy


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def inputs(batch, time, features, units, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, time, features)).astype("float32"),
            rng.normal(0, 0.3, (features, 4 * units)).astype("float32"),
            rng.normal(0, 0.3, (units, 4 * units)).astype("float32"),
            rng.normal(0, 0.5, (4 * units,)).astype("float32"),
            rng.normal(size=(batch, time, units)).astype("float32"))


@pytest.mark.parametrize("batch,time,features,units", SHAPES)
def test_each_forward_step_is_its_bfloat16_products(ops, batch, time, features, units):
    """Given the op's own h_{t-1} and c_{t-1} (a rounding that lands on the other side of a bfloat16 boundary in a
    float64 reference would otherwise carry into every later step), step t's gates, c, tanh c and h are float64's
    within float32's rounding of σ(bf16(x_t)·bf16(W) + bf16(h_{t-1})·bf16(U) + b)."""
    x, w, u, b, _ = inputs(batch, time, features, units)
    h, c, tc, g = [np.asarray(t, np.float64) for t in ops.tf_rnn_lstm_forward(x, w, u, b, precision="bfloat16")]
    h_prev, c_prev = np.zeros((batch, units)), np.zeros((batch, units))
    worst, unrounded = 0.0, 0.0
    for t in range(time):
        z = bf16(x[:, t]) @ bf16(w) + bf16(h_prev) @ bf16(u) + b
        zi, zf, zg, zo = np.split(z, 4, -1)
        gates = np.concatenate([sigmoid(zi), sigmoid(zf), np.tanh(zg), sigmoid(zo)], -1)
        c_t = gates[:, units:2 * units] * c_prev + gates[:, :units] * gates[:, 2 * units:3 * units]
        h_t = gates[:, 3 * units:] * np.tanh(c_t)
        for got, want in ((g[t], gates), (c[t], c_t), (tc[t], np.tanh(c_t)), (h[t], h_t)):
            worst = max(worst, np.abs(got - want).max())
        z32 = x[:, t].astype(np.float64) @ w + h_prev @ u + b  # The same step without rounding the operands.
        unrounded = max(unrounded, np.abs(sigmoid(z32[:, :units]) - gates[:, :units]).max())
        h_prev, c_prev = h[t], c[t]
    assert worst < 2e-6
    if features * units > 100:  # Enough terms that bfloat16's 8 bits must show: the products are not float32's.
        assert unrounded > 1e-4


def backward_reference(x, u, forward, dh, dz_op, last_only=False):
    """The LSTM's backward pass in float64 from the op's own forward outputs, its products' operands rounded to
    bfloat16 where the kernel rounds them (dz, x, h_{t-1}, U); the bias gradient sums dz unrounded.

    The products read the op's own dz (`dz_op`), as the forward test reads the op's own h: a dz that float64
    rounds to the other bfloat16 neighbour would otherwise carry into every earlier step. Each step's dz is still
    this function's own, from the gradient the step after passed back."""
    h, c, tc, g = [np.asarray(t, np.float64) for t in forward]
    dz_op = np.asarray(dz_op, np.float64)
    time, batch, units = h.shape
    dw, du, db = np.zeros((x.shape[2], 4 * units)), np.zeros((units, 4 * units)), np.zeros(4 * units)
    dz_all = np.zeros_like(g)
    dh_next, dc = np.zeros((batch, units)), np.zeros((batch, units))
    for t in reversed(range(time)):
        i, f, gg, o = np.split(g[t], 4, -1)
        out = (dh if t == time - 1 else 0) if last_only else dh[:, t]
        d = dh_next + out
        dct = dc + d * o * (1 - tc[t] ** 2)
        c_prev = c[t - 1] if t else np.zeros_like(c[t])
        dz_all[t] = np.concatenate([dct * gg * i * (1 - i), dct * c_prev * f * (1 - f), dct * i * (1 - gg ** 2),
                                    d * tc[t] * o * (1 - o)], -1)
        dc = dct * f
        dz = bf16(dz_op[t])
        dw += bf16(x[:, t]).T @ dz
        if t:
            du += bf16(h[t - 1]).T @ dz
        db += dz_op[t].sum(0)
        dh_next = dz @ bf16(u).T
    return dz_all, dw, du, db


@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("batch,time,features,units", SHAPES)
def test_backward_is_its_bfloat16_products(ops, batch, time, features, units, last_only):
    x, w, u, b, dh = inputs(batch, time, features, units, seed=1)
    if last_only:
        dh = dh[:, -1]
    forward = ops.tf_rnn_lstm_forward(x, w, u, b, precision="bfloat16")
    got = ops.tf_rnn_lstm_backward(dh, x, u, *forward, precision="bfloat16")
    want = backward_reference(x, u, forward, dh, got[0], last_only)
    for name, a, z in zip(("dz", "d_kernel", "d_recurrent_kernel", "d_bias"), got, want):
        assert np.abs(np.asarray(a) - z).max() <= 2e-6 * (np.abs(z).max() or 1.0), name  # float32's sums.
    assert np.abs(want[2]).max() > 0 or time == 1
    # The products do round: float32 operands give a gradient of U further from the op's than its sums' error.
    if time > 1 and units * batch > 100:
        h = np.asarray(forward[0], np.float64)
        du32 = sum(h[t - 1].T @ np.asarray(got[0][t], np.float64) for t in range(1, time))
        assert np.abs(du32 - want[2]).max() > 1e-4 * np.abs(want[2]).max()


def test_the_same_layer_as_keras_within_bfloat16s_precision(ops):
    """The bfloat16 path is Keras' LSTM with its products' operands rounded: forward and weight gradients within a
    few bfloat16 roundings of Keras' float32 layer (through fused.lstm, the function StackedRNN trains with)."""
    import keras

    x, *_ = inputs(64, 28, 28, 64, seed=2)
    layer = keras.layers.LSTM(64, return_sequences=True)
    layer.build(x.shape)
    weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
    results = {}
    for name, fn in (("keras", lambda *a: layer(a[0])),
                     ("bf16", lambda *a: fused.lstm(*a, return_sequences=True, precision="bfloat16"))):
        with tf.GradientTape() as tape:
            out = fn(tf.constant(x), *weights)
            loss = tf.reduce_sum(tf.sin(3 * out))
        results[name] = [np.asarray(out)] + [np.asarray(g) for g in tape.gradient(loss, weights)]
    for a, z in zip(results["bf16"], results["keras"]):
        error = np.abs(a - z).max() / np.abs(z).max()
        assert 1e-5 < error < 3e-2  # bfloat16's rounding shows, and stays a rounding.


THREADS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    from tf_rnn import fused
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((100, 5, 7)).astype("float32"))
    w, u = (tf.constant(rng.normal(0, 0.3, s).astype("float32")) for s in ((7, 64), (16, 64)))
    b = tf.zeros(64)
    with tf.GradientTape() as tape:
        tape.watch([w, u, b])
        loss = tf.reduce_sum(tf.sin(3 * fused.lstm(x, w, u, b, precision="bfloat16")))
    np.savez(sys.argv[2], *[np.asarray(g) for g in tape.gradient(loss, [w, u, b])])
""")


def test_gradients_are_bitwise_equal_with_1_to_4_threads(ops, tmp_path):
    from support import gradients_across_threads

    grads = gradients_across_threads(THREADS, tmp_path)
    assert np.abs(grads["arr_0"]).max() > 0 and np.abs(grads["arr_1"]).max() > 0


# --- the flag: where it is refused, what it trains, what is saved ------------------------------------------------


def test_the_flag_is_refused_in_one_line_where_it_cannot_run(monkeypatch, tmp_path):
    from support import synthetic_arrays
    from tf_rnn import train
    from tf_rnn.config import ConfigError, resolve

    with pytest.raises(ConfigError, match=r"^--precision 'bfloat16': runs the fused LSTM's products on AMX tiles: use "
                                          r"it with --cell lstm --activation tanh, or --precision float32$"):
        resolve(overrides={"precision": "bfloat16", "cell": "gru"})
    with pytest.raises(ConfigError, match="--precision 'bfloat16'"):
        resolve(overrides={"precision": "bfloat16", "activation": "softsign"})
    with pytest.raises(ConfigError, match="--precision 'float16'"):
        resolve(overrides={"precision": "float16"})
    monkeypatch.setattr(fused, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "amx_tile"})
    config = resolve(overrides={"precision": "bfloat16", "units": 8, "epochs": 1})
    with pytest.raises(fused.BuildError, match=r"^--precision bfloat16 needs AMX tiles for bfloat16, and this CPU "
                                               r"lacks amx_bf16, avx512_bf16; use --precision float32$"):
        fused.prepare(config)
    with pytest.raises(fused.BuildError, match="lacks amx_bf16"):  # Refused before the run's workdir exists.
        train.train_and_evaluate(config, tmp_path / "run", arrays=synthetic_arrays())
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    with pytest.raises(fused.BuildError, match=r"^--precision bfloat16 runs in the fused kernel, which is not used "
                                               r"here \(switched off \(TF_RNN_FUSED=0\)\); use --precision float32$"):
        fused.prepare(config)


def test_training_runs_the_bfloat16_products_and_saves_a_float32_serving_model(ops, monkeypatch, tmp_path):
    """Every training step goes through fused.lstm with precision="bfloat16" (never silently float32); the head is
    under mixed_bfloat16, the recurrent stack and the outputs float32; the trained weights are not float32's; the
    exports serve models.float32_model's copy."""
    import keras

    from support import synthetic_arrays
    from tf_rnn import train
    from tf_rnn.config import resolve

    calls = []
    real = fused.lstm
    monkeypatch.setattr(fused, "lstm", lambda *a, **k: calls.append(k.get("precision")) or real(*a, **k))
    weights = {}
    for precision in ("float32", "bfloat16"):
        config = resolve(overrides={"units": 16, "layers": 2, "epochs": 1, "precision": precision})
        metrics = train.train_and_evaluate(config, tmp_path / precision, arrays=synthetic_arrays())
        weights[precision] = metrics["weights_sha256"]
        assert set(calls) == {precision} and len(calls) >= 2
        calls.clear()
    assert weights["float32"] != weights["bfloat16"]
    model = keras.saving.load_model(tmp_path / "bfloat16" / "model.keras")
    copy = mixed_only_in_its_head(model)
    x = synthetic_arrays().x_test[:8].astype("float32") / 255
    served = tf.saved_model.load(str(tmp_path / "bfloat16" / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(x))["logits"], copy(x), rtol=1e-5, atol=1e-5)
    # The head in bfloat16 rounds: the float32 copy is not the same function, only the same weights.
    assert 0 < np.abs(np.asarray(copy(x)) - np.asarray(model(x))).max() < 0.1


# --- what needs no AMX: the model's dtypes, the layer's choice of op, every export of a bfloat16 model -----------
# (On a CPU without AMX tiles the tests above skip; these keep --precision bfloat16's Python side checked there.)


@pytest.fixture(scope="module")
def bf16_model():
    """The seed model built with --precision bfloat16 (two small layers), untrained: building needs no AMX."""
    from tf_rnn.config import resolve
    from tf_rnn.models import build_model

    config = resolve(overrides={"units": 16, "layers": 2, "precision": "bfloat16"})
    model = build_model(config)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
    return model


def test_the_bfloat16_model_is_mixed_only_in_its_head_on_any_cpu(bf16_model):
    mixed_only_in_its_head(bf16_model)


def test_the_layer_asks_the_kernel_for_its_precision(monkeypatch):
    """A training step of StackedRNN(precision=...) calls fused.lstm with that precision (recorded here instead of
    run, so that no AMX is needed); the GRU has no such choice."""
    from tf_rnn.layers import StackedRNN

    calls = []

    def record(x, kernel, recurrent_kernel, bias, return_sequences=False, **kwargs):
        calls.append(kwargs.get("precision", "float32"))
        return tf.zeros((x.shape[0], x.shape[1], kernel.shape[1] // 4) if return_sequences else
                        (x.shape[0], kernel.shape[1] // 4))

    monkeypatch.setattr(fused, "available", lambda: True)
    monkeypatch.setattr(fused, "lstm", record)
    x = tf.zeros((2, 5, 3))
    for precision in ("bfloat16", "float32"):
        StackedRNN("lstm", units=4, num_layers=2, precision=precision)(x, training=True)
        assert calls == [precision, precision]
        calls.clear()
    StackedRNN("lstm", units=4, precision="bfloat16")(x, training=False)
    assert calls == []  # Evaluation and every save path run Keras' float32 layers.


def test_every_export_of_a_bfloat16_model_serves_its_float32_copy(bf16_model, tmp_path):
    """SavedModel, LiteRT and ONNX answer as models.float32_model's copy (same weights, float32 head), not as the
    model's bfloat16 head, which rounds visibly (so that the comparison can tell them apart)."""
    from tf_rnn import export, litert, onnx_export
    from tf_rnn.datasets import image_spec
    from tf_rnn.models import float32_model

    spec = image_spec("mnist")
    x = np.random.default_rng(4).random((3, 28, 28)).astype("float32")
    want = np.asarray(float32_model(bf16_model)(x, training=False))
    assert np.abs(np.asarray(bf16_model(x, training=False)) - want).max() > 1e-3
    export.export_saved_model(bf16_model, tmp_path / "sm", spec)
    tflite, = export.export_litert(bf16_model, tmp_path / "lite", spec, batch=3)
    onnx_file = export.export_onnx(bf16_model, tmp_path / "onnx", spec)
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    got = {"SavedModel": served(images=tf.constant(x))["logits"].numpy(),
           "LiteRT": litert.Runner(tflite)(images=x)["logits"], "ONNX": onnx_export.Runner(onnx_file)(images=x)["logits"]}
    for name, logits in got.items():
        np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5, err_msg=name)
