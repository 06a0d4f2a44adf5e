"""tf_rnn.train: the CLI, the workdir's files, TensorBoard logs, resume, reproducibility and failures."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import synthetic_arrays
from tf_rnn import train
from tf_rnn.config import TrainConfig, resolve

# A config that learns the synthetic digits in seconds.
TINY = dict(units=16, layers=1, batch_size=32, lr=1e-2, dropout=0.0, epochs=3, validation_split=0.2)


def run(tmp_path, name="run", data=None, callbacks=(), **overrides):
    config = resolve(overrides={**TINY, **overrides})
    return train.train_and_evaluate(config, tmp_path / name, arrays=data or synthetic_arrays(), extra_callbacks=callbacks)


# --- command line ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        # argparse quotes the choices on some Python versions and not on others.
        (["--optimizer", "sgd"], r"argument --optimizer: invalid choice: 'sgd' \(choose from '?adam'?, '?rmsprop'?, '?adagrad'?, '?nesterov'?\)"),
        (["--preset", "best"], r"argument --preset: invalid choice: 'best' \(choose from '?seed'?, '?default'?\)"),
        (["--lr", "fast"], "argument --lr: 'fast' is not a number"),
        (["--units", "1.5"], "argument --units: '1.5' is not an integer"),
        (["--dropout", "1.5"], r"--dropout 1.5: must be in \[0, 1\)"),
        (["--epochs", "0"], "--epochs 0: must be >= 1"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--workdir", str(tmp_path / "w")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(expected, err) and "Traceback" not in err
    assert err.count(argv[0]) == 1  # The flag named once.
    assert not (tmp_path / "w").exists()


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"units": 8, "colour": "red"}))
    for path, expected in [(bad, "unknown field(s) colour"), (tmp_path / "none.json", "no such file")]:
        with pytest.raises(SystemExit) as e:
            train.main(["--config", str(path)])
        assert e.value.code == 2 and expected in capsys.readouterr().err


def test_flags_override_preset_and_config_file(tmp_path):
    saved = resolve("seed").to_dict() | {"units": 64}
    (tmp_path / "c.json").write_text(json.dumps(saved))
    config, workdir = train.parse_flags(["--config", str(tmp_path / "c.json"), "--lr", "0.5", "--workdir", "w"])
    assert (config.preset, config.units, config.lr, config.steps, str(workdir)) == ("seed", 64, 0.5, 781, "w")
    config, _ = train.parse_flags(["--preset", "seed", "--epochs", "4"])  # --epochs replaces the 781-step budget.
    assert (config.layers, config.dropout, config.epochs, config.steps) == (1, 0.0, 4, None)
    config, _ = train.parse_flags(["--preset", "seed", "--epochs", "4", "--steps", "100"])
    assert (config.epochs, config.steps) == (4, 100)
    assert train.parse_flags([])[0] == TrainConfig()


def test_missing_data_is_one_line_exit_1(tmp_path, capsys, isolated_data_env, monkeypatch):
    from tf_rnn import mnist_files

    monkeypatch.setattr(mnist_files, "_download", lambda spec: (_ for _ in ()).throw(
        mnist_files.DataError("download failed: offline")))
    with pytest.raises(SystemExit) as e:
        train.main(["--dataset", "fashion_mnist", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "fashion_mnist not found in" in err
    assert not (tmp_path / "w").exists()  # A run that could not start leaves nothing behind.


# --- a run's outputs ------------------------------------------------------------------------------------------


def test_run_writes_config_model_metrics_and_learns(tmp_path):
    metrics = run(tmp_path, epochs=4)
    workdir = tmp_path / "run"
    assert json.loads((workdir / "config.json").read_text()) == resolve(overrides={**TINY, "epochs": 4}).to_dict()
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("test_accuracy", "test_loss", "test_examples", "epochs", "train_seconds", "train_samples_per_second",
                "num_replicas_in_sync", "resumed_from_epoch"):
        assert key in saved
    assert saved["test_examples"] == 200 and saved["epochs"] == 4 and saved["resumed_from_epoch"] is None
    assert saved["num_replicas_in_sync"] == 1
    # Steady state leaves out tracing and validation: never below the whole run's average.
    assert saved["train_samples_per_second"] >= saved["train_examples"] * saved["epochs"] / saved["train_seconds"]
    assert saved["test_accuracy"] > 0.9  # Chance is 0.1: the model learned the synthetic classes.
    assert sum(map(sum, saved["confusion_matrix"])) == 200
    assert not (workdir / "backup").exists()
    served = tf.saved_model.load(str(workdir / "saved_model")).signatures["serve_uint8"]
    served_logits = served(images=tf.constant(synthetic_arrays().x_test))["logits"].numpy()
    # model.keras is the best-validation model, and test metrics were computed with it.
    model = keras.saving.load_model(workdir / "model.keras")
    data = synthetic_arrays()
    logits = model.predict(data.x_test.astype("float32") / 255, verbose=0)
    np.testing.assert_allclose((logits.argmax(1) == data.y_test).mean(), saved["test_accuracy"])
    np.testing.assert_allclose(served_logits, logits, atol=1e-5)  # The run's export is that same model.


def test_finished_run_is_never_overwritten(tmp_path):
    run(tmp_path, epochs=1)
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(train.RunError, match="holds a finished run"):
        run(tmp_path, epochs=1)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_a_finished_workdir_is_refused_before_the_data_loads(tmp_path, capsys, monkeypatch):
    from tf_rnn import datasets

    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.json").write_text("{}")
    # Loading takes ~10 s from local files and a download for MNIST: neither may start for a run that cannot.
    monkeypatch.setattr(datasets, "load", lambda *a: pytest.fail("the data loaded for a finished workdir"))
    with pytest.raises(SystemExit) as e:
        train.main(["--workdir", str(tmp_path / "done")])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and err.count("\n") == 1 and "holds a finished run" in err
    assert "Loaded" not in out and (tmp_path / "done" / "metrics.json").read_text() == "{}"


def test_step_cap_and_seed_preset_budget(tmp_path):
    metrics = run(tmp_path, epochs=5, steps=20)  # 480 training images / 32 = 15 steps per epoch.
    assert metrics["steps"] == 20 and metrics["epochs"] == 2
    # The seed's TF1 loop, run here: `step = 1; while step * batch_size < training_iters: ...; step += 1`.
    step, seed_steps = 1, 0
    while step * 128 < 100_000:
        seed_steps, step = seed_steps + 1, step + 1
    seed = resolve("seed")
    assert (seed.steps, seed.batch_size, seed.lr_schedule, seed.dropout) == (seed_steps, 128, "constant", 0.0)
    assert resolve("seed", overrides={"epochs": 3}).steps is None  # --epochs replaces the seed's step budget.
    # The seed preset itself on tiny data: its 2 epochs of 5 steps (550 training images after 50 held out, batch
    # 128) come before its 781-step cap; a smaller cap given as a flag ends the run mid-epoch.
    capped = train.train_and_evaluate(resolve("seed", overrides={"units": 8, "steps": 6}), tmp_path / "seed",
                                      arrays=synthetic_arrays())
    assert (capped["steps"], capped["epochs"], capped["preset"]) == (6, 2, "seed")
    whole = train.train_and_evaluate(resolve("seed", overrides={"units": 8}), tmp_path / "seed2",
                                     arrays=synthetic_arrays())
    assert (whole["steps"], whole["epochs"], whole["validation_examples"]) == (10, 2, round(600 * 5_000 / 60_000))


def test_tensorboard_logs_hold_the_named_summaries(tmp_path):
    run(tmp_path, epochs=2)
    tb = tmp_path / "run" / "tensorboard"

    def tags(sub):
        found = {}
        for f in (tb / sub).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(f)):
                for v in event.summary.value:
                    found.setdefault(v.tag, []).append(v.metadata.plugin_data.plugin_name)
        return found

    train_tags, val_tags, root_tags, test_tags = tags("train"), tags("validation"), tags("."), tags("test")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(train_tags)
    assert {"epoch_loss", "epoch_accuracy"} <= set(val_tags)
    assert any(t.endswith("/histogram") for t in train_tags)  # Weight histograms.
    assert train_tags["keras"] == ["graph_keras_model"]  # The conceptual (layer) graph.
    graphs = [e.graph_def for f in tb.glob("events.*") for e in tf.compat.v1.train.summary_iterator(str(f))
              if e.graph_def]
    op_types = {node.op for node in tf.compat.v1.GraphDef.FromString(graphs[0]).node}
    assert "MatMul" in op_types  # The op graph of the forward pass.
    assert "hparams" in {p for plugins in root_tags.values() for p in plugins}
    assert "confusion_matrix" in test_tags and test_tags["confusion_matrix"] == ["images"]
    assert "test_accuracy" in root_tags


def test_same_seed_same_metrics(tmp_path):
    a, b = run(tmp_path, "a", dropout=0.2, layers=2), run(tmp_path, "b", dropout=0.2, layers=2)
    assert (a["test_accuracy"], a["test_loss"]) == (b["test_accuracy"], b["test_loss"])
    c = run(tmp_path, "c", dropout=0.2, layers=2, seed=1)
    assert c["test_loss"] != a["test_loss"]


class Interrupt(keras.callbacks.Callback):
    """Simulates a kill after `epochs` finished epochs (after the backup of that epoch was written)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.parametrize("steps", [None, 58])  # 58: a budget that ends 2 steps into the 4th epoch of 15 steps.
def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(tmp_path, capsys, steps):
    straight = run(tmp_path, "straight", epochs=4, steps=steps)
    assert straight["steps"] == (steps or 60)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", epochs=4, steps=steps, callbacks=[Interrupt(2)])
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    capsys.readouterr()
    resumed = run(tmp_path, "resumed", epochs=4, steps=steps)
    assert "Resuming from epoch 2" in capsys.readouterr().out
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs"] == 4 and resumed["steps"] == straight["steps"]
    # Per-epoch seeded shuffling + restored optimizer state: the resumed run is the uninterrupted run.
    a = keras.saving.load_model(tmp_path / "straight" / "model.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "resumed" / "model.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert resumed["test_loss"] == pytest.approx(straight["test_loss"], abs=1e-6)


def test_resume_with_other_config_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, epochs=3, callbacks=[Interrupt(1)])
    with pytest.raises(train.RunError, match=r"another config \(units: 16 -> 32\)"):
        run(tmp_path, epochs=3, units=32)


class PoisonWeights(keras.callbacks.Callback):
    """Makes the next loss NaN, as a diverging run would, by writing NaN into the output layer once 4 optimizer
    steps have run (at the end of the execution holding step 4)."""

    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations.numpy() >= 4 and not getattr(self, "done", False):
            self.done = True
            kernel = self.model.get_layer("logits").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


# 15 steps per epoch: 10 per execution runs executions of 10 and 5 steps; 7 runs as 5 when --steps ends mid-epoch.
@pytest.mark.parametrize("per_call, steps, where", [(1, None, "at step 5"), (10, None, "in steps 11-15"),
                                                    (7, 40, "in steps 6-10")])
def test_nan_loss_stops_with_a_clear_message(tmp_path, capsys, per_call, steps, where):
    with pytest.raises(train.RunError, match=rf"loss became NaN {where}; lower --lr \(now 0.01\)") as e:
        run(tmp_path, epochs=3, steps=steps, callbacks=[PoisonWeights()], steps_per_execution=per_call)
    assert "\n" not in str(e.value)
    # In epoch 1 no epoch had finished: the message must not point at a model that holds the NaN weights.
    assert "no epoch finished with a finite loss, so no model was saved" in str(e.value)
    assert not (tmp_path / "run" / "model.keras").exists()
    assert "Epoch 2/3" not in capsys.readouterr().out  # It stopped at once, not at the end of the run.
    assert not (tmp_path / "run" / "metrics.json").exists()


class PoisonLater(PoisonWeights):
    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations.numpy() >= 20:  # Epoch 2 of 15 steps each.
            super().on_train_batch_end(batch)


def test_nan_after_a_good_epoch_names_the_saved_best_model(tmp_path):
    with pytest.raises(train.RunError, match=r"the best model so far \(epoch 1\) is in .*model.keras") as e:
        run(tmp_path, epochs=3, callbacks=[PoisonLater()])
    weights = keras.saving.load_model(tmp_path / "run" / "model.keras").get_weights()
    assert all(np.isfinite(w).all() for w in weights), str(e.value)


class KillAtStep(keras.callbacks.Callback):
    """Stops the run at a known optimizer step, in the middle of an epoch (no backup of that epoch exists)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:  # The first execution ending there or later.
            raise KeyboardInterrupt


# The default preset's randomness on tiny data: dropout between layers and on the output, flips, smoothing, cosine.
DEFAULT_LIKE = dict(layers=2, dropout=0.25, augment="hflip", label_smoothing=0.1, lr_schedule="cosine", lr=5e-3)


def test_killed_mid_epoch_and_resumed_ends_bit_identical_to_an_uninterrupted_run(tmp_path, capsys):
    straight = run(tmp_path, "straight", **DEFAULT_LIKE)  # 3 epochs of 15 steps.
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", callbacks=[KillAtStep(22)], **DEFAULT_LIKE)  # Mid epoch 2.
    capsys.readouterr()
    resumed = run(tmp_path, "resumed", **DEFAULT_LIKE)
    assert "Resuming from epoch 1" in capsys.readouterr().out and resumed["resumed_from_epoch"] == 1
    # The final weights, not the best model (which may predate the kill), and bit for bit.
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    assert resumed["history"] == straight["history"] and resumed["epochs"] == 3
    assert resumed["best_epoch"] == straight["best_epoch"] and resumed["test_loss"] == straight["test_loss"]
    assert len(resumed["epoch_seconds"]) == 3  # Epoch 1's time survived the restart.


@pytest.mark.parametrize("requested, steps_per_epoch, expected",
                         [(10, 430, 10), (10, 422, 2), (10, 15, 5), (10, 7, 7), (4, 12, 4), (1, 430, 1), (10, 11, 1)])
def test_execution_steps_is_the_largest_divisor_of_the_epoch_up_to_the_request(requested, steps_per_epoch, expected):
    assert train.execution_steps(requested, steps_per_epoch) == expected


def test_steps_per_execution_changes_speed_not_bits(tmp_path, capsys):
    # 15 steps per epoch: 7 per execution runs as 5, and the budget of 38 steps ends 3 steps into an execution.
    one = run(tmp_path, "one", steps=38, steps_per_execution=1, **DEFAULT_LIKE)
    capsys.readouterr()
    five = run(tmp_path, "five", steps=38, steps_per_execution=7, **DEFAULT_LIKE)
    assert ("--steps-per-execution 7 runs as 5: it must divide the 15 steps of an epoch when --steps 38 ends the run "
            "mid-epoch") in capsys.readouterr().out
    assert (one["steps_per_execution"], five["steps_per_execution"]) == (1, 5)
    assert one["steps"] == five["steps"] == 38  # Not 40: the stream ends at the budget.
    assert five["weights_sha256"] == one["weights_sha256"] and five["history"] == one["history"]
    assert five["train_samples_per_second"] >= 38 * 32 / five["train_seconds"]  # Steady state >= the average.


def test_whole_epochs_run_any_steps_per_execution_with_the_same_bits(tmp_path, capsys):
    # 15 steps per epoch, 7 per execution: executions of 7, 7 and 1 in each epoch (pipeline.training_epochs).
    constant = {**DEFAULT_LIKE, "lr_schedule": "constant"}  # The same rate at every step whatever the budget.
    one = run(tmp_path, "one", epochs=2, steps_per_execution=1, **constant)
    seven = run(tmp_path, "seven", epochs=2, steps_per_execution=7, **constant)
    assert "runs as" not in capsys.readouterr().out
    assert (one["steps_per_execution"], seven["steps_per_execution"]) == (1, 7) and seven["steps"] == 30
    assert seven["weights_sha256"] == one["weights_sha256"] and seven["history"] == one["history"]
    # A budget ending mid-epoch reads the endless stream instead: its first two epochs are the same, bit for bit.
    stream = run(tmp_path, "stream", epochs=3, steps=44, steps_per_execution=1, **constant)
    assert stream["steps"] == 44 and {k: v[:2] for k, v in stream["history"].items()} == one["history"]


def test_a_run_resumes_under_another_steps_per_execution(tmp_path, capsys):
    straight = run(tmp_path, "straight", steps_per_execution=1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "run", callbacks=[KillAtStep(20)], steps_per_execution=1)  # Mid epoch 2.
    resumed = run(tmp_path, "run", steps_per_execution=4)  # Executions of 4, 4, 4 and 3 steps in each epoch.
    assert "Resuming from epoch 1" in capsys.readouterr().out and resumed["steps"] == 45
    assert resumed["steps_per_execution"] == 4 and resumed["weights_sha256"] == straight["weights_sha256"]


def test_metrics_record_the_strategy_that_ran_epoch_times_and_the_schedule_per_epoch(tmp_path):
    metrics = run(tmp_path, epochs=3, steps=40, lr_schedule="cosine")  # 15 steps per epoch, capped at 40.
    assert metrics["strategy"] == type(tf.distribute.get_strategy()).__name__  # No public name: the class's.
    assert metrics["strategy_requested"] == "auto"
    assert len(metrics["epoch_seconds"]) == 3 and all(t > 0 for t in metrics["epoch_seconds"])
    assert all(len(v) == 3 for v in metrics["history"].values())
    # The rate at each epoch's end is the cosine over the whole run's 40 steps, at steps 15, 30 and 40.
    expected = [1e-2 * 0.5 * (1 + np.cos(np.pi * s / 40)) for s in (15, 30, 40)]
    np.testing.assert_allclose(metrics["history"]["learning_rate"], expected, atol=1e-6)


def test_output_off_a_terminal_is_one_line_per_epoch(tmp_path, capsys):
    run(tmp_path, epochs=3)
    out = capsys.readouterr().out  # pytest's capture is not a terminal, as a log file or CI is not.
    assert "\r" not in out and "\x08" not in out
    progress = [line for line in out.splitlines() if re.match(r"\s*\d+/\d+ ", line)]
    assert len(progress) == 3 and all(line.lstrip().startswith("15/15") for line in progress), out


def test_confusion_matrix_is_labelled_with_the_datasets_class_names(tmp_path, monkeypatch):
    from tf_rnn import datasets, summaries

    seen = []
    monkeypatch.setattr(summaries, "write_test_summaries", lambda logdir, m, spec, step: seen.append(spec.class_names))
    run(tmp_path, epochs=1)
    assert seen == [datasets.image_spec("mnist").class_names]
    fashion = datasets.image_spec("fashion_mnist").class_names
    figure = summaries.confusion_figure(np.eye(10, dtype=int), fashion, "t")
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == list(fashion)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == labels
