"""Real Fashion-MNIST, end to end through the command line (slow: minutes; runs in CI)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_seed_preset_on_fashion_mnist_reaches_080_on_all_test_images(fashion_dir, tmp_path):
    workdir = tmp_path / "seed"
    cmd = [sys.executable, "-m", "tf_rnn.train", "--preset", "seed", "--dataset", "fashion_mnist",
           "--data-dir", str(fashion_dir), "--workdir", str(workdir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Epoch 1/2" in out.stdout  # Keras' own progress output is kept.
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["test_examples"] == 10_000 and metrics["steps"] == 781
    assert metrics["test_accuracy"] >= 0.80, metrics
