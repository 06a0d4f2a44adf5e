"""benchmarks/: the throughput harness's machine-readable forms (slow: it trains on real Fashion-MNIST); the kernel A/B."""

import json
import re
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


def test_kernel_ab_renames_every_op_and_names_a_bad_revision():
    """The A/B's two libraries load side by side only if every op of the kernel gets the tag; a revision that does not
    exist is one line, before anything is compiled."""
    from benchmarks import kernel_ab

    source = (ROOT / kernel_ab.SOURCE).read_text()
    ops = set(re.findall(r'REGISTER_OP\("(TfRnn\w+)"\)', source))
    assert len(ops) == 4
    tagged = kernel_ab.renamed(source, "Old")
    assert set(re.findall(r'REGISTER_OP\("(\w+)"\)', tagged)) == {op.replace("TfRnn", "TfRnnOld") for op in ops}
    assert set(re.findall(r'Name\("(\w+)"\)', tagged)) == {op.replace("TfRnn", "TfRnnOld") for op in ops}
    with pytest.raises(SystemExit, match="no-such-revision.*neither a file nor a git revision"):
        kernel_ab.source_text("no-such-revision")


def test_fma_peak_reports_the_median_of_each_thread_count_and_its_scaling(tmp_path):
    """What benchmarks/README quotes from `results/fma_peak.json`: each thread count's figure is the median of its
    repeats and the scaling is it over one thread's; a thread count below 1 is refused before anything runs."""
    import statistics

    from benchmarks import fma_peak
    from tf_rnn import fused

    if not {"avx2", "fma"} <= (fused.cpu_flags() or set()):
        pytest.skip("fma_peak needs AVX2+FMA")
    out = tmp_path / "fma.json"
    assert fma_peak.main(["--threads", "1", "2", "--repeats", "3", "--iters", "200000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for n in ("1", "2"):
        assert len(result["gflops_repeats"][n]) == 3
        assert result["gflops"][n] == round(statistics.median(result["gflops_repeats"][n]), 1) > 0
    assert result["scaling_over_one_thread"]["2"] == round(result["gflops"]["2"] / result["gflops"]["1"], 2)
    with pytest.raises(SystemExit):
        fma_peak.main(["--threads", "0"])
