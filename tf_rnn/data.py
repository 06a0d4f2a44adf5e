"""Data: find, verify and load MNIST / Fashion-MNIST, and build the tf.data pipelines."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import socket
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from tf_rnn.cli import RunError

log = logging.getLogger(__name__)

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
IMAGES_MAGIC = 0x00000803  # IDX: unsigned byte, 3 dimensions.
LABELS_MAGIC = 0x00000801  # IDX: unsigned byte, 1 dimension.
DATA_DIR_ENV = "TF_RNN_DATA_DIR"

# (split, kind) -> IDX base name. The same four names are used by MNIST and Fashion-MNIST.
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
COUNTS = {"train": 60_000, "test": 10_000}


class DataError(RunError):
    """A data file is missing, truncated, corrupt or of another dataset. One line naming the file and the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how to recognise a good copy of it."""

    name: str
    subdir: str  # Folder name used by the Keras cache and by Debian under /usr/share/datasets.
    npz: str  # Single-file form, as Keras caches MNIST.
    # SHA-256 of the *decompressed* IDX content. Debian re-compresses Fashion-MNIST, so the .gz bytes differ from
    # the official downloads while the content is identical: hashing the content accepts both.
    content_sha256: dict[str, str | None]
    npz_sha256: str | None
    keras_loader: str  # keras.datasets module that downloads it.
    debian_package: str | None
    class_names: tuple[str, ...]  # Index = label: TensorBoard's confusion matrix, the export's metadata, predict.


DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
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
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        subdir="mnist",
        npz="mnist.npz",
        # No published digest of the decompressed MNIST IDX files is known to us: structure checks only.
        content_sha256={base: None for base in IDX_FILES.values()},
        # keras.datasets.mnist verifies its download against this digest too.
        npz_sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        keras_loader="mnist",
        debian_package=None,
        class_names=tuple(str(d) for d in range(10)),
    ),
}

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")


class Arrays(NamedTuple):
    """A dataset in memory: inputs `[N, T, F]` and targets (for images: `<uint8>[N, 28, 28]` and `<int64>[N]` labels
    in `[0, 10)`; other datasets: see `tf_rnn.datasets`)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = ""
    class_names: tuple[str, ...] = ()  # A user's .npz may name its classes.


def other_dataset_holding(digest: str, spec: DatasetSpec) -> str | None:
    """The name of another dataset whose known file content has this SHA-256, or None.

    MNIST and Fashion-MNIST share file names, sizes and structure: a folder of the wrong one passes every
    structural check, and only a known digest can tell them apart.
    """
    for other in DATASETS.values():
        if other.name != spec.name and digest in {*other.content_sha256.values(), other.npz_sha256} - {None}:
            return other.name
    return None


def _refuse_other_dataset(digest: str, path: Path, spec: DatasetSpec) -> None:
    other = other_dataset_holding(digest, spec)
    if other:
        raise DataError(
            f"{path.parent}: holds {other}, not {spec.name} ({path.name} is {other}'s); pass --dataset {other}, "
            f"or point --data-dir at a folder of {spec.name}"
        )


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def keras_cache_dir() -> Path:
    """Where `keras.utils.get_file` caches datasets (honours $KERAS_HOME like Keras does)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def search_path(name: str, data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places looked in, in order: --data-dir, $TF_RNN_DATA_DIR, the Keras cache, Debian's datasets folder.

    Each root is tried as is and with the dataset's sub-folder (`fashion-mnist/`, `mnist/`), because that is how
    both the Keras cache and Debian lay the files out.
    """
    spec = get_spec(name)
    roots: list[tuple[str, Path]] = []
    if data_dir:
        roots.append(("--data-dir", Path(data_dir).expanduser()))
    if os.environ.get(DATA_DIR_ENV):
        roots.append((f"${DATA_DIR_ENV}", Path(os.environ[DATA_DIR_ENV]).expanduser()))
    roots.append(("Keras cache", keras_cache_dir()))
    roots.append(("system datasets", SYSTEM_DATA_ROOT))
    places = []
    for label, root in roots:
        places.append((label, root))
        places.append((label, root / spec.subdir))
    return places


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
        raise DataError(f"{path}: cannot be read ({e}); delete it and provide a fresh copy") from None


def parse_idx(raw: bytes, path: Path, kind: str, count: int) -> np.ndarray:
    """Checks an IDX file's magic number, count and size, and returns its payload.

    Returns:
      `<uint8>[count, 28, 28]` for images, `<int64>[count]` labels in `[0, 10)`.
    """
    magic, ndim_header = (IMAGES_MAGIC, 16) if kind == "images" else (LABELS_MAGIC, 8)
    if len(raw) < ndim_header:
        raise DataError(f"{path}: truncated ({len(raw)} bytes); delete it and provide a fresh copy")
    header = np.frombuffer(raw[:ndim_header], dtype=">u4")
    if header[0] != magic:
        raise DataError(
            f"{path}: bad IDX magic number 0x{int(header[0]):08x} (expected 0x{magic:08x} for {kind}); "
            "is this the right file?"
        )
    if header[1] != count:
        raise DataError(f"{path}: holds {int(header[1])} {kind}, expected {count}; is this the right file?")
    if kind == "images" and tuple(int(d) for d in header[2:]) != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {int(header[2])}x{int(header[3])}, expected 28x28")
    item = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] if kind == "images" else 1
    expected = ndim_header + count * item
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes of content, expected {expected} (truncated or corrupt); "
            "delete it and provide a fresh copy"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=ndim_header)
    if kind == "images":
        return data.reshape(count, *IMAGE_SHAPE)
    labels = data.astype(np.int64)
    _check_labels(labels, path)
    return labels


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels are {labels.dtype}, expected integers in [0, {NUM_CLASSES})")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.size:
        raise DataError(f"{path}: label {int(bad[0])} out of range [0, {NUM_CLASSES}); the file is corrupt")


def _find_idx(folder: Path, base: str) -> Path | None:
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dir(folder: Path, spec: DatasetSpec) -> Arrays | None:
    """Loads the four IDX files from `folder`; None when none of them is there.

    Raises:
      DataError: some but not all files are there, or one is corrupt.
    """
    found = {key: _find_idx(folder, base) for key, base in IDX_FILES.items()}
    if not any(found.values()):
        return None
    missing = [IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DataError(f"{folder}: has part of {spec.name} but not {', '.join(missing)} (.gz or raw); add them")
    arrays = {}
    for (split, kind), path in found.items():
        raw = _read_bytes(path)
        arrays[(split, kind)] = parse_idx(raw, path, kind, COUNTS[split])
        digest = hashlib.sha256(raw).hexdigest()
        _refuse_other_dataset(digest, path, spec)
        want = spec.content_sha256.get(IDX_FILES[(split, kind)])
        if want and digest != want:
            raise DataError(
                f"{path}: checksum mismatch for {spec.name} (sha256 of the content is not the known one); "
                "delete it and provide a fresh copy"
            )
    return Arrays(
        arrays[("train", "images")], arrays[("train", "labels")],
        arrays[("test", "images")], arrays[("test", "labels")],
        source=str(folder),
    )


def load_npz(path: Path, spec: DatasetSpec) -> Arrays:
    """Loads Keras' single-file form (`x_train`, `y_train`, `x_test`, `y_test`)."""
    raw = _read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    _refuse_other_dataset(digest, path, spec)
    if spec.npz_sha256 and digest != spec.npz_sha256:
        raise DataError(f"{path}: checksum mismatch for {spec.name}; delete it and provide a fresh copy")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            x_train, y_train, x_test, y_test = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (KeyError, ValueError, OSError, zlib.error, EOFError) as e:
        raise DataError(f"{path}: not a valid dataset .npz ({e}); delete it and provide a fresh copy") from None
    return validate_arrays(Arrays(x_train, y_train, x_test, y_test, source=str(path)), str(path))


def validate_arrays(arrays: Arrays, where: str) -> Arrays:
    """Checks dtype, shape and label range of in-memory arrays (also used for injected test data)."""
    for x, y, split in ((arrays.x_train, arrays.y_train, "train"), (arrays.x_test, arrays.y_test, "test")):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{where}: {split} images are <{x.dtype}>{list(x.shape)}, expected <uint8>[N, 28, 28]")
        if y.shape != (x.shape[0],):
            raise DataError(f"{where}: {split} labels have shape {list(y.shape)}, expected [{x.shape[0]}]")
        _check_labels(y, Path(where))
    return arrays._replace(y_train=arrays.y_train.astype(np.int64), y_test=arrays.y_test.astype(np.int64))


def _download(spec: DatasetSpec) -> Arrays:
    """Downloads through `keras.datasets` (which caches into the Keras cache for next time)."""
    import keras

    loader = getattr(keras.datasets, spec.keras_loader)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # urllib has no timeout of its own: without this a dead network hangs forever.
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as e:  # noqa: BLE001 - any failure here means "no download"; the caller lists alternatives.
        raise DataError(f"download failed: {type(e).__name__}: {e}".splitlines()[0]) from None
    finally:
        socket.setdefaulttimeout(previous)
    return validate_arrays(Arrays(x_train, y_train, x_test, y_test, source="download"), "download")


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | Callable[[DatasetSpec], Arrays] = True,
) -> Arrays:
    """Finds, verifies and loads a dataset.

    Look-up order: `data_dir` → `$TF_RNN_DATA_DIR` → the Keras cache → `/usr/share/datasets` → download.

    Args:
      name: `mnist` or `fashion_mnist`.
      data_dir: a folder holding the four IDX files (`.gz` or raw) or the dataset's `.npz`.
      download: False to never download; a callable to replace the Keras downloader (tests).

    Returns:
      Arrays with `<uint8>[60000, 28, 28]` train and `<uint8>[10000, 28, 28]` test images.

    Raises:
      DataError: nothing usable was found (the message lists every place looked in), or a file is corrupt.
    """
    spec = get_spec(name)
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"--data-dir {data_dir}: no such directory; pass a folder holding the {name} files")
    looked = []
    for label, folder in search_path(name, data_dir):
        looked.append(str(folder))
        if not folder.is_dir():
            continue
        arrays = load_idx_dir(folder, spec)
        if arrays is None and (folder / spec.npz).is_file():
            arrays = load_npz(folder / spec.npz, spec)
        if arrays is not None:
            log.info("Loaded %s from %s (%s)", name, arrays.source, label)
            return arrays
    reason = "downloads disabled"
    if download:
        try:
            arrays = (_download if download is True else download)(spec)
            log.info("Downloaded %s through keras.datasets", name)
            return arrays
        except DataError as e:
            reason = str(e)
    hint = f"`apt-get install {spec.debian_package}`, or " if spec.debian_package else ""
    raise DataError(
        f"{name} not found in {', '.join(dict.fromkeys(looked))} and {reason}; provide it with {hint}"
        f"--data-dir/${DATA_DIR_ENV} pointing at the four *-idx?-ubyte[.gz] files or {spec.npz}"
    )


# --- tf.data pipelines -------------------------------------------------------------------------------------------


class Splits(NamedTuple):
    """Batched `tf.data.Dataset`s of `(<float32>[batch, T, F], targets)` (images: `[batch, 28, 28]` in [0, 1] and
    `<int64>[batch]` labels); `train` is endless."""

    train: object
    validation: object | None
    test: object
    train_examples: int
    validation_examples: int
    test_examples: int


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Carves a seeded, random validation set out of the training set (never out of the test set)."""
    n_val = int(round(len(x) * fraction))
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def _to_float(images, labels):
    import tensorflow as tf

    if images.dtype == tf.uint8:  # Image pixels; every other dataset's inputs are float32 already.
        return tf.cast(images, tf.float32) / 255.0, labels
    return images, labels


def pipeline(x: np.ndarray, y: np.ndarray, batch_size: int):
    """uint8 arrays → batched float32 dataset, in order (validation and test)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    # Scaling after batching is one op per batch instead of one per image.
    return ds.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def training_stream(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, first_epoch: int = 0, hflip: bool = False
):
    """An endless stream of shuffled epochs, epoch `e` shuffled with seed `(seed, e)`, starting at `first_epoch`.

    Each epoch's order depends only on (seed, epoch), not on how many epochs this process has already run: a run
    resumed at epoch 3 sees exactly the batches an uninterrupted run would. Use with `fit(steps_per_epoch=...)`.
    Epochs are batched separately, so the last, short batch of an epoch never mixes with the next epoch.

    Args:
      hflip: mirror a random half of the images left-right (again a pure function of seed and epoch). Right for
        clothes, wrong for digits.
    """
    import tensorflow as tf

    images, labels, n = tf.constant(x), tf.constant(y), len(x)

    def one_epoch(epoch):
        # A stateless permutation of all indices: a true uniform shuffle that is a pure function of (seed, epoch).
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed, epoch]))
        flips = tf.random.stateless_uniform([n], seed=tf.stack([seed + 1, epoch])) < (0.5 if hflip else 0.0)
        return tf.data.Dataset.from_tensor_slices((order, flips)).batch(batch_size)

    def gather(idx, flip):
        batch = tf.gather(images, idx)
        if hflip:
            batch = tf.where(flip[:, None, None], tf.reverse(batch, axis=[2]), batch)
        return batch, tf.gather(labels, idx)

    stream = tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch).map(gather)
    return stream.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_splits(
    arrays: Arrays, batch_size: int, validation_split: float, seed: int, first_epoch: int = 0, hflip: bool = False
) -> Splits:
    """Train (endless, shuffled per epoch), validation and test pipelines; the test one keeps every image."""
    (x_tr, y_tr), (x_val, y_val) = split_validation(arrays.x_train, arrays.y_train, validation_split, seed)
    return Splits(
        train=training_stream(x_tr, y_tr, batch_size, seed, first_epoch, hflip),
        validation=pipeline(x_val, y_val, batch_size) if len(x_val) else None,
        test=pipeline(arrays.x_test, arrays.y_test, batch_size),
        train_examples=len(x_tr),
        validation_examples=len(x_val),
        test_examples=len(arrays.x_test),
    )
