"""Images with other than 3 channels (IMAGE_CHANNEL_COUNT = 1 for grayscale microscopy,
4 for RGB + infrared): train, checkpoint, detect."""

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn import weights
from samples.shapes import ShapesDataset
from tiny_models import small_resnet_config_class, tiny_shapes_config_class


class ChannelShapes(ShapesDataset):
    """Shapes whose images have ``channels`` planes: the gray level, then (for 4) the
    three colour planes."""

    channels = 1

    def load_image(self, image_id):
        rgb = super().load_image(image_id).astype(np.float32)
        gray = rgb.mean(axis=-1, keepdims=True)
        planes = gray if self.channels == 1 else np.concatenate([gray, rgb], axis=-1)
        return planes.astype(np.uint8)


def _config(channels):
    class ChannelConfig(tiny_shapes_config_class()):
        NAME = "channels{}".format(channels)
        IMAGE_CHANNEL_COUNT = channels
        MEAN_PIXEL = np.linspace(100.0, 130.0, channels)
        STEPS_PER_EPOCH = 2

    return ChannelConfig


def _dataset(channels, count, seed):
    dataset = ChannelShapes()
    dataset.channels = channels
    dataset.load_shapes(count, 64, 64, seed=seed)
    dataset.prepare()
    return dataset


@pytest.mark.parametrize("channels", [1, 4])
def test_train_and_detect_with_other_channel_counts(channels, tmp_path):
    config = _config(channels)()
    train, val = _dataset(channels, 4, 1), _dataset(channels, 2, 2)

    image, meta, class_ids, boxes, masks = modellib.load_image_gt(train, config, 0)
    assert image.shape == (64, 64, channels)
    molded = modellib.mold_image(image, config)
    np.testing.assert_allclose(molded[10, 20], image[10, 20] - config.MEAN_PIXEL, rtol=1e-6)

    model = modellib.MaskRCNN("training", config, str(tmp_path))
    first_conv = model.keras_model.get_layer("tiny_c1")
    assert first_conv.kernel.shape[2] == channels
    history = model.train(train, val, learning_rate=config.LEARNING_RATE, epochs=1,
                          layers="all", verbose=0)
    assert np.isfinite(history.history["loss"]).all()

    inference = type("Infer", (type(config),), {"IMAGES_PER_GPU": 1})()
    detector = modellib.MaskRCNN("inference", inference, str(tmp_path))
    detector.load_weights(model.find_last(), by_name=True)
    np.testing.assert_array_equal(detector.keras_model.get_layer("tiny_c1").kernel.numpy(),
                                  first_conv.kernel.numpy())
    raw = val.load_image(0)[:50, :40]           # not the training size: resized, unmolded
    r = detector.detect([raw])[0]
    n = len(r["class_ids"])
    assert r["masks"].shape == (50, 40, n) and r["rois"].shape == (n, 4)
    assert (r["rois"] >= 0).all() and (r["rois"][:, 2] <= 50).all()
    assert (r["rois"][:, 3] <= 40).all()

    wrong = np.zeros((64, 64, 2), np.uint8)
    with pytest.raises(ValueError, match="IMAGE_CHANNEL_COUNT"):
        detector.detect([wrong])


# ---------------------------------------------------------------- pretrained RGB weights
def test_adapt_input_kernel_rule():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(7, 7, 3, 5)).astype(np.float32)
    four = weights.adapt_input_kernel(kernel, 4)
    assert four.shape == (7, 7, 4, 5)
    np.testing.assert_array_equal(four[:, :, :3], kernel)
    np.testing.assert_allclose(four[:, :, 3], kernel.mean(axis=2), rtol=1e-6)
    six = weights.adapt_input_kernel(kernel, 6)
    for plane in range(3, 6):   # three extra planes share one plane's weight
        np.testing.assert_allclose(six[:, :, plane], kernel.mean(axis=2) / 3, rtol=1e-6)
    gray = weights.adapt_input_kernel(kernel, 1)
    np.testing.assert_allclose(gray[:, :, 0], kernel.sum(axis=2), rtol=1e-6)
    np.testing.assert_array_equal(weights.adapt_input_kernel(kernel, 3), kernel)
    with pytest.raises(ValueError, match="kernel must be"):
        weights.adapt_input_kernel(kernel[:, :, :2], 4)


def _resnet_inference(channels, mean_pixel, tmp_path):
    base = small_resnet_config_class()
    config = type("Resnet{}".format(channels), (base,), {
        "IMAGE_CHANNEL_COUNT": channels, "MEAN_PIXEL": np.asarray(mean_pixel, float),
        "IMAGES_PER_GPU": 1})()
    return modellib.MaskRCNN("inference", config, str(tmp_path))


def _graph_outputs(model, image):
    molded, metas, _ = model.mold_inputs([image])
    out = model.keras_model([molded.astype(np.float32), metas.astype(np.float32)],
                            training=False)
    return {k: keras.ops.convert_to_numpy(out[k])
            for k in ("rpn_class", "rpn_bbox", "mrcnn_class", "detections")}


def test_rgb_weights_into_four_channels_keep_the_rgb_response(tmp_path):
    """A 4-channel model loading 3-channel weights: conv1 adapted (not skipped), and an
    image whose 4th plane equals its MEAN_PIXEL gives the RGB model's outputs."""
    keras.utils.set_random_seed(3)
    rgb_mean = [120.0, 110.0, 100.0]
    rgb = _resnet_inference(3, rgb_mean, tmp_path / "rgb")
    path = str(tmp_path / "rgb.h5")
    weights.save_weights_h5(rgb.keras_model, path)
    four = _resnet_inference(4, rgb_mean + [80.0], tmp_path / "four")
    report = four.load_weights(path, by_name=True, verbose=0)
    assert [a[0] for a in report.adapted_channels] == ["conv1"]
    assert "conv1" in report.loaded and not report.skipped_shape_mismatch
    assert "adapted to 4 input channels" in report.summary()
    kernel = four.keras_model.get_layer("conv1").kernel.numpy()
    source = rgb.keras_model.get_layer("conv1").kernel.numpy()
    np.testing.assert_allclose(kernel, weights.adapt_input_kernel(source, 4), rtol=1e-6)

    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    extra = np.full((64, 64, 1), 80, np.uint8)
    want = _graph_outputs(rgb, image)
    got = _graph_outputs(four, np.concatenate([image, extra], axis=-1))
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # A different 4th plane changes the response: the new plane is live, not zeroed.
    other = _graph_outputs(four, np.concatenate([image, extra + 100], axis=-1))
    assert np.abs(other["rpn_class"] - want["rpn_class"]).max() > 1e-4


def test_rgb_weights_into_grayscale_match_the_replicated_image(tmp_path):
    keras.utils.set_random_seed(4)
    rgb = _resnet_inference(3, [110.0] * 3, tmp_path / "rgb")
    path = str(tmp_path / "rgb.h5")
    weights.save_weights_h5(rgb.keras_model, path)
    gray = _resnet_inference(1, [110.0], tmp_path / "gray")
    assert [a[0] for a in gray.load_weights(path, by_name=True).adapted_channels] == ["conv1"]
    plane = np.random.default_rng(2).integers(0, 256, (64, 64, 1)).astype(np.uint8)
    want = _graph_outputs(rgb, np.repeat(plane, 3, axis=-1))
    got = _graph_outputs(gray, plane)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)
