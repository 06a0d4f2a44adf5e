"""Test support: tiny learnable synthetic digits, IDX writers, a self-killing run, and the one skip-or-fail rule.

Importable from any test (`from support import ...`); fixtures stay in conftest.py.
"""

import contextlib
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tf_rnn import mnist_files
from tf_rnn.arrays import Arrays

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@contextlib.contextmanager
def op_determinism_restored():
    """For module-scoped fixtures that train: train_and_evaluate turns op determinism on for the process, and such a
    fixture is set up before conftest's per-test restore sees the state, so it must undo it itself."""
    from tensorflow.python.framework import config as tf_config

    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        yield
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()


def synthetic_arrays(n_train=600, n_test=200, seed=0) -> Arrays:
    """Class k is a bright column at 2k+4 over dim noise: every row carries the class, so an RNN reading rows
    learns it in a few epochs."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, mnist_files.NUM_CLASSES, n)
        x = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        x[np.arange(n), :, 2 * y + 4] = 255
        return x, y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    return Arrays(x_train, y_train, x_test, y_test, source="synthetic")


def idx_bytes(array: np.ndarray, kind: str, count=None) -> bytes:
    """Serialises `array` as an IDX file (the format MNIST ships in)."""
    magic = mnist_files.IMAGES_MAGIC if kind == "images" else mnist_files.LABELS_MAGIC
    dims = [count if count is not None else len(array), *array.shape[1:]]
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + array.astype(np.uint8).tobytes()


def write_idx_dir(folder: Path, arrays: Arrays, compress=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        ("train", "images"): arrays.x_train, ("train", "labels"): arrays.y_train,
        ("test", "images"): arrays.x_test, ("test", "labels"): arrays.y_test,
    }
    for (split, kind), array in parts.items():
        raw = idx_bytes(array, kind)
        name = mnist_files.IDX_FILES[(split, kind)]
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder



def skip_or_fail(what: str, fix: str, required: bool | None = None) -> None:
    """Skips a test whose prerequisite is missing on a developer's machine, and fails it in CI (`CI` set), where
    everything the README installs must be there: a green CI never hides a missing install step.

    Args:
      what: what is missing; fix: the command that provides it.
      required: fail instead of skipping (default: when `$CI` is set).
    """
    if required is None:
        required = bool(os.environ.get("CI"))
    if required:
        pytest.fail(f"{what} (in CI it must be there: {fix})")
    pytest.skip(f"{what} ({fix})")


# Runs `python -m tf_rnn.train` / `tf_rnn.tune` with the same flags, plus a test-only callback that SIGKILLs its own
# process at a known point: after optimizer step N (train), or after the first batch of trial N (tune). A kill at a
# known step, not after a sleep, so the test means the same on a fast machine and a slow one.
KILL_AT = """
import os, signal, sys
import keras
from tf_rnn import train, tune

job, when, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]


class Kill(keras.callbacks.Callback):
    fits = 0  # keras-tuner deep-copies callbacks per trial: count trials on the class.

    def on_train_begin(self, logs=None):
        Kill.fits += 1

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if (job == "train" and step >= when) or (job == "tune" and Kill.fits == when):
            print(f"KILLED at step {step} of fit {Kill.fits}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


if job == "train":
    config, workdir = train.parse_flags(argv)
    train.train_and_evaluate(config, workdir, extra_callbacks=[Kill()])
else:
    settings, workdir, overwrite = tune.parse_flags(argv)
    tune.tune_and_evaluate(settings, workdir, overwrite=overwrite, extra_callbacks=[Kill()])
raise SystemExit("not killed: the kill point was never reached")
"""


def kill_at_command(job: str, when: int, argv: list[str]) -> list[str]:
    """The command that runs `python -m tf_rnn.<job> ARGV` and SIGKILLs itself at `when` (see KILL_AT)."""
    import sys

    return [sys.executable, "-c", KILL_AT, job, str(when), *argv]


# A tuning chief (argv: a trial id, then tune's flags) that SIGKILLs itself inside keras-tuner's CreateTrial once
# the oracle has created and saved that trial, before its worker hears of it: a chief dying in the middle of a call.
KILL_CHIEF_IN_CALL = """
import os, signal, sys
from keras_tuner.src.distribute import oracle_chief
from tf_rnn import tune

trial_id, argv = sys.argv[1], sys.argv[2:]
create_trial = oracle_chief.OracleServicer.CreateTrial


def create_trial_and_die(self, request, context):
    reply = create_trial(self, request, context)
    if reply.trial.trial_id == trial_id:
        print(f"KILLED in CreateTrial: trial {trial_id} saved, not sent", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return reply


oracle_chief.OracleServicer.CreateTrial = create_trial_and_die  # Before the server binds its handlers.
settings, workdir, overwrite = tune.parse_flags(argv)
tune.tune_and_evaluate(settings, workdir, overwrite=overwrite)
raise SystemExit("not killed: trial " + trial_id + " was never created")
"""


def chief_killed_in_call_command(trial_id: str, argv: list[str]) -> list[str]:
    """The command of a tuning chief that dies inside the CreateTrial call that creates `trial_id`."""
    import sys

    return [sys.executable, "-c", KILL_CHIEF_IN_CALL, trial_id, *argv]


def gradients_across_threads(script: str, tmp_path: Path, threads=(1, 2, 3, 4)):
    """Runs `script` (argv: intra-op threads, an .npz path to write its gradients to) once per thread count in fresh
    processes, asserts every run's arrays bitwise equal to the first's, and returns that first .npz."""
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for n in threads:
        out = subprocess.run([sys.executable, "-c", script, str(n), str(tmp_path / f"g{n}.npz")], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    grads = [np.load(tmp_path / f"g{n}.npz") for n in threads]
    for g in grads[1:]:
        for key in grads[0].files:
            np.testing.assert_array_equal(g[key], grads[0][key])
    return grads[0]
