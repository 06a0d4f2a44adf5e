"""Summaries: what a run adds to TensorBoard beyond Keras' callback — HParams, the op graph, test results."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tf_rnn.config import TrainConfig
from tf_rnn.datasets import DataSpec


def write_run_header(logdir: Path, config: TrainConfig, model, spec: DataSpec) -> None:
    """The HParams summary (so the HParams dashboard compares runs) and the model's forward op graph.

    Keras 3's TensorBoard callback writes the conceptual (layer) graph but no longer the op graph on TF 2.21: we
    trace the inference function once and write it ourselves.
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    from tf_rnn.models import inference_function

    graph = inference_function(model).get_concrete_function().graph

    hparams = hparam_values(config)
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hparams_config(list(hparams), spec, test=True)
        hp.hparams(hparams)
        tf.summary.graph(graph)


def hparam_values(config: TrainConfig) -> dict:
    """The config as HParams values (an unset field as "": the dashboard takes no None)."""
    return {k: ("" if v is None else v) for k, v in config.to_dict().items()}


def hparams_config(names: list[str], spec: DataSpec, test: bool) -> None:
    """The HParams experiment (to the default writer): its columns in `names`' order, and the metrics to compare
    runs by (the validation ones; the test ones of a finished run with `test`)."""
    from tensorboard.plugins.hparams import api as hp

    task = spec.task_type
    hp.hparams_config(
        hparams=[hp.HParam(k) for k in names],
        metrics=[
            hp.Metric(f"epoch_{task.metric}", group="validation", display_name=f"validation {task.metric}"),
            hp.Metric("epoch_loss", group="validation", display_name="validation loss"),
            *[hp.Metric(name, display_name=name.replace("_", " ")) for name in (task.hparams_metrics if test else ())],
        ],
    )


def confusion_figure(cm: np.ndarray, class_names, title: str):
    """A matplotlib figure of the counts, both axes labelled with the class names."""
    import matplotlib

    matplotlib.use("Agg")  # No display on servers and CI.
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(cm))
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=ticks, yticks=ticks)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > cm.max() / 2 else "black")
    return fig


def confusion_png(cm: np.ndarray, class_names, title: str) -> bytes:
    import matplotlib.pyplot as plt

    fig = confusion_figure(cm, class_names, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_test_summaries(logdir: Path, metrics: dict, spec: DataSpec, step: int) -> None:
    """The task's test metrics (and a confusion matrix image where the task has one) under `test/`, and again at
    the root run, where the HParams dashboard looks for its metrics."""
    import tensorflow as tf

    task, cm = spec.task_type, metrics.get("confusion_matrix")
    with tf.summary.create_file_writer(str(logdir / "test")).as_default():
        for name in task.test_scalars:
            tf.summary.scalar(name, metrics[name], step=step)
        if cm is not None:
            png = confusion_png(np.asarray(cm), spec.class_names, "test-set confusion matrix")
            tf.summary.image("confusion_matrix", tf.image.decode_png(png, channels=4)[None], step=step)
    with tf.summary.create_file_writer(str(logdir)).as_default():
        for name in task.hparams_metrics:
            tf.summary.scalar(name, metrics[name], step=step)
