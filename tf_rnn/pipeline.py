"""Pipeline: a dataset's arrays as tf.data streams — a seeded validation split, shuffled epochs, batches."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tf_rnn.arrays import Arrays


class Splits(NamedTuple):
    """Batched `tf.data.Dataset`s of `(<float32>[batch, T, F], targets)` (uint8 images scaled to [0, 1]); `train`
    is endless; `train_epochs` holds the same epochs, one per iteration, the epoch named by the variable
    `train_epoch` (see training_epochs)."""

    train: object
    validation: object | None
    test: object
    train_examples: int
    validation_examples: int
    test_examples: int
    train_epochs: object = None
    train_epoch: object = None


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


PARALLEL_BATCHES = 2  # Batches prepared ahead, and in parallel: the work is a gather and a cast per batch.


def _untuned(ds):
    """`ds` without tf.data's autotuner. Its model thread sleeps between tuning rounds (longer the longer it runs)
    and an iterator's destruction waits for it: seconds of silence after every `fit` and `evaluate`, and a minute
    at the exit of a search that kept a few iterators (measured: 1.3 s per iterator after 1.5 s of use, 11 s at
    the exit with three). Our pipelines are a gather and a cast per batch; there is nothing to tune."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def pipeline(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Arrays → batched float32 dataset, in order (validation and test)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    # Scaling after batching is one op per batch instead of one per image.
    return _untuned(ds.map(_to_float, num_parallel_calls=PARALLEL_BATCHES).prefetch(PARALLEL_BATCHES))


def _epochs(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, hflip: bool):
    """`(one_epoch, gather)`: epoch `e`'s batches of indices and flips, and a batch of them → `(images, labels)`.
    Both forms of the training data below are made of these, so they hold the same batches."""
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

    return one_epoch, gather


def _ready(ds):
    return _untuned(ds.map(_to_float, num_parallel_calls=PARALLEL_BATCHES).prefetch(PARALLEL_BATCHES))


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

    one_epoch, gather = _epochs(x, y, batch_size, seed, hflip)
    return _ready(tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch).map(gather))


def training_epochs(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, hflip: bool = False):
    """The epochs of `training_stream`, one per iteration: `(dataset, epoch)`, where each new iterator of `dataset`
    yields the batches of epoch `epoch` (a `tf.Variable`, int64) — set it before each epoch (callbacks.DataEpoch).

    Why a second form: Keras' multi-step train function ends an execution early when its iterator runs dry, and
    `fit` without `steps_per_epoch` starts a new iterator each epoch. So an epoch's last execution runs only the
    steps left, and any `steps_per_execution` keeps epochs exact. On the endless stream an execution straddling an
    epoch's end would train on the next epoch's batches: there, steps per execution must divide an epoch.
    """
    import tensorflow as tf

    one_epoch, gather = _epochs(x, y, batch_size, seed, hflip)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")
    ds = tf.data.Dataset.range(1).flat_map(lambda _: one_epoch(epoch.read_value())).map(gather)
    # Every epoch has this many batches; declared, so that Keras counts an epoch's steps (and its progress bar).
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(x) // batch_size)))
    # A sequential cast, not _ready's parallel one: with op determinism on (train.prepare), TensorFlow makes a parallel
    # map in a pipeline that reads a variable sequential anyway, and logs an error-level line about the attribute it
    # drops doing so (node_def_util.cc, use_unbounded_threadpool) once a run. The cast is microseconds a batch.
    return _untuned(ds.map(_to_float).prefetch(PARALLEL_BATCHES)), epoch


def make_splits(
    arrays: Arrays, batch_size: int, validation_split: float, seed: int, first_epoch: int = 0, hflip: bool = False
) -> Splits:
    """Train (endless, shuffled per epoch), validation and test pipelines; the test one keeps every image."""
    (x_tr, y_tr), (x_val, y_val) = split_validation(arrays.x_train, arrays.y_train, validation_split, seed)
    train_epochs, train_epoch = training_epochs(x_tr, y_tr, batch_size, seed, hflip)
    return Splits(
        train=training_stream(x_tr, y_tr, batch_size, seed, first_epoch, hflip),
        validation=pipeline(x_val, y_val, batch_size) if len(x_val) else None,
        test=pipeline(arrays.x_test, arrays.y_test, batch_size),
        train_examples=len(x_tr),
        validation_examples=len(x_val),
        test_examples=len(arrays.x_test),
        train_epochs=train_epochs,
        train_epoch=train_epoch,
    )
