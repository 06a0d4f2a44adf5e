"""tf_rnn.datasets: the registry, the adding and copy generators, a user's .npz, the sequence views, and each
task through train → export → predict on tiny data."""

import json
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import synthetic_arrays
from tf_rnn import datasets, export, layers, pipeline, predict, tasks, train
from tf_rnn.config import resolve
from tf_rnn.arrays import Arrays

TINY = dict(units=16, layers=1, batch_size=32, lr=1e-2, dropout=0.0, epochs=2, validation_split=0.2)


def generated(kind: str, seq_len: int, n_train=256, n_test=64, seed=0) -> Arrays:
    make = datasets.adding_arrays if kind == "adding" else datasets.copy_arrays
    rng = np.random.default_rng(seed)
    (x_train, y_train), (x_test, y_test) = make(n_train, seq_len, rng), make(n_test, seq_len, rng)
    return Arrays(x_train, y_train, x_test, y_test, source=f"tiny {kind}")


def fit(tmp_path, name, arrays, **overrides):
    config = resolve(overrides={**TINY, **overrides})
    metrics = train.train_and_evaluate(config, tmp_path / name, arrays=arrays)
    return config, metrics, keras.saving.load_model(tmp_path / name / "model.keras")


# --- generators ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [2, 3, 17, 100])
def test_adding_marks_one_step_in_each_half_and_the_target_is_their_sum(seq_len):
    x, y = datasets.adding_arrays(500, seq_len, np.random.default_rng(3))
    assert x.shape == (500, seq_len, 2) and y.shape == (500, 1) and x.dtype == y.dtype == np.float32
    marker = x[..., 1]
    assert set(np.unique(marker)) <= {0.0, 1.0} and (marker.sum(1) == 2).all()
    half = seq_len // 2
    assert (marker[:, :half].sum(1) == 1).all() and (marker[:, half:].sum(1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * marker).sum(1), rtol=1e-6)
    assert 0 <= x[..., 0].min() and x[..., 0].max() < 1
    # Each example draws its own two steps (where a half has room for more than one).
    first, second = marker[:, :half].argmax(1), marker[:, half:].argmax(1)
    assert len(np.unique(first)) == half and len(np.unique(second)) == seq_len - half


@pytest.mark.parametrize("gap", [1, 5, 100])
def test_copy_sequence_is_symbols_blanks_delimiter_blanks_and_labels_recall_the_symbols(gap):
    x, y = datasets.copy_arrays(300, gap, np.random.default_rng(4))
    assert x.shape == (300, gap + 20, 10) and y.shape == (300, 10) and y.dtype == np.int64
    assert (x.sum(-1) == 1).all()  # One-hot.
    symbol = x.argmax(-1)
    assert x.dtype == np.float32 and set(np.unique(symbol[:, :10])) == set(range(1, 9))  # Every data symbol occurs.
    np.testing.assert_array_equal(y, symbol[:, :10] - 1)
    after = symbol[:, 10:]
    assert (after[:, gap - 1] == 9).all()  # The delimiter: T steps after the symbols end, the recall begins.
    assert (np.delete(after, gap - 1, axis=1) == 0).all()  # Everything else is blank.


def test_generated_test_set_depends_only_on_seed_and_length():
    a = datasets.load(resolve(overrides=dict(dataset="adding", seq_len=10, seed=1, units=8)))[0]
    b = datasets.load(resolve(overrides=dict(dataset="adding", seq_len=10, seed=1, units=64, lr=0.1)))[0]
    c = datasets.load(resolve(overrides=dict(dataset="adding", seq_len=10, seed=2)))[0]
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test) and not np.array_equal(a.x_train[:100], a.x_test[:100])
    assert len(a.x_train) == datasets.GENERATED_TRAIN and len(a.x_test) == datasets.GENERATED_TEST


# --- registry and config -------------------------------------------------------------------------------------------


def test_specs_without_data_say_what_the_generated_datasets_are():
    adding = datasets.get("adding").spec(resolve(overrides=dict(dataset="adding")), None)
    assert (adding.name, adding.input_shape, adding.task) == ("adding", (datasets.DEFAULT_SEQ_LEN, 2), "regression")
    # The sum of two U[0, 1]: measured on a large sample, not restated from the code's formula.
    _, y = datasets.adding_arrays(200_000, 10, np.random.default_rng(0))
    assert adding.target_mean[0] == pytest.approx(float(y.mean()), abs=0.005)
    assert adding.target_std[0] == pytest.approx(float(y.std()), rel=0.005)
    copy = datasets.get("copy").spec(resolve(overrides=dict(dataset="copy", seq_len=7)), None)
    assert (copy.name, copy.input_shape, copy.task, copy.output_steps) == ("copy", (27, 10), "per_step", 10)
    assert copy.class_names == ("1", "2", "3", "4", "5", "6", "7", "8")


def test_regression_statistics_come_from_the_training_targets_and_a_constant_target_is_not_scaled():
    y = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    arrays = Arrays(np.zeros((3, 4, 1), np.float32), y, np.zeros((1, 4, 1), np.float32), y[:1], source="t")
    spec = datasets.get("t.npz").spec(resolve(overrides=dict(dataset="t.npz")), arrays)
    assert spec.target_mean == (2.0, 5.0) and spec.target_std == (pytest.approx(np.sqrt(2 / 3)), 1.0)


def test_image_specs_of_older_runs_and_unknown_datasets():
    assert datasets.image_spec("fashion_mnist") == datasets.REGISTRY["fashion_mnist"].spec(None)
    unknown = datasets.image_spec(None)
    assert (unknown.name, unknown.input_shape, unknown.task, unknown.image, unknown.class_names) == \
        ("images", (28, 28), "classification", True, ())
    assert datasets.image_spec("my_digits").name == "my_digits"


def test_an_npz_names_its_classes_and_its_source_and_bad_names_are_one_line(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4, 2)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])
    path = tmp_path / "named.npz"
    datasets.save_npz(path, Arrays(x, y, x, y), class_names=["cat", "dog", "eel"])
    config = resolve(overrides=dict(dataset=str(path)))
    arrays, spec = datasets.load(config)
    assert spec.class_names == ("cat", "dog", "eel") and arrays.source == str(path)
    assert arrays.class_names == ("cat", "dog", "eel") and "class_names" not in arrays._fields[:4]
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=y, x_test=x, y_test=y, class_names=np.array([[1, 2, 3]]))
    with pytest.raises(datasets.DataError) as e:
        datasets.load(resolve(overrides=dict(dataset=str(tmp_path / "bad.npz"))))
    assert str(e.value) == f"{tmp_path / 'bad.npz'}: class_names is <int64>[1, 3]; expected a 1-D array of strings"
    np.savez(tmp_path / "bad2.npz", x_train=x, y_train=y, x_test=x, y_test=y, class_names=np.array([["a", "b", "c"]]))
    with pytest.raises(datasets.DataError, match=r"class_names is <<U1>\[1, 3\]; expected a 1-D array of strings"):
        datasets.load(resolve(overrides=dict(dataset=str(tmp_path / "bad2.npz"))))
    np.savez(tmp_path / "part.npz", x_train=x, y_train=y)
    with pytest.raises(datasets.DataError) as e:
        datasets.load(resolve(overrides=dict(dataset=str(tmp_path / "part.npz"))))
    assert str(e.value) == (f"{tmp_path / 'part.npz'}: has no x_test, y_test (it holds x_train, y_train); save the "
                            "arrays as x_train, y_train, x_test, y_test (class_names optional)")


def test_load_images_is_for_image_datasets_only():
    with pytest.raises(datasets.DataError, match="'adding' is not an image dataset of files; choose one of: mnist, "
                                                 "fashion_mnist$"):
        datasets.load_images("adding")


def test_every_generated_entry_loads_arrays_that_its_spec_describes():
    for name, entry in datasets.REGISTRY.items():
        if name in datasets.IMAGE_DATASETS:
            continue
        config = resolve(overrides=dict(dataset=name, seq_len=12))
        arrays, spec = datasets.load(config)
        assert arrays.x_train.shape[1:] == spec.input_shape and spec == entry.spec(config, arrays)


def test_memory_tasks_get_their_recipe_under_the_flags():
    config = resolve(overrides=dict(dataset="adding"))
    assert (config.layers, config.dropout, config.clipnorm, config.lr_schedule, config.early_stopping_patience) \
        == (1, 0.0, 1.0, "constant", 0)
    assert resolve(overrides=dict(dataset="copy", layers=2)).layers == 2
    assert resolve(overrides=dict(dataset="mnist")).layers == 2 and resolve().clipnorm is None


@pytest.mark.parametrize("name", sorted(datasets.REGISTRY))
def test_auto_mirrors_clothes_not_digits_and_an_explicit_augment_decides(name):
    """`--augment auto` flips Fashion-MNIST's training images (a shirt mirrored is a shirt) and no other dataset's
    (a mirrored digit is another glyph; sequences are not images); `hflip` and `none` say it themselves."""
    entry = datasets.get(name)
    assert entry.mirrors("auto") is (name == "fashion_mnist")
    assert entry.mirrors("hflip") is True and entry.mirrors("none") is False


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cifar"], r"--dataset 'cifar': choose one of: mnist, fashion_mnist, adding, copy, or a PATH.npz"),
    (["--dataset", "mnist", "--seq-len", "50"], r"--seq-len 50: only for --dataset adding or copy"),
    (["--dataset", "adding", "--seq-len", "1"], r"--seq-len 1: must be >= 2"),
    (["--dataset", "adding", "--sequence", "pixels"], r"--sequence 'pixels': only for image datasets"),
    (["--dataset", "copy", "--augment", "hflip"], r"--augment 'hflip': mirrors images"),
    (["--sequence", "spiral"], r"argument --sequence: invalid choice"),
    (["--clipnorm", "0"], r"--clipnorm 0.0: must be > 0"),
])
def test_bad_dataset_flags_exit_2_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "w").exists()


def test_injected_arrays_are_checked_against_the_dataset(tmp_path):
    bad = generated("adding", 10)._replace(x_test=np.zeros((4, 11, 2), np.float32))
    with pytest.raises(datasets.DataError, match=r"x_test is \[4, 11, 2\]; expected \[N, 10, 2\]"):
        train.train_and_evaluate(resolve(overrides=dict(dataset="adding", seq_len=10)), tmp_path / "w", arrays=bad)
    assert not (tmp_path / "w").exists()


# --- a user's .npz -------------------------------------------------------------------------------------------------


def npz(tmp_path, name="mine.npz", class_names=None, **arrays):
    rng = np.random.default_rng(0)
    base = dict(x_train=rng.normal(size=(96, 7, 3)).astype(np.float32), y_train=rng.integers(0, 3, 96),
                x_test=rng.normal(size=(32, 7, 3)).astype(np.float32), y_test=rng.integers(0, 3, 32))
    base.update(arrays)
    extra = {} if class_names is None else {"class_names": np.array(class_names)}
    np.savez(tmp_path / name, **base, **extra)
    return str(tmp_path / name)


def test_an_npz_spec_is_named_by_its_path_and_numbers_unnamed_classes(tmp_path):
    """What data_spec.json and every export carry for a user's file (mutmut: no fast test read them)."""
    path = npz(tmp_path)  # Labels 0-2, no class_names.
    arrays, spec = datasets.load(resolve(overrides=dict(dataset=path)))
    assert (spec.name, spec.task, spec.class_names) == (path, "classification", ("0", "1", "2"))
    y = np.random.default_rng(1).normal(size=(96, 2))
    path = npz(tmp_path, "targets.npz", y_train=y, y_test=y[:32])
    arrays, spec = datasets.load(resolve(overrides=dict(dataset=path)))
    assert (spec.name, spec.task, spec.target_mean) == (path, "regression", tuple(y.mean(0)))


@pytest.mark.parametrize("change, message", [
    (dict(y_test=None), r"mine.npz: has no y_test \(it holds x_train, y_train, x_test\)"),
    (dict(x_train=np.zeros((96, 7), np.float32)), r"x_train is \[96, 7\]; expected \[N, T, F\]"),
    (dict(x_test=np.zeros((32, 8, 3), np.float32)), r"x_test steps/features \[8, 3\] differ from x_train's \[7, 3\]"),
    (dict(x_train=np.full((96, 7, 3), np.nan, np.float32)), r"x_train has NaN or infinite values \(first at index 0\)"),
    (dict(y_test=np.full(32, 3)), r"y_test: label 3 out of range \[0, 3\)"),
    (dict(y_test=np.full(32, -1)), r"y_test: label -1 out of range"),
    (dict(y_train=np.zeros(95, np.int64)), r"y_train is \[95\]; expected \[96\]"),
    (dict(y_train=np.array(["a"] * 96)), r"y_train is <U1; expected integer labels"),
    (dict(y_train=np.full(96, np.inf), y_test=np.zeros(32)), r"y_train has NaN or infinite values"),
])
def test_a_bad_npz_is_refused_with_one_line(change, message, tmp_path, capsys):
    arrays = {k: v for k, v in change.items() if v is not None}
    path = npz(tmp_path, **arrays)
    if "y_test" in change and change["y_test"] is None:
        with np.load(path) as z:
            np.savez(path, **{k: z[k] for k in z.files if k != "y_test"})
    with pytest.raises(SystemExit) as e:
        train.main(["--dataset", path, "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "w").exists()


def test_a_missing_or_unreadable_npz_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for path, message in [(tmp_path / "none.npz", "no such file"), (tmp_path / "junk.npz", "not a readable .npz")]:
        with pytest.raises(SystemExit) as e:
            train.main(["--dataset", str(path), "--workdir", str(tmp_path / "w")])
        err = capsys.readouterr().err
        assert e.value.code == 1 and message in err and err.count("\n") == 1, err


def test_npz_classification_trains_exports_and_predicts_with_its_class_names(tmp_path, capsys):
    path = npz(tmp_path, class_names=["low", "mid", "high"])
    assert train.main(["--dataset", path, "--workdir", str(tmp_path / "run"), "--epochs", "1", "--units", "8"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "classification" and len(metrics["confusion_matrix"]) == 3
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    with np.load(path) as z:
        x_test, y_test = z["x_test"], z["y_test"]
    expected = model.predict(x_test, verbose=0).argmax(1)
    assert metrics["test_accuracy"] == pytest.approx(float((expected == y_test).mean()))
    np.save(tmp_path / "x.npy", x_test[:5])
    capsys.readouterr()
    assert predict.main([str(tmp_path / "run" / "saved_model"), str(tmp_path / "x.npy")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = ["low", "mid", "high"]
    assert [line.split("\t")[1] for line in lines] == [f"{c} ({names[c]})" for c in expected[:5]]


def test_npz_regression_is_scored_in_the_targets_own_units(tmp_path):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.normal(size=(128, 6, 2)), rng.normal(size=(40, 6, 2))
    target = lambda x: 1000.0 + 50.0 * x[:, :, 0].sum(1)  # noqa: E731 - far from zero mean, unit variance
    path = npz(tmp_path, x_train=x_train, y_train=target(x_train), x_test=x_test, y_test=target(x_test))
    config = resolve(overrides={**TINY, "dataset": path, "epochs": 3})
    metrics = train.train_and_evaluate(config, tmp_path / "reg")
    model = keras.saving.load_model(tmp_path / "reg" / "model.keras")
    y_train, y_test = target(x_train), target(x_test)
    head = model.get_layer("predictions")
    assert head.mean == pytest.approx([y_train.mean()]) and head.std == pytest.approx([y_train.std()])
    predicted = model.predict(x_test.astype(np.float32), verbose=0)[:, 0]
    assert metrics["test_mse"] == pytest.approx(float(((predicted - y_test) ** 2).mean()), rel=1e-4)
    assert metrics["test_mae"] == pytest.approx(float(np.abs(predicted - y_test).mean()), rel=1e-4)
    assert metrics["baseline_mse"] == pytest.approx(float(((y_train.mean() - y_test) ** 2).mean()), rel=1e-6)
    assert metrics["test_mse"] < metrics["baseline_mse"]  # Learned something, in original units (~2,500 MSE scale).


# --- sequence views ------------------------------------------------------------------------------------------------


def test_permutation_is_the_documented_one():
    np.testing.assert_array_equal(layers.pixel_permutation(784), np.random.default_rng(1997).permutation(784))


def test_permuted_model_reads_the_permuted_pixels_of_the_image_it_is_given():
    images = np.random.default_rng(0).uniform(size=(4, 28, 28)).astype(np.float32)
    pixels = keras.layers.Input((28, 28))
    view = layers.SequenceView("permuted")
    out = view(pixels)
    seq = keras.Model(pixels, out).predict(images, verbose=0)
    expected = images.reshape(4, 784)[:, np.random.default_rng(1997).permutation(784)][..., None]
    np.testing.assert_array_equal(seq, expected)
    np.testing.assert_array_equal(layers.SequenceView("pixels")(images), images.reshape(4, 784, 1))


@pytest.mark.parametrize("view", ["pixels", "permuted"])
def test_image_views_train_export_and_serve_28x28_images(view, tmp_path):
    arrays = synthetic_arrays(64, 16)
    config, metrics, model = fit(tmp_path, view, arrays, sequence=view, epochs=1, batch_size=16)
    assert model.get_layer("rnn").input.shape[1:] == (784, 1) and model.input_shape[1:] == (28, 28)
    serve = tf.saved_model.load(str(tmp_path / view / "saved_model"))
    images = arrays.x_test[:3]
    expected = model.predict(images.astype(np.float32) / 255, verbose=0)
    got_uint8 = serve.signatures["serve_uint8"](images=tf.constant(images))["logits"].numpy()
    got_float = serve.signatures["serving_default"](images=tf.constant(images / 255, tf.float32))["logits"].numpy()
    np.testing.assert_allclose(got_uint8, expected, atol=1e-5)
    np.testing.assert_allclose(got_float, expected, atol=1e-5)


# --- the adding and copy problems through train → export → predict ----------------------------------------------------


def test_adding_run_is_a_regression_on_val_loss_with_its_baseline(tmp_path, capsys):
    arrays = generated("adding", 12)
    config, metrics, model = fit(tmp_path, "adding", arrays, dataset="adding", seq_len=12, epochs=3)
    history = metrics["history"]["val_loss"]
    assert metrics["task"] == "regression" and metrics["best_epoch"] == 1 + int(np.argmin(history))
    assert metrics["best_validation_loss"] == pytest.approx(min(history), rel=1e-5)
    predicted = model.predict(arrays.x_test, verbose=0)
    assert metrics["test_mse"] == pytest.approx(float(((predicted - arrays.y_test) ** 2).mean()), rel=1e-4)
    baseline = float(((arrays.y_train.mean() - arrays.y_test) ** 2).mean())
    assert metrics["baseline_mse"] == pytest.approx(baseline, rel=1e-5)
    # TensorBoard's HParams dashboard compares regression runs on their own metrics.
    header = b"".join(p.read_bytes() for p in (tmp_path / "adding" / "tensorboard").glob("events.out.tfevents.*"))
    assert b"epoch_mae" in header and b"test_mse" in header and b"epoch_accuracy" not in header
    spec = json.loads((tmp_path / "adding" / "data_spec.json").read_text())
    assert spec["task"] == "regression" and spec["input_shape"] == [12, 2]
    # Export from the CLI (spec read from the run) and predict from a .npy: the model's numbers, one line each.
    capsys.readouterr()
    assert export.main([str(tmp_path / "adding" / "model.keras"), "--out", str(tmp_path / "sm")]) == 0
    assert "serving_default <float32>[batch, 12, 2] -> predictions [batch, 1]" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", arrays.x_test[:4])
    assert predict.main([str(tmp_path / "sm"), str(tmp_path / "x.npy")]) == 0
    got = [float(line.split("\t")[1]) for line in capsys.readouterr().out.strip().splitlines()]
    np.testing.assert_allclose(got, predicted[:4, 0], atol=1e-4)
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
        serve(sequences=tf.constant(arrays.x_test[:2, :11]))  # Wrong length: refused, not answered.
    bad = arrays.x_test[:2].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        serve(sequences=tf.constant(bad))


def test_copy_run_scores_only_the_recalled_steps(tmp_path, capsys):
    arrays = generated("copy", 5)
    config, metrics, model = fit(tmp_path, "copy", arrays, dataset="copy", seq_len=5)
    logits = model.predict(arrays.x_test, verbose=0)
    assert logits.shape == (64, 10, 8)
    assert metrics["test_accuracy"] == pytest.approx(float((logits.argmax(-1) == arrays.y_test).mean()))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, arrays.y_test[..., None], -1).mean()
    assert metrics["test_loss"] == pytest.approx(float(ce), rel=1e-4)
    assert metrics["baseline_loss"] == pytest.approx(math.log(8))
    serve = tf.saved_model.load(str(tmp_path / "copy" / "saved_model")).signatures["serving_default"]
    out = serve(sequences=tf.constant(arrays.x_test[:3]))
    assert out["classes"].shape == (3, 10) and out["probabilities"].shape == (3, 10, 8)
    np.savez(tmp_path / "x.npz", x_test=arrays.x_test[:2])
    capsys.readouterr()
    assert predict.main([str(tmp_path / "copy" / "saved_model"), str(tmp_path / "x.npz")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == [
        " ".join(str(c + 1) for c in row) for row in logits[:2].argmax(-1)]  # Class names are the symbols 1-8.


def test_predict_refuses_sequences_of_another_shape(tmp_path, capsys):
    arrays = generated("copy", 5)
    fit(tmp_path, "copy", arrays, dataset="copy", seq_len=5, epochs=1)
    np.save(tmp_path / "x.npy", np.zeros((2, 24, 10), np.float32))
    with pytest.raises(SystemExit) as e:
        predict.main([str(tmp_path / "copy" / "saved_model"), str(tmp_path / "x.npy")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "shape [2, 24, 10]; expected [25, 10] or [N, 25, 10] (copy)" in err


def test_one_registry_entry_is_all_a_new_dataset_needs(tmp_path, monkeypatch, capsys):
    """A toy task (is the sum of a sequence positive?) registered as one entry trains, exports and predicts."""
    def load(config):
        rng = np.random.default_rng(config.seed)
        x = rng.normal(size=(200, 9, 1)).astype(np.float32)
        return Arrays(x[:160], (x[:160].sum((1, 2)) > 0).astype(np.int64), x[160:],
                      (x[160:].sum((1, 2)) > 0).astype(np.int64), source="toy")

    def spec(config, arrays=None):
        return datasets.DataSpec("sign", (9, 1), datasets.CLASSIFICATION, class_names=("neg", "pos"))

    monkeypatch.setitem(datasets.REGISTRY, "sign", datasets.DatasetEntry(load, spec, "toy"))
    assert train.main(["--dataset", "sign", "--workdir", str(tmp_path / "run"), "--epochs", "1", "--units", "4",
                       "--layers", "1"]) == 0
    np.save(tmp_path / "x.npy", load(resolve(overrides={"dataset": "sign"})).x_test[:2])
    capsys.readouterr()
    assert predict.main([str(tmp_path / "run" / "saved_model"), str(tmp_path / "x.npy")]) == 0
    assert all(re.search(r"\t[01] \((neg|pos)\)\tp=", line) for line in capsys.readouterr().out.splitlines())


def test_custom_loop_logs_mae_for_regression(tmp_path):
    from tf_rnn.distribute import fit_custom_loop
    from tf_rnn.models import build_model

    config = resolve(overrides=dict(dataset="adding", seq_len=6, units=4))
    arrays = generated("adding", 6, n_train=64, n_test=32)
    model = build_model(config)
    splits = pipeline.make_splits(arrays, 16, 0.25, 0)
    history = fit_custom_loop(model, tf.distribute.get_strategy(), splits.train, splits.validation,
                              task=tasks.REGISTRY["regression"], epochs=1, steps_per_epoch=3, callbacks=[], verbose=0)
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(history.history)
    x_val, y_val = (np.concatenate([np.asarray(t) for t, _ in splits.validation]),
                    np.concatenate([np.asarray(t) for _, t in splits.validation]))
    predicted = model.predict(x_val, verbose=0)
    assert history.history["val_mae"][0] == pytest.approx(float(np.abs(predicted - y_val).mean()), rel=1e-4)
    assert history.history["val_loss"][0] == pytest.approx(float(((predicted - y_val) ** 2).mean()), rel=1e-4)


def test_heads_pick_the_last_steps_and_map_back_to_target_units():
    x = np.arange(2 * 7 * 3, dtype=np.float32).reshape(2, 7, 3)
    np.testing.assert_array_equal(layers.LastSteps(2)(x), x[:, -2:])
    z = np.array([[0.0, 1.0], [-2.0, 0.5]], np.float32)
    np.testing.assert_allclose(layers.Denormalize([10.0, -1.0], [2.0, 4.0])(z), [[10.0, 3.0], [6.0, 1.0]])
    for layer in (layers.LastSteps(2), layers.Denormalize([1.0], [2.0]), layers.SequenceView("permuted", seed=5)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_tune_searches_a_regression_on_validation_loss(tmp_path):
    from tf_rnn import tune

    settings = tune.TuneConfig(tuner="random", max_trials=2, epochs=1, final_epochs=1, dataset="adding", seq_len=8,
                               validation_split=0.25)
    metrics = tune.tune_and_evaluate(settings, tmp_path / "s", arrays=generated("adding", 8, n_train=96))
    import csv

    with (tmp_path / "s" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["val_loss"]) for r in rows]
    assert len(rows) == 2 and "val_accuracy" not in rows[0] and losses == sorted(losses)  # Best (lowest) first.
    assert "test_mse" in metrics and metrics["best_config"]["dataset"] == "adding"


def _refusal(tmp_path, **arrays) -> str:
    """The one line `datasets.load` gives for an .npz holding `arrays` (x/y for train and test by default)."""
    x, y = np.zeros((4, 3, 2), np.float32), np.array([0, 1, 0, 1])
    path = tmp_path / "d.npz"
    np.savez(path, **{"x_train": x, "y_train": y, "x_test": x, "y_test": y, **arrays})
    with pytest.raises(datasets.DataError) as e:
        datasets.load(resolve(overrides=dict(dataset=str(path))))
    assert "\n" not in str(e.value)
    return str(e.value).replace(str(path), "F")


def test_every_npz_refusal_word_for_word(tmp_path):
    """What each refusal says is what a user reads: the array, what it is, what was expected, the fix."""
    x = np.zeros((4, 3, 2), np.float32)
    assert _refusal(tmp_path, x_train=np.zeros((4, 6))) == \
        "F: x_train is [4, 6]; expected [N, T, F] with N, T, F >= 1 (a sequence of T steps of F features per example)"
    assert _refusal(tmp_path, x_test=np.zeros((4, 5, 2))) == \
        "F: x_test steps/features [5, 2] differ from x_train's [3, 2]"
    assert _refusal(tmp_path, class_names=np.array(["only"])) == \
        "F: label 1 has no class name (1 name given); give one name per class"
    assert _refusal(tmp_path, y_train=np.zeros((4, 2, 2))) == "F: y_train is [4, 2, 2]; expected [N] or [N, K] float targets"
    assert _refusal(tmp_path, y_train=np.array(["a", "b", "a", "b"])) == \
        "F: y_train is <U1; expected integer labels (classification) or floats (regression)"
    assert _refusal(tmp_path, x_train=np.zeros((4, 3, 2), bool)) == \
        "F: x_train is bool; expected numbers (float32 is what the model takes)"
    bad = x.copy()
    bad[2, 1, 0] = np.nan
    assert _refusal(tmp_path, x_test=bad) == \
        "F: x_test has NaN or infinite values (first at index 2); clean them first"
    assert _refusal(tmp_path, y_test=np.array([0, 1, 2, 0])) == \
        "F: y_test: label 2 out of range [0, 2); labels must be 0..classes-1"
    with pytest.raises(datasets.DataError) as e:
        datasets.load(resolve(overrides=dict(dataset=str(tmp_path / "none.npz"))))
    assert str(e.value) == (f"--dataset {tmp_path / 'none.npz'}: no such file; pass an .npz holding x_train, "
                            "y_train, x_test, y_test")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(datasets.DataError) as e:
        datasets.load(resolve(overrides=dict(dataset=str(tmp_path / "junk.npz"))))
    assert str(e.value).startswith(f"{tmp_path / 'junk.npz'}: not a readable .npz (") and \
        str(e.value).endswith("); write it with numpy.savez")


def test_arrays_of_another_shape_than_the_datasets_are_refused_word_for_word():
    config = resolve(overrides=dict(dataset="adding", seq_len=5))
    x, y = datasets.adding_arrays(4, 5, np.random.default_rng(0))
    with pytest.raises(datasets.DataError) as e:
        datasets.validate(config, Arrays(x[:, :4], y, x, y), "arrays=")
    assert str(e.value) == "arrays=: x_train is [4, 4, 2]; expected [N, 5, 2]"
    with pytest.raises(datasets.DataError, match=r"^--dataset x\.npz: the task of a user's file is known only once"):
        datasets.get("x.npz").spec(resolve(overrides=dict(dataset="x.npz")), None)
