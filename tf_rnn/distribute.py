"""Distribute: one function from a strategy name to a tf.distribute.Strategy."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the strategy `name` stands for.

    `auto`: MirroredStrategy over all GPUs when there are several, OneDevice on the single GPU, else the default
    strategy (one CPU device; TensorFlow already uses every core inside each op). `multi_worker` reads the cluster
    from `TF_CONFIG`; `tpu` resolves the TPU from the environment.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
