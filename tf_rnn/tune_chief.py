"""Tune's chief: keras-tuner's oracle made safe to serve again after a restart, on keras-tuner's public API.

keras-tuner serves the oracle itself (`Tuner.search` on the chief); what it gets wrong after a restart (1.4) is
repaired in an oracle subclass (`restart_safe`):

- `reload`: the display's per-trial start times and numbers are saved *before* a new trial is recorded, so a trial
  that was running when the chief died is missing from them, and its worker's `end_trial` then raises `KeyError`
  in the display. And `end_trial` saves the oracle *before* it removes the trial from the ongoing ones, so the
  last trial each worker finished is on disk as still running and `reload` queues it to run again: a trial whose
  own status says it is over (completed or failed) leaves the retry queue.
- `end_trial`: a trial that was running when the chief restarted went back to the retry queue; its worker
  finished it, so it leaves the queue.
- Every synchronized call (`create_trial`, `update_trial`, `end_trial`): `keras_tuner.synchronized` releases the
  oracle's lock only when the call returns, so an exception left it held and the chief's exit check waited on it
  forever (keras-team/keras-tuner#915). Here the call runs inside a synchronized helper that catches the error
  and returns it; the lock is released, and the error is raised again outside it, so it still reaches the worker.
"""

from __future__ import annotations

import collections
import datetime
import socket

from tf_rnn.cli import RunError

# The repairs read the oracle's display and retry queue as keras-tuner 1.4 keeps them (pyproject pins <1.5).
KERAS_TUNER_SERIES = "1.4."
OVER = ("COMPLETED", "FAILED")  # keras_tuner TrialStatus values of a trial that must not run again.


def check_keras_tuner() -> None:
    """Raises RunError unless keras-tuner is the series the repairs were written for."""
    import keras_tuner

    if not keras_tuner.__version__.startswith(KERAS_TUNER_SERIES):
        raise RunError(f"keras-tuner {keras_tuner.__version__}: tf_rnn's distributed search repairs keras-tuner "
                       f"{KERAS_TUNER_SERIES}x's oracle; pip install 'keras-tuner>=1.4.7,<1.5'")


def repair_reloaded_oracle(oracle) -> None:
    """The `reload` repairs (module docstring) on an oracle whose state was just read from its `oracle.json`."""
    display = oracle._display
    display.trial_start = collections.defaultdict(datetime.datetime.now, display.trial_start)
    display.trial_number = collections.defaultdict(lambda: len(oracle.trials), display.trial_number)
    oracle._retry_queue = [t for t in oracle._retry_queue if oracle.trials[t].status not in OVER]


class _Raised:
    """An exception carried out of the oracle's lock, to be raised again once the lock is released."""

    def __init__(self, error: BaseException):
        self.error = error


def restart_safe(oracle_class):
    """A subclass of the keras-tuner oracle class `oracle_class` with the repairs of this module's docstring."""
    import keras_tuner as kt

    class RestartSafe(oracle_class):
        restart_safe = True  # Tests and the chief check that this is the oracle being served.

        def reload(self):
            super().reload()
            repair_reloaded_oracle(self)

        @kt.synchronized
        def _locked(self, name: str, *args, **kwargs):
            try:
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
            return self._call("create_trial", tuner_id)

        def update_trial(self, trial_id, metrics, step=0):
            return self._call("update_trial", trial_id, metrics, step=step)

        def end_trial(self, trial):
            return self._call("end_trial", trial)

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
