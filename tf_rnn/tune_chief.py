"""Tune's chief: serves keras-tuner's oracle to the workers over gRPC, and resumes it after a restart."""

from __future__ import annotations

import collections
import datetime
import functools
import threading
import time

from tf_rnn.cli import RunError


def repair_reloaded_oracle(oracle) -> None:
    """Makes an oracle reloaded from its `oracle.json` safe to serve again (two things keras-tuner 1.4 gets wrong;
    the third, a lock left held after an error, is `_release_on_error`'s).

    - The display's per-trial start times and numbers are saved *before* a new trial is recorded, so a trial that
      was running when the chief died is missing from them; its worker's `end_trial` then raises `KeyError` in
      the display — after the oracle lock was taken, which keras-tuner never releases on an error.
    - `end_trial` saves the oracle *before* it removes the trial from the ongoing ones, so the last trial each
      worker finished is on disk as still running, and `reload` queues it to run again. A trial whose own file
      says COMPLETED (or FAILED) is over: it leaves the retry queue here.
    """
    from keras_tuner.src.engine import trial as trial_module

    display = oracle._display
    display.trial_start = collections.defaultdict(datetime.datetime.now, display.trial_start)
    display.trial_number = collections.defaultdict(lambda: len(oracle.trials), display.trial_number)
    over = {trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED}
    oracle._retry_queue = [t for t in oracle._retry_queue if oracle.trials[t].status not in over]


def _release_on_error(method):
    """keras-tuner's `synchronized` takes the oracle's lock and releases it only when the call returns: an
    exception leaves it held, and the chief's exit check then waits on it forever (keras-tuner#915). The error
    still reaches the worker; the lock no longer stays taken."""

    @functools.wraps(method)
    def call(self, request, context):
        from keras_tuner.src.engine import oracle as oracle_module

        try:
            return method(self, request, context)
        except Exception:
            if oracle_module.THREADS[self.oracle] == threading.current_thread().name:
                oracle_module.THREADS[self.oracle] = None
                oracle_module.LOCKS[self.oracle].release()
            raise

    return call


def _servicer_class():
    from keras_tuner.src.distribute import oracle_chief
    from keras_tuner.src.engine.oracle import synchronized

    @synchronized
    def forget_retry(oracle, trial_id):
        # A trial that was running when the chief restarted went back to the retry queue; its worker finished it.
        if trial_id in oracle._retry_queue:
            oracle._retry_queue.remove(trial_id)

    class Servicer(oracle_chief.OracleServicer):
        def EndTrial(self, request, context):
            forget_retry(self.oracle, request.trial.trial_id)
            return super().EndTrial(request, context)

    for name in ("GetSpace", "UpdateSpace", "CreateTrial", "UpdateTrial", "EndTrial", "GetTrial", "GetBestTrials"):
        setattr(Servicer, name, _release_on_error(getattr(Servicer, name)))
    return Servicer


def serve(oracle, address: str, poll_s: float = 1.0) -> None:
    """Serves `oracle` at `address` ("ip:port") until the search is over: a worker was told to stop, and no
    trial is running and no worker is still asking (keras-tuner's own exit rule, checked every `poll_s`). An
    oracle reloaded after a restart is repaired first (`repair_reloaded_oracle`).

    Replaces `keras_tuner.src.distribute.oracle_chief.start_server`, which polls every 20 s and hangs for good
    once an oracle call failed (see `_release_on_error`).
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import exit_chief

    repair_reloaded_oracle(oracle)
    servicer = _servicer_class()(oracle)
    # One thread, as keras-tuner's own server: the oracle's calls run one at a time anyway.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise RunError(f"tuning chief: cannot serve at {address} (port in use, or not this machine's address); "
                       "choose another KERASTUNER_ORACLE_PORT or fix KERASTUNER_ORACLE_IP")
    server.start()
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=5)
