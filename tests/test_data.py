"""tf_rnn.mnist_files and tf_rnn.pipeline: look-up order, verification and every error path, on small IDX files written by the tests."""

import dataclasses
import gzip
import time

import numpy as np
import pytest

from support import idx_bytes, synthetic_arrays, write_idx_dir
from tf_rnn import datasets, mnist_files, pipeline
from tf_rnn.arrays import DataError
from tf_rnn.config import resolve


@pytest.fixture(autouse=True)
def small_counts(monkeypatch):
    # The real files hold 60,000 + 10,000 images; the tests write 600 + 200 and let the count check expect that.
    monkeypatch.setattr(mnist_files, "COUNTS", {"train": 600, "test": 200})


def no_download(spec):
    raise DataError("download failed: network unreachable (test)")


def test_lookup_order_data_dir_env_cache_system_download(isolated_data_env, monkeypatch):
    root = isolated_data_env
    copies = {name: synthetic_arrays(seed=i) for i, name in enumerate(["arg", "env", "cache", "system", "net"])}
    write_idx_dir(root / "arg", copies["arg"])
    write_idx_dir(root / "env", copies["env"], compress=False)
    write_idx_dir(root / "keras_home" / "datasets" / "mnist", copies["cache"])
    write_idx_dir(root / "system" / "mnist", copies["system"])
    monkeypatch.setenv(mnist_files.DATA_DIR_ENV, str(root / "env"))
    downloaded = lambda spec: copies["net"]  # noqa: E731

    def loaded_from(**kwargs):
        got = datasets.load_images("mnist", download=downloaded, **kwargs)
        return next(k for k, v in copies.items() if np.array_equal(v.x_train, got.x_train))

    assert loaded_from(data_dir=root / "arg") == "arg"
    assert loaded_from() == "env"
    monkeypatch.delenv(mnist_files.DATA_DIR_ENV)
    assert loaded_from() == "cache"
    for f in (root / "keras_home" / "datasets" / "mnist").iterdir():
        f.unlink()
    assert loaded_from() == "system"
    for f in (root / "system" / "mnist").iterdir():
        f.unlink()
    assert loaded_from() == "net"


def test_loaded_arrays_match_what_was_written(isolated_data_env):
    arrays = synthetic_arrays(seed=3)
    folder = write_idx_dir(isolated_data_env / "d", arrays)
    got = datasets.load_images("mnist", data_dir=folder, download=False)
    # What train and tune call: the dataset's entry loads, checks and describes the same arrays.
    loaded, spec = datasets.load(resolve(overrides=dict(dataset="mnist", data_dir=str(folder))))
    for a, b, c in zip(arrays[:4], got[:4], loaded[:4]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert got.x_train.dtype == loaded.x_train.dtype == np.uint8 and got.x_train.shape == (600, 28, 28)
    assert got.y_test.dtype == loaded.y_test.dtype == np.int64
    assert spec.image and spec.input_shape == (28, 28) and spec.class_names == tuple("0123456789")
    assert got.source == loaded.source == str(folder)  # What train's "Loaded mnist from ..." line names.


def test_nothing_found_lists_every_place_and_fails_fast(isolated_data_env):
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        datasets.load_images("fashion_mnist", download=no_download)
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert "\n" not in msg
    for place in ("keras_home/datasets", "system/fashion-mnist", "network unreachable", "apt-get install dataset-fashion-mnist", "--data-dir"):
        assert place in msg


def test_keras_download_failure_becomes_data_error(isolated_data_env, monkeypatch):
    import keras

    def offline():
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match="download failed: OSError: Temporary failure"):
        datasets.load_images("mnist")


def test_a_download_is_checked_as_a_file_is_and_cannot_hang(isolated_data_env, monkeypatch):
    """The download's arrays pass the same checks as a file's, and urllib, which has no timeout of its own, gets one
    while it runs (a dead network would otherwise hang forever), the caller's own restored after."""
    import socket

    import keras

    arrays, during = synthetic_arrays(), []

    def fetched(x_train=arrays.x_train):
        during.append(socket.getdefaulttimeout())
        as_keras = arrays.y_train.astype(np.uint8), arrays.y_test.astype(np.uint8)  # Keras' label dtype.
        return (x_train, as_keras[0]), (arrays.x_test, as_keras[1])

    monkeypatch.setattr(keras.datasets.mnist, "load_data", fetched)
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(None)  # Python's default: block forever.
    try:
        got = datasets.load_images("mnist")
        assert during[0] is not None and 0 < during[0] <= 60 and socket.getdefaulttimeout() is None
        socket.setdefaulttimeout(7.5)
        monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: fetched(arrays.x_train.astype(np.float32)))
        with pytest.raises(DataError) as e:
            datasets.load_images("mnist")
        assert socket.getdefaulttimeout() == 7.5
    finally:
        socket.setdefaulttimeout(before)
    assert str(e.value).startswith("mnist not found in ") and (
        " and download: train images are <float32>[600, 28, 28], expected <uint8>[N, 28, 28]; provide it with "
        in str(e.value))
    assert got.source == "download" and got.y_train.dtype == got.y_test.dtype == np.int64
    for a, b in zip(arrays[:4], got[:4]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("split, change, message", [
    ("train", dict(x=np.float32), "train images are <float32>[600, 28, 28], expected <uint8>[N, 28, 28]"),
    ("test", dict(x=(200, 28, 27)), "test images are <uint8>[200, 28, 27], expected <uint8>[N, 28, 28]"),
    ("test", dict(x=(200, 784)), "test images are <uint8>[200, 784], expected <uint8>[N, 28, 28]"),
    ("train", dict(y=(600, 1)), "train labels have shape [600, 1], expected [600]"),
    ("test", dict(y=(199,)), "test labels have shape [199], expected [200]"),
])
def test_handed_over_image_arrays_are_checked_word_for_word(split, change, message):
    """The arrays a test, a download or Keras' .npz hands over: each wrong form refused, naming the split."""
    arrays = synthetic_arrays()
    x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
    if "x" in change:
        x = x.astype(change["x"]) if isinstance(change["x"], type) else np.zeros(change["x"], np.uint8)
    if "y" in change:
        y = np.zeros(change["y"], np.int64)
    with pytest.raises(DataError) as e:
        mnist_files.validate_arrays(arrays._replace(**{f"x_{split}": x, f"y_{split}": y}), "given")
    assert str(e.value) == f"given: {message}"
    good = mnist_files.validate_arrays(arrays._replace(y_train=arrays.y_train.astype(np.uint8)), "given")
    assert good.y_train.dtype == good.y_test.dtype == np.int64  # Keras ships uint8 labels; the model takes int64.


def test_the_keras_cache_is_keras_own(monkeypatch, tmp_path):
    """Where keras.utils.get_file caches: $KERAS_HOME/datasets, else ~/.keras/datasets."""
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mnist_files.keras_cache_dir() == tmp_path / ".keras" / "datasets"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert mnist_files.keras_cache_dir() == tmp_path / "kh" / "datasets"


def test_missing_data_dir_is_an_error(isolated_data_env):
    with pytest.raises(DataError, match="--data-dir .*nowhere: no such directory"):
        datasets.load_images("mnist", data_dir=isolated_data_env / "nowhere")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'; choose one of: mnist, fashion_mnist, adding, copy, or a PATH.npz"):
        datasets.load_images("cifar")


def test_truncated_gzip_names_the_file(isolated_data_env):
    folder = write_idx_dir(isolated_data_env / "d", synthetic_arrays())
    bad = folder / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"{bad}: cannot be read"):
        datasets.load_images("mnist", data_dir=folder, download=False)


def test_truncated_raw_file_names_the_file(isolated_data_env):
    folder = write_idx_dir(isolated_data_env / "d", synthetic_arrays(), compress=False)
    bad = folder / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-784])
    with pytest.raises(DataError, match=f"{bad}: .*bytes of content, expected .*truncated or corrupt"):
        datasets.load_images("mnist", data_dir=folder, download=False)


@pytest.mark.parametrize(
    "name, payload, message",
    [
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((600, 28, 28)), "labels"),
         r"bad IDX magic number 0x00000801 \(expected 0x00000803 for images\); is this the right file\?"),
        ("train-labels-idx1-ubyte", idx_bytes(np.zeros(599), "labels"), "holds 599 labels, expected 600"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((600, 28, 27)), "images"), "images are 28x27"),
        ("t10k-labels-idx1-ubyte", idx_bytes(np.full(200, 10), "labels"), r"label 10 out of range \[0, 10\)"),
        ("t10k-labels-idx1-ubyte", b"\x00\x00", r"truncated \(2 bytes\)"),
    ],
)
def test_bad_idx_content(isolated_data_env, name, payload, message):
    folder = write_idx_dir(isolated_data_env / "d", synthetic_arrays())
    (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match=message) as e:
        datasets.load_images("mnist", data_dir=folder, download=False)
    assert name in str(e.value)


def test_partial_folder_names_missing_files(isolated_data_env):
    folder = write_idx_dir(isolated_data_env / "d", synthetic_arrays())
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not t10k-labels-idx1-ubyte"):
        datasets.load_images("mnist", data_dir=folder, download=False)


def test_fashion_checksum_is_checked_on_decompressed_content(isolated_data_env):
    # Well-formed files that are not Fashion-MNIST: only the content checksum can tell.
    folder = write_idx_dir(isolated_data_env / "d", synthetic_arrays())
    with pytest.raises(DataError, match="checksum mismatch for fashion_mnist"):
        datasets.load_images("fashion_mnist", data_dir=folder, download=False)


def test_npz_form_and_its_checks(isolated_data_env):
    arrays = synthetic_arrays(seed=5)
    folder = isolated_data_env / "npz"
    folder.mkdir()
    kw = dict(x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test, y_test=arrays.y_test)
    np.savez(folder / "fashion-mnist.npz", **kw)  # No published digest for this form: structure checks only.
    got = datasets.load_images("fashion_mnist", data_dir=folder)
    np.testing.assert_array_equal(got.x_test, arrays.x_test)
    assert got.source == str(folder / "fashion-mnist.npz")
    np.savez(folder / "mnist.npz", **kw)  # Keras' mnist.npz has a known digest, which this copy fails.
    with pytest.raises(DataError, match="mnist.npz: checksum mismatch for mnist"):
        datasets.load_images("mnist", data_dir=folder, download=False)
    np.savez(folder / "fashion-mnist.npz", x_train=arrays.x_train)
    with pytest.raises(DataError, match="not a valid dataset .npz"):
        datasets.load_images("fashion_mnist", data_dir=folder, download=False)


def test_pipelines_scale_split_and_keep_every_test_image(tiny):
    splits = pipeline.make_splits(tiny, batch_size=64, validation_split=0.25, seed=1)
    assert (splits.train_examples, splits.validation_examples, splits.test_examples) == (450, 150, 200)
    x, y = next(iter(splits.train))
    assert x.dtype.name == "float32" and x.shape == (64, 28, 28) and float(x.numpy().max()) <= 1.0
    np.testing.assert_allclose(x.numpy().max(), 1.0)  # The bright column (255) maps to exactly 1.
    assert sum(int(b[0].shape[0]) for b in splits.test) == 200  # 200 = 3 x 64 + 8: the last, short batch is kept.
    # The validation images come from the training set, are held out of training, and the split is seeded.
    train_imgs = {bytes(b) for xb, _ in splits.train.take(8) for b in (xb.numpy() * 255).round().astype(np.uint8)}
    val_imgs = {bytes(b) for xb, _ in splits.validation for b in (xb.numpy() * 255).round().astype(np.uint8)}
    assert not train_imgs & val_imgs and len(train_imgs | val_imgs) == 600
    assert sum(int(b[0].shape[0]) for b in splits.train.take(8)) == 450  # One epoch = 8 batches, last one short.
    again = pipeline.make_splits(tiny, batch_size=64, validation_split=0.25, seed=1)
    np.testing.assert_array_equal(next(iter(again.validation))[0], next(iter(splits.validation))[0])


def test_shuffle_is_seeded(tiny):
    first = [next(iter(pipeline.make_splits(tiny, 32, 0.1, seed=s).train))[1].numpy() for s in (7, 7, 8)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


def test_a_stream_started_at_epoch_e_is_the_uninterrupted_streams_epoch_e(tiny):
    """A resumed run rebuilds its stream at the first unfinished epoch: it must see that epoch's batches, not
    epoch 0's again."""
    (x, y), _ = pipeline.split_validation(tiny.x_train, tiny.y_train, 0.0, seed=3)
    batches_per_epoch = -(-len(x) // 100)
    whole = [b[1].numpy() for b in pipeline.training_stream(x, y, 100, seed=3, hflip=True).take(3 * batches_per_epoch)]
    resumed = [b[1].numpy() for b in pipeline.training_stream(x, y, 100, seed=3, first_epoch=2, hflip=True)
               .take(batches_per_epoch)]
    for got, want in zip(resumed, whole[2 * batches_per_epoch:]):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(resumed[0], whole[0])


def test_the_epoch_by_epoch_form_holds_the_streams_epochs(tiny):
    """fit reads whole-epoch runs one dataset per epoch (pipeline.training_epochs): each new iterator must hold the
    stream's batches of the epoch its variable names — images, flips and labels — and nothing more."""
    (x, y), _ = pipeline.split_validation(tiny.x_train, tiny.y_train, 0.0, seed=3)
    batches_per_epoch = -(-len(x) // 100)
    stream = list(pipeline.training_stream(x, y, 100, seed=3, hflip=True).take(3 * batches_per_epoch))
    epochs, epoch = pipeline.training_epochs(x, y, 100, seed=3, hflip=True)
    assert epochs.cardinality().numpy() == batches_per_epoch
    for e in (2, 0, 1):  # Any order: a resumed run starts at its first unfinished epoch.
        epoch.assign(e)
        got = list(epochs)
        assert len(got) == batches_per_epoch
        for (gx, gy), (wx, wy) in zip(got, stream[e * batches_per_epoch:(e + 1) * batches_per_epoch]):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)


def test_real_fashion_mnist_loads_and_verifies(fashion_dir, isolated_data_env, monkeypatch):
    monkeypatch.setattr(mnist_files, "COUNTS", {"train": 60_000, "test": 10_000})
    arrays = datasets.load_images("fashion_mnist", data_dir=fashion_dir, download=False)
    assert arrays.x_train.shape == (60_000, 28, 28) and arrays.x_test.shape == (10_000, 28, 28)
    assert np.bincount(arrays.y_test).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced.


def test_hflip_mirrors_a_seeded_half_of_the_training_images(tiny):
    plain = pipeline.make_splits(tiny, 600, 0.0, seed=2).train
    flipped = pipeline.make_splits(tiny, 600, 0.0, seed=2, hflip=True).train
    (xp, yp), (xf, yf) = next(iter(plain)), next(iter(flipped))
    np.testing.assert_array_equal(yp, yf)  # Same order: flipping does not change the shuffle.
    same = np.all(xp.numpy() == xf.numpy(), axis=(1, 2))
    mirrored = np.all(xp.numpy()[:, :, ::-1] == xf.numpy(), axis=(1, 2))
    assert np.all(same | mirrored) and 0.4 < mirrored.mean() < 0.6
    again = next(iter(pipeline.make_splits(tiny, 600, 0.0, seed=2, hflip=True).train))[0]
    np.testing.assert_array_equal(again, xf)


def _digest(raw: bytes) -> str:
    import hashlib

    return hashlib.sha256(raw).hexdigest()


def with_files(monkeypatch, name, **changes):
    """The registry entry of `name` with its files' identity changed, for this test only."""
    entry = datasets.REGISTRY[name]
    monkeypatch.setitem(datasets.REGISTRY, name,
                        dataclasses.replace(entry, files=dataclasses.replace(entry.files, **changes)))


def test_fashion_files_are_refused_for_mnist_and_mnist_npz_for_fashion(isolated_data_env, monkeypatch):
    # MNIST and Fashion-MNIST IDX files share names, sizes and structure: only a known digest tells them apart.
    # Stand-ins: tiny files whose digests the test makes "known" as the other dataset's.
    arrays = synthetic_arrays(seed=4)
    folder = write_idx_dir(isolated_data_env / "fashion-files", arrays, compress=False)
    fashion = {p.name: _digest(p.read_bytes()) for p in folder.iterdir()}
    with_files(monkeypatch, "fashion_mnist", content_sha256=fashion)
    with pytest.raises(DataError) as e:
        datasets.load_images("mnist", data_dir=folder, download=False)
    assert str(e.value).startswith(f"{folder}: holds fashion_mnist, not mnist") and "--dataset fashion_mnist" in str(e.value)
    assert datasets.load_images("fashion_mnist", data_dir=folder, download=False).x_train.shape == (600, 28, 28)

    npz = isolated_data_env / "npz"
    npz.mkdir()
    np.savez(npz / "fashion-mnist.npz", x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test,
             y_test=arrays.y_test)
    with_files(monkeypatch, "mnist", npz_sha256=_digest((npz / "fashion-mnist.npz").read_bytes()))
    with pytest.raises(DataError, match=f"{npz}: holds mnist, not fashion_mnist .*--dataset mnist"):
        datasets.load_images("fashion_mnist", data_dir=npz, download=False)


def test_real_fashion_mnist_is_refused_as_mnist(fashion_dir, isolated_data_env, monkeypatch):
    monkeypatch.setattr(mnist_files, "COUNTS", {"train": 60_000, "test": 10_000})
    with pytest.raises(DataError, match=f"{fashion_dir}: holds fashion_mnist, not mnist"):
        datasets.load_images("mnist", data_dir=fashion_dir, download=False)


@pytest.mark.parametrize("bad_label", [10, -1, 255])
def test_npz_with_out_of_range_labels_is_refused(isolated_data_env, bad_label):
    arrays = synthetic_arrays(seed=6)
    y_train = arrays.y_train.copy()
    y_train[17] = bad_label
    folder = isolated_data_env / "npz"
    folder.mkdir()
    np.savez(folder / "fashion-mnist.npz", x_train=arrays.x_train, y_train=y_train, x_test=arrays.x_test,
             y_test=arrays.y_test)
    with pytest.raises(DataError, match=rf"fashion-mnist.npz: label {bad_label} out of range \[0, 10\)"):
        datasets.load_images("fashion_mnist", data_dir=folder, download=False)


def test_npz_with_float_labels_is_refused(isolated_data_env):
    arrays = synthetic_arrays(seed=6)
    folder = isolated_data_env / "npz"
    folder.mkdir()
    np.savez(folder / "fashion-mnist.npz", x_train=arrays.x_train, y_train=arrays.y_train + 0.5,
             x_test=arrays.x_test, y_test=arrays.y_test)
    with pytest.raises(DataError, match=r"labels are float64, expected integers"):
        datasets.load_images("fashion_mnist", data_dir=folder, download=False)


UNPICKLED = []


def _unpickled():
    UNPICKLED.append(1)
    return 0


class _Payload:
    """An object a pickle rebuilds by calling `_unpickled`: what a malicious .npz would run instead."""

    def __reduce__(self):
        return _unpickled, ()


def test_an_npz_holding_pickled_objects_is_refused_without_running_them(isolated_data_env):
    """np.load(allow_pickle=True) would run code from a downloaded or shared file: both .npz readers refuse it."""
    arrays = synthetic_arrays()
    folder = isolated_data_env / "npz"
    folder.mkdir()
    payload = np.array([_Payload() for _ in arrays.y_train], dtype=object)
    np.savez(folder / "fashion-mnist.npz", x_train=arrays.x_train, y_train=payload, x_test=arrays.x_test,
             y_test=arrays.y_test)
    with pytest.raises(DataError, match=r"fashion-mnist.npz: not a valid dataset .npz \(.*allow_pickle=False"):
        datasets.load_images("fashion_mnist", data_dir=folder, download=False)
    mine = isolated_data_env / "mine.npz"
    np.savez(mine, x_train=np.zeros((4, 3, 2)), y_train=payload[:4], x_test=np.zeros((2, 3, 2)), y_test=np.zeros(2))
    with pytest.raises(DataError, match=r"mine.npz: not a readable .npz \(ValueError: .*allow_pickle=False"):
        datasets.load(resolve(overrides=dict(dataset=str(mine))))
    assert UNPICKLED == []
