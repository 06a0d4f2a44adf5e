"""tf_rnn.distribute: strategy names, Mirrored == default on the same global batch, a real 2-worker run, and
training that survives SIGKILL. Multi-device and multi-worker cases run in subprocesses, as TensorFlow's own
tests do: logical devices and collectives must be configured before the runtime starts."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow as tf

from support import kill_at_command
from tf_rnn import distribute

TESTS = Path(__file__).parent


def test_strategy_names():
    assert distribute.strategy_name(tf.distribute.OneDeviceStrategy("/cpu:0")) == "OneDeviceStrategy"
    assert distribute.get_strategy("default") is tf.distribute.get_strategy()
    # On a CPU-only host, auto is the default strategy (TensorFlow already uses every core inside each op).
    assert distribute.get_strategy("auto").num_replicas_in_sync == 1
    assert isinstance(distribute.get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    with pytest.raises(ValueError, match="unknown strategy 'horovod'; choose one of: auto, default, one_device, "
                                         "mirrored, multi_worker, tpu"):
        distribute.get_strategy("horovod")


MIRRORED_VS_DEFAULT = textwrap.dedent("""
    import json, sys, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])
    from support import synthetic_arrays
    from tf_rnn import train
    from tf_rnn.config import resolve
    tiny = dict(units=16, layers=2, lr=1e-2, dropout=0.0, epochs=3, validation_split=0.2, label_smoothing=0.0)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    a = train.train_and_evaluate(resolve(overrides={**tiny, "batch_size": 16}), sys.argv[1] + "/mirrored",
                                 arrays=synthetic_arrays(), strategy=mirrored)
    b = train.train_and_evaluate(resolve(overrides={**tiny, "batch_size": 32}), sys.argv[1] + "/default",
                                 arrays=synthetic_arrays(), strategy=tf.distribute.get_strategy())
    print("RESULT", json.dumps([a, b]))
""")


def test_mirrored_over_two_cpus_matches_the_default_strategy(tmp_path):
    out = subprocess.run([sys.executable, "-c", MIRRORED_VS_DEFAULT, str(tmp_path), str(TESTS)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    mirrored, default = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert (mirrored["num_replicas_in_sync"], default["num_replicas_in_sync"]) == (2, 1)
    # Keras' multi-step loop fails with several replicas (keras-team/keras#19246): one step per call there; the
    # default strategy runs the default 10 per call, whole epochs (executions of 10 and 5 steps).
    assert (mirrored["steps_per_execution"], default["steps_per_execution"]) == (1, 10)
    assert mirrored["global_batch_size"] == default["global_batch_size"] == 32
    # Same data, same global batch, same initial weights: two half-batch gradients summed by the all-reduce equal
    # one full-batch gradient up to float32 rounding. Tolerance: 1e-4 relative on every epoch's mean loss.
    for key in ("loss", "val_loss"):
        assert mirrored["history"][key] == pytest.approx(default["history"][key], rel=1e-4)
    assert mirrored["history"]["loss"][-1] < mirrored["history"]["loss"][0]  # It trained.


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp_path, fashion_dir, extra_args, names=("chief", "worker"), kill_at=None):
    """Two `python -m tf_rnn.train --strategy multi_worker` processes on localhost, each in its own folder, with
    the same relative --workdir: what the non-chief writes would land in its own folder. With `kill_at`, each
    kills itself after that optimizer step."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index, name in enumerate(names):
        (tmp_path / name).mkdir(exist_ok=True)
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        argv = ["--strategy", "multi_worker", "--dataset", "fashion_mnist", "--data-dir", str(fashion_dir),
                "--workdir", "run", "--units", "16", "--layers", "2", *extra_args]
        cmd = kill_at_command("train", kill_at, argv) if kill_at else [sys.executable, "-m", "tf_rnn.train", *argv]
        log = (tmp_path / f"{name}.log").open("ab")
        procs.append(subprocess.Popen(cmd, cwd=tmp_path / name, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


@pytest.mark.slow
def test_two_workers_train_through_the_cli_to_identical_weights(tmp_path, fashion_dir):
    procs = start_workers(tmp_path, fashion_dir, ["--epochs", "2", "--steps", "240"])  # 211 steps per epoch.
    codes = [p.wait(timeout=900) for p in procs]
    logs = [(tmp_path / f"{n}.log").read_text() for n in ("chief", "worker")]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    metrics = json.loads((tmp_path / "chief" / "run" / "metrics.json").read_text())
    assert metrics["num_replicas_in_sync"] == 2 and metrics["strategy"] == "MultiWorkerMirroredStrategy"
    assert metrics["strategy_requested"] == "multi_worker"
    assert metrics["steps"] == 240 and metrics["epochs"] == 2 and metrics["test_examples"] == 10_000
    assert f"weights sha256 {metrics['weights_sha256']}" in logs[1]  # The worker ends with the chief's weights.
    assert "Epoch 2/2" in logs[0]  # Keras' progress output, from the custom loop.
    assert (tmp_path / "chief" / "run" / "saved_model" / "saved_model.pb").exists()
    assert not (tmp_path / "worker" / "run").exists()  # Only the chief writes checkpoints, exports, metrics.


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes_to_the_same_weights(tmp_path, fashion_dir):
    # The default preset (dropout 0.25, flips on Fashion-MNIST, label smoothing, cosine) at a small size and budget.
    argv = ["--dataset", "fashion_mnist", "--data-dir", str(fashion_dir), "--units", "16", "--layers", "2",
            "--epochs", "2", "--steps", "500"]  # 422 steps per epoch.
    straight = subprocess.run([sys.executable, "-m", "tf_rnn.train", *argv, "--workdir", str(tmp_path / "straight")],
                              capture_output=True, text=True, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    cmd = [sys.executable, "-m", "tf_rnn.train", *argv, "--workdir", str(tmp_path / "run")]
    killed = subprocess.run(kill_at_command("train", 460, cmd[3:]), capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL and "KILLED at step 460" in killed.stdout, killed.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from epoch 1" in again.stdout and "Epoch 2/2" in again.stdout and "Epoch 1/2" not in again.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == 2 and metrics["steps"] == 500
    assert metrics["weights_sha256"] == expected["weights_sha256"]  # Bit-identical to the uninterrupted run.


@pytest.mark.slow
def test_multi_worker_run_killed_and_restarted_as_a_whole_resumes(tmp_path, fashion_dir):
    args = ["--epochs", "2", "--steps", "400"]  # 211 steps per epoch at a global batch of 256.
    procs = start_workers(tmp_path, fashion_dir, args, names=("chief", "chief"), kill_at=300)  # One folder: shared.
    # Each kills itself at step 300; one that dies first makes its peer fail there ("Socket closed") instead.
    codes = [p.wait(timeout=900) for p in procs]
    assert -signal.SIGKILL in codes and 0 not in codes, (codes, (tmp_path / "chief.log").read_text()[-3000:])
    (tmp_path / "chief.log").rename(tmp_path / "first.log")
    procs = start_workers(tmp_path, fashion_dir, args, names=("chief", "chief"))
    assert [p.wait(timeout=900) for p in procs] == [0, 0], (tmp_path / "chief.log").read_text()[-3000:]
    log = (tmp_path / "chief.log").read_text()
    assert log.count("Resuming from epoch 1") == 2  # Both workers restored the backup.
    metrics = json.loads((tmp_path / "chief" / "run" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == 2 and metrics["steps"] == 400
    assert f"weights sha256 {metrics['weights_sha256']}" in log


def test_gpu_check_says_plainly_when_there_is_no_gpu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tf_rnn.gpu_check", "--workdir", str(tmp_path / "g")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 1 and "error: no GPU visible to TensorFlow" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "g").exists()
