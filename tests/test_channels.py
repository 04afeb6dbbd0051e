"""Images with other than 3 channels (IMAGE_CHANNEL_COUNT = 1 for grayscale microscopy,
4 for RGB + infrared): train, checkpoint, detect."""

import numpy as np
import pytest

from mrcnn import model as modellib
from samples.shapes import ShapesDataset
from tiny_models import tiny_shapes_config_class


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
