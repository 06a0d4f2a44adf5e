"""The seed's TF1 LSTM-on-MNIST-rows program, ported to TF 2's tf.compat.v1 with its bugs fixed (see BUGS.md).

Each block keeps the seed's line order and names, so a reader of the seed finds every line's counterpart; a
`# FIX(n)` comment marks each change, numbered as in BUGS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from legacy_port.basic_lstm_cell import BasicLSTMCell
from tf_rnn import cli
from tf_rnn import datasets as tf_rnn_datasets
from tf_rnn import pipeline as tf_rnn_pipeline
from tf_rnn.cli import RunError, UsageError
from tf_rnn.datasets import IMAGE_DATASETS

v1 = tf.compat.v1

learning_rate = 0.001
training_iters = 100000
batch_size = 128
display_step = 10

n_input = 28  # MNIST data input (img shape: 28*28): one row per time step
n_steps = 28  # timesteps
n_hidden = 128  # hidden layer num of features
n_classes = 10  # MNIST total classes (0-9 digits)


class DataSet:
    """The part of TF1's `tensorflow.examples.tutorials.mnist` DataSet the seed used: `next_batch` with a
    reshuffle every epoch, images flattened to 784 floats in [0, 1], labels one-hot."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0):
        self.images = images.reshape(len(images), -1).astype(np.float32) / 255.0
        self.labels = np.eye(n_classes, dtype=np.float32)[labels]
        self.num_examples = len(images)
        self._rng = np.random.default_rng(seed)
        self._order, self._pos = self._rng.permutation(self.num_examples), 0

    def next_batch(self, size: int):
        if self._pos + size > self.num_examples:
            self._order, self._pos = self._rng.permutation(self.num_examples), 0
        idx = self._order[self._pos:self._pos + size]
        self._pos += size
        return self.images[idx], self.labels[idx]


def read_data_sets(dataset: str, data_dir: str | None, seed: int = 0):
    """FIX(10): `tensorflow.examples.tutorials` is gone; the data comes from tf_rnn.data. Like TF1's reader it
    keeps 5,000 training images aside for validation and leaves the test set whole."""
    arrays = tf_rnn_datasets.load_images(dataset, data_dir)
    (x_tr, y_tr), _ = tf_rnn_pipeline.split_validation(arrays.x_train, arrays.y_train, 5_000 / 60_000, seed)
    return argparse.Namespace(train=DataSet(x_tr, y_tr, seed), test=DataSet(arrays.x_test, arrays.y_test, seed))


def build_graph(seed: int = 0) -> argparse.Namespace:
    """The seed's graph, in the current default graph. Returns its tensors and ops by their seed names."""
    v1.set_random_seed(seed)
    x = v1.placeholder(tf.float32, [None, n_steps, n_input], name="x")
    y = v1.placeholder(tf.float32, [None, n_classes], name="y")

    # FIX(8): the seed drew these from a std-1.0 normal: logits of size ~sqrt(128) at step 0 saturate the softmax.
    # Glorot-uniform weights and zero biases, named so that a checkpoint reader finds them.
    weights = tf.Variable(v1.glorot_uniform_initializer()([n_hidden, n_classes]), name="weights")
    biases = tf.Variable(tf.zeros([n_classes]), name="biases")

    # FIX(3): the seed rebound `x` to the transposed/split tensors, so `feed_dict={x: ...}` fed the wrong tensor.
    # FIX(2), FIX(6): `tf.reshpae` and `tf.split(0, n_steps, x)`; unstack makes the 28 row inputs directly.
    x_steps = tf.unstack(tf.transpose(x, [1, 0, 2]), num=n_steps)  # n_steps x <float32>[batch, n_input]

    lstm_cell = BasicLSTMCell(n_hidden, forget_bias=1.0)
    outputs, states = v1.nn.static_rnn(lstm_cell, x_steps, dtype=tf.float32)  # FIX(12): tf.nn.rnn → static_rnn
    pred = tf.add(tf.matmul(outputs[-1], weights), biases, name="logits")

    # FIX(7): positional (pred, y) was (logits, labels) in TF 0.x and is rejected now: pass them by name.
    cost = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=pred))
    optimizer = v1.train.AdamOptimizer(learning_rate=learning_rate).minimize(cost)

    correct_pred = tf.equal(tf.argmax(pred, 1), tf.argmax(y, 1))
    accuracy = tf.reduce_mean(tf.cast(correct_pred, tf.float32))
    init = v1.global_variables_initializer()  # FIX(9): initialize_all_variables was removed.
    return argparse.Namespace(**locals())


def train(sess, g, mnist, iters: int = training_iters, log=print) -> list[int]:
    """The seed's loop. Returns the steps at which it logged."""
    logged = []
    step = 1
    while step * batch_size < iters:
        batch_x, batch_y = mnist.train.next_batch(batch_size)
        batch_x = batch_x.reshape((batch_size, n_steps, n_input))
        feed_dict = {g.x: batch_x, g.y: batch_y}
        sess.run(g.optimizer, feed_dict)
        if step % display_step == 0:  # FIX(1): `step & display_step` (bitwise and) logged at the wrong steps.
            acc, loss = sess.run([g.accuracy, g.cost], feed_dict)  # FIX(13): one run, not two, for the same feed.
            # FIX(11): Python 2 print statements.
            log(f"Iter {step * batch_size}, Minibatch Loss= {loss:.6f}, Training Accuracy= {acc:.5f}")
            logged.append(step)
        step += 1
    log("Optimization Finished!")
    return logged


def evaluate(sess, g, images: np.ndarray, labels: np.ndarray, chunk: int = 1000) -> tuple[float, np.ndarray]:
    """FIX(4), FIX(5): accuracy on the *test images* (the seed fed its last training batch), all of them (not
    only the first 128). Returns (accuracy, `<float32>[N, 10]` logits)."""
    logits = np.concatenate([
        sess.run(g.pred, {g.x: images[i:i + chunk].reshape((-1, n_steps, n_input))})
        for i in range(0, len(images), chunk)
    ])
    return float((logits.argmax(1) == labels.argmax(1)).mean()), logits


@cli.entry_point()
def main(argv=None) -> int:
    parser = cli.OneLineParser(prog="python -m legacy_port.mnist_lstm", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=IMAGE_DATASETS)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--training-iters", type=int, default=training_iters, help="training samples (100000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.training_iters <= batch_size:
        raise UsageError(f"--training-iters {args.training_iters}: must be > {batch_size} (one batch)")
    workdir = Path(args.workdir)
    if (workdir / "metrics.json").exists():
        raise RunError(f"--workdir {workdir} holds a finished run; choose a new one (nothing was overwritten)")
    mnist = read_data_sets(args.dataset, args.data_dir, args.seed)
    workdir.mkdir(parents=True, exist_ok=True)

    with tf.Graph().as_default():  # Graph mode for this block only: the rest of the process stays eager.
        g = build_graph(args.seed)
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(g.init)
            start = time.perf_counter()
            train(sess, g, mnist, args.training_iters)
            seconds = time.perf_counter() - start
            saver.save(sess, str(workdir / "model.ckpt"))  # FIX(14): the seed kept no checkpoint.
            test_accuracy, _ = evaluate(sess, g, mnist.test.images, mnist.test.labels)
    steps = (args.training_iters - 1) // batch_size
    metrics = {
        "test_accuracy": test_accuracy,
        "test_examples": mnist.test.num_examples,
        "steps": steps,
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": round(steps * batch_size / seconds, 1),
        "dataset": args.dataset,
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"Testing Accuracy: {test_accuracy:.4f} on all {mnist.test.num_examples} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
