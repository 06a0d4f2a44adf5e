"""Workdir: the files a training run writes, a workdir's checks before a run starts or resumes, atomic JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tf_rnn.cli import RunError

CONFIG_FILE = "config.json"
DATA_SPEC_FILE = "data_spec.json"  # What the model takes and returns (tf_rnn.export reads it).
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
BACKUP_DIR = "backup"  # Keras BackupAndRestore state; removed once metrics.json is written.
TRAIN_STATE_FILE = "train_state.json"  # Per-epoch history (best model, early stopping), beside the backup.
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "saved_model"  # Portable SavedModel of the best model (tf_rnn.export).
# The data folder and the strategy may change between attempts without changing the run itself. So may the steps
# per execution: the weights are the same bits whatever it is (tests/test_train.py).
RESUMABLE_CHANGES = frozenset({"data_dir", "strategy", "steps_per_execution"})


def write_json(path: Path, obj) -> None:
    """Writes atomically, so a kill mid-write never leaves a half file that looks finished."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def check(config, workdir: Path) -> None:
    """Refuses a workdir `config` cannot run in, writing nothing (train calls it before loading or downloading data).

    Raises:
      RunError: the workdir holds a finished run, or a run of another config.
    """
    from tf_rnn import config as config_lib

    if (workdir / METRICS_FILE).exists():
        raise RunError(
            f"--workdir {workdir} holds a finished run ({METRICS_FILE} exists); choose a new --workdir "
            "(nothing was overwritten)"
        )
    saved = workdir / CONFIG_FILE
    if saved.exists():
        old = json.loads(saved.read_text())
        changes = config_lib.changed_fields(old, config.to_dict(), ignore=RESUMABLE_CHANGES, cls=type(config))
        if changes:
            raise RunError(
                f"--workdir {workdir} holds an unfinished run with another config ({changes}); "
                "re-run with the same flags to resume it, or choose a new --workdir"
            )
    elif (workdir / MODEL_FILE).exists():
        raise RunError(f"--workdir {workdir} holds a {MODEL_FILE} but no {CONFIG_FILE}; choose a new --workdir")


def prepare(config, workdir: Path) -> None:
    """Creates the workdir, or checks that it holds an unfinished run of this same config; writes config.json.

    Raises:
      RunError: the workdir holds a finished run, or a run of another config.
    """
    check(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / CONFIG_FILE, config.to_dict())


def finished_epochs_in_backup(workdir: Path) -> int | None:
    """The number of finished epochs recorded by BackupAndRestore, or None when there is no backup."""
    meta = workdir / BACKUP_DIR / "training_metadata.json"
    if not meta.exists():
        return None
    return int(json.loads(meta.read_text())["epoch"])
