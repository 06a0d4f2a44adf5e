"""benchmarks/: the throughput harness's machine-readable forms (slow: it trains on real Fashion-MNIST)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_gru_only_tf_rnn_json_is_one_rate_per_contender(fashion_dir, tmp_path):
    cell = "gru"  # The LSTM form is the README's own command; GRU shares every line of the harness but the layer.
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--cell", cell, "--only", "tf_rnn", "--repeats", "1",
         "--warmup", "3", "--steps", "5", "--json", str(tmp_path / "b.json"), "--report", str(tmp_path / "r.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rates = json.loads((tmp_path / "b.json").read_text())
    assert list(rates) == ["tf_rnn"] and rates["tf_rnn"] > 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["cell"] == cell and report["contenders"]["tf_rnn"]["samples_per_s_median"] == rates["tf_rnn"]
