"""Arrays: a dataset in memory, as every dataset's loader returns it, and the error for data that cannot be used."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tf_rnn.cli import RunError


class DataError(RunError):
    """A data file is missing, truncated, corrupt or of another dataset, or arrays are not what the dataset is.
    One line naming the file (or array) and the fix."""


class Arrays(NamedTuple):
    """A dataset in memory: inputs `[N, T, F]` (MNIST-family images: `<uint8>[N, 28, 28]`) and their targets
    (`<int64>[N]` labels, `[N, steps]` per-step labels or `<float32>[N, K]` regression targets)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = ""
    class_names: tuple[str, ...] = ()  # A user's .npz may name its classes.


def first_nonfinite(a: np.ndarray) -> int:
    """The index of the first example of `a` (`[N, ...]`) holding a NaN or an infinity."""
    return int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[0, 0])
