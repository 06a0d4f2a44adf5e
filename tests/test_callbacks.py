"""tf_rnn.callbacks: the best epoch is kept, early stopping fires at its patience, restarts, throughput from known
timings, per-epoch dropout seeds, and the learning-rate schedule the optimizer really uses."""

import json
import math
import types

import keras
import numpy as np
import pytest

from tf_rnn import callbacks
from tf_rnn.config import resolve
from tf_rnn.models import build_model


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="d")])
    model.compile(optimizer="sgd", loss="mse")
    return model


def play(state, model, scores, first_epoch=0, key="val_accuracy"):
    """Drives RunState as fit would; before each epoch's end the weights are set to the epoch number, so the saved
    model tells which epoch it came from. Returns, per epoch, whether training was stopped after it."""
    state.set_model(model)
    state.on_train_begin()
    stopped = []
    for epoch, score in enumerate(scores, start=first_epoch):
        model.stop_training = False
        state.on_epoch_begin(epoch)
        model.get_layer("d").kernel.assign(np.full((3, 1), epoch + 1, "float32"))
        state.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), key: score})
        stopped.append(model.stop_training)
    return stopped


def saved_epoch(path):
    return int(keras.saving.load_model(path).get_layer("d").kernel.numpy()[0, 0])


def test_best_epoch_is_kept_when_worse_ones_follow_and_early_stopping_fires_at_its_patience(tmp_path):
    state = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=3)
    stopped = play(state, tiny_model(), [0.5, 0.8, 0.6, 0.7, 0.65])
    assert state.best_epoch == 2 and state.best_value == 0.8
    assert saved_epoch(tmp_path / "m.keras") == 2  # Not the last, not the first: the best.
    assert stopped == [False, False, False, False, True]  # Three epochs without a gain after epoch 2.
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["history"]["val_accuracy"] == [0.5, 0.8, 0.6, 0.7, 0.65] and len(saved["epoch_seconds"]) == 5


def test_a_tie_does_not_replace_the_best_and_patience_zero_never_stops(tmp_path):
    state = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=0)
    assert play(state, tiny_model(), [0.7, 0.7, 0.6, 0.5, 0.4, 0.3]) == [False] * 6
    assert state.best_epoch == 1 and saved_epoch(tmp_path / "m.keras") == 1


def test_mode_min_for_a_loss(tmp_path):
    state = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=2, monitor="val_loss", mode="min")
    assert play(state, tiny_model(), [0.9, 0.4, 0.5, 0.6], key="val_loss") == [False, False, False, True]
    assert state.best_epoch == 2 and saved_epoch(tmp_path / "m.keras") == 2


def test_restart_keeps_the_backed_up_epochs_and_recounts_the_rest(tmp_path):
    first = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=2)
    play(first, tiny_model(), [0.5, 0.9, 0.6, 0.55])  # Epoch 4 recorded, then killed before its backup.
    # The backup holds 3 epochs: epoch 4 re-runs; its earlier record must not count twice towards patience.
    again = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=2, first_epoch=3)
    stopped = play(again, tiny_model(), [0.55, 0.5], first_epoch=3)
    assert again.history["val_accuracy"] == [0.5, 0.9, 0.6, 0.55, 0.5] and again.epochs == 5
    assert stopped == [True, True] and again.best_epoch == 2 and saved_epoch(tmp_path / "m.keras") == 2


def test_a_diverged_epoch_is_neither_recorded_nor_saved(tmp_path):
    state = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=0)
    model = tiny_model()
    state.set_model(model)
    state.on_train_begin()
    state.on_epoch_begin(0)
    state.on_epoch_end(0, {"loss": float("nan"), "val_accuracy": 0.1})
    assert state.best_epoch is None and state.epochs == 0 and not (tmp_path / "m.keras").exists()


def test_without_validation_the_latest_epoch_is_the_best(tmp_path):
    state = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=1)
    model = tiny_model()
    state.set_model(model)
    state.on_train_begin()
    for epoch in range(3):
        state.on_epoch_begin(epoch)
        model.get_layer("d").kernel.assign(np.full((3, 1), epoch + 1, "float32"))
        state.on_epoch_end(epoch, {"loss": 1.0})
    assert state.best_epoch == 3 and saved_epoch(tmp_path / "m.keras") == 3 and not model.stop_training


def test_epoch_seconds_come_from_the_clock(tmp_path):
    ticks = iter([10.0, 12.5, 20.0, 21.0])
    state = callbacks.RunState(tmp_path / "m.keras", tmp_path / "s.json", patience=0, clock=lambda: next(ticks))
    play(state, tiny_model(), [0.1, 0.2])
    assert state.epoch_seconds == [2.5, 1.0]


class Steps:
    """A model stand-in whose optimizer has run `n` steps (all the throughput callback reads from the model):
    `model.optimizer.iterations.numpy()` is `n`."""

    def __init__(self):
        self.n = 0
        self.optimizer = types.SimpleNamespace(iterations=self)

    def numpy(self):
        return self.n


def play_throughput(cb, steps, epochs):
    """Drives `cb` as fit does: per epoch, per execution, `(last batch index in the epoch, optimizer steps)`."""
    cb.set_model(steps)
    for epoch, executions in enumerate(epochs):
        cb.on_epoch_begin(epoch)
        for batch, done in executions:
            steps.n = done
            cb.on_train_batch_end(batch)


def test_throughput_from_known_timings():
    # 5 steps per epoch, batches of 10, 47 training samples: the last batch of each epoch holds 7.
    # Epoch 1 skips 3 warm-up batches (tracing), later epochs 1; validation time is never counted.
    ends = {0: [0.0, 5.0, 6.0, 7.0, 9.0], 1: [100.0, 101.0, 102.5, 104.0, 105.0]}
    clock = iter(ends[0] + ends[1])
    cb = callbacks.Throughput(global_batch=10, train_examples=47, steps_per_epoch=5, clock=lambda: next(clock))
    play_throughput(cb, Steps(), [[(b, b + 1) for b in range(5)], [(b, b + 6) for b in range(5)]])
    # Counted: epoch 1 batches 4-5 (10 + 7 samples from 6.0, the end of batch 3, to 9.0), epoch 2 batches 2-5
    # (37 samples from 100.0 to 105.0): 54 samples in 8 s.
    assert cb.samples == 54 and cb.seconds == pytest.approx(8.0)
    assert cb.samples_per_second == pytest.approx(6.75)


def test_throughput_with_several_steps_per_execution_and_a_budget_mid_execution():
    # 6 steps per epoch in executions of 3, batches of 10, 57 samples (the epoch's last batch holds 7); the budget
    # of 10 steps ends the run 1 step into epoch 2's second execution, which Keras still reports as batch 5.
    clock = iter([0.0, 4.0, 50.0, 51.0])
    cb = callbacks.Throughput(global_batch=10, train_examples=57, steps_per_epoch=6, clock=lambda: next(clock))
    play_throughput(cb, Steps(), [[(2, 3), (5, 6)], [(2, 9), (5, 10)]])
    # Epoch 1: the first execution is warm-up; steps 4-6 (10 + 10 + 7) in 4 s. Epoch 2: the first execution is
    # warm-up, then step 10 alone (10 samples) in 1 s.
    assert cb.samples == 37 and cb.seconds == pytest.approx(5.0)


def dropout_model():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dropout(0.5), keras.layers.Dropout(0.5)])
    return model


def test_epoch_seeds_make_dropout_masks_a_function_of_seed_and_epoch():
    x = np.ones((4, 64), "float32")
    model = dropout_model()
    seeds = callbacks.EpochSeeds(seed=3)
    seeds.set_model(model)
    seeds.on_epoch_begin(2)
    first = [np.asarray(model(x, training=True)) for _ in range(3)]
    for _ in range(5):  # Whatever ran before (another epoch, a different process), epoch 2 starts the same.
        model(x, training=True)
    seeds.on_epoch_begin(2)
    np.testing.assert_array_equal(first, [np.asarray(model(x, training=True)) for _ in range(3)])
    assert not np.array_equal(first[0], first[1])  # Within an epoch, each step draws new masks.
    seeds.on_epoch_begin(3)
    assert not np.array_equal(first[0], np.asarray(model(x, training=True)))
    other = callbacks.EpochSeeds(seed=4)
    other.set_model(model)
    other.on_epoch_begin(2)
    assert not np.array_equal(first[0], np.asarray(model(x, training=True)))
    assert len(seeds.generators()) == 2


@pytest.mark.parametrize("step", [0, 25, 50, 99, 100])
def test_cosine_schedule_is_what_the_optimizer_uses(step):
    model = build_model(resolve(overrides=dict(units=4, layers=1, lr=2e-3, lr_schedule="cosine")), decay_steps=100)
    model.optimizer.iterations.assign(step)
    expected = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / 100))
    assert float(model.optimizer.learning_rate) == pytest.approx(expected, rel=1e-5, abs=1e-9)  # float32 math


def test_constant_schedule_stays_constant():
    model = build_model(resolve(overrides=dict(units=4, layers=1, lr=2e-3, lr_schedule="constant")), decay_steps=100)
    model.optimizer.iterations.assign(90)
    assert float(model.optimizer.learning_rate) == pytest.approx(2e-3)
