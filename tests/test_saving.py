"""What a user does in a fresh process: `import tf_rnn` then `keras.saving.load_model` of anything tf_rnn wrote;
and a model trained through the fused CPU path, saved by any of the three save paths, serving without tf_rnn."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import synthetic_arrays, skip_or_fail
from tf_rnn import convert_tf1, export, fused, train, tune
from tf_rnn.config import resolve
from tf_rnn.models import build_model

# A clean environment: nothing of this test process's imports leaks into the child (PYTHONPATH is the user's own
# setting, passed on so that a checkout on PYTHONPATH is the one tested).
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": os.environ.get("HOME", "/"),
       **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}


def run_python(code, *args, cwd):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def written_models(tmp_path_factory):
    """A trained run's model.keras, a converted TF1 checkpoint and a tuned search's best model, with the logits
    each gives on the test images."""
    root = tmp_path_factory.mktemp("written")
    tiny = dict(units=8, layers=2, batch_size=32, epochs=1, validation_split=0.2, dropout=0.25)
    train.train_and_evaluate(resolve(overrides=tiny), root / "run", arrays=synthetic_arrays())

    import tensorflow.compat.v1 as v1

    from legacy_port import mnist_lstm
    with tf.Graph().as_default():
        g = mnist_lstm.build_graph()
        with v1.Session() as sess:
            sess.run(g.init)
            v1.train.Saver().save(sess, str(root / "tf1" / "model.ckpt"))
    assert convert_tf1.main([str(root / "tf1"), "--out", str(root / "converted.keras")]) == 0

    settings = tune.TuneConfig(tuner="random", max_trials=1, epochs=1, final_epochs=1, validation_split=0.2)
    tune.tune_and_evaluate(settings, root / "search", arrays=synthetic_arrays())

    paths = [root / "run" / "model.keras", root / "converted.keras", root / "search" / "best_run" / "model.keras"]
    images = synthetic_arrays().x_test[:6].astype("float32") / 255
    np.save(root / "x.npy", images)
    expected = [keras.saving.load_model(p).predict(images, verbose=0) for p in paths]
    np.save(root / "expected.npy", np.stack(expected))
    return root, paths


LOAD_WITH_TF_RNN_ONLY = """
    import sys
    import numpy as np
    import tf_rnn  # The one import a user makes.
    import keras
    root, paths = sys.argv[1], sys.argv[2:]
    x, expected = np.load(root + "/x.npy"), np.load(root + "/expected.npy")
    for path, logits in zip(paths, expected):
        model = keras.saving.load_model(path)
        np.testing.assert_allclose(model.predict(x, verbose=0), logits, atol=1e-5)
    jobs = {"tf_rnn.train", "tf_rnn.tune", "tf_rnn.convert_tf1", "tf_rnn.export", "legacy_port"}
    assert not jobs & set(sys.modules), jobs & set(sys.modules)
    print("loaded", len(paths))
"""


def test_import_tf_rnn_is_all_a_fresh_process_needs_to_load_what_tf_rnn_wrote(written_models, tmp_path):
    root, paths = written_models
    out = run_python(LOAD_WITH_TF_RNN_ONLY, root, *paths, cwd=tmp_path)
    assert out.returncode == 0 and "loaded 3" in out.stdout, out.stderr[-3000:]
    # Every file was saved with its optimizer built: Keras has no variable-count mismatch to warn about.
    assert "Skipping variable loading" not in out.stderr, out.stderr[-3000:]
    # The control: without `import tf_rnn`, Keras cannot find the classes. (So the line above is what works.)
    out = run_python(LOAD_WITH_TF_RNN_ONLY.replace("import tf_rnn  #", "#"), root, *paths, cwd=tmp_path)
    assert out.returncode != 0 and "StackedRNN" in out.stderr


def test_the_export_command_reexports_every_file_tf_rnn_wrote(written_models, tmp_path):
    """`python -m tf_rnn.export MODEL.keras` in a fresh process (which imports tf_rnn's Keras classes itself)."""
    root, paths = written_models
    for i, path in enumerate(paths):
        out = subprocess.run([sys.executable, "-m", "tf_rnn.export", str(path), "--out", str(tmp_path / str(i)),
                              "--dataset", "mnist"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ENV)
        assert out.returncode == 0, out.stderr[-3000:]
        assert (tmp_path / str(i) / "saved_model.pb").is_file()


@pytest.fixture(scope="module")
def trained_on_cpu():
    """A model trained one epoch through tf_rnn's fused CPU path, as a user's run on a CPU is."""
    if fused.kernels() is None:
        skip_or_fail("the fused LSTM kernel does not build here", "g++ and TensorFlow's headers are needed")
    assert fused.available()
    model = build_model(resolve(overrides=dict(units=8, layers=2, dropout=0.25)))
    arrays = synthetic_arrays(n_train=128)
    calls = []
    real = fused.lstm
    fused.lstm = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        model.fit(arrays.x_train.astype("float32") / 255, arrays.y_train, batch_size=32, epochs=1, verbose=0)
    finally:
        fused.lstm = real
    assert calls  # The training step really went through the compiled ops.
    return model


SERVE_WITHOUT_TF_RNN = """
    import sys
    import numpy as np
    import tensorflow as tf
    x, expected = np.load(sys.argv[1]), np.load(sys.argv[2])
    for path in sys.argv[3:]:
        serve = tf.saved_model.load(path).signatures["serving_default"]
        (name,) = serve.structured_input_signature[1]
        out = serve(**{name: tf.constant(x)})
        logits = out["logits"] if "logits" in out else next(iter(out.values()))
        np.testing.assert_allclose(logits.numpy(), expected, atol=1e-5)
    assert not any(m.startswith("tf_rnn") for m in sys.modules)
    print("served", len(sys.argv) - 3)
"""


def test_every_save_path_of_a_cpu_trained_model_serves_without_tf_rnn(trained_on_cpu, tmp_path):
    model = trained_on_cpu
    paths = [tmp_path / "tf_rnn_export", tmp_path / "model_export", tmp_path / "saved_model_save"]
    export.export_saved_model(model, paths[0])
    model.export(str(paths[1]), verbose=False)
    tf.saved_model.save(model, str(paths[2]))
    for path in paths:
        ops = export.saved_model_op_types(path)
        assert not [op for op in ops if op.startswith("TfRnn")], (path, ops)
    x = synthetic_arrays(n_train=1, n_test=5).x_test.astype("float32") / 255
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(model(x, training=False)))
    out = run_python(SERVE_WITHOUT_TF_RNN, tmp_path / "x.npy", tmp_path / "y.npy", *paths, cwd=tmp_path)
    assert out.returncode == 0 and "served 3" in out.stdout, out.stderr[-3000:]
