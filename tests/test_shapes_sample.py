"""The time-budget callback of the shapes (and nucleus) runs, and the shapes config."""

import time
import types

import keras
import pytest

from mrcnn.training import TimeBudget
from samples.shapes import ShapesConfig


def test_time_budget_decays_learning_rate_then_stops():
    callback = TimeBudget(0.05, decay_at=0.5, decay=0.1)     # 3 s, decay at 1.5 s
    optimizer = keras.optimizers.Adam(learning_rate=0.002)
    model = types.SimpleNamespace(optimizer=optimizer, stop_training=False)
    callback.set_model(model)
    callback.on_train_batch_end(0)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.002)
    time.sleep(1.7)
    callback.on_train_batch_end(1)
    callback.on_train_batch_end(2)          # decays once only
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.0002)
    assert not model.stop_training
    assert not callback.expired()
    time.sleep(1.5)
    callback.on_train_batch_end(3)
    assert model.stop_training and callback.expired()
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.0002)


def test_time_budget_without_decay_keeps_learning_rate():
    callback = TimeBudget(0.01, decay=1.0)
    optimizer = keras.optimizers.SGD(learning_rate=0.01)
    model = types.SimpleNamespace(optimizer=optimizer, stop_training=False)
    callback.set_model(model)
    time.sleep(0.65)
    callback.on_train_batch_end(0)
    assert model.stop_training
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.01)


def test_shapes_config_is_valid_and_small():
    config = ShapesConfig()
    assert config.IMAGE_SHAPE.tolist() == [128, 128, 3]
    assert config.OPTIMIZER == "adam" and config.TRAIN_BN


def test_time_budget_rejects_bad_arguments():
    with pytest.raises(ValueError, match="minutes"):
        TimeBudget(0)
    with pytest.raises(ValueError, match="decay_at"):
        TimeBudget(1, decay_at=1.5)
