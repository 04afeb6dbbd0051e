"""Class imbalance: repeat-factor sampling (LVIS rule) and CLASS_LOSS_WEIGHTS in training.
The loss itself is checked by hand in test_losses.py."""
import math

import numpy as np
import pytest

from mrcnn import data
from mrcnn import model as modellib
from mrcnn.config import Config
from samples.shapes import ShapesDataset
from tiny_models import tiny_shapes_config_class


class RareTriangles(ShapesDataset):
    """Shapes where only the images listed in ``rare`` hold a triangle (class 3)."""

    def load_rare(self, count, rare, seed=0):
        self.load_shapes(count, 64, 64, seed=seed)
        for i, info in enumerate(self.image_info):
            shapes = [s for s in info["shapes"] if s[0] != "triangle"]
            if not shapes:
                shapes = [("square",) + tuple(info["shapes"][0][1:])]
            if i in rare:
                shapes[0] = ("triangle",) + tuple(shapes[0][1:])
            info["shapes"] = shapes
        self.prepare()
        return self


def test_repeat_factors_follow_the_lvis_rule():
    ds = RareTriangles().load_rare(20, rare={3})
    t = 0.3
    got = data.repeat_factors(ds, t)
    # Independent count: fraction of images holding each class, from the masks.
    holds = np.zeros((20, 4), bool)
    for i in ds.image_ids:
        holds[i, ds.load_mask(i)[1]] = True
    freq = holds.mean(axis=0)
    want = [max([1.0] + [max(1.0, math.sqrt(t / freq[c])) for c in range(1, 4) if holds[i, c]])
            for i in range(20)]
    np.testing.assert_allclose(got, want)
    assert got[3] == pytest.approx(math.sqrt(t / 0.05))   # the one triangle image
    assert (np.delete(got, 3) < got[3]).all()


def test_repeat_factor_passes_repeat_images_by_their_factor():
    import tensorflow as tf
    factors = np.array([1.0, 2.5, 1.0, 3.0, 1.2])
    ids = np.arange(5, dtype=np.int64)
    passes = list(data._repeat_factor_ids(ids, factors, seed=7, repeat=True)
                  .take(4000).as_numpy_iterator())
    counts = np.bincount(passes, minlength=5) / len(passes)
    np.testing.assert_allclose(counts, factors / factors.sum(), atol=0.02)
    one = list(data._repeat_factor_ids(ids, factors, seed=7, repeat=False).as_numpy_iterator())
    per_image = np.bincount(one, minlength=5)
    assert (per_image >= np.floor(factors)).all() and (per_image <= np.ceil(factors)).all()
    again = list(data._repeat_factor_ids(ids, factors, seed=7, repeat=False)
                 .as_numpy_iterator())
    assert one == again                                     # a seed fixes the passes
    assert tf.data.experimental.cardinality(
        data._repeat_factor_ids(ids, factors, 7, False)).numpy() != 0


def test_build_dataset_oversamples_the_rare_image():
    config = tiny_shapes_config_class()()
    ds = RareTriangles().load_rare(12, rare={5})
    threshold = 0.5                           # triangle in 1/12 -> r = sqrt(6) ~ 2.45
    pipeline = data.build_dataset(ds, config, seed=0, batch_size=4,
                                  repeat_factor_threshold=threshold)
    seen = np.concatenate([b["input_image_meta"][:, 0] for b in
                           pipeline.take(60).as_numpy_iterator()]).astype(int)
    share = np.mean(seen == 5)
    factors = data.repeat_factors(ds, threshold)
    assert share == pytest.approx(factors[5] / factors.sum(), abs=0.04)
    assert share > 2 * (1 / 12)              # plain sampling would give 1/12


def test_config_validates_class_balance_settings():
    class Weighted(Config):
        NAME = "w"
        NUM_CLASSES = 3
        CLASS_LOSS_WEIGHTS = [1, 2, 0.5]
        REPEAT_FACTOR_THRESHOLD = 0.01
    assert Weighted().CLASS_LOSS_WEIGHTS == (1.0, 2.0, 0.5)
    for bad in ([1, 2], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1], "abc"):
        with pytest.raises(ValueError, match="CLASS_LOSS_WEIGHTS"):
            type("Bad", (Weighted,), {"CLASS_LOSS_WEIGHTS": bad})()
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="REPEAT_FACTOR_THRESHOLD"):
            type("Bad", (Weighted,), {"REPEAT_FACTOR_THRESHOLD": bad})()


def test_training_with_class_weights_and_repeat_factors_is_finite(tmp_path):
    class Balanced(tiny_shapes_config_class()):
        CLASS_LOSS_WEIGHTS = (1.0, 1.0, 1.0, 5.0)
        REPEAT_FACTOR_THRESHOLD = 0.5
        STEPS_PER_EPOCH = 4
    config = Balanced()
    train = RareTriangles().load_rare(8, rare={2})
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    history = model.train(train, train, learning_rate=config.LEARNING_RATE, epochs=1,
                          layers="all", verbose=0)
    for name, values in history.history.items():
        assert np.isfinite(values).all(), name
    layer = model.keras_model.get_layer("mrcnn_class_loss")
    assert tuple(layer.options["class_weights"]) == (1.0, 1.0, 1.0, 5.0)
