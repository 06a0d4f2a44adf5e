"""tf_rnn.tune as keras-tuner's chief and workers: roles from the environment, bounded failures, and a real
search on localhost (a chief and two workers; a worker, then the chief, killed and restarted)."""

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import threading
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


def test_a_lost_chief_is_reported_with_the_grpc_status_not_the_error_class():
    class RpcError(Exception):  # What grpc raises: str() starts with "<_InactiveRpcError of RPC that terminated with:".
        def __str__(self):
            return "<_InactiveRpcError of RPC that terminated with:\n\tstatus = ..."

        def code(self):
            return "StatusCode.UNKNOWN"

        def details(self):
            return "Exception calling application: '1'\nmore"

    assert tune._rpc_reason(RpcError()) == "StatusCode.UNKNOWN: Exception calling application: '1'"
    assert tune._rpc_reason(ValueError("one\ntwo")) == "one"


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


def logs(tmp_path, *names) -> dict:
    return {name: (tmp_path / f"{name}.log").read_text()[-2000:] for name in names}


def wait_for_workers_then_chief(workers: dict, chief, tmp_path) -> None:
    """Asserts that every worker ({tuner id: process}), then the chief, exits 0. A worker that failed stops the chief
    at once: a chief waits for a dead worker's trial (tune's docstring), so the test would hang, not fail."""
    for name, worker in workers.items():
        code = wait(worker)
        if code != 0:
            chief.kill()
            chief.wait()
            pytest.fail(f"{name} exited {code}: {logs(tmp_path, name, 'chief')}")
    assert wait(chief) == 0, logs(tmp_path, "chief", *workers)


@pytest.mark.slow
def test_chief_and_two_workers_finish_a_search_together(tmp_path):
    argv, port = search_argv(tmp_path), free_port()
    chief = start(argv, port, "chief", tmp_path)
    workers = {f"worker{i}": start(argv, port, f"worker{i}", tmp_path) for i in range(2)}
    wait_for_workers_then_chief(workers, chief, tmp_path)
    ids = trial_ids(tmp_path)
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    ran = [finished_by(tmp_path, f"worker{i}") for i in range(2)]
    assert all(ran) and sorted(ran[0] + ran[1]) == sorted(ids), ran  # Each worker ran >= 1; together, all.
    assert (tmp_path / "s" / "best_config.json").exists() and (tmp_path / "s" / "best_run" / "metrics.json").exists()
    assert (tmp_path / "s" / "best_run" / "saved_model" / "saved_model.pb").exists()
    assert not finished_by(tmp_path, "chief")  # The chief serves the oracle and retrains; it runs no trial.


@pytest.mark.slow
def test_a_worker_killed_mid_trial_and_restarted_lets_the_search_finish(tmp_path):
    from support import kill_at_command

    argv, port = search_argv(tmp_path), free_port()
    chief = start(argv, port, "chief", tmp_path)
    steady = start(argv, port, "worker0", tmp_path)
    # worker1 SIGKILLs itself after the first batch of its first trial: that trial is left RUNNING at the chief.
    killed = start(argv, port, "worker1", tmp_path, command=kill_at_command("tune", 1, argv))
    assert wait(killed) == -signal.SIGKILL, logs(tmp_path, "worker1")
    lost = re.search(r"KILLED", (tmp_path / "worker1.log").read_text())
    assert lost
    os.rename(tmp_path / "worker1.log", tmp_path / "worker1-killed.log")
    again = start(argv, port, "worker1", tmp_path)  # The same command: it takes its interrupted trial back.
    wait_for_workers_then_chief({"worker1": again, "worker0": steady}, chief, tmp_path)
    ids = trial_ids(tmp_path)
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    assert (tmp_path / "s" / "best_run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_chief_killed_in_a_call_and_in_a_trial_and_restarted_resumes_the_search(tmp_path):
    """The chief dies twice, and the same command brings it back each time: inside the worker's call that creates
    trial 1 (saved at the chief, never sent), then while the worker trains trial 2. The worker goes on across both."""
    from support import chief_killed_in_call_command

    argv, port = search_argv(tmp_path), free_port()
    chief = start(argv, port, "chief", tmp_path, command=chief_killed_in_call_command("1", argv))
    worker = start(argv, port, "worker0", tmp_path)
    assert wait(chief) == -signal.SIGKILL, logs(tmp_path, "chief", "worker0")
    os.rename(tmp_path / "chief.log", tmp_path / "chief-killed-in-call.log")
    chief = start(argv, port, "chief", tmp_path)  # It reloads the oracle and serves again.
    deadline = time.monotonic() + 600
    while not (tmp_path / "s" / "tensorboard" / "2").exists():  # The worker writes it as it starts training trial 2.
        assert worker.poll() is None and chief.poll() is None and time.monotonic() < deadline, logs(
            tmp_path, "chief", "worker0")
        time.sleep(0.02)  # The kill must land inside trial 2's training (a second or more, tracing included).
    chief.kill()
    chief.wait()
    os.rename(tmp_path / "chief.log", tmp_path / "chief-killed-in-trial.log")
    chief = start(argv, port, "chief", tmp_path)
    wait_for_workers_then_chief({"worker0": worker}, chief, tmp_path)
    ids, ran = trial_ids(tmp_path), finished_by(tmp_path, "worker0")
    assert sorted(ids) == ["0", "1", "2", "3"], ids
    assert sorted(ran) == sorted(ids), ran  # The worker kept going across both restarts, and ran no trial twice.
    assert "trial 2 finished (started before this chief)" in (tmp_path / "chief.log").read_text()
    assert (tmp_path / "s" / "best_run" / "saved_model" / "saved_model.pb").exists()


# --- the chief's oracle across a restart (fast: keras-tuner's oracle alone, no training) ------------------------


def oracle_in(directory, max_trials=3):
    """The oracle a chief serves: keras-tuner's, made restart-safe as `tune.make_tuner` makes it."""
    import keras_tuner as kt

    from tf_rnn import tune_chief

    oracle_class = tune_chief.restart_safe(kt.oracles.RandomSearchOracle)
    oracle = oracle_class(kt.Objective("val_accuracy", "max"), max_trials=max_trials, seed=0)  # As make_tuner.
    oracle.hyperparameters.Float("lr", 1e-4, 1e-2, sampling="log")
    oracle._set_project_dir(str(directory), "search")
    return oracle


def restarted(directory):
    """A chief that died and came back: a new oracle reloaded from disk (as keras-tuner's tuner reloads it)."""
    oracle = oracle_in(directory)
    oracle.reload()
    return oracle


def finish(oracle, trial_id, accuracy=0.5, served=False):
    """Ends a trial as a worker would: through the chief's gRPC servicer when `served` (the requests a worker
    sends, without the network), else by calling the oracle as a single-process search does."""
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer
    from keras_tuner.src.engine import trial as trial_module

    if not served:
        oracle.update_trial(trial_id, {"val_accuracy": accuracy})
        trial = oracle.get_trial(trial_id)
        trial.status = trial_module.TrialStatus.COMPLETED
        return oracle.end_trial(trial)
    service, servicer = protos.get_service(), OracleServicer(oracle)  # keras-tuner's own, as the chief serves.
    reply = servicer.UpdateTrial(service.UpdateTrialRequest(trial_id=trial_id, metrics={"val_accuracy": accuracy}),
                                 None)
    trial = trial_module.Trial.from_proto(reply.trial)
    trial.status = trial_module.TrialStatus.COMPLETED
    servicer.EndTrial(service.EndTrialRequest(trial=trial.to_proto()), None)


def exits_in_time(oracle, seconds=10) -> bool:
    """keras-tuner's exit check, in a thread: False when it is stuck on the oracle's lock."""
    from keras_tuner.src.distribute.oracle_chief import exit_chief

    result = []
    thread = threading.Thread(target=lambda: result.append(exit_chief(oracle)), daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result)


def test_a_trial_running_when_the_chief_died_can_still_end_at_the_restarted_chief(tmp_path, capsys):
    oracle = oracle_in(tmp_path)
    finish(oracle, oracle.create_trial("worker0").trial_id, accuracy=0.25)
    running = oracle.create_trial("worker0").trial_id  # The chief dies during this trial...
    again = restarted(tmp_path)
    capsys.readouterr()
    finish(again, running, served=True)  # ...and its worker reports to the new chief.
    assert running not in again._retry_queue  # Finished by its worker: nobody runs it again.
    assert again.trials[running].score == 0.5 and exits_in_time(again)
    # Reported without the tuner and start time that died with the last chief.
    assert capsys.readouterr().out.splitlines() == [
        f"trial {running} finished (started before this chief): val_accuracy 0.5000; best so far: trial {running} "
        "(0.5000)"]


def test_the_chief_prints_each_trial_start_and_end_by_id_with_the_best_so_far(tmp_path, capsys):
    """What a chief's terminal shows: a line when a tuner starts a trial (its values), one when it ends (its score
    and the best so far, or how it failed); nothing for the stop once max_trials are out."""
    from keras_tuner.src.engine import trial as trial_module

    def printed() -> list[str]:
        return capsys.readouterr().out.splitlines()

    oracle = oracle_in(tmp_path, max_trials=3)
    tuners = ["worker0", "worker1", "worker2"]
    trials = [oracle.create_trial(tuner) for tuner in tuners]
    lines, ids = printed(), [t.trial_id for t in trials]
    assert len(lines) == 3, lines
    for line, trial, tuner in zip(lines, trials, tuners):
        found = re.fullmatch(rf"trial {trial.trial_id} started on {tuner}: lr=(\S+)", line)
        assert found and float(found.group(1)) == pytest.approx(trial.hyperparameters.values["lr"], rel=5e-3), line
    finish(oracle, ids[0], accuracy=0.75)
    assert re.fullmatch(rf"trial {ids[0]} finished on worker0 in \d s: val_accuracy 0.7500; "
                        rf"best so far: trial {ids[0]} \(0.7500\)", *printed())
    oracle.update_trial(ids[1], {"val_accuracy": 0.25}, step=3)  # The step reaches keras-tuner's history.
    finish(oracle, ids[1], accuracy=0.5)  # keras-tuner's default step, 0.
    assert re.fullmatch(rf"trial {ids[1]} finished on worker1 in \d s: val_accuracy 0.5000; "
                        rf"best so far: trial {ids[0]} \(0.7500\)", *printed())
    history = oracle.trials[ids[1]].metrics.get_history("val_accuracy")
    assert sorted((o.step, float(o.value[0])) for o in history) == [(0, 0.5), (3, 0.25)]
    oracle.update_trial(ids[2], {"val_accuracy": 0.9})  # A score, then a crash: the line says it failed.
    failed = oracle.get_trial(ids[2])
    failed.status, failed.message = trial_module.TrialStatus.FAILED, "ResourceExhaustedError: out of memory"
    oracle.end_trial(failed)
    assert re.fullmatch(rf"trial {ids[2]} failed on worker2 in \d s: ResourceExhaustedError: out of memory",
                        *printed())
    assert oracle.create_trial("worker0").status == "STOPPED" and printed() == []


def test_a_finished_trial_is_not_run_again_after_a_chief_restart(tmp_path):
    oracle = oracle_in(tmp_path)
    done = oracle.create_trial("worker0").trial_id
    finish(oracle, done)  # keras-tuner saves oracle.json before it drops the trial from the running ones.
    again = restarted(tmp_path)
    assert again._retry_queue == [] and again.create_trial("worker0").trial_id != done


@pytest.mark.parametrize("asks", ["worker0", "worker1"])
def test_a_trial_killed_with_the_chief_is_run_again(tmp_path, asks):
    oracle = oracle_in(tmp_path)
    running = oracle.create_trial("worker0").trial_id
    # Nobody reports it: its worker died too (worker1 asks), or the chief died before its reply reached worker0,
    # which asks again.
    again = restarted(tmp_path)
    assert again.create_trial(asks).trial_id == running


def test_an_end_trial_sent_again_after_a_chief_restart_is_recorded_once(tmp_path, capsys):
    oracle = oracle_in(tmp_path)
    done = oracle.create_trial("worker0").trial_id
    finish(oracle, done, accuracy=0.25)  # The chief records it and dies before its reply reaches the worker...
    again = restarted(tmp_path)
    capsys.readouterr()
    finish(again, done, accuracy=0.25, served=True)  # ...which sends it again, to the new chief.
    assert again.end_order == [done] and again._run_times[done] == 1, (again.end_order, again._run_times)
    assert capsys.readouterr().out == "" and exits_in_time(again)
    nxt = again.create_trial("worker0").trial_id
    finish(again, nxt, served=True)  # A trial's first EndTrial is still recorded, and printed.
    assert again.end_order == [done, nxt] and f"trial {nxt} finished" in capsys.readouterr().out


@pytest.mark.parametrize("call", ["update_trial", "end_trial", "create_trial"])
def test_a_failing_oracle_call_does_not_leave_the_chief_stuck(tmp_path, call):
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer
    from keras_tuner.src.engine import trial as trial_module

    oracle = oracle_in(tmp_path)
    servicer, service = OracleServicer(oracle), protos.get_service()
    if call == "create_trial":  # A failure inside keras-tuner's own create_trial (its populate_space).
        oracle.populate_space = lambda trial_id: {}["boom"]
    with pytest.raises(KeyError):
        if call == "update_trial":
            servicer.UpdateTrial(service.UpdateTrialRequest(trial_id="nope"), None)
        elif call == "end_trial":
            unknown = trial_module.Trial(oracle.get_space(), trial_id="nope", status="COMPLETED")
            servicer.EndTrial(service.EndTrialRequest(trial=unknown.to_proto()), None)
        else:
            servicer.CreateTrial(service.CreateTrialRequest(tuner_id="worker0"), None)
    assert exits_in_time(oracle)  # keras-tuner's oracle alone would wait on the lock forever here.


def test_a_chief_that_cannot_bind_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        worker_env(monkeypatch, port, tuner_id="chief")
        with pytest.raises(SystemExit) as e:  # keras-tuner's own server would bind nothing and wait forever.
            tune.main(["--workdir", str(tmp_path / "s"), "--dataset", tiny_npz(tmp_path), "--max-trials", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and f"cannot serve at 127.0.0.1:{port}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()  # Refused before the data loaded or anything was written.


def test_a_restarted_chief_serves_the_interrupted_trial_to_its_worker_over_grpc(tmp_path, monkeypatch):
    """keras-tuner's own client against keras-tuner's own server on localhost, serving the restart-safe oracle: the
    worker ends the trial it was running when the chief died, then asks for more until the search is over, and
    the server returns."""
    from keras_tuner.src.distribute import oracle_chief, oracle_client
    from keras_tuner.src.engine import trial as trial_module

    oracle = oracle_in(tmp_path)
    finish(oracle, oracle.create_trial("worker0").trial_id)
    running = oracle.create_trial("worker0").trial_id
    again = restarted(tmp_path)
    port = free_port()
    worker_env(monkeypatch, port)  # keras-tuner's server reads the address from the environment too.
    server = threading.Thread(target=oracle_chief.start_server, args=(again,), daemon=True)
    server.start()
    client = oracle_client.OracleClient(oracle_in(tmp_path / "worker"))
    ended = []

    def end(trial, accuracy):
        client.update_trial(trial.trial_id, {"val_accuracy": accuracy})
        trial.status = trial_module.TrialStatus.COMPLETED
        client.end_trial(trial)
        ended.append(trial.trial_id)

    end(client.get_trial(running), 0.7)
    while (trial := client.create_trial("worker0")).status != trial_module.TrialStatus.STOPPED:
        end(trial, 0.1)
    server.join(30)
    assert not server.is_alive()  # The search is over: the chief stops serving.
    assert sorted(again.trials) == ["0", "1", "2"] and sorted(ended) == ["1", "2"]  # No trial ran twice.
    assert again.get_best_trials(1)[0].trial_id == running


@pytest.mark.parametrize("tuner", tune.TUNERS)
def test_the_chief_serves_the_restart_safe_oracle_through_keras_tuner(tmp_path, monkeypatch, tuner):
    from keras_tuner.src.distribute import oracle_chief

    served = []

    def keras_tuners_server(oracle):
        served.append(oracle)
        raise KeyboardInterrupt  # Stop here: what the chief serves is what this test is about.

    monkeypatch.setattr(oracle_chief, "start_server", keras_tuners_server)
    port = free_port()
    worker_env(monkeypatch, port, tuner_id="chief")
    with pytest.raises(SystemExit) as e:
        tune.main(["--workdir", str(tmp_path / "s"), "--dataset", tiny_npz(tmp_path), "--max-trials", "2",
                   "--tuner", tuner])
    assert e.value.code == 130 and len(served) == 1 and getattr(served[0], "restart_safe", False)
    assert served[0].max_trials == 2  # The cap (Hyperband's too) is on the oracle the chief serves.


def test_a_worker_bounds_every_call_to_the_chief(tmp_path, monkeypatch):
    """keras-tuner's client waits up to an hour per call; a worker's calls carry --chief-timeout instead."""
    from tf_rnn import tune_chief

    calls = []

    class Stub:
        def CreateTrial(self, request, **kwargs):
            calls.append(kwargs)
            raise KeyboardInterrupt

    monkeypatch.setattr(tune, "wait_for_chief", lambda role, timeout: None)
    real_make = tune.make_tuner

    def make(*args, **kwargs):
        tuner = real_make(*args, **kwargs)
        tuner.oracle.stub = Stub()
        return tuner

    monkeypatch.setattr(tune, "make_tuner", make)
    worker_env(monkeypatch, free_port())
    (tmp_path / "s").mkdir()
    settings_ = tune.TuneConfig(dataset=tiny_npz(tmp_path), max_trials=2, chief_timeout=7.5)
    (tmp_path / "s" / tune.TUNE_CONFIG_FILE).write_text(__import__("json").dumps(settings_.to_dict()))
    assert tune_chief.KERAS_TUNER_SERIES  # The bound relies on keras-tuner 1.4's client (its `stub`).
    with pytest.raises(KeyboardInterrupt):
        tune.tune_and_evaluate(settings_, tmp_path / "s")
    assert calls and all(c.get("timeout") == pytest.approx(7.5, abs=0.5) for c in calls)


def bounded_stub(outcomes, timeout=10.0, seconds_per_call=2.0):
    """`tune._Bounded` over a stub whose CreateTrial takes `seconds_per_call` of a fake clock and then raises (a
    `grpc.StatusCode`: an RpcError with it, as gRPC raises) or returns each of `outcomes` in turn; returns (the
    bounded stub, the timeouts each attempt was given)."""
    import grpc

    class RpcError(grpc.RpcError):
        def __init__(self, code):
            super().__init__(code)
            self._code = code

        def code(self):
            return self._code

    now, timeouts = [100.0], []

    class Stub:
        def CreateTrial(self, request, **kwargs):
            assert request == "request" and kwargs["wait_for_ready"] is True  # Sent again unchanged.
            timeouts.append(kwargs["timeout"])
            now[0] += seconds_per_call
            outcome = outcomes.pop(0)
            if isinstance(outcome, grpc.StatusCode):
                raise RpcError(outcome)
            return outcome

    def sleep(seconds):
        now[0] += seconds

    return tune._Bounded(Stub(), timeout, clock=lambda: now[0], sleep=sleep), timeouts


def test_a_call_the_chiefs_death_cut_is_sent_again_within_the_bound():
    import grpc

    cut = grpc.StatusCode.UNAVAILABLE  # A call in flight when the chief died: "Stream removed (Socket closed)".
    stub, timeouts = bounded_stub([cut, cut, "reply"])
    assert stub.CreateTrial("request", wait_for_ready=True) == "reply"
    assert timeouts == [10.0, 7.0, 4.0]  # What is left of the call's 10 s: 2 s a call, 1 s between them.


def test_a_chief_that_stays_away_fails_the_call_once_the_bound_is_spent():
    import grpc

    stub, timeouts = bounded_stub([grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateTrial("request", wait_for_ready=True)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and timeouts == [10.0, 7.0, 4.0, 1.0]


@pytest.mark.parametrize("code", ["DEADLINE_EXCEEDED", "UNKNOWN", "INVALID_ARGUMENT"])
def test_a_call_the_chief_answered_with_an_error_is_not_sent_again(code):
    import grpc

    stub, timeouts = bounded_stub([getattr(grpc.StatusCode, code), "reply"])
    with pytest.raises(grpc.RpcError) as e:  # The chief's own error, or the bound spent: the worker fails.
        stub.CreateTrial("request", wait_for_ready=True)
    assert e.value.code() == getattr(grpc.StatusCode, code) and timeouts == [10.0]


def test_a_keras_tuner_the_repairs_were_not_written_for_is_refused_in_one_line(monkeypatch):
    import keras_tuner

    from tf_rnn import tune_chief
    from tf_rnn.cli import RunError

    tune_chief.check_keras_tuner()  # The installed one (pyproject pins <1.5) passes.
    monkeypatch.setattr(keras_tuner, "__version__", "1.5.0")
    with pytest.raises(RunError, match=r"keras-tuner 1\.5\.0: .*pip install 'keras-tuner>=1\.4\.7,<1\.5'"):
        tune_chief.check_keras_tuner()


def test_check_address_refuses_a_busy_port_in_one_line_and_accepts_a_free_one():
    from tf_rnn import tune_chief
    from tf_rnn.cli import RunError

    tune_chief.check_address(f"127.0.0.1:{free_port()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(RunError) as e:
            tune_chief.check_address(address)
    assert str(e.value).startswith(f"tuning chief: cannot serve at {address} (") and "\n" not in str(e.value)
    assert str(e.value).endswith("; choose another KERASTUNER_ORACLE_PORT or fix KERASTUNER_ORACLE_IP")
    with pytest.raises(RunError, match=r"cannot serve at 192\.0\.2\.1:8000"):  # Not this machine's address.
        tune_chief.check_address("192.0.2.1:8000")
