"""Linear learning-rate warm-up (Config.LEARNING_RATE_WARMUP_STEPS / _FACTOR)."""

import types

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.config import Config, ConfigError
from mrcnn.training import LearningRateWarmup
from samples.shapes import ShapesDataset
from tiny_models import tiny_shapes_config_class


def test_rate_is_linear_from_factor_to_the_learning_rate():
    warmup = LearningRateWarmup(10, 0.02, factor=0.1)
    # By hand: 0.02 * (0.1 + 0.9 * i / 10).
    assert warmup.rate(0) == pytest.approx(0.002)
    assert warmup.rate(5) == pytest.approx(0.011)
    assert warmup.rate(9) == pytest.approx(0.0182)
    assert warmup.rate(10) == pytest.approx(0.02)
    assert warmup.rate(1000) == pytest.approx(0.02)
    assert LearningRateWarmup(0, 0.5).rate(0) == pytest.approx(0.5)


def test_callback_sets_the_rate_only_while_warming_up():
    optimizer = keras.optimizers.SGD(learning_rate=0.05)
    warmup = LearningRateWarmup(4, 0.05, factor=0.5)
    warmup.set_model(types.SimpleNamespace(optimizer=optimizer))
    seen = []
    for step in range(7):
        optimizer.iterations.assign(step)
        warmup.on_train_batch_begin(step)
        seen.append(float(optimizer.learning_rate.numpy()))
        if step == 5:
            optimizer.learning_rate.assign(0.001)   # e.g. TimeBudget's decay: kept
    np.testing.assert_allclose(seen, [0.025, 0.03125, 0.0375, 0.04375, 0.05, 0.05, 0.001],
                               rtol=1e-6)


def test_bad_warmup_settings_are_refused_by_name():
    for attrs, attr in (({"LEARNING_RATE_WARMUP_STEPS": -1}, "LEARNING_RATE_WARMUP_STEPS"),
                        ({"LEARNING_RATE_WARMUP_STEPS": 2.5}, "LEARNING_RATE_WARMUP_STEPS"),
                        ({"LEARNING_RATE_WARMUP_FACTOR": 0}, "LEARNING_RATE_WARMUP_FACTOR"),
                        ({"LEARNING_RATE_WARMUP_FACTOR": 1.5}, "LEARNING_RATE_WARMUP_FACTOR")):
        with pytest.raises(ConfigError, match=attr):
            type("C", (Config,), dict(NAME="c", **attrs))()
    assert Config.LEARNING_RATE_WARMUP_STEPS == 0      # Matterport's schedule by default


def test_train_warms_up_every_phase(tmp_path):
    class WarmConfig(tiny_shapes_config_class()):
        NAME = "warm"
        LEARNING_RATE_WARMUP_STEPS = 4
        LEARNING_RATE_WARMUP_FACTOR = 0.25

    config = WarmConfig()
    train, val = ShapesDataset(), ShapesDataset()
    train.load_shapes(4, 64, 64, seed=1)
    val.load_shapes(2, 64, 64, seed=2)
    train.prepare()
    val.prepare()
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    rates = []

    class Record(keras.callbacks.Callback):       # runs after the warm-up callback
        def on_train_batch_begin(self, batch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate.numpy()))

    # 3 steps per epoch: phase one warms up over steps 0..3 and then holds 0.01.
    model.train(train, val, learning_rate=0.01, epochs=2, layers="heads",
                custom_callbacks=[Record()], verbose=0)
    # A new train() call compiles a new optimizer: warm-up again, to its own rate.
    model.train(train, val, learning_rate=0.002, epochs=3, layers="all",
                custom_callbacks=[Record()], verbose=0)
    expected = [0.01 * (0.25 + 0.75 * i / 4) for i in range(4)] + [0.01, 0.01] + \
        [0.002 * (0.25 + 0.75 * i / 4) for i in range(3)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
