"""Predict: classify images (IDX, .npy/.npz, PNG) with an exported SavedModel, one line per image."""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from pathlib import Path

import numpy as np

from tf_rnn import cli
from tf_rnn.cli import RunError, UsageError
from tf_rnn.data import IMAGE_SHAPE, IMAGES_MAGIC
from tf_rnn.export import METADATA


class InputError(RunError):
    """An input file cannot be classified. `str()` is one line naming the file and what is wrong."""


def _as_images(array: np.ndarray, where: str) -> np.ndarray:
    """`[28, 28]` or `[N, 28, 28]`, uint8 or float in [0, 1] → `<float32>[N, 28, 28]` in [0, 1]."""
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        raise InputError(f"{where}: shape {list(array.shape)}; expected [28, 28] or [N, 28, 28] images")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{where}: dtype {array.dtype}; expected uint8 pixels or floats in [0, 1]")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{where}: contains NaN or infinite values")
    if array.min() < 0 or array.max() > 1:
        raise InputError(
            f"{where}: values in [{array.min():g}, {array.max():g}]; expected uint8 pixels or floats in [0, 1]"
        )
    return array


def read_images(path: Path) -> np.ndarray:
    """Reads one file into `<float32>[N, 28, 28]` in [0, 1].

    Raises:
      InputError: unreadable, not an image file we know, wrong size, NaN.
    """
    name = path.name.lower()
    try:
        if name.endswith(".png"):
            import tensorflow as tf

            image = tf.io.decode_png(path.read_bytes(), channels=1).numpy()[..., 0]
            return _as_images(image, str(path))
        if name.endswith(".npy"):
            return _as_images(np.load(path, allow_pickle=False), str(path))
        if name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                key = "x_test" if "x_test" in z.files else z.files[0] if len(z.files) == 1 else None
                if key is None:
                    raise InputError(f"{path}: .npz with arrays {z.files}; expected one array or x_test")
                return _as_images(z[key], f"{path}[{key}]")
        if "idx3-ubyte" in name or name.endswith(".idx"):
            raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
            header = np.frombuffer(raw[:16], ">u4") if len(raw) >= 16 else None
            if header is None or header[0] != IMAGES_MAGIC:
                raise InputError(f"{path}: not an IDX image file (bad magic number)")
            n, rows, cols = (int(v) for v in header[1:])
            if len(raw) != 16 + n * rows * cols:
                raise InputError(f"{path}: {len(raw) - 16} pixel bytes, header promises {n}x{rows}x{cols}")
            return _as_images(np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols), str(path))
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - e.g. tf's InvalidArgumentError for a corrupt PNG.
        raise InputError(f"{path}: cannot be decoded ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    raise InputError(f"{path}: unknown file type; use PNG, .npy, .npz or IDX (*-idx3-ubyte[.gz])")


@cli.entry_point()
def main(argv=None) -> int:
    parser = cli.OneLineParser(prog="python -m tf_rnn.predict", description=__doc__)
    parser.add_argument("model_dir", help="an exported SavedModel (tf_rnn.export, or a run's saved_model/)")
    parser.add_argument("files", nargs="+", help="PNG (28x28 grayscale), .npy/.npz, IDX image files")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    model_dir = Path(args.model_dir)
    if not (model_dir / "saved_model.pb").is_file():
        raise UsageError(f"{model_dir}: not a SavedModel folder (no saved_model.pb); export one with "
                         "python -m tf_rnn.export")
    batches = [(path, read_images(Path(path))) for path in args.files]
    import tensorflow as tf

    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    meta_path = model_dir / METADATA
    names = json.loads(meta_path.read_text()).get("class_names") if meta_path.exists() else None
    for path, images in batches:
        for start in range(0, len(images), args.batch_size):
            out = serve(images=tf.constant(images[start:start + args.batch_size]))
            for k, (cls, probs) in enumerate(zip(out["classes"].numpy(), out["probabilities"].numpy())):
                label = f"{cls} ({names[cls]})" if names else str(cls)
                where = f"{path}[{start + k}]" if len(images) > 1 else str(path)
                print(f"{where}\t{label}\tp={probs[cls]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
