"""Datasets: the one registry of what each dataset is — its files or generator, [T, F], task, classes, views, defaults."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tf_rnn import cli, mnist_files, tasks
from tf_rnn.arrays import Arrays, DataError, first_nonfinite
from tf_rnn.mnist_files import IMAGE_SHAPE, NUM_CLASSES, IdxFiles
from tf_rnn.tasks import CLASSIFICATION, PER_STEP, REGRESSION

SEQUENCE_VIEWS = ("rows", "pixels", "permuted")  # How an image becomes a sequence (layers.SequenceView).
# Label smoothing and mirroring are regularisers of the 20-epoch row-wise recipe; a 784-step view trains for a few
# hundred steps on this hardware, where they only slow learning (benchmarks/README.md: pixel and permuted views).
_FEW_STEPS = dict(label_smoothing=0.0, augment="none")
VIEW_DEFAULTS = {"pixels": _FEW_STEPS, "permuted": _FEW_STEPS}
DEFAULT_SEQ_LEN = 100
# Generated datasets: 50,000 training sequences (the validation split comes out of these) and 10,000 test ones.
GENERATED_TRAIN, GENERATED_TEST = 50_000, 10_000
COPY_SYMBOLS, COPY_RECALL = 8, 10  # Arjovsky et al. 2016: recall 10 symbols drawn from 8.


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model trained on one dataset takes and returns; written beside a run and into its export.

    Attributes:
      name: the dataset (`fashion_mnist`, `adding`, a path to an `.npz`).
      input_shape: `[T, F]` of one example as the model and the SavedModel take it (`[28, 28]` for images, whatever
        the sequence view: the view is a layer inside the model).
      task: `classification` (one label per sequence), `per_step` (one label for each of the last `output_steps`
        steps) or `regression` (`targets` floats per sequence).
      class_names: index = label (classification tasks).
      output_steps: per-step tasks: how many final steps are predicted; the other steps are outside the loss.
      target_mean, target_std: regression: the training targets' statistics; the model predicts
        `mean + std * z`, so its outputs (and every reported number) are in the targets' own units.
      image: uint8 28x28 images: sequence views, `serve_uint8`, mirroring.
    """

    name: str
    input_shape: tuple[int, int]
    task: str
    class_names: tuple[str, ...] = ()
    output_steps: int = 0
    target_mean: tuple[float, ...] = ()
    target_std: tuple[float, ...] = ()
    image: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def targets(self) -> int:
        return len(self.target_mean)

    @property
    def input_name(self) -> str:
        """The model's and the serving signature's input name."""
        return "images" if self.image else "sequences"

    @property
    def task_type(self) -> tasks.Task:
        """The `tasks.Task` that `task` names: head, loss, metrics, evaluation and outputs."""
        return tasks.get(self.task)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DataSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields}
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One registry entry: everything tf_rnn knows about a dataset is here.

    Attributes:
      load: `(job config) -> Arrays`; the config has `dataset`, `data_dir`, `seed` and `seq_len`.
      spec: `(job config, Arrays or None) -> DataSpec` (regression statistics and a user file's classes need the
        arrays).
      about: one line for `--help` and the README.
      augment: what `--augment auto` means here (`hflip` or `none`).
      defaults: config values this dataset trains best with; they apply over the preset, under a config file and
        flags.
      seq_len: whether `--seq-len` applies.
      views: the `--sequence` views it can be read in (images: rows, pixels, permuted).
      files: MNIST-family datasets: their files' names and digests (`mnist_files`).
      check_arrays: `(Arrays, where) -> Arrays` for datasets whose arrays have a fixed form (uint8 images); the
        others are checked against their spec (`validate`).
    """

    load: Callable[[Any], Arrays]
    spec: Callable[[Any, Arrays | None], DataSpec]
    about: str
    augment: str = "none"
    defaults: dict = dataclasses.field(default_factory=dict)
    seq_len: bool = False
    views: tuple[str, ...] = ("rows",)
    files: IdxFiles | None = None
    check_arrays: Callable[[Arrays, str], Arrays] | None = None

    @property
    def image(self) -> bool:
        """Images: read in several views, mirrored by `--augment hflip`, served as uint8 too."""
        return len(self.views) > 1

    def mirrors(self, augment: str) -> bool:
        """Whether training mirrors images under `--augment augment` (`auto`: this dataset's own choice)."""
        return (self.augment if augment == "auto" else augment) == "hflip"


# --- images (MNIST, Fashion-MNIST) ----------------------------------------------------------------------------------


def _image_entry(files: IdxFiles, class_names: tuple[str, ...], augment: str) -> DatasetEntry:
    def load(config) -> Arrays:
        return load_images(files.name, config.data_dir)

    def spec(config, arrays=None) -> DataSpec:
        return DataSpec(files.name, IMAGE_SHAPE, CLASSIFICATION, class_names, image=True)

    return DatasetEntry(load, spec, f"{files.name}: 28x28 grey images, 10 classes", augment=augment,
                        views=SEQUENCE_VIEWS, files=files, check_arrays=mnist_files.validate_arrays)


def load_images(name: str, data_dir=None, *, download=True) -> Arrays:
    """Finds, verifies and loads an MNIST-family dataset (`mnist_files.load`: the look-up order and the checks).

    Returns:
      Arrays of `<uint8>[60000, 28, 28]` train and `<uint8>[10000, 28, 28]` test images, `<int64>` labels.
    """
    files = get(name).files
    if files is None:
        raise DataError(f"{name!r} is not an image dataset of files; choose one of: {', '.join(IMAGE_DATASETS)}")
    others = [entry.files for entry in REGISTRY.values() if entry.files is not None]
    return mnist_files.load(files, data_dir, download=download, others=others)


# --- the adding problem ---------------------------------------------------------------------------------------------


def adding_arrays(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997, in Le et al. 2015's form).

    Returns:
      `<float32>[n, T, 2]`: channel 0 a value drawn uniformly from [0, 1], channel 1 a marker that is 1 at exactly
      two steps, one in each half; and `<float32>[n, 1]` targets, the sum of the two marked values.
    """
    values = rng.uniform(0.0, 1.0, (n, seq_len)).astype(np.float32)
    half, rows = seq_len // 2, np.arange(n)
    first, second = rng.integers(0, half, n), rng.integers(half, seq_len, n)
    marker = np.zeros((n, seq_len), np.float32)
    marker[rows, first] = marker[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return np.stack([values, marker], axis=-1), targets[:, None].astype(np.float32)


def copy_arrays(n: int, gap: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The copy-memory problem in Arjovsky et al. 2016's form, `T + 20` steps long.

    Symbols: 0 blank, 1-8 data, 9 delimiter. Input: 10 data symbols, `T - 1` blanks, the delimiter, 10 blanks.
    The last 10 outputs must recall the 10 data symbols in order.

    Returns:
      `<float32>[n, T + 20, 10]` one-hot inputs, `<int64>[n, 10]` labels (data symbol - 1, in [0, 8)).
    """
    symbols = rng.integers(1, COPY_SYMBOLS + 1, (n, COPY_RECALL))
    sequence = np.zeros((n, gap + 2 * COPY_RECALL), np.int64)
    sequence[:, :COPY_RECALL] = symbols
    sequence[:, COPY_RECALL + gap - 1] = COPY_SYMBOLS + 1
    one_hot = np.eye(COPY_SYMBOLS + 2, dtype=np.float32)[sequence]
    return one_hot, (symbols - 1).astype(np.int64)


def _generated_entry(make: Callable, spec: Callable, about: str, defaults: dict) -> DatasetEntry:
    def load(config) -> Arrays:
        seq_len = seq_len_of(config)
        # Train and test come from separate streams of (seed, T): the test set depends on nothing else.
        train_rng, test_rng = (np.random.default_rng([config.seed, seq_len, part]) for part in (0, 1))
        x_train, y_train = make(GENERATED_TRAIN, seq_len, train_rng)
        x_test, y_test = make(GENERATED_TEST, seq_len, test_rng)
        return Arrays(x_train, y_train, x_test, y_test, source=f"generated (seed {config.seed}, T={seq_len})")

    return DatasetEntry(load, spec, about, defaults=defaults, seq_len=True)


def _adding_spec(config, arrays=None) -> DataSpec:
    mean, std = (1.0,), (math.sqrt(2 / 12),)  # The sum of two U[0, 1], exactly: for a model built without data.
    if arrays is not None:
        mean, std = _target_stats(arrays.y_train)
    return DataSpec("adding", (seq_len_of(config), 2), REGRESSION, target_mean=mean, target_std=std)


def _copy_spec(config, arrays=None) -> DataSpec:
    return DataSpec("copy", (seq_len_of(config) + 2 * COPY_RECALL, COPY_SYMBOLS + 2), PER_STEP,
                    class_names=tuple(str(s) for s in range(1, COPY_SYMBOLS + 1)), output_steps=COPY_RECALL)


def seq_len_of(config) -> int:
    return config.seq_len if config.seq_len is not None else DEFAULT_SEQ_LEN


def _target_stats(y: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    y = y.astype(np.float64)
    std = y.std(axis=0)
    std[std == 0] = 1.0  # A constant target: nothing to scale, and no division by zero.
    return tuple(float(v) for v in y.mean(axis=0)), tuple(float(v) for v in std)


# --- a user's own arrays --------------------------------------------------------------------------------------------

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(config) -> Arrays:
    path = Path(config.dataset).expanduser()
    if not path.is_file():
        raise DataError(f"--dataset {config.dataset}: no such file; pass an .npz holding {', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: has no {', '.join(missing)} (it holds {', '.join(z.files) or 'nothing'}); "
                                f"save the arrays as {', '.join(NPZ_KEYS)} (class_names optional)")
            arrays = {k: z[k] for k in z.files if k in (*NPZ_KEYS, "class_names")}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, KeyError) as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "write it with numpy.savez") from None
    names = arrays.pop("class_names", None)
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"):
        raise DataError(f"{path}: class_names is <{names.dtype}>{list(names.shape)}; expected a 1-D array of strings")
    return Arrays(**arrays, source=str(path), class_names=() if names is None else tuple(str(n) for n in names))


def _npz_spec(config, arrays: Arrays | None) -> DataSpec:
    if arrays is None:
        raise DataError(f"--dataset {config.dataset}: the task of a user's file is known only once it is loaded")
    where = arrays.source or config.dataset
    for split in ("train", "test"):
        x = getattr(arrays, f"x_{split}")
        if x.ndim != 3 or not x.size:
            raise DataError(f"{where}: x_{split} is {list(x.shape)}; expected [N, T, F] with N, T, F >= 1 "
                            "(a sequence of T steps of F features per example)")
    if arrays.x_test.shape[1:] != arrays.x_train.shape[1:]:
        raise DataError(f"{where}: x_test steps/features {list(arrays.x_test.shape[1:])} differ from x_train's "
                        f"{list(arrays.x_train.shape[1:])}")
    shape = tuple(int(d) for d in arrays.x_train.shape[1:])
    y = arrays.y_train
    if np.issubdtype(y.dtype, np.integer):
        count = int(y.max()) + 1 if y.size else 0
        names = arrays.class_names or tuple(str(c) for c in range(count))
        if len(names) < count:
            raise DataError(f"{where}: label {count - 1} has no class name ({cli.plural(len(names), 'name')} given); "
                            "give one name per class")
        return DataSpec(config.dataset, shape, CLASSIFICATION, class_names=names)
    if np.issubdtype(y.dtype, np.floating):
        if y.ndim not in (1, 2):
            raise DataError(f"{where}: y_train is {list(y.shape)}; expected [N] or [N, K] float targets")
        targets = y.reshape(len(y), -1)
        # Non-finite targets are refused by validate() next; no statistics to take from them.
        usable = targets.size and np.isfinite(targets).all()
        k = targets.shape[1]
        mean, std = _target_stats(targets) if usable else ((0.0,) * k, (1.0,) * k)
        return DataSpec(config.dataset, shape, REGRESSION, target_mean=mean, target_std=std)
    raise DataError(f"{where}: y_train is {y.dtype}; expected integer labels (classification) or floats (regression)")


# --- the registry -----------------------------------------------------------------------------------------------

# Long-memory tasks train with one layer, no dropout, a constant rate and clipped gradients (Le et al. 2015's
# recipe); their loss sits on a plateau for thousands of steps, so early stopping would end them on it.
_MEMORY_TASK = dict(layers=1, dropout=0.0, lr_schedule="constant", label_smoothing=0.0, clipnorm=1.0,
                    early_stopping_patience=0)

REGISTRY: dict[str, DatasetEntry] = {
    "mnist": _image_entry(IdxFiles(
        name="mnist",
        subdir="mnist",
        npz="mnist.npz",
        # No published digest of the decompressed MNIST IDX files is known to us: structure checks only.
        content_sha256={base: None for base in mnist_files.IDX_FILES.values()},
        # keras.datasets.mnist verifies its download against this digest too.
        npz_sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        keras_loader="mnist",
    ), class_names=tuple(str(d) for d in range(NUM_CLASSES)), augment="none"),
    "fashion_mnist": _image_entry(IdxFiles(
        name="fashion_mnist",
        subdir="fashion-mnist",
        npz="fashion-mnist.npz",
        content_sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        npz_sha256=None,
        keras_loader="fashion_mnist",
        debian_package="dataset-fashion-mnist",
    ), class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot"),
        # Left-right is no class cue for clothes: mirrored images are free extra data.
        augment="hflip"),
    "adding": _generated_entry(adding_arrays, _adding_spec, "adding problem: [T, 2] -> the sum of the 2 marked "
                               "values", _MEMORY_TASK),
    "copy": _generated_entry(copy_arrays, _copy_spec, "copy memory: recall 10 symbols after a gap of T steps",
                             _MEMORY_TASK),
}
NPZ = DatasetEntry(_load_npz, _npz_spec, "PATH.npz: your own x_train [N, T, F], y_train, x_test, y_test")
IMAGE_DATASETS = tuple(name for name, entry in REGISTRY.items() if entry.image)


def defaults(name: str, sequence: str) -> dict:
    """The config values `--dataset name --sequence sequence` trains best with: the dataset's, then its view's."""
    entry = REGISTRY.get(name)
    if entry is None:
        return {}
    return {**entry.defaults, **(VIEW_DEFAULTS.get(sequence, {}) if entry.image else {})}


def is_file(name: str) -> bool:
    return name.endswith(".npz")


def get(name: str) -> DatasetEntry:
    """The registry entry for `--dataset name`: a registered name or a path to an `.npz`."""
    if is_file(name):
        return NPZ
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(REGISTRY)}, or a PATH.npz")
    return REGISTRY[name]


def check_config(config) -> tuple[str, Any, str] | None:
    """(field, value, fix) when `config`'s dataset, `seq_len` and `sequence` do not go together, else None."""
    if not is_file(config.dataset) and config.dataset not in REGISTRY:
        return "dataset", config.dataset, f"choose one of: {', '.join(REGISTRY)}, or a PATH.npz"
    entry = get(config.dataset)
    if config.seq_len is not None and not entry.seq_len:
        return "seq_len", config.seq_len, f"only for --dataset adding or copy (drop it for {config.dataset})"
    if config.seq_len is not None and config.seq_len < 2:
        return "seq_len", config.seq_len, "must be >= 2"
    if config.sequence not in entry.views:
        return "sequence", config.sequence, f"only for image datasets ({', '.join(IMAGE_DATASETS)}); drop it"
    if getattr(config, "augment", "none") == "hflip" and not entry.image:
        return "augment", "hflip", "mirrors images; only for image datasets (use none or auto)"
    return None


def load(config, entry: DatasetEntry | None = None) -> tuple[Arrays, DataSpec]:
    """Loads (or generates) `config.dataset` and checks every array against what the dataset is.

    Args:
      entry: the dataset's entry, when the caller has resolved it already (`get(config.dataset)`).

    Raises:
      DataError: missing/corrupt files, or arrays of the wrong shape, dtype, range or with NaN (one line).
    """
    entry = entry or get(config.dataset)
    arrays = entry.load(config)
    return validate(config, arrays, arrays.source or config.dataset, entry)


def validate(config, arrays: Arrays, where: str, entry: DatasetEntry | None = None) -> tuple[Arrays, DataSpec]:
    """Checks `arrays` (loaded or injected by a test) against `config.dataset`; returns them with their spec."""
    entry = entry or get(config.dataset)
    if entry.check_arrays is not None:
        arrays = entry.check_arrays(arrays, where)
        return arrays, entry.spec(config, arrays)
    spec = entry.spec(config, arrays)
    checked = {}
    for split in ("train", "test"):
        x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        checked[f"x_{split}"] = _check_inputs(x, spec, f"{where}: x_{split}")
        checked[f"y_{split}"] = spec.task_type.check_targets(y, len(x), spec, f"{where}: y_{split}")
    return arrays._replace(**checked), spec


def _check_inputs(x: np.ndarray, spec: DataSpec, where: str) -> np.ndarray:
    if x.ndim != 3 or tuple(x.shape[1:]) != spec.input_shape:
        raise DataError(f"{where} is {list(x.shape)}; expected [N, {spec.input_shape[0]}, {spec.input_shape[1]}]")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or x.dtype == np.bool_:
        raise DataError(f"{where} is {x.dtype}; expected numbers (float32 is what the model takes)")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{where} has NaN or infinite values (first at index {first_nonfinite(x)}); clean them first")
    return x


def image_spec(dataset: str | None) -> DataSpec:
    """The spec of a row-wise image classifier (runs written before data_spec.json existed, TF1 conversions);
    without a known dataset its class names are unknown (predict prints class indices)."""
    if dataset in IMAGE_DATASETS:
        return REGISTRY[dataset].spec(None, None)
    return DataSpec(dataset or "images", IMAGE_SHAPE, CLASSIFICATION, image=True)


def save_npz(path: str | os.PathLike, arrays: Arrays, class_names=None) -> None:
    """Writes arrays in the form `--dataset PATH.npz` reads (tests, notebooks, users converting their data)."""
    extra = {"class_names": np.array(class_names)} if class_names is not None else {}
    buf = io.BytesIO()
    np.savez(buf, **{k: getattr(arrays, k) for k in NPZ_KEYS}, **extra)
    Path(path).write_bytes(buf.getvalue())
