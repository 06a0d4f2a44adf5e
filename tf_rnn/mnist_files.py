"""MNIST files: find, verify and load the IDX (or Keras .npz) files MNIST and Fashion-MNIST ship in."""

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
from typing import Callable, Iterable

import numpy as np

from tf_rnn.arrays import Arrays, DataError

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


@dataclasses.dataclass(frozen=True)
class IdxFiles:
    """Where one MNIST-family dataset's files live and how to recognise a good copy of them (its registry entry
    in `tf_rnn.datasets` holds one)."""

    name: str
    subdir: str  # Folder name used by the Keras cache and by Debian under /usr/share/datasets.
    npz: str  # Single-file form, as Keras caches MNIST.
    # SHA-256 of the *decompressed* IDX content. Debian re-compresses Fashion-MNIST, so the .gz bytes differ from
    # the official downloads while the content is identical: hashing the content accepts both.
    content_sha256: dict[str, str | None]
    npz_sha256: str | None
    keras_loader: str  # keras.datasets module that downloads it.
    debian_package: str | None = None


SYSTEM_DATA_ROOT = Path("/usr/share/datasets")


def other_dataset_holding(digest: str, spec: IdxFiles, others: Iterable[IdxFiles]) -> str | None:
    """The name of another dataset whose known file content has this SHA-256, or None.

    MNIST and Fashion-MNIST share file names, sizes and structure: a folder of the wrong one passes every
    structural check, and only a known digest can tell them apart.
    """
    for other in others:
        if other.name != spec.name and digest in {*other.content_sha256.values(), other.npz_sha256} - {None}:
            return other.name
    return None


def _refuse_other_dataset(digest: str, path: Path, spec: IdxFiles, others: Iterable[IdxFiles]) -> None:
    other = other_dataset_holding(digest, spec, others)
    if other:
        raise DataError(
            f"{path.parent}: holds {other}, not {spec.name} ({path.name} is {other}'s); pass --dataset {other}, "
            f"or point --data-dir at a folder of {spec.name}"
        )


def keras_cache_dir() -> Path:
    """Where `keras.utils.get_file` caches datasets (honours $KERAS_HOME like Keras does)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def search_path(spec: IdxFiles, data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places looked in, in order: --data-dir, $TF_RNN_DATA_DIR, the Keras cache, Debian's datasets folder.

    Each root is tried as is and with the dataset's sub-folder (`fashion-mnist/`, `mnist/`), because that is how
    both the Keras cache and Debian lay the files out.
    """
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


def load_idx_dir(folder: Path, spec: IdxFiles, others: Iterable[IdxFiles] = ()) -> Arrays | None:
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
        _refuse_other_dataset(digest, path, spec, others)
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


def load_npz(path: Path, spec: IdxFiles, others: Iterable[IdxFiles] = ()) -> Arrays:
    """Loads Keras' single-file form (`x_train`, `y_train`, `x_test`, `y_test`)."""
    raw = _read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    _refuse_other_dataset(digest, path, spec, others)
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


def _download(spec: IdxFiles) -> Arrays:
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
    spec: IdxFiles,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | Callable[[IdxFiles], Arrays] = True,
    others: Iterable[IdxFiles] = (),
) -> Arrays:
    """Finds, verifies and loads a dataset.

    Look-up order: `data_dir` → `$TF_RNN_DATA_DIR` → the Keras cache → `/usr/share/datasets` → download.

    Args:
      spec: the dataset's files (`tf_rnn.datasets.REGISTRY[name].files`).
      data_dir: a folder holding the four IDX files (`.gz` or raw) or the dataset's `.npz`.
      download: False to never download; a callable to replace the Keras downloader (tests).
      others: the other datasets' files, to name the one a folder holds when it is not `spec`'s.

    Returns:
      Arrays with `<uint8>[60000, 28, 28]` train and `<uint8>[10000, 28, 28]` test images.

    Raises:
      DataError: nothing usable was found (the message lists every place looked in), or a file is corrupt.
    """
    name, others = spec.name, tuple(others)
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"--data-dir {data_dir}: no such directory; pass a folder holding the {name} files")
    looked = []
    for label, folder in search_path(spec, data_dir):
        looked.append(str(folder))
        if not folder.is_dir():
            continue
        arrays = load_idx_dir(folder, spec, others)
        if arrays is None and (folder / spec.npz).is_file():
            arrays = load_npz(folder / spec.npz, spec, others)
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
