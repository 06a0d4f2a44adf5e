"""Tune: keras-tuner search over the seed's advice (cells, depth, dropout, optimizers, lr, l2), alone or as chief/worker.

A distributed search: the same command runs as keras-tuner's chief or as a worker, by keras-tuner's variables
(`KERASTUNER_ORACLE_IP`/`_PORT`, `KERASTUNER_TUNER_ID`: an id containing `chief` is the chief); the workdir is
storage all of them share. What happens when a process dies:

- A worker killed mid-trial (even SIGKILL) and started again with the same `KERASTUNER_TUNER_ID` gets its
  interrupted trial back; the chief waits for a dead worker's unfinished trial, so restart it (or start a worker
  with its id).
- A chief killed and started again with the same command reloads the oracle from the workdir and serves again
  (`tune_chief.restart_safe` repairs what keras-tuner 1.4 gets wrong after a restart). The workers
  wait for it, each call up to `--chief-timeout` seconds, and send again a call its death cut (`_Bounded`); the
  trial a worker was running is kept when it reports it; trials of workers that died too go back in the queue;
  finished (completed or failed) trials never run again.
- A worker that cannot reach the chief fails within `--chief-timeout` seconds with one line naming the address,
  and so does one whose chief stays away longer, at its next call: start it again once the chief is back.
- `--overwrite` is the chief's alone; workers write only their trials' files (checkpoints, `tensorboard/<trial>`,
  `search/<worker>.json`). The chief writes `trials.csv`, `best_config.json` and `best_run/` when the search ends.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from tf_rnn import cli
from tf_rnn import config as config_lib
from tf_rnn import datasets, pipeline, tune_chief
from tf_rnn.arrays import Arrays
from tf_rnn.cli import RunError
from tf_rnn.config import ConfigError, JobConfig, TrainConfig, flag_field
from tf_rnn.datasets import DataSpec

TUNERS = ("hyperband", "bayesian", "random")
TUNE_CONFIG_FILE = "tune_config.json"
PROJECT = "search"  # keras-tuner's folder inside the workdir: trials, oracle state, checkpoints.


@dataclasses.dataclass(frozen=True)
class TuneConfig(JobConfig):
    """A hyper-parameter search. Written to `tune_config.json`; a rerun must match it (or pass --overwrite)."""

    tuner: str = flag_field("hyperband", "search algorithm", TUNERS)
    max_trials: int = flag_field(10, "number of trials (for hyperband: a cap on its brackets' trials)")
    epochs: int = flag_field(6, "epochs per trial (hyperband: the most any trial gets)")
    final_epochs: int = flag_field(20, "epochs to retrain the best configuration before its one test evaluation")
    dataset: str = flag_field("mnist", config_lib.DATASET_HELP)
    data_dir: Optional[str] = flag_field(None, "folder with the dataset's files (else: see README)")
    sequence: str = flag_field("rows", "image datasets: rows, pixels or permuted (see tf_rnn.train)",
                               datasets.SEQUENCE_VIEWS)
    seq_len: Optional[int] = flag_field(None, f"adding/copy: sequence length T (default {datasets.DEFAULT_SEQ_LEN})")
    validation_split: float = flag_field(0.1, "fraction of the training set used as the search objective")
    early_stopping_patience: int = flag_field(2, "stop a trial after this many epochs without validation gain")
    seed: int = flag_field(0, "random seed of the search and the trials")
    strategy: str = flag_field("auto", "tf.distribute strategy inside each trial (multi_worker: not with keras-tuner)",
                               config_lib.STRATEGY_CHOICES)
    chief_timeout: float = flag_field(120.0, "distributed search: seconds a worker waits for the chief before failing")

    def __post_init__(self):
        self.check_choices()
        if self.strategy == "multi_worker":
            raise ConfigError("strategy", self.strategy, "keras-tuner cannot run a trial across workers; use "
                              "mirrored (this machine's devices) inside each worker, and spread trials over "
                              "machines with KERASTUNER_* (README: distributed search)")
        if not self.chief_timeout > 0:
            raise ConfigError("chief_timeout", self.chief_timeout, "must be > 0 seconds")
        for name in ("max_trials", "epochs", "final_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be >= 1")
        if not 0 < self.validation_split < 1:
            raise ConfigError("validation_split", self.validation_split, "must be in (0, 1): the search needs it")
        config_lib.check_dataset(self)

    def base_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (the `default` preset and the dataset's own defaults)."""
        return config_lib.resolve(overrides=dict(
            dataset=self.dataset, data_dir=self.data_dir, sequence=self.sequence, seq_len=self.seq_len,
            validation_split=self.validation_split, seed=self.seed,
            strategy=self.strategy, epochs=self.epochs, early_stopping_patience=self.early_stopping_patience,
        ))


# The seed's advice as a search space. Each entry: name → how to sample it.
SEARCH_SPACE = {
    "cell": ("choice", ["lstm", "gru"]),
    "layers": ("int", 1, 3),
    "units": ("choice", [64, 128, 192, 256]),
    "dropout": ("float", 0.0, 0.5, 0.1),
    "optimizer": ("choice", ["adam", "rmsprop", "adagrad", "nesterov"]),
    "lr": ("log", 1e-4, 1e-2),
    "l2": ("choice", [0.0, 1e-6, 1e-5, 1e-4]),
    "activation": ("choice", ["tanh", "softsign"]),
}
BATCH_SIZES = [64, 128, 256]  # Tuned in HyperModel.fit: a training setting, not part of the model.


# --- distributed search: keras-tuner's chief (serves the oracle) and workers (run trials) -------------------------

ORACLE_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


@dataclasses.dataclass(frozen=True)
class Role:
    """What this process is in a search: `single` (no KERASTUNER_* set), `chief` or `worker`."""

    kind: str
    tuner_id: str = "tuner0"
    address: str = ""


def role_from_env(env=os.environ) -> Role:
    """keras-tuner's rule: KERASTUNER_ORACLE_IP set → distributed; a tuner id containing `chief` → the chief.

    Raises:
      UsageError: KERASTUNER_ORACLE_IP is set without the other two variables (one line naming them).
    """
    if "KERASTUNER_ORACLE_IP" not in env:
        return Role("single")
    missing = [name for name in ORACLE_ENV if not env.get(name)]
    if missing:
        raise cli.UsageError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not; a distributed search "
                             "needs all three (README: distributed search)")
    port = env["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise cli.UsageError(f"KERASTUNER_ORACLE_PORT={port!r}: not a port number; use one in 1-65535")
    tuner_id = env["KERASTUNER_TUNER_ID"]
    address = f"{env['KERASTUNER_ORACLE_IP']}:{port}"
    return Role("chief" if "chief" in tuner_id else "worker", tuner_id, address)


def wait_for_chief(role: Role, timeout: float) -> None:
    """Returns once the chief's oracle answers at `role.address`.

    Raises:
      RunError: nothing answered at the address within `timeout` seconds.
    """
    import grpc

    channel = grpc.insecure_channel(role.address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise RunError(
            f"worker {role.tuner_id}: no tuning chief answered at {role.address} within {timeout:g}s; start the "
            "chief first (KERASTUNER_TUNER_ID=chief, same command), or fix KERASTUNER_ORACLE_IP/PORT"
        ) from None
    finally:
        channel.close()


def sample(hp, name: str, spec):
    kind, *args = spec
    if kind == "choice":
        return hp.Choice(name, args[0])
    if kind == "int":
        return hp.Int(name, args[0], args[1])
    if kind == "float":
        return hp.Float(name, args[0], args[1], step=args[2])
    return hp.Float(name, args[0], args[1], sampling="log")


def search_space(base_batch_size: int):
    """Every searched hyper-parameter, declared before the first trial (the batch size too, which `fit` reads):
    so each trial's values are complete from trial 0 on, on the console, in trials.csv and in HParams."""
    import keras_tuner as kt

    space = kt.HyperParameters()
    for name, spec in SEARCH_SPACE.items():
        sample(space, name, spec)
    space.Choice("batch_size", BATCH_SIZES, default=base_batch_size)
    return space


def _hypermodel_class():
    import keras_tuner as kt

    from tf_rnn.models import build_model

    class RowRNNHyperModel(kt.HyperModel):
        """`build(hp)` samples the model's hyper-parameters and calls the same `build_model` training uses;
        `fit` samples the batch size, makes the pipelines for it and passes `**kwargs` to `model.fit`."""

        def __init__(self, base: TrainConfig, arrays: Arrays, spec: DataSpec | None = None):
            super().__init__(name="row_rnn", tunable=True)
            self.base, self.arrays = base, arrays
            self.entry = datasets.get(base.dataset)
            self.spec = spec or self.entry.spec(base, arrays)

        def config(self, hp) -> TrainConfig:
            values = {name: sample(hp, name, spec) for name, spec in SEARCH_SPACE.items()}
            # The batch size is read in fit(); the search's oracle declares it up front (`search_space`), but a bare
            # HyperParameters may lack it, and then fit() uses the base batch size.
            batch = hp.values.get("batch_size", self.base.batch_size)
            return dataclasses.replace(self.base, batch_size=batch, **values)

        def build(self, hp):
            config = self.config(hp)
            steps_per_epoch = self.steps_per_epoch(config.batch_size)
            return build_model(config, decay_steps=config.epochs * steps_per_epoch, spec=self.spec)

        def steps_per_epoch(self, batch_size: int) -> int:
            train = len(self.arrays.x_train) - round(len(self.arrays.x_train) * self.base.validation_split)
            return math.ceil(train / batch_size)

        def fit(self, hp, model, *args, **kwargs):
            batch = hp.Choice("batch_size", BATCH_SIZES, default=self.base.batch_size)
            splits = pipeline.make_splits(
                self.arrays, batch, self.base.validation_split, self.base.seed,
                hflip=self.entry.mirrors(self.base.augment),
            )
            kwargs.setdefault("epochs", self.base.epochs)
            return model.fit(
                splits.train, validation_data=splits.validation, steps_per_epoch=self.steps_per_epoch(batch),
                shuffle=False, **kwargs,
            )

    return RowRNNHyperModel


def _tuner_classes():
    """keras-tuner's Tuner and its Hyperband variant (which reads each trial's epochs from the oracle), both logging
    each trial to TensorBoard with its whole config; a worker also prints each trial it finishes (the oracle that
    prints every trial is the chief's)."""
    import keras_tuner as kt

    import keras

    from tf_rnn.summaries import hparam_values

    class TrialTensorBoard(keras.callbacks.TensorBoard):
        """Keras' TensorBoard for one trial. keras-tuner rewrites every callback *named* TensorBoard and adds its
        own HParams summary, of the values sampled when the trial began; this one it leaves alone."""

    class TrialHParams(keras.callbacks.Callback):
        """The trial's HParams: its whole config, batch size included (the columns' order is the search's,
        `write_search_header`)."""

        def __init__(self, logdir: str, values: dict, trial_id: str):
            super().__init__()
            self.logdir, self.values, self.trial_id = logdir, values, trial_id

        def on_train_begin(self, logs=None):
            import tensorflow as tf
            from tensorboard.plugins.hparams import api as hp

            with tf.summary.create_file_writer(self.logdir).as_default():
                hp.hparams(self.values, trial_id=self.trial_id)

    class Reporting:
        finished: list
        remote_oracle = False  # A worker's: the chief's oracle prints each trial there, so print here too.

        def run_trial(self, trial, *args, **kwargs):
            from tf_rnn.callbacks import Progress

            logdir = str(Path(self.directory) / "tensorboard" / trial.trial_id)
            config = self.hypermodel.config(trial.hyperparameters)
            # Training's progress display: a bar on a terminal, a line per epoch elsewhere; no step budget here.
            progress = Progress(total_steps=sys.maxsize,
                                steps_per_epoch=self.hypermodel.steps_per_epoch(config.batch_size))
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), TrialTensorBoard(logdir),
                                   TrialHParams(logdir, hparam_values(config), trial.trial_id), progress]
            return super().run_trial(trial, *args, **kwargs)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.finished = [*getattr(self, "finished", []), trial.trial_id]
            if self.remote_oracle:
                print(f"tuner {self.tuner_id}: trial {trial.trial_id} finished", flush=True)

    class ReportingTuner(Reporting, kt.Tuner):
        pass

    class ReportingHyperband(Reporting, kt.Hyperband):
        def __init__(self, oracle, hypermodel, **kwargs):
            # kt.Hyperband.__init__ only builds a HyperbandOracle of its own; this one is given.
            kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    return ReportingTuner, ReportingHyperband


def make_tuner(tune: TuneConfig, workdir: Path, arrays: Arrays, strategy=None, overwrite: bool = False,
               spec: DataSpec | None = None):
    """The search's tuner: `tune.tuner`'s oracle class made restart-safe (`tune_chief.restart_safe`), and
    keras-tuner's Tuner (Hyperband's for `hyperband`) over tf_rnn's hypermodel."""
    import keras_tuner as kt

    hypermodel = _hypermodel_class()(tune.base_config(), arrays, spec)
    # Validation only (val_accuracy, or val_loss for regression): the test set never enters the search.
    objective = kt.Objective(*hypermodel.spec.task_type.monitor)
    space = search_space(hypermodel.base.batch_size)
    if tune.tuner == "hyperband":
        oracle = tune_chief.restart_safe(kt.oracles.HyperbandOracle)(
            objective, max_epochs=tune.epochs, factor=3, seed=tune.seed, hyperparameters=space)
        # Hyperband has no max_trials of its own; the base Oracle checks it.
        oracle.max_trials = tune.max_trials
    else:
        oracle_class = {"bayesian": kt.oracles.BayesianOptimizationOracle,
                        "random": kt.oracles.RandomSearchOracle}[tune.tuner]
        oracle = tune_chief.restart_safe(oracle_class)(objective, max_trials=tune.max_trials, seed=tune.seed,
                                                       hyperparameters=space)
    tuner_class, hyperband_class = _tuner_classes()
    return (hyperband_class if tune.tuner == "hyperband" else tuner_class)(
        oracle=oracle, hypermodel=hypermodel, directory=str(workdir), project_name=PROJECT, overwrite=overwrite,
        distribution_strategy=strategy)


class _Bounded:
    """A gRPC stub whose every call waits at most `timeout` seconds for the chief, retries included.

    keras-tuner's client waits up to an hour per call, so a dead chief would look like a hang. And a call that was
    in flight when the chief died fails UNAVAILABLE at once: it is sent again (waiting for the chief to be back)
    until the call's `timeout` is spent. Sending again is safe: the restarted chief queues a trial it created but
    never sent, so the next CreateTrial hands it over; it ignores an EndTrial it already recorded
    (`tune_chief.restart_safe`).
    """

    def __init__(self, stub, timeout: float, clock=time.monotonic, sleep=time.sleep):
        self._stub, self._timeout, self._clock, self._sleep = stub, timeout, clock, sleep

    def __getattr__(self, name):
        call = getattr(self._stub, name)

        def bounded(request, **kwargs):
            import grpc

            deadline = self._clock() + self._timeout
            while True:
                try:
                    return call(request, **{**kwargs, "timeout": max(deadline - self._clock(), 0.0)})
                except grpc.RpcError as e:
                    code = e.code() if callable(getattr(e, "code", None)) else None
                    if code != grpc.StatusCode.UNAVAILABLE or self._clock() + 1.0 >= deadline:
                        raise
                self._sleep(1.0)  # The old chief's socket is closing; keras-tuner's wait_for_ready does the rest.

        return bounded


def _rpc_reason(error: Exception) -> str:
    """`StatusCode.UNAVAILABLE: failed to connect ...` from a gRPC error: its first line says only its class."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if callable(code) and callable(details):
        lines = (details() or "").splitlines() or [""]
        return f"{code()}: {lines[0][:160]}"
    return (str(error).splitlines() or [""])[0][:160]


def trial_rows(tuner) -> list[dict]:
    """Finished trials, best first, with their hyper-parameters and objective (val_accuracy or val_loss)."""
    objective = tuner.oracle.objective
    rows = []
    for trial in tuner.oracle.trials.values():
        if trial.status != "COMPLETED" or trial.score is None:
            continue
        rows.append({"trial": trial.trial_id, objective.name: round(float(trial.score), 6),
                     "best_epoch": None if trial.best_step is None else trial.best_step + 1,  # 1-based, as Keras prints
                     **trial.hyperparameters.values})
    sign = -1 if objective.direction == "max" else 1
    rows.sort(key=lambda r: sign * r[objective.name])
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]


def write_trials_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for k in ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id"):
        if k in columns:  # Hyperband's bookkeeping goes last: it is not a model setting.
            columns.remove(k)
            columns.append(k)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


class _NoRetracingWarning(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function ...> triggered tf.function retracing" warning.

    Why: every trial builds a new model, whose training and evaluation functions are each traced once; TensorFlow
    counts them as one function traced again and again, and from the fifth trial on advises fixing a loop that is
    the search itself. Nothing else TensorFlow logs is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def trials_traced_quietly():
    """The search runs inside this: `_NoRetracingWarning` on TensorFlow's logger, removed again afterwards."""
    logger, quiet = logging.getLogger("tensorflow"), _NoRetracingWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def check_workdir(tune: TuneConfig, workdir: Path, overwrite: bool) -> None:
    """Refuses to mix a search with another one's results.

    Raises:
      ConfigError: the workdir holds a search with other settings and --overwrite was not given.
    """
    saved = workdir / TUNE_CONFIG_FILE
    if saved.exists() and not overwrite:
        old, new = json.loads(saved.read_text()), tune.to_dict()
        changes = config_lib.changed_fields(old, new, ignore={"data_dir", "chief_timeout"}, cls=TuneConfig)
        if changes:
            raise ConfigError(
                "workdir", str(workdir),
                f"holds a search with other settings ({changes}); rerun with those settings to resume it, "
                "or pass --overwrite to discard it",
            )
    if overwrite and (workdir / "best_run").exists():
        shutil.rmtree(workdir / "best_run")  # Asked for: --overwrite discards the old search's results too.


def tune_and_evaluate(tune: TuneConfig, workdir, *, arrays=None, strategy=None, overwrite=False,
                      extra_callbacks=(), role: Role | None = None) -> dict:
    """Runs (or resumes) the search, writes trials.csv and best_config.json, retrains the best once, tests it.

    With keras-tuner's KERASTUNER_* variables set, the same call is the search's chief — it serves the oracle,
    waits for the workers to run every trial, then does all of the above — or one of its workers, which only runs
    trials (its checkpoints and TensorBoard logs) and returns `{"worker": id, "trials": [...]}`. The workdir must
    be storage shared by all of them.

    Args:
      tune: the search settings.
      workdir: holds keras-tuner's state (`search/`), per-trial TensorBoard logs, the results and `best_run/`.
      arrays: in-memory arrays instead of loading `tune.dataset` (tests).
      strategy: a tf.distribute strategy instead of `tune.strategy`.
      overwrite: discard an existing search in `workdir` (never done without it).
      extra_callbacks: Keras callbacks added to every trial (tests interrupt a search with one).
      role: single, chief or worker (default: from the environment, `role_from_env`).

    Returns:
      The best run's metrics (test accuracy etc.), with `best_config` and the number of finished trials.
    """
    import keras

    from tf_rnn.distribute import get_strategy
    from tf_rnn.train import train_and_evaluate
    from tf_rnn.workdir import write_json

    workdir = Path(workdir)
    role = role or role_from_env()
    # Before anything slow or written: a chief that cannot serve, or a keras-tuner the repairs do not fit, is known now.
    if role.kind != "single":
        tune_chief.check_keras_tuner()
    if role.kind == "chief":
        tune_chief.check_address(role.address)
    if role.kind == "worker":
        if overwrite:
            raise cli.UsageError(f"--overwrite on worker {role.tuner_id}: only the chief may discard a search; "
                                 "drop it here")
        wait_for_chief(role, tune.chief_timeout)  # The chief wrote tune_config.json before it started serving.
        if not (workdir / TUNE_CONFIG_FILE).exists():
            raise RunError(f"worker {role.tuner_id}: --workdir {workdir} has no {TUNE_CONFIG_FILE}; every "
                           "process of a search needs the chief's workdir (shared storage, same path)")
    check_workdir(tune, workdir, overwrite)
    strategy = strategy or get_strategy(tune.strategy)
    if arrays is None:
        arrays, spec = datasets.load(tune)
    else:
        arrays, spec = datasets.validate(tune, arrays, "arrays=")
    # Only now, with the data loaded: a search that could not start leaves no workdir to refuse the next command.
    if role.kind != "worker":  # Workers write only their trials' own files.
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / TUNE_CONFIG_FILE, tune.to_dict())
    keras.utils.set_random_seed(tune.seed)
    from tf_rnn import fused

    fused.prepare(tune.base_config())  # Trials may pick LSTMs: any first build happens now, not inside a trial.
    tuner = make_tuner(tune, workdir, arrays, strategy, overwrite, spec=spec)
    if role.kind == "worker":  # keras-tuner's client for the chief's oracle: each call bounded, as the first was.
        tuner.oracle.stub = _Bounded(tuner.oracle.stub, tune.chief_timeout)
        tuner.remote_oracle = True
    monitor, mode = spec.task_type.monitor
    # Each trial adds its TensorBoard logs and HParams in tensorboard/<trial id> (the tuner's run_trial).
    callbacks = [keras.callbacks.EarlyStopping(monitor, patience=tune.early_stopping_patience, mode=mode),
                 *extra_callbacks]
    if role.kind != "worker":
        write_search_header(workdir / "tensorboard", spec)
    if role.kind == "chief":
        print(f"tuning chief: serving the oracle at {role.address}; start the workers (same command, "
              "KERASTUNER_TUNER_ID=worker0, worker1, ...)", flush=True)
    try:
        # On the chief keras-tuner serves the (restart-safe) oracle until the workers have run every trial.
        with trials_traced_quietly():
            tuner.search(epochs=tune.epochs, callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
    except Exception as e:  # noqa: BLE001 - only gRPC failures are translated; anything else propagates.
        if role.kind == "worker" and type(e).__module__.startswith("grpc"):
            raise RunError(f"worker {role.tuner_id}: lost the tuning chief at {role.address} ({_rpc_reason(e)}); "
                           "rerun this command once the chief is back") from None
        raise
    if role.kind == "worker":
        finished = getattr(tuner, "finished", [])
        print(f"worker {role.tuner_id}: the search is over; this worker finished trials {', '.join(finished) or 'none'}")
        return {"worker": role.tuner_id, "trials": finished}

    rows = trial_rows(tuner)
    if not rows:
        raise RunError(f"no trial of {workdir} finished (--max-trials {tune.max_trials}); see the errors above")
    write_trials_csv(rows, workdir / "trials.csv")
    best_hp = tuner.get_best_hyperparameters(1)[0]
    # data_dir is a property of this machine, not of the recipe: leave it out of the shareable file.
    best = dataclasses.replace(
        _hypermodel_class()(tune.base_config(), arrays, spec).config(best_hp), epochs=tune.final_epochs,
        data_dir=None,
    )
    # `_trial`: which trial this is (an annotation `--config` skips), by the id the console and TensorBoard use.
    write_json(workdir / "best_config.json", {config_lib.TRIAL_KEY: rows[0]["trial"], **best.to_dict()})
    ran = len(tuner.oracle.trials)
    # Hyperband ends when its brackets do (--max-trials only caps them): say why a search ran fewer than asked.
    why = (f" (all that hyperband's brackets hold at --epochs {tune.epochs}: {ran} of --max-trials {tune.max_trials})"
           if tune.tuner == "hyperband" and ran < tune.max_trials else "")
    print(f"{cli.plural(len(rows), 'trial')}{why}; best: trial {rows[0]['trial']} ({monitor} {rows[0][monitor]:.4f}); "
          f"retraining it for {cli.plural(tune.final_epochs, 'epoch')} in {workdir / 'best_run'}", flush=True)
    run_dir = workdir / "best_run"
    best = dataclasses.replace(best, data_dir=tune.data_dir)
    if (run_dir / "metrics.json").exists():  # A resumed search whose retraining already finished.
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        metrics = train_and_evaluate(best, run_dir, arrays=arrays, strategy=strategy)
    return {**metrics, "best_config": best.to_dict(), "best_trial": rows[0]["trial"], "finished_trials": len(rows)}


def write_search_header(logdir: Path, spec: DataSpec) -> None:
    """The HParams experiment of the search: the searched hyper-parameters as its first columns, the fixed ones
    after (the dashboard shows the first ones)."""
    import tensorflow as tf

    from tf_rnn.summaries import hparams_config

    searched = [*SEARCH_SPACE, "batch_size"]
    fixed = [name for name in TrainConfig.__dataclass_fields__ if name not in searched]
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hparams_config([*searched, *fixed], spec, test=False)


def parse_flags(argv=None) -> tuple[TuneConfig, Path, bool]:
    parser = cli.OneLineParser(prog="python -m tf_rnn.tune", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="search directory (resumed when it exists)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing search in --workdir")
    config_lib.add_dataclass_flags(parser, TuneConfig)
    args = vars(parser.parse_args(argv))
    workdir, overwrite = Path(args.pop("workdir")), args.pop("overwrite")
    return TuneConfig(**args), workdir, overwrite


@cli.entry_point(on_interrupt="interrupted; re-run the same command to resume the search")
def main(argv=None) -> int:
    tune, workdir, overwrite = parse_flags(argv)
    metrics = tune_and_evaluate(tune, workdir, overwrite=overwrite)
    if "worker" in metrics:
        return 0
    from tf_rnn.train import summary_line

    print(f"best configuration (trial {metrics['best_trial']}): {summary_line(metrics)}; {workdir / 'trials.csv'}, "
          f"{workdir / 'best_config.json'}, "
          f"export in {workdir / 'best_run' / 'saved_model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
