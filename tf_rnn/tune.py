"""Tune: keras-tuner search over the seed's advice (cells, depth, dropout, optimizers, learning rate, l2, softsign)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Optional

from tf_rnn import cli
from tf_rnn import config as config_lib
from tf_rnn import data
from tf_rnn.cli import RunError
from tf_rnn.config import ConfigError, JobConfig, TrainConfig, flag_field

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
    dataset: str = flag_field("mnist", "dataset to search on", config_lib.DATASET_CHOICES)
    data_dir: Optional[str] = flag_field(None, "folder with the dataset's files (else: see README)")
    validation_split: float = flag_field(0.1, "fraction of the training set used as the search objective")
    early_stopping_patience: int = flag_field(2, "stop a trial after this many epochs without validation gain")
    seed: int = flag_field(0, "random seed of the search and the trials")
    strategy: str = flag_field("auto", "tf.distribute strategy", config_lib.STRATEGY_CHOICES)

    def __post_init__(self):
        self.check_choices()
        for name in ("max_trials", "epochs", "final_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be >= 1")
        if not 0 < self.validation_split < 1:
            raise ConfigError("validation_split", self.validation_split, "must be in (0, 1): the search needs it")

    def base_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (the `default` preset on this dataset)."""
        return config_lib.resolve(overrides=dict(
            dataset=self.dataset, data_dir=self.data_dir, validation_split=self.validation_split, seed=self.seed,
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


def sample(hp, name: str, spec):
    kind, *args = spec
    if kind == "choice":
        return hp.Choice(name, args[0])
    if kind == "int":
        return hp.Int(name, args[0], args[1])
    if kind == "float":
        return hp.Float(name, args[0], args[1], step=args[2])
    return hp.Float(name, args[0], args[1], sampling="log")


def _hypermodel_class():
    import keras_tuner as kt

    from tf_rnn.models import build_model

    class RowRNNHyperModel(kt.HyperModel):
        """`build(hp)` samples the model's hyper-parameters and calls the same `build_model` training uses;
        `fit` samples the batch size, makes the pipelines for it and passes `**kwargs` to `model.fit`."""

        def __init__(self, base: TrainConfig, arrays: data.Arrays):
            super().__init__(name="row_rnn", tunable=True)
            self.base, self.arrays = base, arrays

        def config(self, hp) -> TrainConfig:
            values = {name: sample(hp, name, spec) for name, spec in SEARCH_SPACE.items()}
            # The batch size is declared in fit(); on the first trial it is not known yet here, and its default
            # (the base batch size) is what fit() will use.
            batch = hp.values.get("batch_size", self.base.batch_size)
            return dataclasses.replace(self.base, batch_size=batch, **values)

        def build(self, hp):
            config = self.config(hp)
            steps_per_epoch = self.steps_per_epoch(config.batch_size)
            return build_model(config, decay_steps=config.epochs * steps_per_epoch)

        def steps_per_epoch(self, batch_size: int) -> int:
            train = len(self.arrays.x_train) - round(len(self.arrays.x_train) * self.base.validation_split)
            return math.ceil(train / batch_size)

        def fit(self, hp, model, *args, **kwargs):
            batch = hp.Choice("batch_size", BATCH_SIZES, default=self.base.batch_size)
            splits = data.make_splits(
                self.arrays, batch, self.base.validation_split, self.base.seed, hflip=self.base.hflip
            )
            kwargs.setdefault("epochs", self.base.epochs)
            return model.fit(
                splits.train, validation_data=splits.validation, steps_per_epoch=self.steps_per_epoch(batch),
                shuffle=False, **kwargs,
            )

    return RowRNNHyperModel


def make_tuner(tune: TuneConfig, workdir: Path, arrays: data.Arrays, strategy=None, overwrite: bool = False):
    import keras_tuner as kt

    hypermodel = _hypermodel_class()(tune.base_config(), arrays)
    common = dict(
        objective=kt.Objective("val_accuracy", "max"),  # Validation only: the test set never enters the search.
        directory=str(workdir), project_name=PROJECT, overwrite=overwrite, seed=tune.seed,
        distribution_strategy=strategy,
    )
    if tune.tuner == "hyperband":
        tuner = kt.Hyperband(hypermodel, max_epochs=tune.epochs, factor=3, **common)
        tuner.oracle.max_trials = tune.max_trials  # Hyperband has no max_trials of its own; the base Oracle checks it.
    elif tune.tuner == "bayesian":
        tuner = kt.BayesianOptimization(hypermodel, max_trials=tune.max_trials, **common)
    else:
        tuner = kt.RandomSearch(hypermodel, max_trials=tune.max_trials, **common)
    return tuner


def trial_rows(tuner) -> list[dict]:
    """Finished trials, best first, with their hyper-parameters and validation accuracy."""
    rows = []
    for trial in tuner.oracle.trials.values():
        if trial.status != "COMPLETED" or trial.score is None:
            continue
        rows.append({"trial": trial.trial_id, "val_accuracy": round(float(trial.score), 4),
                     "best_epoch": None if trial.best_step is None else trial.best_step + 1,  # 1-based, as Keras prints
                     **trial.hyperparameters.values})
    rows.sort(key=lambda r: -r["val_accuracy"])
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


def check_workdir(tune: TuneConfig, workdir: Path, overwrite: bool) -> None:
    """Refuses to mix a search with another one's results.

    Raises:
      ConfigError: the workdir holds a search with other settings and --overwrite was not given.
    """
    saved = workdir / TUNE_CONFIG_FILE
    if saved.exists() and not overwrite:
        old, new = json.loads(saved.read_text()), tune.to_dict()
        changes = config_lib.changed_fields(old, new, ignore={"data_dir"})
        if changes:
            raise ConfigError(
                "workdir", str(workdir),
                f"holds a search with other settings ({changes}); rerun with those settings to resume it, "
                "or pass --overwrite to discard it",
            )
    if overwrite and (workdir / "best_run").exists():
        shutil.rmtree(workdir / "best_run")  # Asked for: --overwrite discards the old search's results too.


def tune_and_evaluate(tune: TuneConfig, workdir, *, datasets=None, strategy=None, overwrite=False,
                      extra_callbacks=()) -> dict:
    """Runs (or resumes) the search, writes trials.csv and best_config.json, retrains the best once, tests it.

    Args:
      tune: the search settings.
      workdir: holds keras-tuner's state (`search/`), per-trial TensorBoard logs, the results and `best_run/`.
      datasets: in-memory arrays instead of loading `tune.dataset` (tests).
      strategy: a tf.distribute strategy instead of `tune.strategy`.
      overwrite: discard an existing search in `workdir` (never done without it).
      extra_callbacks: Keras callbacks added to every trial (tests interrupt a search with one).

    Returns:
      The best run's metrics (test accuracy etc.), with `best_config` and the number of finished trials.
    """
    import keras

    from tf_rnn.callbacks import write_json
    from tf_rnn.distribute import get_strategy
    from tf_rnn.train import train_and_evaluate

    workdir = Path(workdir)
    check_workdir(tune, workdir, overwrite)
    strategy = strategy or get_strategy(tune.strategy)
    arrays = datasets if datasets is not None else data.load(tune.dataset, tune.data_dir)
    # Only now, with the data loaded: a search that could not start leaves no workdir to refuse the next command.
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / TUNE_CONFIG_FILE, tune.to_dict())
    keras.utils.set_random_seed(tune.seed)
    from tf_rnn import fused

    fused.prepare(tune.base_config())  # Trials may pick LSTMs: any first build happens now, not inside a trial.
    tuner = make_tuner(tune, workdir, arrays, strategy, overwrite)
    callbacks = [
        keras.callbacks.EarlyStopping("val_accuracy", patience=tune.early_stopping_patience, mode="max"),
        # keras-tuner moves this into tensorboard/<trial> and adds that trial's HParams summary.
        keras.callbacks.TensorBoard(str(workdir / "tensorboard")),
        *extra_callbacks,
    ]
    tuner.search(epochs=tune.epochs, callbacks=callbacks, verbose=2)

    rows = trial_rows(tuner)
    if not rows:
        raise RunError(f"no trial of {workdir} finished (--max-trials {tune.max_trials}); see the errors above")
    write_trials_csv(rows, workdir / "trials.csv")
    best_hp = tuner.get_best_hyperparameters(1)[0]
    # data_dir is a property of this machine, not of the recipe: leave it out of the shareable file.
    best = dataclasses.replace(
        _hypermodel_class()(tune.base_config(), arrays).config(best_hp), epochs=tune.final_epochs, data_dir=None
    )
    write_json(workdir / "best_config.json", best.to_dict())
    print(f"{len(rows)} trials; best validation accuracy {rows[0]['val_accuracy']:.4f}; retraining it once")
    run_dir = workdir / "best_run"
    best = dataclasses.replace(best, data_dir=tune.data_dir)
    if (run_dir / "metrics.json").exists():  # A resumed search whose retraining already finished.
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        metrics = train_and_evaluate(best, run_dir, datasets=datasets, strategy=strategy)
    return {**metrics, "best_config": best.to_dict(), "finished_trials": len(rows)}


def parse_flags(argv=None) -> tuple[TuneConfig, Path, bool]:
    parser = cli.OneLineParser(prog="python -m tf_rnn.tune", description=__doc__)
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
    print(f"best configuration: test accuracy {metrics['test_accuracy']:.4f} on {metrics['test_examples']} images; "
          f"{workdir / 'trials.csv'}, {workdir / 'best_config.json'}, export in {workdir / 'best_run' / 'saved_model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
