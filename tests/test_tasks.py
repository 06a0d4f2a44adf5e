"""tf_rnn.tasks and tf_rnn.workdir without training: each task's evaluation, summary, outputs and target checks
against numbers computed here another way; a workdir's checks before a run starts or resumes."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tf_rnn import tasks, workdir
from tf_rnn.arrays import DataError
from tf_rnn.cli import RunError
from tf_rnn.config import resolve
from tf_rnn.datasets import DataSpec

IMAGES = DataSpec("fashion_mnist", (28, 28), "classification", class_names=tuple("abcdefghij"), image=True)
NAMELESS = DataSpec("x.npz", (5, 3), "classification")
COPY = DataSpec("copy", (23, 10), "per_step", class_names=tuple("12345678"), output_steps=3)
ADDING = DataSpec("adding", (9, 2), "regression", target_mean=(1.0, -2.0), target_std=(0.5, 3.0))


def slow_cross_entropy(logits, labels):
    """Mean of -log(softmax) at the label, one example at a time, with math.exp: no shared code with tasks."""
    total = 0.0
    for row, label in zip(logits, labels):
        total += math.log(sum(math.exp(v) for v in row)) - row[label]
    return total / len(labels)


@settings(max_examples=40, deadline=None)
@given(logits=hnp.arrays(np.float64, (7, 4), elements=st.floats(-20, 20)), seed=st.integers(0, 10))
def test_classification_metrics_are_accuracy_cross_entropy_and_a_confusion_matrix(logits, seed):
    labels = np.random.default_rng(seed).integers(0, 4, 7)
    spec = DataSpec("x", (2, 2), "classification", class_names=tuple("wxyz"))
    got = tasks.get("classification").evaluate(logits, labels, spec)
    predicted = logits.argmax(1)
    assert got["test_accuracy"] == pytest.approx(sum(p == l for p, l in zip(predicted, labels)) / 7)
    assert got["test_loss"] == pytest.approx(slow_cross_entropy(logits, labels), rel=1e-9, abs=1e-9)
    cm = [[0] * 4 for _ in range(4)]
    for p, l in zip(predicted, labels):
        cm[l][p] += 1
    assert got["confusion_matrix"] == cm
    assert set(got) == {"test_accuracy", "test_loss", "confusion_matrix"}


def test_extreme_logits_give_finite_losses_and_integer_counts():
    """Logits far beyond exp's range (a confident model): the loss stays finite, the counts stay JSON integers."""
    logits, labels = np.array([[1000.0, 0.0], [0.0, -1000.0], [-800.0, 5.0]]), np.array([0, 1, 1])
    got = tasks.get("classification").evaluate(logits, labels, DataSpec("x", (1, 1), "classification",
                                                                        class_names=("a", "b")))
    assert got["test_loss"] == pytest.approx(1000.0 / 3) and got["test_accuracy"] == pytest.approx(2 / 3)
    assert json.dumps(got["confusion_matrix"]) == "[[1, 0], [1, 1]]"


def test_per_step_metrics_are_over_every_recalled_step_with_the_guessing_baseline():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(5, 3, 8)), rng.integers(0, 8, (5, 3))
    got = tasks.get("per_step").evaluate(logits, labels, COPY)
    flat_logits, flat_labels = logits.reshape(15, 8), labels.reshape(15)
    assert got["test_accuracy"] == pytest.approx(np.mean(flat_logits.argmax(1) == flat_labels))
    assert got["test_loss"] == pytest.approx(slow_cross_entropy(flat_logits, flat_labels))
    assert got["baseline_loss"] == pytest.approx(math.log(8))
    assert np.sum(got["confusion_matrix"]) == 15


def test_regression_metrics_are_in_the_targets_units_with_the_mean_as_baseline():
    outputs = np.array([[1.0, 0.0], [2.0, -4.0], [0.5, 1.0]])
    targets = np.array([[1.5, 0.0], [2.0, -2.0], [0.0, 2.0]])
    got = tasks.get("regression").evaluate(outputs, targets, ADDING)
    errors = [0.5, 0.0, 0.0, 2.0, 0.5, 1.0]
    assert got["test_mse"] == got["test_loss"] == pytest.approx(sum(e * e for e in errors) / 6)
    assert got["test_mae"] == pytest.approx(sum(errors) / 6)
    baseline = [(1.0 - 1.5) ** 2, (-2.0 - 0.0) ** 2, (1.0 - 2.0) ** 2, 0.0, (1.0 - 0.0) ** 2, (-2.0 - 2.0) ** 2]
    assert got["baseline_mse"] == pytest.approx(sum(baseline) / 6)
    assert got["confusion_matrix"] is None


def test_summaries_say_the_tasks_numbers_and_the_count_of_test_sequences():
    classification = {"test_accuracy": 0.90264, "test_loss": 0.27901, "test_examples": 10000}
    assert tasks.get("classification").summary(classification) == \
        "test accuracy 0.9026 (loss 0.2790) on 10000 examples"
    assert tasks.get("per_step").summary({**classification, "baseline_loss": 2.0794415}) == \
        "test accuracy 0.9026 (loss 0.2790) on 10000 examples; guessing: loss 2.0794"
    regression = {"test_mse": 0.01234, "test_mae": 0.0876, "baseline_mse": 0.16666, "test_examples": 64}
    assert tasks.get("regression").summary(regression) == \
        "test MSE 0.0123 (MAE 0.0876; predicting the mean: 0.1667) on 64 examples"


def test_served_outputs_and_predicts_lines_follow_the_task():
    logits = tf.constant([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    out = {k: v.numpy() for k, v in tasks.get("classification").serving_outputs(logits).items()}
    assert out["classes"].tolist() == [1, 0] and out["classes"].dtype == np.int64
    np.testing.assert_allclose(out["probabilities"].sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(out["probabilities"][0], np.exp([0, 2, 1]) / np.exp([0, 2, 1]).sum(), rtol=1e-6)
    np.testing.assert_array_equal(out["logits"], logits.numpy())
    p = out["probabilities"][0][1]
    assert tasks.get("classification").format_output(out, 0, IMAGES) == f"1 (b)\tp={p:.4f}"
    assert tasks.get("classification").format_output(out, 1, NAMELESS).startswith("0\tp=")
    steps = {"classes": np.array([[0, 7, 2]])}
    assert tasks.get("per_step").format_output(steps, 0, COPY) == "1 8 3"
    assert tasks.get("per_step").format_output(steps, 0, DataSpec("s", (4, 1), "per_step", output_steps=3)) == "0 7 2"
    regression = tasks.get("regression").serving_outputs(tf.constant([[1.23456, -2.0]]))
    assert list(regression) == ["predictions"]
    assert tasks.get("regression").format_output({"predictions": np.array([[1.23456, -2.0]])}, 0, ADDING) == \
        "1.2346\t-2.0000"
    assert tasks.get("classification").describe_outputs(IMAGES) == "classes [batch]"
    assert tasks.get("per_step").describe_outputs(COPY) == "classes [batch, 3]"
    assert tasks.get("regression").describe_outputs(ADDING) == "predictions [batch, 2]"


def test_batch_scores_are_per_example_correctness_and_absolute_error():
    scores = tasks.get("classification").batch_scores(tf.constant([1, 0]), tf.constant([[0.0, 2.0], [0.0, 1.0]]))
    assert scores.numpy().tolist() == [1.0, 0.0]
    # [batch 1, steps 2, classes 3]: the class axis is the last one.
    step_logits = tf.constant([[[0.0, 1.0, 0.5], [2.0, 0.0, 3.0]]])
    steps = tasks.get("per_step").batch_scores(tf.constant([[1, 2]]), step_logits)
    assert steps.numpy().tolist() == [[1.0, 1.0]]
    classes = tasks.get("per_step").serving_outputs(step_logits)["classes"].numpy()
    assert classes.tolist() == [[1, 2]]
    errors = tasks.get("regression").batch_scores(tf.constant([[1.0], [-1.0]]), tf.constant([[1.5], [1.0]]))
    assert errors.numpy().tolist() == [[0.5], [2.0]]


@pytest.mark.parametrize("task, y, n, message", [
    ("classification", np.array([0.0, 1.0]), 2, "is float64; expected integer labels in [0, 10)"),
    ("classification", np.array([[0], [1]]), 2, "is [2, 1]; expected [2]"),
    ("classification", np.array([0, 10]), 2, "label 10 out of range [0, 10)"),
    ("classification", np.array([-1, 0]), 2, "label -1 out of range [0, 10)"),
    ("per_step", np.zeros((2, 4), np.int64), 2, "is [2, 4]; expected [2, 3]"),
    ("regression", np.array([1, 2]), 2, "is int64; expected float targets"),
    ("regression", np.zeros((2, 3)), 2, "is [2, 3]; expected [2] or [2, 2]"),
    ("regression", np.array([[0.0, 1.0], [np.inf, 0.0]]), 2, "has NaN or infinite values (first at index 1)"),
])
def test_targets_that_are_not_the_tasks_are_one_line_naming_them(task, y, n, message):
    spec = {"classification": IMAGES, "per_step": COPY, "regression": ADDING}[task]
    with pytest.raises(DataError) as e:
        tasks.get(task).check_targets(y, n, spec, "f.npz: y_train")
    assert str(e.value).startswith("f.npz: y_train") and message in str(e.value) and "\n" not in str(e.value)


def test_evaluate_runs_the_model_traced_once_for_every_batch_and_scores_its_eager_outputs():
    """One trace for any batch size (eagerly, a recurrent layer's time loop runs op by op from Python: 35 s instead
    of 4 for the adding task's test set), and the same numbers the model gives when called eagerly."""
    import keras

    traces = []

    class Counted(keras.layers.Layer):
        def call(self, x):
            traces.append(x.shape[0])  # Python runs here once per trace (and once per eager call).
            return x

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 6, 2)).astype("float32"), rng.integers(0, 3, 10)
    inputs = keras.Input((6, 2))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GRU(4)(Counted()(inputs))))
    traces.clear()
    eager = np.asarray(model(x, training=False)).astype(np.float64)
    assert traces == [10], traces
    traces.clear()
    test_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # Batches of 4, 4 and 2.
    spec = DataSpec("x", (6, 2), "classification", class_names=tuple("abc"))
    got = tasks.evaluate(model, test_ds, spec)
    assert traces == [None], traces
    want = tasks.get("classification").evaluate(eager, y, spec)
    assert got["test_examples"] == 10 and got["test_accuracy"] == want["test_accuracy"]
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-6)


def test_targets_that_are_the_tasks_come_back_in_the_pipelines_dtype():
    labels = tasks.get("classification").check_targets(np.array([0, 9], np.uint8), 2, IMAGES, "y")
    assert labels.dtype == np.int64 and labels.tolist() == [0, 9]
    assert tasks.get("per_step").check_targets(np.zeros((2, 3), np.int32), 2, COPY, "y").dtype == np.int64
    targets = tasks.get("regression").check_targets(np.array([1.0, 2.0]), 2, DataSpec("a", (1, 1), "regression",
                                                                                     target_mean=(0.0,),
                                                                                     target_std=(1.0,)), "y")
    assert targets.dtype == np.float32 and targets.shape == (2, 1)


def test_task_attributes_name_what_the_logs_and_the_best_model_use():
    assert [tasks.get(n).monitor for n in ("classification", "per_step", "regression")] == \
        [("val_accuracy", "max"), ("val_accuracy", "max"), ("val_loss", "min")]
    assert [tasks.get(n).metric for n in ("classification", "per_step", "regression")] == \
        ["accuracy", "accuracy", "mae"]
    assert [tasks.get(n).return_sequences for n in ("classification", "per_step", "regression")] == \
        [False, True, False]


def test_an_unknown_task_is_one_line_and_register_adds_one(monkeypatch):
    with pytest.raises(DataError, match="task 'ranking' is not known to this tf_rnn .*newer version"):
        tasks.get("ranking")

    class Ranking(tasks.Task):
        name = "ranking"

    monkeypatch.setitem(tasks.REGISTRY, "classification", tasks.REGISTRY["classification"])  # Restored after.
    ranking = tasks.register(Ranking())
    try:
        assert tasks.get("ranking") is ranking
    finally:
        del tasks.REGISTRY["ranking"]


def test_the_base_task_names_every_method_a_new_kind_must_write():
    base = tasks.Task()
    for method, args in [("head", (None, None)), ("loss", (None,)), ("compiled_metrics", ()),
                         ("batch_scores", (None, None)), ("check_targets", (None, 0, None, "")),
                         ("evaluate", (None, None, None)), ("summary", ({},)), ("serving_outputs", (None,)),
                         ("describe_outputs", (None,)), ("format_output", ({}, 0, None))]:
        with pytest.raises(NotImplementedError):
            getattr(base, method)(*args)


# --- workdir ---------------------------------------------------------------------------------------------------


def test_a_new_workdir_gets_the_config_and_a_finished_one_is_never_reused(tmp_path):
    config = resolve(overrides={"units": 8})
    w = tmp_path / "runs" / "fashion"  # The README's --workdir runs/fashion in a fresh clone: no runs/ yet.
    workdir.prepare(config, w)
    assert json.loads((w / "config.json").read_text()) == config.to_dict()
    workdir.prepare(config, w)  # An unfinished run of the same config: resumable.
    (w / "metrics.json").write_text("{}")
    with pytest.raises(RunError, match=r"--workdir .*fashion holds a finished run \(metrics.json exists\); choose a "):
        workdir.prepare(config, w)


def test_a_workdir_of_another_config_is_refused_naming_the_fields_but_not_for_speed_or_place(tmp_path):
    workdir.prepare(resolve(overrides={"units": 8, "lr": 0.1}), tmp_path / "w")
    with pytest.raises(RunError) as e:
        workdir.prepare(resolve(overrides={"units": 16, "lr": 0.2}), tmp_path / "w")
    assert "another config (lr: 0.1 -> 0.2, units: 8 -> 16)" in str(e.value)
    same_run = resolve(overrides={"units": 8, "lr": 0.1, "steps_per_execution": 3, "strategy": "default",
                                  "data_dir": "/elsewhere"})
    workdir.prepare(same_run, tmp_path / "w")  # Speed, strategy and data folder do not change the run.
    assert json.loads((tmp_path / "w" / "config.json").read_text())["data_dir"] == "/elsewhere"


def test_a_model_without_a_config_is_not_taken_for_a_run(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.keras").write_text("x")
    with pytest.raises(RunError, match="holds a model.keras but no config.json"):
        workdir.prepare(resolve(), tmp_path / "w")


def test_finished_epochs_come_from_keras_backup_metadata(tmp_path):
    assert workdir.finished_epochs_in_backup(tmp_path) is None
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": -1}))
    assert workdir.finished_epochs_in_backup(tmp_path) == 3


def test_write_json_is_whole_sorted_and_leaves_no_temporary_file(tmp_path):
    workdir.write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_workdir_refusals_word_for_word(tmp_path):
    config = resolve(overrides={"units": 8})
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.json").write_text("{}")
    with pytest.raises(RunError) as e:
        workdir.prepare(config, tmp_path / "done")
    assert str(e.value) == (f"--workdir {tmp_path / 'done'} holds a finished run (metrics.json exists); choose a new "
                            "--workdir (nothing was overwritten)")
    workdir.prepare(config, tmp_path / "w")
    with pytest.raises(RunError) as e:
        workdir.prepare(resolve(overrides={"units": 9}), tmp_path / "w")
    assert str(e.value) == (f"--workdir {tmp_path / 'w'} holds an unfinished run with another config (units: 8 -> 9); "
                            "re-run with the same flags to resume it, or choose a new --workdir")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.keras").write_text("x")
    with pytest.raises(RunError) as e:
        workdir.prepare(config, tmp_path / "m")
    assert str(e.value) == f"--workdir {tmp_path / 'm'} holds a model.keras but no config.json; choose a new --workdir"
