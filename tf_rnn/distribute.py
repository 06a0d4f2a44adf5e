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
    if name == "multi_worker":  # Before anything else: it must configure the runtime, which listing devices starts.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy's public class name, as users write it (`MultiWorkerMirroredStrategy`, whose class is
    `CollectiveAllReduceStrategy`); the class name itself where TensorFlow exports none (the default strategy)."""
    public = [name for name in dir(tf.distribute) if getattr(tf.distribute, name) is type(strategy)]
    return min(public, key=len) if public else type(strategy).__name__


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files. Multi-worker: the `chief` task, else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Waits until every worker gets here (one tiny all-reduce). Workers that leave while the chief still
    evaluates and exports make the coordination service report them as crashed; this keeps them until it is done."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Inside a tf.function: run eagerly, the collective logs a performance warning on every call.
        def one():
            return tf.ones([])

        def all_reduce():
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(one), None)

        tf.function(all_reduce)()


def needs_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    """Keras 3's `fit` fails under MultiWorkerMirroredStrategy on TF 2.21 (a PerReplica conversion error inside
    its trainer); every other strategy trains with `fit`."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def fit_custom_loop(model, strategy, train_ds, validation_ds, *, task, epochs, steps_per_epoch, callbacks,
                    verbose=1):
    """`model.fit` for strategies where Keras' own trainer fails: `strategy.run` steps over distributed datasets.

    Same contract as `fit` for what this package uses: Keras callbacks (BackupAndRestore, TensorBoard, ours) get
    the same hooks and logs (`loss`, the task's metric, `val_loss`, `val_<metric>`), `Epoch N/M` progress bars are
    printed, `model.stop_training` is honoured, and a History is returned.

    Args:
      model: compiled inside `strategy.scope()`; its `loss` must be a Keras Loss (per-example `call`).
      train_ds: endless dataset of global batches `(<float32>[global_batch, T, F], targets)`.
      validation_ds: finite dataset of global batches, or None.
      task: the `tasks.Task` the model was built for (its metric's name and per-example scores).
    """
    import keras

    options = tf.data.Options()
    # The in-memory datasets are identical on every worker: split each global batch between them.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist_train = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    dist_val = strategy.experimental_distribute_dataset(validation_ds.with_options(options)) if validation_ds else None
    loss_fn = model.loss
    metric = task.metric

    def per_example_mean(t):
        """`[replica_batch, ...]` → `[replica_batch]`: per-step tasks average over their steps."""
        return tf.reshape(tf.reduce_mean(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1), [-1])

    def sums(y, outputs):
        per_example = per_example_mean(loss_fn.call(y, outputs))  # Un-reduced: <float32>[replica_batch].
        score = per_example_mean(task.batch_scores(y, outputs))
        count = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.reduce_sum(per_example), tf.reduce_sum(score), count, per_example

    @tf.function
    def train_step(iterator):
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss_sum, correct, count, per_example = sums(y, logits)
                # Mean over the *global* batch, so that the optimizer's all-reduce (a sum) gives the true mean.
                loss = tf.nn.compute_average_loss(per_example)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss_sum, correct, count

        results = strategy.run(step, args=next(iterator))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    @tf.function
    def eval_step(x, y):
        def step(x, y):
            return sums(y, model(x, training=False))[:3]

        results = strategy.run(step, args=(x, y))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    cbs = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps_per_epoch,
    )
    model.stop_training = False
    with strategy.scope():  # Restoring a backup builds the optimizer's slots: they must be distributed too.
        cbs.on_train_begin()
    initial_epoch = getattr(model, "_initial_epoch", None) or 0  # Set by BackupAndRestore when resuming.
    iterator = iter(dist_train)
    logs = {}
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        total = [0.0, 0.0, 0.0]
        for step in range(steps_per_epoch):
            cbs.on_train_batch_begin(step)
            total = [t + float(v) for t, v in zip(total, train_step(iterator))]
            logs = {"loss": total[0] / total[2], metric: total[1] / total[2]}
            cbs.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        logs = dict(logs)
        if dist_val is not None:
            val = [0.0, 0.0, 0.0]
            for x, y in dist_val:
                val = [t + float(v) for t, v in zip(val, eval_step(x, y))]
            logs.update({"val_loss": val[0] / val[2], f"val_{metric}": val[1] / val[2]})
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return model.history
