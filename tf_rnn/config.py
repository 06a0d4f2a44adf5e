"""Config: the typed, frozen training config, its presets, and the command-line flags derived from it."""

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Optional

from tf_rnn import datasets
from tf_rnn.cli import UsageError

CELL_CHOICES = ("lstm", "gru", "simple")
ACTIVATION_CHOICES = ("tanh", "softsign")
PRECISION_CHOICES = ("float32", "bfloat16")
OPTIMIZER_CHOICES = ("adam", "rmsprop", "adagrad", "nesterov")
SCHEDULE_CHOICES = ("constant", "cosine")
DATASET_HELP = f"dataset: {', '.join(datasets.REGISTRY)}, or PATH.npz (x_train [N, T, F], y_train, x_test, y_test)"
AUGMENT_CHOICES = ("auto", "none", "hflip")
STRATEGY_CHOICES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")

# The seed trains while `step * batch_size < training_iters` with step starting at 1: 781 steps of 128 images.
SEED_TRAINING_ITERS = 100_000
SEED_STEPS = (SEED_TRAINING_ITERS - 1) // 128


def flag_field(default, help: str, choices=None):
    """A config field that becomes `--field-name` on the command line."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


class JobConfig:
    """What every job's frozen config dataclass shares: type and choice checks and a JSON-ready dict."""

    def check_choices(self) -> None:
        """Checks every field's type against its annotation (values from a --config file are not parsed by
        argparse), makes ints given for float fields floats, then checks the fields that have choices."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, tp = getattr(self, f.name), hints[f.name]
            kind = _scalar(tp)
            if value is None:
                if type(None) not in typing.get_args(tp):
                    raise ConfigError(f.name, value, f"must be set ({_KIND_NAMES[kind]})")
                continue
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, value := float(value))
            # bool is an int subclass in Python, but `"units": true` in a config file is a mistake, not 1.
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ConfigError(f.name, value, f"must be {_KIND_NAMES[kind]}, not {type(value).__name__}")
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f.name, value, f"choose one of: {', '.join(choices)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainConfig(JobConfig):
    """Everything that defines a training run. Written to `config.json` and TensorBoard's HParams."""

    preset: str = flag_field("default", "recipe the other flags start from", ("seed", "default"))
    dataset: str = flag_field("mnist", DATASET_HELP)
    data_dir: Optional[str] = flag_field(None, "folder with the four IDX files or the .npz (else: see README)")
    sequence: str = flag_field(
        "rows", "how an image becomes a sequence: rows (28 steps x 28), pixels (784 x 1), permuted (784 x 1, one "
        "fixed permutation)", datasets.SEQUENCE_VIEWS
    )
    seq_len: Optional[int] = flag_field(None, f"adding/copy: sequence length T (default {datasets.DEFAULT_SEQ_LEN})")
    cell: str = flag_field("lstm", "recurrent cell", CELL_CHOICES)
    layers: int = flag_field(2, "number of stacked recurrent layers")
    units: int = flag_field(128, "units per recurrent layer")
    dropout: float = flag_field(0.25, "dropout between layers and on the RNN output (never inside the recurrence)")
    activation: str = flag_field("tanh", "recurrent activation (softsign gives up cuDNN on GPUs)", ACTIVATION_CHOICES)
    optimizer: str = flag_field("adam", "optimizer", OPTIMIZER_CHOICES)
    lr: float = flag_field(2e-3, "peak learning rate")
    lr_schedule: str = flag_field("cosine", "learning-rate schedule over the whole run", SCHEDULE_CHOICES)
    l1: float = flag_field(0.0, "L1 factor on recurrent-layer kernels")
    l2: float = flag_field(0.0, "L2 factor on recurrent-layer kernels")
    clipnorm: Optional[float] = flag_field(None, "clip each gradient to this norm (adding/copy default: 1)")
    label_smoothing: float = flag_field(0.1, "label smoothing of the cross-entropy targets")
    augment: str = flag_field(
        "auto", "training augmentation: hflip mirrors images (right for clothes, not digits); auto = the "
        "dataset's own (hflip on fashion_mnist only)", AUGMENT_CHOICES
    )
    batch_size: int = flag_field(128, "batch size per replica (global batch = this x replicas)")
    epochs: int = flag_field(20, "epochs; given as a flag it replaces the preset's budget, --steps included")
    steps: Optional[int] = flag_field(None, "cap on total training steps (the seed preset: 781)")
    early_stopping_patience: int = flag_field(5, "stop after this many epochs without validation gain (0: off)")
    validation_split: float = flag_field(0.1, "fraction of the training set held out for validation")
    seed: int = flag_field(0, "random seed: the same command twice gives the same metrics on a CPU")
    strategy: str = flag_field("auto", "tf.distribute strategy", STRATEGY_CHOICES)
    precision: str = flag_field(
        "float32", "bfloat16: the LSTM's products on AMX tiles (CPUs with amx_bf16), bfloat16 operands, float32 sums, "
        "state and weights; the rest under Keras' mixed_bfloat16", PRECISION_CHOICES
    )
    steps_per_execution: int = flag_field(
        10, "training steps per call into TensorFlow: fewer Python round trips, the same weights; an epoch's last "
        "call runs the steps left (lowered to a divisor of an epoch's steps when --steps ends a run mid-epoch); 1 "
        "with several replicas"
    )

    def __post_init__(self):
        self.check_choices()
        positive = ("layers", "units", "batch_size", "epochs", "steps_per_execution")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("steps", self.steps, "must be >= 1")
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "must be > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", self.dropout, "must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", self.label_smoothing, "must be in [0, 1)")
        if not 0 <= self.validation_split < 1:
            raise ConfigError("validation_split", self.validation_split, "must be in [0, 1)")
        for name in ("l1", "l2", "early_stopping_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "must be >= 0")
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise ConfigError("clipnorm", self.clipnorm, "must be > 0 (leave it out for no clipping)")
        if self.precision == "bfloat16" and (self.cell, self.activation) != ("lstm", "tanh"):
            raise ConfigError("precision", self.precision, "runs the fused LSTM's products on AMX tiles: use it with "
                              "--cell lstm --activation tanh, or --precision float32")
        check_dataset(self)


def check_dataset(config) -> None:
    """The dataset, its `--seq-len`, `--sequence` and `--augment` must go together (one ConfigError naming the
    flag)."""
    problem = datasets.check_config(config)
    if problem:
        raise ConfigError(*problem)



def changed_fields(old: dict, new: dict, ignore=(), cls=None) -> str:
    """`"units: 16 -> 32, lr: ..."` for the fields that differ between two saved configs; "" when none do.

    With `cls`, a field missing from `old` (saved by an older tf_rnn) counts as that dataclass' default.
    """
    if cls is not None:
        old = {**{f.name: f.default for f in dataclasses.fields(cls) if f.name not in old}, **old}
    keys = [k for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


class ConfigError(UsageError, ValueError):
    """A config value has the wrong type or is out of range. `str()` is one line naming the flag, the value and
    the fix (exit code 2 from every CLI)."""

    def __init__(self, name: str, value, fix: str):
        self.flag = "--" + name.replace("_", "-")
        super().__init__(f"{self.flag} {value!r}: {fix}")


PRESETS: dict[str, dict[str, Any]] = {
    # The seed exactly: 1 x LSTM(128), Adam 1e-3 constant, batch 128, 100,000 training samples, no dropout. The
    # seed's TF1 reader held out 5,000 of the 60,000 training images for validation: so do we.
    "seed": dict(
        layers=1, units=128, cell="lstm", dropout=0.0, optimizer="adam", lr=1e-3, lr_schedule="constant",
        batch_size=128, epochs=2, steps=SEED_STEPS, early_stopping_patience=0, validation_split=5_000 / 60_000,
        label_smoothing=0.0, augment="none",
    ),
    # Our best recipe, chosen by measurement on Fashion-MNIST (README, "How the default was chosen").
    "default": {},
}


def resolve(preset: str = "default", file_values: dict | None = None, overrides: dict | None = None) -> TrainConfig:
    """defaults ← preset ← the dataset's and its view's defaults ← saved config file ← explicit flags."""
    values: dict[str, Any] = {}
    file_values = dict(file_values or {})
    overrides = dict(overrides or {})
    preset = overrides.get("preset", file_values.get("preset", preset))
    if preset not in PRESETS:
        raise ConfigError("preset", preset, f"choose one of: {', '.join(PRESETS)}")
    values.update(PRESETS[preset], preset=preset)
    dataset = overrides.get("dataset", file_values.get("dataset", TrainConfig.dataset))
    sequence = overrides.get("sequence", file_values.get("sequence", TrainConfig.sequence))
    values.update(datasets.defaults(dataset, sequence))
    values.update(file_values)
    if "epochs" in overrides and "steps" not in overrides:
        values["steps"] = None  # --epochs replaces the budget (the seed preset's is a step count), not adds a cap.
    values.update(overrides)
    return TrainConfig(**values)


TRIAL_KEY = "_trial"  # best_config.json's annotation: the tune trial it came from (not a config field).


def load_json(path: str | Path, cls=TrainConfig) -> dict[str, Any]:
    """Reads a saved config; unknown keys are an error, not silently ignored (but for `_trial`, an annotation)."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("config", str(path), "no such file") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError("config", str(path), f"not a readable JSON config ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError("config", str(path), "expected a JSON object of config fields")
    values.pop(TRIAL_KEY, None)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError("config", str(path), f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return values


# --- command-line flags generated from the dataclass -----------------------------------------------------------


def _scalar(tp):
    """`Optional[int]` → int; the parser for a field's type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _typed(kind, name):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            # argparse prefixes "argument --name: ": the flag is named there, once.
            raise argparse.ArgumentTypeError(f"{text!r} is not {_KIND_NAMES[kind]}") from None

    parse.__name__ = kind.__name__
    return parse


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One `--flag-name` per field. Defaults are suppressed so that only flags the user typed override a preset."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _scalar(hints[f.name])
        choices = f.metadata.get("choices")
        default_note = f" (default: {f.default})" if f.default is not None else ""
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_typed(kind, f.name.replace("_", "-")) if not choices else None,
            choices=choices,
            default=argparse.SUPPRESS,
            help=f.metadata.get("help", "") + default_note,
        )
