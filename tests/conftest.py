"""Shared fixtures: tiny learnable synthetic digits, IDX writers, and the real Fashion-MNIST when present."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tf_rnn import data

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def synthetic_arrays(n_train=600, n_test=200, seed=0) -> data.Arrays:
    """Class k is a bright column at 2k+4 over dim noise: every row carries the class, so an RNN reading rows
    learns it in a few epochs."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, data.NUM_CLASSES, n)
        x = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        x[np.arange(n), :, 2 * y + 4] = 255
        return x, y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    return data.Arrays(x_train, y_train, x_test, y_test, source="synthetic")


def idx_bytes(array: np.ndarray, kind: str, count=None) -> bytes:
    """Serialises `array` as an IDX file (the format MNIST ships in)."""
    magic = data.IMAGES_MAGIC if kind == "images" else data.LABELS_MAGIC
    dims = [count if count is not None else len(array), *array.shape[1:]]
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + array.astype(np.uint8).tobytes()


def write_idx_dir(folder: Path, arrays: data.Arrays, compress=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        ("train", "images"): arrays.x_train, ("train", "labels"): arrays.y_train,
        ("test", "images"): arrays.x_test, ("test", "labels"): arrays.y_test,
    }
    for (split, kind), array in parts.items():
        raw = idx_bytes(array, kind)
        name = data.IDX_FILES[(split, kind)]
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


@pytest.fixture(autouse=True)
def restore_op_determinism():
    """train_and_evaluate enables op determinism for the whole process (reruns are bit-identical); tests that ran
    before it must not change what the next test sees (Keras turns XLA off under it, TF1 graphs need seeds)."""
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    yield
    if not before:
        tf_config.disable_op_determinism()


@pytest.fixture
def tiny():
    return synthetic_arrays()


@pytest.fixture
def isolated_data_env(tmp_path, monkeypatch):
    """No $TF_RNN_DATA_DIR, an empty Keras cache and an empty system folder: only what a test puts there exists."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", tmp_path / "system")
    return tmp_path


@pytest.fixture
def fashion_dir():
    """The real Fashion-MNIST from Debian's dataset-fashion-mnist; skipped where absent, except in CI."""
    if not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        if os.environ.get("TF_RNN_REQUIRE_REAL_DATA"):
            pytest.fail(f"{FASHION_DIR} missing: apt-get install dataset-fashion-mnist")
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


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
