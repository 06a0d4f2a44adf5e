"""tf_rnn.tune as keras-tuner's chief and workers: roles from the environment, bounded failures, and a real
search on localhost (a chief and two workers, one of them killed mid-trial and restarted)."""

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tf_rnn import tune
from tf_rnn.cli import UsageError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- roles and refusals (fast) ----------------------------------------------------------------------------------


def test_role_comes_from_keras_tuner_variables():
    assert tune.role_from_env({}).kind == "single"
    chief = tune.role_from_env({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "10.0.0.1",
                                "KERASTUNER_ORACLE_PORT": "8000"})
    assert (chief.kind, chief.address) == ("chief", "10.0.0.1:8000")
    worker = tune.role_from_env({"KERASTUNER_TUNER_ID": "worker3", "KERASTUNER_ORACLE_IP": "h",
                                 "KERASTUNER_ORACLE_PORT": "1"})
    assert (worker.kind, worker.tuner_id) == ("worker", "worker3")


@pytest.mark.parametrize("env, message", [
    ({"KERASTUNER_ORACLE_IP": "h"}, "KERASTUNER_ORACLE_IP is set but KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_PORT not"),
    ({"KERASTUNER_ORACLE_IP": "h", "KERASTUNER_TUNER_ID": "w", "KERASTUNER_ORACLE_PORT": "http"},
     "KERASTUNER_ORACLE_PORT='http': not a port number"),
])
def test_incomplete_or_bad_variables_are_one_usage_line(env, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        tune.role_from_env(env)


def test_multi_worker_strategy_is_refused_in_tuning(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tune.main(["--workdir", str(tmp_path / "s"), "--strategy", "multi_worker"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "keras-tuner cannot run a trial across workers" in err
    assert not (tmp_path / "s").exists()


def worker_env(monkeypatch, port, tuner_id="worker0"):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", tuner_id)
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))


def test_worker_without_a_chief_fails_in_bounded_time_naming_the_address(tmp_path, monkeypatch, capsys):
    port = free_port()  # Nobody listens here.
    worker_env(monkeypatch, port)
    start = time.monotonic()
    with pytest.raises(SystemExit) as e:
        tune.main(["--workdir", str(tmp_path / "s"), "--chief-timeout", "2"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1, err
    assert f"no tuning chief answered at 127.0.0.1:{port} within 2s" in err
    assert elapsed < 30 and not (tmp_path / "s").exists()


def test_only_the_chief_may_overwrite(tmp_path, monkeypatch, capsys):
    worker_env(monkeypatch, free_port())
    with pytest.raises(SystemExit) as e:
        tune.main(["--workdir", str(tmp_path / "s"), "--overwrite"])
    assert e.value.code == 2 and "only the chief may discard a search" in capsys.readouterr().err


# --- a real search on localhost (slow: five processes, each importing TensorFlow) --------------------------------


def tiny_npz(tmp_path) -> str:
    """A 3-class sequence task (which third of the sequence holds the bright step) small enough for seconds."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.normal(0, 0.1, (n, 9, 2)).astype(np.float32)
        x[np.arange(n), 3 * y + 1, 0] = 1.0
        return x, y

    (x_train, y_train), (x_test, y_test) = make(400), make(100)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def search_argv(tmp_path):
    return ["--tuner", "random", "--max-trials", "4", "--epochs", "1", "--final-epochs", "1",
            "--validation-split", "0.25", "--dataset", tiny_npz(tmp_path), "--workdir", str(tmp_path / "s")]


def start(argv, port, tuner_id, tmp_path, command=None):
    env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}
    log = open(tmp_path / f"{tuner_id}.log", "w")
    return subprocess.Popen(command or [sys.executable, "-m", "tf_rnn.tune", *argv], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def finished_by(tmp_path, tuner_id) -> list[str]:
    text = (tmp_path / f"{tuner_id}.log").read_text()
    return re.findall(rf"tuner {tuner_id}: trial (\d+) finished", text)


def trial_ids(tmp_path) -> list[str]:
    with (tmp_path / "s" / "trials.csv").open() as f:
        return [row["trial"] for row in csv.DictReader(f)]


def wait(process, seconds=600):
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.mark.slow
def test_chief_and_two_workers_finish_a_search_together(tmp_path):
    argv, port = search_argv(tmp_path), free_port()
    chief = start(argv, port, "chief", tmp_path)
    workers = [start(argv, port, f"worker{i}", tmp_path) for i in range(2)]
    codes = [wait(p) for p in workers] + [wait(chief)]
    logs = {name: (tmp_path / f"{name}.log").read_text()[-2000:] for name in ("chief", "worker0", "worker1")}
    assert codes == [0, 0, 0], logs
    ids = trial_ids(tmp_path)
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    ran = [finished_by(tmp_path, f"worker{i}") for i in range(2)]
    assert all(ran) and sorted(ran[0] + ran[1]) == sorted(ids), ran  # Each worker ran >= 1; together, all.
    assert (tmp_path / "s" / "best_config.json").exists() and (tmp_path / "s" / "best_run" / "metrics.json").exists()
    assert (tmp_path / "s" / "best_run" / "saved_model" / "saved_model.pb").exists()
    assert not finished_by(tmp_path, "chief")  # The chief serves the oracle and retrains; it runs no trial.


@pytest.mark.slow
def test_a_worker_killed_mid_trial_and_restarted_lets_the_search_finish(tmp_path):
    from conftest import kill_at_command

    argv, port = search_argv(tmp_path), free_port()
    chief = start(argv, port, "chief", tmp_path)
    steady = start(argv, port, "worker0", tmp_path)
    # worker1 SIGKILLs itself after the first batch of its first trial: that trial is left RUNNING at the chief.
    killed = start(argv, port, "worker1", tmp_path, command=kill_at_command("tune", 1, argv))
    assert wait(killed) == -signal.SIGKILL, (tmp_path / "worker1.log").read_text()[-2000:]
    lost = re.search(r"KILLED", (tmp_path / "worker1.log").read_text())
    assert lost
    os.rename(tmp_path / "worker1.log", tmp_path / "worker1-killed.log")
    again = start(argv, port, "worker1", tmp_path)  # The same command: it takes its interrupted trial back.
    codes = [wait(again), wait(steady), wait(chief)]
    assert codes == [0, 0, 0], [(tmp_path / f"{n}.log").read_text()[-2000:] for n in ("chief", "worker0", "worker1")]
    ids = trial_ids(tmp_path)
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    assert (tmp_path / "s" / "best_run" / "metrics.json").exists()
