"""Callbacks: run state that survives a restart (history, best model, early stopping), per-epoch seeds, budgets."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from tf_rnn.cli import plural
from tf_rnn.workdir import write_json


def optimizer_steps(model) -> int:
    """Optimizer steps so far. `.numpy()` also reads the MirroredVariable that multi-worker training makes."""
    return int(model.optimizer.iterations.numpy())


class RunState(keras.callbacks.Callback):
    """Per-epoch history and wall time, the best-validation model, and early stopping; all survive a restart.

    Keras' ModelCheckpoint and EarlyStopping forget their best value when a run resumes, and a resumed run would
    then overwrite a better model with a worse one. Here the only state is the per-epoch history (kept in a JSON
    file beside the BackupAndRestore backup); the best epoch and the patience count are derived from it. A
    restart truncates the history to the epochs the backup holds, so an epoch recorded but not yet backed up is
    simply recorded again when it re-runs, identically.

    An epoch whose logs hold a non-finite value (the loss became NaN) is neither recorded nor saved: the best
    model is never replaced by a diverged one.

    Args:
      model_path: where the best model is saved (`.keras`).
      state_path: the JSON file holding the history.
      patience: stop after this many epochs without a gain in `monitor` (0: never).
      first_epoch: epochs the restored backup holds (history beyond them is from an epoch that re-runs).
      monitor, mode: the validation metric and whether higher (`max`) or lower (`min`) is better. Without it in
        the logs (no validation set) the latest epoch counts as the best.
      save: write files (only the chief does under multi-worker training).
      clock: the time source for `epoch_seconds` (tests pass a fake one).
    """

    def __init__(self, model_path: Path, state_path: Path, patience: int, first_epoch: int = 0,
                 monitor: str = "val_accuracy", mode: str = "max", save: bool = True, clock=time.perf_counter):
        super().__init__()
        self.model_path, self.state_path, self.save = Path(model_path), Path(state_path), save
        self.patience, self.first_epoch, self.monitor, self.mode = patience, first_epoch, monitor, mode
        self.clock = clock
        self.history: dict[str, list[float]] = {}
        self.epoch_seconds: list[float] = []

    # --- derived state ---

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)

    @property
    def best_epoch(self) -> int | None:
        """1-based epoch of the best monitored value (the first one on ties); the latest without validation."""
        scores = self.history.get(self.monitor)
        if not scores:
            return self.epochs or None
        pick = max if self.mode == "max" else min
        best = pick(scores)
        return scores.index(best) + 1

    @property
    def best_value(self) -> float | None:
        scores = self.history.get(self.monitor)
        return scores[self.best_epoch - 1] if scores else None

    @property
    def wait(self) -> int:
        """Epochs since the best one."""
        return self.epochs - self.best_epoch if self.best_epoch else 0

    # --- hooks ---

    def on_train_begin(self, logs=None):
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            self.history = {k: v[:self.first_epoch] for k, v in state["history"].items()}
            self.epoch_seconds = state["epoch_seconds"][:self.first_epoch]

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if not all(math.isfinite(float(v)) for v in logs.values()):
            return  # Diverged: NaNGuard stops the run and reports it.
        self.epoch_seconds.append(round(self.clock() - self.start, 3))
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if self.save and self.best_epoch == self.epochs:
            self.model.save(self.model_path)
        if self.save:  # After the model: a kill in between leaves state that re-runs this epoch, not skips it.
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.state_path, {"history": self.history, "epoch_seconds": self.epoch_seconds})
        if self.patience and self.wait >= self.patience:
            print(f"\nEarly stopping: no {self.monitor} gain for {plural(self.patience, 'epoch')}.")
            self.model.stop_training = True


class EpochSeeds(keras.callbacks.Callback):
    """Re-seeds every random layer (Dropout) at the start of each epoch from (seed, epoch, layer).

    Keras' BackupAndRestore restores weights and optimizer state but not the seed generators' counters, so a
    resumed run would draw other dropout masks than an uninterrupted one. With the state a pure function of
    (seed, epoch), together with the data order (pipeline.training_stream), each epoch is the same whichever process
    runs it.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def generators(self):
        return [g for layer in self.model._flatten_layers(include_self=True) for g in layer._seed_generators]

    def on_epoch_begin(self, epoch, logs=None):
        for i, generator in enumerate(self.generators()):
            value = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0] % 2**31)
            generator.state.assign(np.array([value, 0], generator.state.dtype))


class DataEpoch(keras.callbacks.Callback):
    """Sets the epoch whose batches `pipeline.training_epochs`' next iterator yields, at each epoch's start (before
    `fit` opens that iterator): epoch numbers count from the run's start, resumed runs included."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class StepBudget(keras.callbacks.Callback):
    """Stops after `max_steps` optimizer steps in total (counted by the optimizer, so it survives a resume)."""

    def __init__(self, max_steps: int):
        super().__init__()
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_steps(self.model) >= self.max_steps:
            self.model.stop_training = True


class NaNGuard(keras.callbacks.Callback):
    """Stops at the first non-finite loss and remembers where, so the run can fail with a clear message.

    With several steps per execution the loss is seen once per execution: the NaN is known to lie in its steps,
    `bad_steps = (first, last)`, not at one of them.
    """

    def __init__(self):
        super().__init__()
        self.bad_steps, self.last_good = None, None

    def on_epoch_begin(self, epoch, logs=None):
        if self.last_good is None:  # Here, not at train begin: a resumed run's optimizer is restored by then.
            self.last_good = optimizer_steps(self.model)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        now = optimizer_steps(self.model)
        if math.isfinite(float(loss)):
            self.last_good = now
        else:
            self.bad_steps = (self.last_good + 1, now)
            self.model.stop_training = True

    def where(self) -> str:
        """`"at step 5"`, or `"in steps 6-10"` when one execution ran several."""
        first, last = self.bad_steps
        return f"at step {last}" if first == last else f"in steps {first}-{last}"


class Throughput(keras.callbacks.Callback):
    """Steady-state training samples/s: skips each epoch's first batches (tracing, pipeline warm-up) and excludes
    validation, which runs after the last batch.

    Steps are counted by the optimizer, not by Keras' batch index: with several steps per execution the hook runs
    once per execution, and the run's last execution may stop short at the step budget.

    Args:
      global_batch: samples per step over all replicas.
      train_examples: samples per epoch (the last batch of an epoch may be short).
      steps_per_epoch: steps per epoch.
      clock: the time source (tests pass a fake one).
    """

    def __init__(self, global_batch: int, train_examples: int, steps_per_epoch: int, clock=time.perf_counter):
        super().__init__()
        self.global_batch, self.train_examples = global_batch, train_examples
        self.steps_per_epoch, self.clock = steps_per_epoch, clock
        self.samples, self.seconds, self.first_epoch = 0, 0.0, True

    def on_epoch_begin(self, epoch, logs=None):
        # The first epoch of a process traces the step function: skip 3 batches there, 1 in later epochs (or the
        # first execution, when it runs more).
        self.warmup = 3 if self.first_epoch else 1
        self.first_epoch, self.start = False, None

    def on_train_batch_end(self, batch, logs=None):
        now, steps = self.clock(), optimizer_steps(self.model)
        if self.start is None:
            if batch + 1 >= self.warmup:
                self.start, self.steps = now, steps
            return
        # Each epoch's last step (a multiple of steps_per_epoch, counted from the run's start) may be short.
        epoch_ends = steps // self.steps_per_epoch - self.steps // self.steps_per_epoch
        short = self.global_batch - (self.train_examples - (self.steps_per_epoch - 1) * self.global_batch)
        self.samples += (steps - self.steps) * self.global_batch - epoch_ends * short
        self.seconds += now - self.start
        self.start, self.steps = now, steps

    @property
    def samples_per_second(self) -> float | None:
        return self.samples / self.seconds if self.seconds else None


class _Progbar(keras.utils.Progbar):
    """Keras' bar, timed from its first update on: that update includes tracing and compiling the step (seconds),
    and with several steps per execution Keras never sees "step 1" to leave it out, so its ETA came out ten times
    too long. Until a second update there is no estimate, and the bar shows none."""

    def _estimate_step_duration(self, current, now):
        if self.verbose != 1:  # One line per epoch: Keras' average over the epoch, as before.
            return super()._estimate_step_duration(current, now)
        if not hasattr(self, "_first"):
            self._first = (current, now)
            return 0
        seen, then = self._first
        return (now - then) / (current - seen) if current > seen else 0


class Progress(keras.callbacks.ProgbarLogger):
    """The per-epoch progress: a bar on a terminal, one line per epoch elsewhere; the last epoch of a step-budgeted
    run counts the steps it runs (`Epoch 3/3: 77 of 352 steps`), not a full epoch it never reaches."""

    def __init__(self, total_steps: int, steps_per_epoch: int):
        super().__init__()
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        steps = max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))
        self.target = steps
        self._reset_progbar()
        self.progbar = _Progbar(target=steps, verbose=self.verbose, unit_name="step", stateless_metrics=set())
        if self.verbose:
            budget = f": {steps} of {self.steps_per_epoch} steps (--steps)" if steps < self.steps_per_epoch else ""
            print(f"Epoch {epoch + 1}/{self.epochs}{budget}", flush=True)
