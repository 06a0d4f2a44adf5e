"""Shared fixtures: op determinism restored after each test, isolated data folders, the real Fashion-MNIST; and
how many xdist workers `-n auto` starts."""

import os

import pytest

from support import FASHION_DIR, skip_or_fail, synthetic_arrays
from tf_rnn import mnist_files


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
    monkeypatch.delenv(mnist_files.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(mnist_files, "SYSTEM_DATA_ROOT", tmp_path / "system")
    return tmp_path


@pytest.fixture
def fashion_dir():
    """The real Fashion-MNIST from Debian's dataset-fashion-mnist; skipped where absent, except in CI."""
    if not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        skip_or_fail("real Fashion-MNIST not installed", "apt-get install dataset-fashion-mnist",
                     required=bool(os.environ.get("TF_RNN_REQUIRE_REAL_DATA")))
    return FASHION_DIR


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a worker per CPU this process may use, at most 4 — each is a TensorFlow
    process of 1–2 GB whose ops already use every core; the gain comes from tests that wait on Python or a
    subprocess."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))
