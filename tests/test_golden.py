"""Golden numbers: what the model computes must not change under refactoring.

``tests/data/golden.npz`` was written by this module (``python tests/test_golden.py
--write``) from the code before the issue-17 redesign. The tests rebuild the same models,
give them the same weights and inputs, and compare:

* inference: ``detect()`` on three 64-px shapes images (class ids equal; boxes, scores to
  1e-4; full-size masks equal but for a few border pixels), for a plain ResNet-50 model and
  a cascade model;
* training: the named losses on one fixed batch, plain and cascade, to 1e-5.

Weights do not come from Keras' initialisers (whose draws depend on the order layers are
built in) but from a generator seeded by each layer's name and weight index, so a model
whose layers are created in another order still gets the same weights. Training ROI
sampling draws ``tf.random.uniform`` keys; during the golden runs that function is
replaced by a stateless draw of a fixed seed, so the sample depends only on the shapes of
what is sampled, not on how many random ops the graph created before it (checked when the
file is written: two Keras seeds give the same losses).
"""
import contextlib
import os
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mrcnn import model as modellib  # noqa: E402
from samples.shapes import ShapesDataset  # noqa: E402
from tests.tiny_models import (fixed_training_batch, shapes_64px_config_class,  # noqa: E402
                               tiny_shapes_config_class)

GOLDEN = os.path.join(ROOT, "tests", "data", "golden.npz")


def inference_config(kind):
    """plain: ResNet-50 at 64 px; cascade: the tiny backbone with three box stages."""
    base = shapes_64px_config_class() if kind == "plain" else tiny_shapes_config_class()
    attrs = dict(NAME="golden_" + kind, IMAGES_PER_GPU=1, DETECTION_MIN_CONFIDENCE=0.0,
                 CASCADE=kind == "cascade", TRAIN_BN=False)
    if kind == "plain":
        attrs["BACKBONE"] = "resnet50"
    return type("Golden", (base,), attrs)()


def training_config(kind):
    """Tiny backbone; every sampled ROI set fixed (see the module docstring). The RPN
    targets are the batch's (numpy, fixed rng), fed as inputs: the graph-side targets
    draw their own sample (tests/test_rpn_targets.py checks them on this batch)."""
    attrs = dict(NAME="golden_train_" + kind, IMAGES_PER_GPU=2, CASCADE=kind == "cascade",
                 WEIGHT_DECAY=0.0, RPN_TARGETS_IN_GRAPH=False,
                 RPN_ANCHOR_RATIOS=[1], RPN_NMS_THRESHOLD=0.5)
    return type("GoldenTrain", (tiny_shapes_config_class(),), attrs)()


def _layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def set_golden_weights(keras_model):
    """Overwrite every weight from a generator seeded by (layer name, weight index)."""
    for layer in _layers(keras_model):
        values = []
        for index, weight in enumerate(layer.weights):
            seed = zlib.crc32("{}/{}".format(layer.name, index).encode())
            rng = np.random.default_rng(seed)
            shape = tuple(weight.shape)
            noise = rng.standard_normal(shape)
            leaf = weight.path.split("/")[-1]
            if leaf in ("gamma", "moving_variance"):
                value = 1.0 + 0.1 * np.abs(noise)
            elif leaf in ("beta", "moving_mean", "bias"):
                value = 0.05 * noise
            else:
                fan_in = max(1, int(np.prod(shape[:-1])))
                value = noise / np.sqrt(fan_in)
                if len(shape) == 4 and shape[2] == 3:
                    value /= 64.0  # the stem sees pixels of +-128: keep activations O(1)
            if layer.name.startswith("mrcnn_class_logits") and leaf == "bias":
                value[0] -= 3.0  # favour objects over background, so there are detections
            values.append(value.astype(weight.dtype))
        if values:
            layer.set_weights(values)


def golden_images():
    ds = ShapesDataset()
    ds.load_shapes(3, 64, 64, seed=7)
    ds.prepare()
    return [ds.load_image(i) for i in ds.image_ids]


def inference_outputs(kind, tmp_dir, images):
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("inference", inference_config(kind), tmp_dir)
    set_golden_weights(model.keras_model)
    out = {}
    for i, r in enumerate(model.detect(images)):
        for key in ("rois", "class_ids", "scores", "masks"):
            out["{}_{}_{}".format(kind, i, key)] = np.asarray(r[key])
    return out


def training_batch(config):
    ds = ShapesDataset()
    ds.load_shapes(6, 64, 64, seed=11)
    ds.prepare()
    return fixed_training_batch(ds, config, np.random.default_rng(3))


def named_outputs(model, outputs):
    """The graph's outputs as {name: value}, whether it returns a dict or a list."""
    if isinstance(outputs, dict):
        return outputs
    return dict(zip(model.output_names, outputs))


@contextlib.contextmanager
def fixed_uniform():
    """tf.random.uniform -> a stateless draw with one fixed seed (see the docstring)."""
    original = tf.random.uniform

    def stateless(shape, minval=0, maxval=None, dtype=tf.float32, seed=None, name=None):
        return tf.random.stateless_uniform(shape, [7, 11], minval, maxval, dtype)

    tf.random.uniform = stateless
    try:
        yield
    finally:
        tf.random.uniform = original


def training_losses(kind, tmp_dir, batch, seed=0):
    keras.utils.set_random_seed(seed)
    config = training_config(kind)
    model = modellib.MaskRCNN("training", config, tmp_dir)
    set_golden_weights(model.keras_model)
    with fixed_uniform():
        outputs = named_outputs(model, model.keras_model(batch, training=True))
    return {"{}_{}".format(kind, name): np.asarray(value)
            for name, value in outputs.items() if "_loss" in name}


def compute_all(tmp_dir):
    images = golden_images()
    out = {"images": np.stack(images)}
    for kind in ("plain", "cascade"):
        out.update(inference_outputs(kind, tmp_dir, images))
        batch = training_batch(training_config(kind))
        out.update({"{}_batch_{}".format(kind, k): v for k, v in batch.items()})
        losses = training_losses(kind, tmp_dir, batch)
        other_seed = training_losses(kind, tmp_dir, batch, seed=99)
        for k in losses:  # the sampling must not depend on the seed
            np.testing.assert_allclose(other_seed[k], losses[k], rtol=1e-6, err_msg=k)
        out.update(losses)
    return out


# ------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return dict(f)


def test_golden_images_unchanged(golden):
    np.testing.assert_array_equal(np.stack(golden_images()), golden["images"])


@pytest.mark.parametrize("kind", ["plain", "cascade"])
def test_golden_detections(golden, kind, tmp_path):
    got = inference_outputs(kind, str(tmp_path), list(golden["images"]))
    for i in range(3):
        key = "{}_{}_".format(kind, i)
        want_ids = golden[key + "class_ids"]
        assert len(want_ids) > 0, "the golden model must detect something"
        np.testing.assert_array_equal(got[key + "class_ids"], want_ids)
        np.testing.assert_allclose(got[key + "scores"], golden[key + "scores"], atol=1e-4)
        # Pixel boxes are rounded: a 1e-5 change may move one coordinate by a pixel.
        np.testing.assert_allclose(got[key + "rois"], golden[key + "rois"], atol=1)
        want_masks = golden[key + "masks"]
        assert got[key + "masks"].shape == want_masks.shape
        differ = np.count_nonzero(got[key + "masks"] != want_masks)
        assert differ <= 0.001 * want_masks.size, (kind, i, differ)


@pytest.mark.parametrize("kind", ["plain", "cascade"])
def test_golden_training_losses(golden, kind, tmp_path):
    config = training_config(kind)
    prefix = "{}_batch_".format(kind)
    batch = {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}
    # The input side (load, resize, RPN targets) still builds the same batch...
    rebuilt = training_batch(config)
    assert sorted(rebuilt) == sorted(batch)
    for k in batch:
        # Molding subtracts the mean in float64 (as Matterport) since the golden file was
        # written in float32: images may differ by one float32 ulp (7.6e-6 at 100-255).
        atol = 2e-5 if k == "input_image" else 1e-6
        np.testing.assert_allclose(rebuilt[k], batch[k], atol=atol, err_msg=k)
    # ... and the graph computes the same losses from it.
    got = training_losses(kind, str(tmp_path), batch)
    want = {k: v for k, v in golden.items()
            if k.startswith(kind + "_") and "_loss" in k}
    assert sorted(got) == sorted(want)
    expected = 9 if kind == "cascade" else 5
    assert len(want) == expected
    for k in want:
        assert np.isfinite(want[k]) and want[k] > 0, k
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write   (only before a change!)")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        values = compute_all(tmp)
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    np.savez_compressed(GOLDEN, **values)
    for key in sorted(values):
        if "_loss" in key:
            print(key, float(values[key]))
    print("wrote", GOLDEN, os.path.getsize(GOLDEN), "bytes")
