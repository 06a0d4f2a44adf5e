"""benchmarks/: the throughput harness's machine-readable forms (slow: it trains on real Fashion-MNIST); the kernel A/B."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import machine
from tf_rnn import fused

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_gru_only_tf_rnn_json_is_one_rate_per_contender(fashion_dir, tmp_path):
    cell = "gru"  # The LSTM form is the README's own command; GRU shares every line of the harness but the layer.
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--cell", cell, "--only", "tf_rnn", "--only",
         "tf_rnn_avx2", "--repeats", "1", "--warmup", "3", "--steps", "5", "--json", str(tmp_path / "b.json"),
         "--report", str(tmp_path / "r.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rates = json.loads((tmp_path / "b.json").read_text())
    has512 = "avx512f" in (fused.cpu_flags() or ())
    # The AVX2 row of the kernel's A/B only where it differs from tf_rnn's own: on a CPU with AVX-512.
    assert list(rates) == (["tf_rnn", "tf_rnn_avx2"] if has512 else ["tf_rnn"]) and rates["tf_rnn"] > 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["cell"] == cell and report["contenders"]["tf_rnn"]["samples_per_s_median"] == rates["tf_rnn"]
    assert report["machine"]["cpu"] == machine.cpu_name() and report["cpu"] == machine.cpu()
    # bfloat16's matmul beside float32's: whether this CPU would give issue 26's bf16 path anything (AMX or not).
    assert report["matmul_bfloat16_gflops"] > 0 and "matmul bfloat16 (2048², TensorFlow)" in out.stdout
    # The float32 products, then whether --precision bfloat16 could run here (issue 26's AMX path).
    bf16 = "; bfloat16: AMX tiles" if fused.amx_available() else "; bfloat16: not here (no AMX tiles)"
    assert report["contenders"]["tf_rnn"]["products"] == ("avx512 (the CPU has avx512f)" if has512 else
                                                          "avx2 (the CPU lacks avx512f)") + bf16
    if has512:
        assert report["contenders"]["tf_rnn_avx2"]["products"] == "avx2 (TF_RNN_KERNEL_ISA=avx2)" + bf16


def test_the_machine_names_the_cpu_family_and_only_the_vector_flags_that_choose_code(tmp_path):
    # Two vCPUs of a VM that calls itself "AMD EPYC": the family/model pair tells a Zen 4 (AVX-512) from older ones.
    block = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
             "model name\t: AMD EPYC\nflags\t\t: fpu sse avx512_bf16 fma avx2 avx512f amx_tile\n\n")
    info = tmp_path / "cpuinfo"
    info.write_text(block.format(n=0) + block.format(n=1))
    c = machine.cpu(info)
    assert (c["model"], c["family"]) == ("AMD EPYC", "25/17")
    assert c["flags"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]  # VECTOR_FLAGS' order, nothing else.
    assert machine.cpu_name(info).startswith("AMD EPYC (family 25/17; avx2, fma, avx512f, avx512_bf16, amx_tile; ")
    info.write_text("model name\t: Some CPU\nflags\t\t: sse\n")  # No family lines (not x86): none claimed.
    assert machine.cpu(info)["family"] is None and machine.cpu_name(info).startswith("Some CPU (no AVX2; ")


def test_kernel_ab_renames_every_op_and_names_a_bad_revision():
    """The A/B's two libraries load side by side only if every op of the kernel gets the tag; a revision that does not
    exist is one line, before anything is compiled."""
    from benchmarks import kernel_ab

    source = (ROOT / kernel_ab.SOURCE).read_text()
    ops = set(re.findall(r'REGISTER_OP\("(TfRnn\w+)"\)', source))
    assert len(ops) == 6  # Two ops each way for two cells, the products report, the emulated build's block count.
    tagged = kernel_ab.renamed(source, "Old")
    assert set(re.findall(r'REGISTER_OP\("(\w+)"\)', tagged)) == {op.replace("TfRnn", "TfRnnOld") for op in ops}
    assert set(re.findall(r'Name\("(\w+)"\)', tagged)) == {op.replace("TfRnn", "TfRnnOld") for op in ops}
    with pytest.raises(SystemExit, match="no-such-revision.*neither a file nor a git revision"):
        kernel_ab.source_text("no-such-revision")


def test_training_ab_worker_trains_with_the_library_it_is_given_not_the_cache(tmp_path):
    """`kernel_ab --training` hands each train_throughput worker a library in an environment variable: a worker that
    ignored it would time the cache's kernel twice and report 1.00. A file that is no library must stop the worker,
    in one line naming it, before any data is read or any step is timed."""
    from benchmarks import train_throughput

    bogus = tmp_path / "not_a_kernel.so"
    bogus.write_text("not a shared library")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", train_throughput.KERNEL_LIBRARY_ENV: str(bogus)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--worker", "tf_rnn", "--warmup", "0",
                          "--steps", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"{train_throughput.KERNEL_LIBRARY_ENV}={bogus} does not load as a kernel library: ")
    assert "Traceback" not in out.stderr


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


def test_a_sequence_experiment_median_counts_a_miss_as_worse_than_any_hit():
    from benchmarks.sequence_tasks import summarize

    def runs(*reached):
        return {str(i): {"reached": r} for i, r in enumerate(reached)}

    assert summarize(runs(300, None, 100), 1000) == {"reached": [300, None, 100], "solved": 2, "budget": 1000,
                                                     "median_steps": 300}
    assert summarize(runs(None, None, 100), 1000)["median_steps"] is None  # Most seeds missed: so did the median.
    assert summarize(runs(100, 300), 1000)["median_steps"] == 200
    assert summarize(runs(100, None), 1000)["median_steps"] is None


def test_a_sequence_experiment_probes_every_run_and_names_the_cpu(tmp_path):
    """Two seeds of a tiny adding problem: each run's probe curve every 20 steps, its command, the CPU, the plot."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.sequence_tasks", "adding", "--seq-len", "5", "--cells", "gru",
         "--seeds", "0", "1", "--steps", "40", "--every", "20", "--runs", str(tmp_path / "runs"),
         "--out", str(tmp_path / "adding.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "adding.json").read_text())
    cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("model name"))
    assert result["cpu"]["model"] == cpu and result["threshold"] == 0.01
    assert set(result["runs"]) == {"T5_gru_s0", "T5_gru_s1"}
    for run in result["runs"].values():
        steps = [step for step, _ in run["curve"]]
        assert 20 <= steps[0] < 40 and steps == sorted(steps)  # A probe at (or just past) each multiple of 20.
        assert len(steps) == 2 or run["reached"] == steps[0]
        assert run["command"].startswith("python -m tf_rnn.train --dataset adding --seq-len 5 --cell gru")
        values = [value for _, value in run["curve"]]
        # Reached: the run stopped at the first probe under the threshold; else no probe was under it.
        first_under = next((step for step, value in run["curve"] if value < 0.01), None)
        assert run["reached"] == first_under and (first_under is None or first_under == steps[-1]), values
    assert (tmp_path / "adding.png").stat().st_size > 0


def test_serve_latency_times_every_runtime_at_every_batch_and_names_the_cpu(tmp_path):
    from benchmarks import serve_latency

    out = tmp_path / "latency.json"
    assert serve_latency.main(["--requests", "3", "--batch-sizes", "1", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    runtimes = {"SavedModel (TensorFlow)", "ONNX Runtime", "LiteRT float32", "LiteRT int8"}
    assert {(r["runtime"], r["batch"]) for r in result["rows"]} == {(r, b) for r in runtimes for b in (1, 2)}
    for row in result["rows"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["bytes"] > 0
        assert row["examples_per_s_at_p50"] == pytest.approx(row["batch"] / row["p50_ms"] * 1e3, rel=0.01)
    assert result["cpu"]["model"] and result["versions"]["ai-edge-litert"]


def test_quantization_scores_every_file_on_the_whole_test_set(tmp_path):
    from benchmarks import quantization
    from tf_rnn import train
    from tf_rnn.config import resolve

    run = tmp_path / "run"
    train.train_and_evaluate(resolve("seed", overrides=dict(dataset="adding", seq_len=5, units=4, steps=2)), run)
    out = tmp_path / "q.json"
    assert quantization.main([str(run), "--batch", "50", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [r["format"] for r in result["rows"]]
    assert names == ["Keras (float32)", "model.tflite", "model_float16.tflite", "model_dynamic.tflite",
                     "model_int8.tflite", "model.onnx (ONNX Runtime)"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["rows"][0]["test_mse"] == pytest.approx(metrics["test_mse"], rel=1e-4)
    for float_row in (result["rows"][1], result["rows"][5]):  # float32 LiteRT and ONNX: the same model as Keras
        assert float_row["test_mse"] == pytest.approx(metrics["test_mse"], rel=1e-4)
    float_file, int8 = result["rows"][1], result["rows"][4]
    assert result["float_serving_only_bytes"] < float_file["bytes"]  # The float file also holds `step`.
    assert int8["of_float_size"] == round(int8["bytes"] / float_file["bytes"], 3)
    assert int8["of_serving_only_float_size"] == round(int8["bytes"] / result["float_serving_only_bytes"], 3)
    assert result["test_examples"] == 10000 and result["cpu"]["model"]


def test_litert_steps_shows_the_fused_lstm_as_one_op_and_the_gru_unrolled_over_every_step(tmp_path):
    from benchmarks import litert_steps

    out = tmp_path / "steps.json"
    assert litert_steps.main(["--units", "4", "--requests", "2", "--views", "rows", "--cells", "lstm", "gru",
                              "--json", str(out)]) == 0
    lstm, gru = json.loads(out.read_text())["rows"]
    assert lstm["fused_lstm_ops"] == 1 and gru["fused_lstm_ops"] == 0
    assert gru["ops"] > gru["steps"] > lstm["ops"] and gru["bytes"] > lstm["bytes"]


def test_step_profile_sums_each_op_type_on_the_executor_threads_and_nothing_that_encloses_ops(tmp_path):
    """`benchmarks.step_profile`'s reading of TensorFlow's profile: a function of two MatMuls and an Add, profiled,
    has both op types with time, no executor or scheduling event counted as an op; `--steps 0` is refused."""
    import tensorflow as tf

    from benchmarks import step_profile

    a = tf.random.normal([256, 256])
    f = tf.function(lambda: tf.matmul(tf.matmul(a, a), a) + 1.0)
    f()
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        f().numpy()
    tf.profiler.experimental.stop()
    (xplane,) = tmp_path.rglob("*.xplane.pb")
    times = step_profile.op_times(xplane)
    assert any("MatMul" in op for op in times) and "AddV2" in times, times
    assert all(t > 0 for t in times.values())
    # `ExecutorState::Process` encloses every op: counted, it would read as an op type "Process" as long as them all.
    assert not {"Process", "Start"} & set(times), times
    with pytest.raises(SystemExit):
        step_profile.main(["--steps", "0"])


@pytest.mark.slow
def test_step_profile_reports_the_fused_ops_within_the_step(fashion_dir, tmp_path):
    """What benchmarks/README quotes from `results/step_profile_xeon.json`: the fused pair's two ops and the other
    ops, per step, each within the step's wall time, in a file that names its CPU."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_profile", "--steps", "10", "--json",
                          str(tmp_path / "p.json")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["cpu"] == machine.cpu() and result["steps"] == 10
    fused_ms = result["fused_ms_per_step"]
    if not fused.available():
        pytest.skip("the fused kernel does not run here")
    assert set(fused_ms) == {"TfRnnLstmForward", "TfRnnLstmBackward"} and all(v > 0 for v in fused_ms.values())
    assert sum(fused_ms.values()) < result["wall_ms_per_step"]
    assert 0 < result["other_ops_ms_per_step"] < result["wall_ms_per_step"]


@pytest.mark.parametrize("name, dtype", [("peak", "float32"), ("peak_bfloat16", "bfloat16")])
def test_throughput_peaks_multiply_in_the_dtype_they_are_reported_as(name, dtype, monkeypatch, capsys):
    """The report's `matmul_peak_gflops` and `matmul_bfloat16_gflops` (issue 26's evidence for a bf16 path) come
    from products in those dtypes: TensorFlow's matmul replaced by one that records its operands' dtype."""
    import tensorflow as tf

    from benchmarks import train_throughput

    seen = []
    monkeypatch.setattr(tf.linalg, "matmul", lambda a, b: seen.append(a.dtype.name) or a)
    train_throughput.worker(name, 0, 0, "lstm")
    assert set(seen) == {dtype} and json.loads(capsys.readouterr().out.splitlines()[-1])["name"] == name


def test_precision_benchmark_refuses_without_amx_first_and_compares_the_seeds_means(monkeypatch, tmp_path, capsys):
    """benchmarks.precision: a CPU without AMX is one line before any run (not after float32's first, minutes in);
    elsewhere each preset's difference is the seeds' mean bfloat16 minus float32 accuracy, in points."""
    from benchmarks import precision

    monkeypatch.setattr(fused, "amx_problem", lambda: "no tiles here")
    monkeypatch.setattr(precision, "one_run", lambda *a: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit, match=r"^precision: no tiles here$"):
        precision.main(["--seeds", "0"])
    accuracy = {("float32", 0): 0.80, ("float32", 1): 0.84, ("bfloat16", 0): 0.81, ("bfloat16", 1): 0.82}
    monkeypatch.setattr(fused, "amx_problem", lambda: None)
    monkeypatch.setattr(precision, "one_run", lambda preset, p, seed, workdir: {
        "test_accuracy": accuracy[p, seed], "epochs": 2, "train_examples": 1000,
        "epoch_seconds": [9.0, 2.0 if p == "float32" else 1.0]})
    assert precision.main(["--presets", "seed", "--seeds", "0", "1"]) == 0
    row = json.loads(capsys.readouterr().out)["presets"]["seed"]
    assert row["bfloat16_minus_float32_points"] == -0.5 and row["within_bar"]  # 0.815 - 0.82: on the bar, not over.
    assert row["bfloat16_speedup"] == 2.0 and row["float32"]["samples_per_second"] == 500.0
