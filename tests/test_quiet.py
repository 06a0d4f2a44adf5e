"""A newcomer's first minutes: every CLI answers `--help` and a bad flag before TensorFlow loads, TensorFlow's C++
logging is off unless asked for (its import-time lines too), no GPU-only warning on a CPU, progress that tells the
truth, and pipelines whose iterators end at once (no silent seconds after a fit or at exit)."""

import json
import os
import re
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from support import synthetic_arrays
from tf_rnn import callbacks, pipeline, train
from tf_rnn.config import resolve

CLIS = sorted(p.stem for p in (Path(__file__).parents[1] / "tf_rnn").glob("*.py")
              if 'if __name__ == "__main__":' in p.read_text())
HEAVY = ("tensorflow", "keras", "keras_tuner", "tensorboard", "matplotlib")


def run_cli(module: str, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -X importtime -m tf_rnn.MODULE ARGV`: what it printed, and (stderr) every module it imported."""
    return subprocess.run([sys.executable, "-X", "importtime", "-m", f"tf_rnn.{module}", *argv],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_every_cli_is_found():
    assert {"train", "tune", "export", "predict", "convert_tf1", "fused", "gpu_check"} <= set(CLIS)


@pytest.mark.parametrize("module", CLIS)
def test_help_answers_before_tensorflow_is_imported(module):
    done = run_cli(module, "--help")
    assert done.returncode == 0 and "usage: python -m tf_rnn." in done.stdout, done.stderr[-2000:]
    assert not imported(done.stderr) & set(HEAVY), imported(done.stderr) & set(HEAVY)


@pytest.mark.parametrize("module, argv, flag", [
    ("train", ["--units", "abc"], "--units"),
    ("train", ["--bogus"], "--bogus"),
    ("tune", ["--workdir", "w", "--max-trials", "x"], "--max-trials"),
    ("export", [], "model"),
    ("predict", ["m", "x.npy", "--nope"], "--nope"),
])
def test_a_bad_flag_is_one_line_before_tensorflow_is_imported(module, argv, flag):
    done = run_cli(module, *argv)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and len(errors) == 1 and errors[0].count(flag) == 1, errors
    assert not imported(done.stderr) & set(HEAVY)


def test_package_import_turns_tensorflow_logging_off_unless_the_user_set_it():
    code = "import os, tf_rnn; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.stdout.strip() == "2", quiet.stderr[-2000:]
    chatty = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert chatty.stdout.strip() == "0"


ABSL_IMPORT_LINES = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                     "I0000 00:00:1796086314.193386    2006 port.cc:153] oneDNN custom operations are on.",
                     "W0000 00:00:1796086314.2    2006 some.cc:7] a warning",
                     "E0000 00:00:1796086314.3    2006 node_def_util.cc:9] an error",
                     "not a log line"]


@pytest.mark.parametrize("level, kept", [(2, [3, 4]), (1, [2, 3, 4]), (0, [0, 1, 2, 3, 4])])
def test_tensorflows_import_time_lines_are_held_to_its_log_level(level, kept, tmp_path, monkeypatch, capfd):
    """absl writes what TensorFlow logs while it is imported (oneDNN's notice on Intel CPUs) whatever
    TF_CPP_MIN_LOG_LEVEL says; tf_rnn.quiet drops, from that import's stderr, absl's lines below the level (and its
    banner), keeps the rest in order, and leaves the imported module as its own loader made it."""
    from tf_rnn import quiet

    written = "".join(line + "\n" for line in ABSL_IMPORT_LINES).encode()
    (tmp_path / "noisy_library.py").write_text(f"import os\nos.write(2, {written!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "noisy_library", raising=False)
    finder = quiet.QuietImport("noisy_library", min_level=level)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    import noisy_library

    assert capfd.readouterr().err.splitlines() == [ABSL_IMPORT_LINES[i] for i in kept]
    assert finder not in sys.meta_path  # One shot.
    assert type(noisy_library.__loader__) is type(noisy_library.__spec__.loader) is SourceFileLoader
    del sys.modules["noisy_library"]


def test_importing_tf_rnn_installs_the_filter_for_tensorflows_first_import(tmp_path):
    """On every CPU (an AMD one prints nothing at TensorFlow's import): a stand-in `tensorflow` that writes absl's
    banner and an INFO line at import, imported after tf_rnn in a fresh process, prints nothing; its error line does
    print. tf_rnn's Keras registration is skipped as for a `python -m tf_rnn.X` command, so the stand-in is alone."""
    (tmp_path / "tensorflow").mkdir()
    written = "".join(line + "\n" for line in ABSL_IMPORT_LINES[:2] + ABSL_IMPORT_LINES[3:4]).encode()
    (tmp_path / "tensorflow" / "__init__.py").write_text(f"import os\nos.write(2, {written!r})\n")
    code = ("import sys; sys.orig_argv = [sys.executable, '-m', 'tf_rnn.train']; sys.path.insert(0, sys.argv[1]); "
            "import tf_rnn, tensorflow; print(tensorflow.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "tensorflow" / "__init__.py"), done.stderr
    assert done.stderr.splitlines() == [ABSL_IMPORT_LINES[3]]


def test_importing_tf_rnn_then_tensorflow_prints_nothing():
    """The real thing, in a fresh process: `import tf_rnn` (which imports Keras, so TensorFlow) writes no line to
    stderr at the default level, on every CPU — on an Intel Xeon TensorFlow's own import printed four."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", "import tf_rnn, tensorflow as tf; tf.constant(1.0) + 1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]


def test_a_training_run_prints_only_lines_about_the_run(tmp_path):
    """A real CLI run: no C++ log line (`I0000 ...`, oneDNN notices), no Python warning, workdir named first."""
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "tf_rnn.train", "--dataset", "adding", "--seq-len", "5",
                           "--units", "4", "--steps", "20", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    noise = [line for line in done.stderr.splitlines() if line.strip()]
    assert not noise, noise[:5]
    lines = done.stdout.splitlines()
    assert str(workdir) in lines[0]
    assert any(line.startswith("evaluating") for line in lines) and any(line.startswith("exporting") for line in lines)
    assert not any(re.match(r"[IWE]\d{4} ", line) for line in lines)
    # The default --steps-per-execution fitted to the epoch (352 steps: 8 per call) is no news to the user.
    assert not any("--steps-per-execution" in line for line in lines), lines


QUIET_EPOCHS = """
import sys
sys.path.insert(0, sys.argv[2])
from support import synthetic_arrays
from tf_rnn import train
from tf_rnn.config import resolve
config = resolve(overrides={"units": 4, "epochs": 2, "batch_size": 32})  # 17 steps an epoch: 10 per call and 7.
train.train_and_evaluate(config, sys.argv[1], arrays=synthetic_arrays())
"""


def test_whole_epochs_of_images_train_without_a_log_line(tmp_path):
    """Whole epochs read one dataset per epoch (pipeline.training_epochs), which reads a variable: under op
    determinism TensorFlow rewrote its parallel cast of uint8 images and logged an error line once (`E0000 ...
    node_def_util.cc`). The CLI test above runs a --steps budget on float data, which never met it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", QUIET_EPOCHS, str(tmp_path / "run"), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [line for line in done.stderr.splitlines() if line.strip()], done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["steps_per_execution"]) == (34, 10)  # Not a divisor of 17: whole epochs.


def test_cpu_only_softsign_model_builds_without_warnings(recwarn):
    from tf_rnn.models import build_model

    build_model(resolve(overrides=dict(units=4, layers=1, activation="softsign")))
    assert not [w for w in recwarn if "cuDNN" in str(w.message)]


def test_every_pipeline_runs_without_the_autotuner():
    """Its model thread made each iterator's destruction wait: silent seconds after every fit, a minute at exit."""
    arrays = synthetic_arrays()
    splits = pipeline.make_splits(arrays, 32, 0.2, seed=0)
    for ds in (splits.train, splits.train_epochs, splits.validation, splits.test):
        assert ds.options().autotune.enabled is False


def test_step_budgeted_last_epoch_counts_the_steps_it_runs(tmp_path, capsys):
    # 480 training examples in batches of 32: 15 steps an epoch; a budget of 20 leaves 5 for epoch 2.
    config = resolve(overrides=dict(units=4, layers=1, batch_size=32, steps=20, epochs=3, validation_split=0.2))
    train.train_and_evaluate(config, tmp_path / "run", arrays=synthetic_arrays())
    out = capsys.readouterr().out
    assert "Epoch 2/2: 5 of 15 steps (--steps)" in out
    assert re.search(r"^5/5 - ", out, re.M) and re.search(r"^15/15 - ", out, re.M) and "15/15 - " in out
    assert "epoch 2 of" not in out and "1 epochs" not in out


def test_progress_estimate_leaves_out_the_first_update():
    """The first update holds the step function's tracing; the estimate is the time per step after it."""
    bar = callbacks._Progbar(target=100, verbose=1)
    assert bar._estimate_step_duration(10, now=100.0) == 0  # No estimate yet: the bar shows no ETA.
    assert bar._estimate_step_duration(20, now=101.0) == pytest.approx(0.1)
    assert bar._estimate_step_duration(30, now=102.0) == pytest.approx(0.1)
    line = callbacks._Progbar(target=100, verbose=2)  # One line per epoch: Keras' own average.
    line._start = 0.0
    assert line._estimate_step_duration(100, now=5.0) == pytest.approx(0.05)


def test_plurals():
    from tf_rnn.cli import plural

    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
