"""Tune's chief: keras-tuner's oracle made safe to serve again after a restart, on keras-tuner's public API.

keras-tuner serves the oracle itself (`Tuner.search` on the chief); what it gets wrong after a restart (1.4) is
repaired in an oracle subclass (`restart_safe`):

- `reload`: `end_trial` saves the oracle *before* it removes the trial from the ongoing ones, so the last trial
  each worker finished is on disk as still running and `reload` queues it to run again: a trial whose own status
  says it is over (completed or failed) leaves the retry queue. (keras-tuner's display, whose saved state misses
  a trial that was running when the chief died, would raise `KeyError` at its end; it stays silent here, verbose
  0, so it reads nothing: the oracle prints its own lines by trial id.)
- `end_trial`: a trial that was running when the chief restarted went back to the retry queue; its worker
  finished it, so it leaves the queue. And a worker whose EndTrial was cut by the chief's death sends it again
  (`tune._Bounded`): one the chief had already recorded (in its end order) is ignored, not counted twice.
- Every synchronized call (`create_trial`, `update_trial`, `end_trial`): `keras_tuner.synchronized` releases the
  oracle's lock only when the call returns, so an exception left it held and the chief's exit check waited on it
  forever (keras-team/keras-tuner#915). Here the call runs inside a synchronized helper that catches the error
  and returns it; the lock is released, and the error is raised again outside it, so it still reaches the worker.
"""

from __future__ import annotations

import socket
import time

from tf_rnn.cli import RunError

# The repairs read the oracle's retry queue and display setting as keras-tuner 1.4 keeps them (pyproject pins <1.5).
KERAS_TUNER_SERIES = "1.4."
OVER = ("COMPLETED", "FAILED")  # keras_tuner TrialStatus values of a trial that must not run again.


def check_keras_tuner() -> None:
    """Raises RunError unless keras-tuner is the series the repairs were written for."""
    import keras_tuner

    if not keras_tuner.__version__.startswith(KERAS_TUNER_SERIES):
        raise RunError(f"keras-tuner {keras_tuner.__version__}: tf_rnn's distributed search repairs keras-tuner "
                       f"{KERAS_TUNER_SERIES}x's oracle; pip install 'keras-tuner>=1.4.7,<1.5'")


def repair_reloaded_oracle(oracle) -> None:
    """The `reload` repair (module docstring) on an oracle whose state was just read from its `oracle.json`."""
    oracle._retry_queue = [t for t in oracle._retry_queue if oracle.trials[t].status not in OVER]


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class _Raised:
    """An exception carried out of the oracle's lock, to be raised again once the lock is released."""

    def __init__(self, error: BaseException):
        self.error = error


_REPEATED = object()  # end_trial's outcome for a trial the oracle had already ended.


def restart_safe(oracle_class):
    """A subclass of the keras-tuner oracle class `oracle_class` with the repairs of this module's docstring."""
    import keras_tuner as kt

    class RestartSafe(oracle_class):
        restart_safe = True  # Tests and the chief check that this is the oracle being served.

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.verbose = 0
            self._started: dict[str, tuple[str, float]] = {}  # trial id -> (tuner id, time.monotonic())

        # keras-tuner's own display numbers trials 1, 2, ... while trials.csv, TensorBoard and best_config.json
        # name them by id: it stays silent, and this oracle prints each trial's start and end by id (on the chief,
        # for every worker's trials).
        @property
        def verbose(self):
            return 0

        @verbose.setter
        def verbose(self, value):
            oracle_class.verbose.fset(self, 0)

        def reload(self):
            super().reload()
            repair_reloaded_oracle(self)

        @kt.synchronized
        def _locked(self, name: str, *args, **kwargs):
            try:
                if name == "end_trial" and args[0].trial_id in self.end_order:
                    return _REPEATED
                if name == "end_trial" and args[0].trial_id in self._retry_queue:
                    self._retry_queue.remove(args[0].trial_id)
                return getattr(super(RestartSafe, self), name)(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - carried out of the lock and raised again below.
                return _Raised(e)

        def _call(self, name, *args, **kwargs):
            outcome = self._locked(name, *args, **kwargs)
            if isinstance(outcome, _Raised):
                raise outcome.error
            return outcome

        def create_trial(self, tuner_id):
            trial = self._call("create_trial", tuner_id)
            if trial.status == "RUNNING":
                self._started[trial.trial_id] = (tuner_id, time.monotonic())
                values = " ".join(f"{k}={_short(v)}" for k, v in trial.hyperparameters.values.items())
                print(f"trial {trial.trial_id} started on {tuner_id}: {values or 'default configuration'}",
                      flush=True)
            return trial

        def update_trial(self, trial_id, metrics, step=0):
            return self._call("update_trial", trial_id, metrics, step=step)

        def end_trial(self, trial):
            outcome = self._call("end_trial", trial)
            if outcome is _REPEATED:
                return None
            print(self._ended(self.trials.get(trial.trial_id, trial)), flush=True)
            return outcome

        def _ended(self, trial) -> str:
            started = self._started.pop(trial.trial_id, None)
            if started is None:  # Started before a restart: its tuner and start time died with the last chief.
                how = " (started before this chief)"
            else:  # The words of the started line: "trial 3 started on worker0", "... finished on worker0".
                how = f" on {started[0]} in {time.monotonic() - started[1]:.0f} s"
            if trial.status != "COMPLETED" or trial.score is None:
                return f"trial {trial.trial_id} {str(trial.status).lower()}{how}: {trial.message}"
            best = self.get_best_trials(1)
            best = f"; best so far: trial {best[0].trial_id} ({best[0].score:.4f})" if best else ""
            return f"trial {trial.trial_id} finished{how}: {self.objective.name} {trial.score:.4f}{best}"

    RestartSafe.__name__ = RestartSafe.__qualname__ = f"RestartSafe{oracle_class.__name__}"
    return RestartSafe


def check_address(address: str) -> None:
    """Raises RunError (one line) when this machine cannot serve at `address` ("ip:port"): a port in use, or an
    address that is not this machine's. Checked before keras-tuner's server binds, which does not say."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            # As gRPC binds: a port a killed chief left in TIME_WAIT is free; one a server listens on is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
    except OSError as e:
        raise RunError(f"tuning chief: cannot serve at {address} ({e.strerror or e}); choose another "
                       "KERASTUNER_ORACLE_PORT or fix KERASTUNER_ORACLE_IP") from None
