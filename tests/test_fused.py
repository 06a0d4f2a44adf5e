"""tf_rnn.fused: the CPU LSTM path equals keras.layers.LSTM (forward and gradients), falls back cleanly, and
never reaches an export."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import skip_or_fail, synthetic_arrays
from tf_rnn import export, fused, train
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
        skip_or_fail("the fused LSTM kernel does not build here", "g++ and TensorFlow's headers are needed")
    return fused.kernels()


# (batch, time, features, units): the seed's shape at an odd batch; units not a multiple of 4 (the kernel's
# narrow last column panel) with a single step; batches that leave 1- and 2-row remainders in each thread's block;
# units a multiple of 4 but not of 8; a batch of ten 32-row gradient blocks, the last one partial.
SHAPES = [(9, 28, 28, 64), (1, 1, 3, 5), (13, 4, 7, 16), (130, 3, 5, 8), (5, 6, 4, 12), (300, 3, 4, 8)]


CELLS = {"lstm": (keras.layers.LSTM, fused.lstm), "gru": (keras.layers.GRU, fused.gru)}


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("batch,time,features,units", SHAPES)
def test_fused_equals_keras_forward_and_gradients(kernels, cell_name, return_sequences, batch, time, features, units):
    keras_layer, fused_fn = CELLS[cell_name]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, time, features)).astype("float32"))
    layer = keras_layer(units, return_sequences=return_sequences)
    layer.build(x.shape)
    cell = layer.cell
    # Keras starts biases at zero (LSTM: ones for f): random ones, so every bias path is exercised.
    cell.bias.assign(rng.normal(0, 0.5, cell.bias.shape).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        expected = layer(x)
        got = fused_fn(x, cell.kernel, cell.recurrent_kernel, cell.bias, return_sequences)
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
        again = tape.gradient(tf.reduce_sum(tf.sin(3 * fused_fn(x, *sources[1:], return_sequences))), sources)
    for a, b in zip(got_grads, again):
        np.testing.assert_array_equal(a, b)


def test_kernel_refuses_inconsistent_shapes(kernels):
    x, kernel = tf.zeros([2, 3, 4]), tf.zeros([5, 8])  # kernel should be [4, 8]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"need x \[batch, time, features\], kernel \[features"):
        kernels.tf_rnn_lstm_forward(x, kernel, tf.zeros([2, 8]), tf.zeros([8]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"GRU op: need x \[batch, time, features\], kernel"):
        kernels.tf_rnn_gru_forward(x, tf.zeros([5, 6]), tf.zeros([2, 6]), tf.zeros([2, 6]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"GRU op: bias must be \[2, 3·units\]"):
        kernels.tf_rnn_gru_forward(x, tf.zeros([4, 6]), tf.zeros([2, 6]), tf.zeros([6]))
    # The gradient reaching h: every step's, or the last step's alone; nothing else.
    h, c, tanh_c, gates = kernels.tf_rnn_lstm_forward(x, tf.zeros([4, 8]), tf.zeros([2, 8]), tf.zeros([8]))
    for d_h in (tf.zeros([2, 3]), tf.zeros([2, 2, 2]), tf.zeros([2, 3, 2, 1])):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"LSTM op: need"):
            kernels.tf_rnn_lstm_backward(d_h, x, tf.zeros([2, 8]), h, c, tanh_c, gates)


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
    StackedRNN(cell="simple", units=4)(np.ones((1, 28, 28), "float32"), training=True)
    assert len(calls) == 2  # SimpleRNN has no fused path.


def test_gru_layers_train_through_the_fused_gru(kernels, monkeypatch):
    calls = []
    real = fused.gru
    monkeypatch.setattr(fused, "gru", lambda *a, **k: calls.append(1) or real(*a, **k))
    rnn = StackedRNN(cell="gru", units=[8, 8])
    x = np.random.rand(2, 28, 28).astype("float32")
    out = rnn(x, training=True)
    assert len(calls) == 2
    np.testing.assert_allclose(rnn(x, training=False), out, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_through_the_fused_path_equals_keras(kernels, monkeypatch, cell):
    """Two fit steps of a 2-layer model, fused vs Keras' layers from the same weights: the same weights after.
    The second layer's input gradient (dx) is what trains the first layer."""
    config = resolve(overrides=dict(units=8, layers=2, dropout=0.0, lr=0.05, cell=cell))
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
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.warns(UserWarning, match="fused CPU RNN kernel unavailable .*no C\\+\\+ compiler \\(no-such-compiler\\).*Keras' own"):
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
    model = build_model(resolve(overrides=dict(units=8, layers=2, dropout=0.0)))
    x = np.random.rand(4, 28, 28).astype("float32")
    ops = export.saved_model_op_types(export.export_saved_model(model, tmp_path / "sm"))
    assert not [op for op in ops if op.startswith("TfRnn")]  # Servable without tf_rnn's compiled kernels.
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["logits"], model(x, training=True), atol=1e-5)  # Fused, without dropout.


# --- the products' two paths, AVX2 and AVX-512, chosen at run time ----------------------------------------------


@pytest.fixture(scope="module", params=["native", "emulated"])
def avx512_ops(request, tmp_path_factory):
    """(op module, op name prefix) of a kernel whose AVX-512 path runs here: the real kernel where the CPU has
    avx512f; everywhere, a build with TF_RNN_EMULATE_AVX512, whose AVX-512 code runs each 16-float vector as two AVX2
    vectors with the same fused multiply-adds (bit for bit the real instructions' results, not their speed)."""
    if fused.unsupported_reason() is not None or fused.kernels() is None:
        skip_or_fail("the fused kernel does not build here", "g++ and TensorFlow's headers are needed")
    if request.param == "native":
        if "avx512f" not in (fused.cpu_flags() or ()):
            pytest.skip("this CPU lacks avx512f: the AVX-512 instructions cannot run here; the emulated build runs "
                        "the AVX-512 path's code against the AVX2 path instead")
        return fused.kernels(), "tf_rnn"
    from benchmarks import kernel_ab

    ops = kernel_ab.build(fused.KERNEL_SOURCE.read_text(), "Emu", tmp_path_factory.mktemp("emulated"),
                          defines=("TF_RNN_EMULATE_AVX512",))
    return ops, "tf_rnn_emu"


def forward_and_backward(ops, prefix, cell, x, w, u, b, dh):
    """Every output of the cell's forward op and of its backward op, as arrays."""
    outputs = getattr(ops, f"{prefix}_{cell}_forward")(x, w, u, b)
    return [np.asarray(t) for t in (*outputs, *getattr(ops, f"{prefix}_{cell}_backward")(dh, x, u, *outputs))]


# SHAPES, and a batch of 64: two 32-row blocks per thread, 12 + 12 + 8 rows; 48 units: 12 LSTM panels of 16
# columns (read in pairs), 9 GRU panels (a last single one), 3 panels of Uᵀ.
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch,time,features,units", SHAPES + [(64, 5, 28, 48)])
def test_avx512_path_equals_the_avx2_path(avx512_ops, monkeypatch, cell, batch, time, features, units):
    ops, prefix = avx512_ops
    gates = {"lstm": 4, "gru": 3}[cell]
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(batch, time, features)).astype("float32"))
    w = tf.constant(rng.normal(0, 0.3, (features, gates * units)).astype("float32"))
    u = tf.constant(rng.normal(0, 0.3, (units, gates * units)).astype("float32"))
    b = tf.constant(rng.normal(0, 0.5, (gates * units,) if cell == "lstm" else (2, gates * units)).astype("float32"))
    dh = tf.constant(rng.normal(size=(batch, time, units)).astype("float32"))
    results = {}
    # The emulated build counts the AVX-512 blocks it runs: proof that each call took the path asked for.
    blocks = getattr(ops, "tf_rnn_emu_emulated_blocks", lambda: tf.constant(-1))
    for isa in ("avx2", "avx512"):
        monkeypatch.setenv(fused.ISA_ENV, isa)
        products, bf16 = getattr(ops, f"{prefix}_kernel_isa")().numpy().decode().split("; ")
        assert products == f"{isa} ({fused.ISA_ENV}={isa})"
        # The emulated build's AVX-512 code is AVX2: it never offers the AMX tiles.
        assert bf16 == ("bfloat16: AMX tiles" if prefix == "tf_rnn" and fused.amx_available() else
                        "bfloat16: not here (no AMX tiles)")
        before = int(blocks())
        results[isa] = forward_and_backward(ops, prefix, cell, x, w, u, b, dh)
        if before >= 0:
            assert (int(blocks()) > before) == (isa == "avx512")
    assert len(results["avx2"]) == {"lstm": 8, "gru": 7}[cell]
    for a, z in zip(results["avx2"], results["avx512"]):
        if units % 16 == 0:  # Every panel full on both paths: the same fused multiply-adds in the same order.
            np.testing.assert_array_equal(z, a)
        else:  # The AVX2 path's last, narrower panel takes its portable loop.
            np.testing.assert_allclose(z, a, rtol=1e-5, atol=1e-5 * (np.abs(a).max() or 1.0))
    assert any(np.abs(a).max() > 0 for a in results["avx2"][-3:])  # Real weight gradients, not zeros on both.


def test_bfloat16_runs_on_amx_tiles_or_is_refused_in_one_line(avx512_ops):
    """The LSTM ops' precision="bfloat16" where the build and CPU have AMX tiles; elsewhere (and always in the emulated
    build, which runs here on every CPU) one line saying what is missing, never float32 products in its place."""
    ops, prefix = avx512_ops
    x, w, u, b = (tf.ones(s) for s in ((2, 3, 4), (4, 8), (2, 8), (8,)))
    if prefix == "tf_rnn" and fused.amx_available():
        assert getattr(ops, f"{prefix}_lstm_forward")(x, w, u, b, precision="bfloat16")[0].shape == (3, 2, 2)
        return
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"precision=bfloat16 needs AMX tiles for bfloat16 "
                       r"\(CPU flags amx_bf16, amx_tile, avx512_bf16, granted by Linux\); this machine lacks them"):
        getattr(ops, f"{prefix}_lstm_forward")(x, w, u, b, precision="bfloat16")


def test_a_bad_isa_request_is_one_line_before_training_and_refused_by_the_kernel(kernels, monkeypatch, capsys,
                                                                                  tmp_path):
    config = resolve(preset="seed")
    monkeypatch.setenv(fused.ISA_ENV, "avx9")
    with pytest.raises(fused.BuildError, match=r"^TF_RNN_KERNEL_ISA=avx9 is not one of auto, avx2, avx512; unset"):
        fused.prepare(config)
    with pytest.raises(fused.BuildError, match="TF_RNN_KERNEL_ISA=avx9"):  # Refused before the run's workdir exists.
        train.train_and_evaluate(resolve(overrides={"units": 8, "epochs": 1}), tmp_path / "run",
                                 arrays=synthetic_arrays())
    assert not (tmp_path / "run").exists()
    with pytest.raises(tf.errors.InvalidArgumentError, match="TF_RNN_KERNEL_ISA=avx9 is not one of auto, avx2"):
        kernels.tf_rnn_kernel_isa()
    monkeypatch.setenv(fused.ISA_ENV, "avx512")
    monkeypatch.setattr(fused, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(fused.BuildError, match=r"TF_RNN_KERNEL_ISA=avx512, but this CPU lacks avx512f; unset it or"):
        fused.prepare(config)
    fused.main(["info"])
    assert capsys.readouterr().out.strip().endswith("products: TF_RNN_KERNEL_ISA=avx512, but this CPU lacks "
                                                    "avx512f; unset it or set avx2")
    monkeypatch.setenv(fused.ISA_ENV, "avx2")
    fused.prepare(config)  # Allowed on every CPU the fused path runs on.
    assert kernels.tf_rnn_kernel_isa().numpy().decode().startswith("avx2 (TF_RNN_KERNEL_ISA=avx2); bfloat16: ")


# --- delivery: build, info, a shared cache ---------------------------------------------------------------------


def test_build_and_info_commands(kernels, capsys):
    assert fused.main(["build"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(fused.kernel_path()) and os.path.exists(path)
    assert fused.main(["info"]) == 0
    products = ("avx512 (the CPU has avx512f)" if "avx512f" in (fused.cpu_flags() or ()) else
                "avx2 (the CPU lacks avx512f)")
    products += "; bfloat16: AMX tiles" if fused.amx_available() else "; bfloat16: not here (no AMX tiles)"
    assert capsys.readouterr().out.strip() == (f"fused CPU RNN kernel: used here for LSTM and GRU layers (kernel {path}); "
                                               f"products: {products}")


def test_info_and_build_say_why_not(fresh, monkeypatch, capsys):
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    fused.main(["info"])
    assert "not used here: switched off (TF_RNN_FUSED=0)" in capsys.readouterr().out
    monkeypatch.delenv(fused.ENV_SWITCH)
    monkeypatch.setattr(fused, "cpu_flags", lambda: {"sse2", "avx"})
    fused.main(["info"])
    assert "not used here: the CPU lacks avx2, fma" in capsys.readouterr().out
    assert not fused.available()  # Steps aside without trying to build.
    with pytest.raises(SystemExit) as e:
        fused.main(["build"])
    assert e.value.code == 1 and "not for this host: the CPU lacks avx2, fma" in capsys.readouterr().err
    monkeypatch.setattr(fused, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(SystemExit) as e:
        fused.main(["build"])
    assert e.value.code == 1 and "no C++ compiler (no-such-compiler) on PATH" in capsys.readouterr().err


def test_cache_key_covers_compiler_version_and_flags(kernels, monkeypatch):
    base = fused.kernel_path()
    monkeypatch.setattr(fused, "compiler", lambda: ("/usr/bin/g++", "g++ (Debian 99.0) 99.0"))
    other_version = fused.kernel_path()
    monkeypatch.setattr(fused, "CXX_FLAGS", [*fused.CXX_FLAGS, "-DX"])
    other_flags = fused.kernel_path()
    assert len({base, other_version, other_flags}) == 3
    assert "-march=native" not in fused.CXX_FLAGS and {"-mavx2", "-mfma"} <= set(fused.CXX_FLAGS)


# A process that builds into $TF_RNN_CACHE with the compile step replaced by a copy of an already built kernel
# (the real compile takes a minute; what is tested here is the locking and publishing around it). Each "compile"
# appends a line to a log, so the test can count them across processes.
FAKE_BUILD = textwrap.dedent("""
    import shutil, sys, time
    from tf_rnn import fused
    good, log = sys.argv[1], sys.argv[2]

    def fake_compile(out):
        with open(log, "a") as f:
            f.write("compile\\n")
        time.sleep(3)  # Long enough for the other processes to arrive at the lock.
        tmp = out.with_name(out.name + ".tmp-test")
        shutil.copy(good, tmp)
        tmp.replace(out)

    fused._compile = fake_compile
    print(fused.build())
""")


def fake_build(good, log, cache, n=1):
    env = {**os.environ, fused.CACHE_ENV: str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", FAKE_BUILD, str(good), str(log)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    return [(p.wait(timeout=300), *p.communicate()) for p in procs]


def test_processes_starting_together_on_an_empty_cache_compile_once_and_all_load(kernels, tmp_path):
    results = fake_build(fused.kernel_path(), tmp_path / "compiles.log", tmp_path / "cache", n=3)
    assert [code for code, _, _ in results] == [0, 0, 0], results
    paths = {out.strip() for _, out, _ in results}
    assert len(paths) == 1 and (tmp_path / "compiles.log").read_text().count("compile") == 1
    (path,) = paths
    assert fused.load_error(path) is None and not [f for f in (tmp_path / "cache").iterdir() if "tmp" in f.name]


def test_a_truncated_cached_kernel_is_rebuilt(kernels, tmp_path):
    cache = tmp_path / "cache"
    first = fake_build(fused.kernel_path(), tmp_path / "compiles.log", cache)
    path = first[0][1].strip()
    with open(path, "r+b") as f:
        f.truncate(1000)  # As a full disk or a killed copy would leave it.
    assert fused.load_error(path) is not None
    (code, out, err), = fake_build(fused.kernel_path(), tmp_path / "compiles.log", cache)
    assert code == 0 and out.strip() == path and "does not load" in err and "rebuilding it" in err
    assert (tmp_path / "compiles.log").read_text().count("compile") == 2 and fused.load_error(path) is None


@pytest.mark.slow
def test_two_real_builds_racing_on_an_empty_cache_compile_once(tmp_path):
    env = {**os.environ, fused.CACHE_ENV: str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-m", "tf_rnn.fused", "build"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0, 0], results
    assert sum(err.count("compiling the fused CPU RNN kernel") for _, _, err in results) == 1
    (path,) = {out.strip() for _, out, _ in results}
    assert fused.load_error(path) is None


# --- edge cases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
@pytest.mark.parametrize("batch,time", [(0, 5), (3, 0), (0, 0)])
def test_zero_sized_batch_or_time(kernels, cell_name, batch, time):
    keras_layer, fused_fn = CELLS[cell_name]
    layer = keras_layer(6, return_sequences=True)
    layer.build((None, None, 4))
    cell = layer.cell
    x = tf.zeros([batch, time, 4])
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = fused_fn(x, cell.kernel, cell.recurrent_kernel, cell.bias, return_sequences=True)
        loss = tf.reduce_sum(h)
    dx, dw = tape.gradient(loss, [x, cell.kernel])
    assert h.shape == (batch, time, 6) and dx.shape == (batch, time, 4) and dw.shape == tuple(cell.kernel.shape)
    assert not np.asarray(dw).any()


def test_jit_compile_trains_through_keras_lstm(kernels, monkeypatch):
    calls = []
    real = fused.lstm
    monkeypatch.setattr(fused, "lstm", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build_model(resolve(overrides=dict(units=8, layers=1, dropout=0.0)))
    x, y = np.random.rand(16, 28, 28).astype("float32"), np.zeros(16, "int64")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert calls  # Without XLA: the fused path.
    calls.clear()
    model.compile(optimizer="adam", loss=model.loss, jit_compile=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # XLA has no kernel for the ops: this would fail.
    assert not calls


THREADS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    import keras
    from tf_rnn import fused
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((100, 5, 7)).astype("float32"))
    grads = []
    for layer, fn in ((keras.layers.LSTM(16), fused.lstm), (keras.layers.GRU(16), fused.gru)):
        layer.build(x.shape)
        weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
        for w in weights:  # Fixed weights, not a seeded initializer: the same in every process.
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(3 * fn(x, *weights)))
        grads += [np.asarray(g) for g in tape.gradient(loss, weights)]
    np.savez(sys.argv[2], *grads)
""")


def test_gradients_are_bitwise_equal_with_1_to_4_threads(kernels, tmp_path):
    from support import gradients_across_threads

    grads = gradients_across_threads(THREADS, tmp_path)
    assert len(grads.files) == 6  # LSTM's and GRU's kernel, recurrent kernel and bias gradients.
    assert np.abs(grads["arr_1"]).max() > 0 and np.abs(grads["arr_4"]).max() > 0  # Real sums over rows, steps.


@pytest.mark.parametrize("device, reason", [("GPU", "a GPU is visible"), ("TPU", "a TPU is visible")])
def test_never_fused_where_a_gpu_or_tpu_is_visible(fresh, monkeypatch, device, reason):
    real = tf.config.list_logical_devices
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: [object()] if kind == device else real(kind))
    assert fused.unsupported_reason().startswith(reason)
    assert not fused.available() and fused._module is None  # Nothing was built or loaded.


def test_a_failing_build_is_tried_once_and_a_damaged_cache_file_goes_through_build(fresh, monkeypatch, tmp_path):
    calls = []

    def failing_build():
        calls.append(1)
        raise fused.BuildError("building rnn_sequence.cc failed: error: planted")

    monkeypatch.setattr(fused, "kernel_path", lambda: tmp_path / "missing.so")
    monkeypatch.setattr(fused, "build", failing_build)
    with pytest.warns(UserWarning, match="kernel unavailable .*planted"):
        assert fused.kernels() is None
    assert calls == [1]  # Not compiled a second time before giving up.
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes(b"not an ELF file")
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setattr(fused, "kernel_path", lambda: damaged)
    with pytest.warns(UserWarning, match="planted"):
        assert fused.kernels() is None
    assert calls == [1, 1]  # The unloadable cached file was handed to build() (which rebuilds it), once.


def test_a_failed_compile_is_named_by_its_first_error_line():
    """The one line `tf_rnn.fused build`, kernel_ab and fma_peak print when the compiler fails."""
    import subprocess

    stderr = "k.cc: In function 'f':\nk.cc:3:9: error: expected ';'\n    3 | int x\n      |      ^\nk.cc:5:1: error: two\n"
    assert fused.first_error(subprocess.CompletedProcess([], 1, "", stderr)) == "k.cc:3:9: error: expected ';'"
    assert fused.first_error(subprocess.CompletedProcess([], 1, "", "ld: cannot open output\n")) == "ld: cannot open output"
    assert fused.first_error(subprocess.CompletedProcess([], 4, "", "")) == "exit 4"
