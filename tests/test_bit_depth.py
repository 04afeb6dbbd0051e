"""Images wider than 8 bits and floats: the rule that maps them to uint8
(mrcnn.preprocess.image_to_uint8, Config.IMAGE_BIT_DEPTH), shared by Dataset.load_image,
the training pipeline and detect()."""
import warnings

import numpy as np
import pytest
import skimage.io

from mrcnn import data
from mrcnn.config import Config
from mrcnn.dataset import Dataset
from mrcnn.preprocess import BitDepthWarning, check_images, image_to_uint8, mold_inputs

RNG = np.random.default_rng(0)
TWELVE_BIT = RNG.integers(0, 4096, (32, 48), dtype=np.uint16)
TWELVE_BIT[0, 0] = 4095


def scaled(values, top):
    return np.round(values.astype(np.float64) * 255.0 / top).astype(np.uint8)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_twelve_bit_data_in_sixteen_bit_uses_its_range_and_warns():
    with pytest.warns(BitDepthWarning, match=r"frame 3: uint16 .* up to 4095 taken as 12-bit"):
        out = image_to_uint8(TWELVE_BIT, name="frame 3")
    np.testing.assert_array_equal(out, scaled(TWELVE_BIT, 4095))
    assert out.max() == 255
    # The old rule (x 255/65535) left at most 16 grey levels.
    assert len(np.unique(out)) > 200 and len(np.unique(TWELVE_BIT // 257)) <= 16


def test_sixteen_bit_image_below_256_passes_unchanged():
    low = RNG.integers(0, 256, (20, 20, 3)).astype(np.uint16)
    out = quiet(image_to_uint8, low)
    np.testing.assert_array_equal(out, low.astype(np.uint8))
    # So detect() sees exactly what it sees for the same picture in 8 bits.
    config = type("C", (Config,), {"NAME": "c", "IMAGE_MIN_DIM": 64,
                                   "IMAGE_MAX_DIM": 64})()
    a = mold_inputs(check_images([low], 3, config.IMAGE_BIT_DEPTH), config)[0]
    b = mold_inputs(check_images([low.astype(np.uint8)], 3), config)[0]
    np.testing.assert_array_equal(a, b)


def test_full_sixteen_bit_range_and_eight_bit_need_no_guess():
    full = RNG.integers(0, 65536, (10, 10), dtype=np.uint16)
    full[0, 0] = 65535
    np.testing.assert_array_equal(quiet(image_to_uint8, full), scaled(full, 65535))
    eight = RNG.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    for rule in ("auto", 12, "range", "percentile"):
        assert quiet(image_to_uint8, eight, rule) is eight


def test_floats():
    unit = RNG.random((8, 8)).astype(np.float32)
    np.testing.assert_array_equal(quiet(image_to_uint8, unit), scaled(unit, 1.0))
    byte_range = (unit * 200).astype(np.float64)
    np.testing.assert_array_equal(quiet(image_to_uint8, byte_range),
                                  np.round(byte_range).astype(np.uint8))
    wide = (unit * 3000 - 500).astype(np.float32)
    with pytest.warns(BitDepthWarning, match="stretched from its own range"):
        out = image_to_uint8(wide)
    want = np.round((wide.astype(np.float64) - wide.min()) * 255 / (wide.max() - wide.min()))
    np.testing.assert_array_equal(out, want.astype(np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        image_to_uint8(np.float32([[0, np.nan]]))


def test_fixed_and_stretch_rules():
    dark = (TWELVE_BIT // 4).astype(np.uint16)        # a dark 12-bit frame: max 1023
    np.testing.assert_array_equal(quiet(image_to_uint8, dark, 12), scaled(dark, 4095))
    np.testing.assert_array_equal(quiet(image_to_uint8, np.uint16([[5000]]), 12), [[255]])
    rng_out = quiet(image_to_uint8, dark + 100, "range")
    assert rng_out.min() == 0 and rng_out.max() == 255
    hot = TWELVE_BIT.copy()
    hot[1, 1] = 65535                                 # one hot pixel
    pct = quiet(image_to_uint8, hot, "percentile")
    low, high = np.percentile(hot, [0.5, 99.5])
    want = np.clip(np.round((hot - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pct, want)
    for bad in (7, 33, "linear", True):
        with pytest.raises(ValueError, match="IMAGE_BIT_DEPTH"):
            image_to_uint8(dark, bad)
    with pytest.raises(ValueError, match="IMAGE_BIT_DEPTH"):
        type("C", (Config,), {"NAME": "c", "IMAGE_BIT_DEPTH": "linear"})()


class Files(Dataset):
    def __init__(self, paths):
        super().__init__()
        self.add_class("f", 1, "thing")
        for i, p in enumerate(paths):
            self.add_image("f", i, str(p))
        self.prepare()

    def load_mask(self, image_id):
        mask = np.zeros((32, 48, 1), bool)
        mask[4:12, 4:12] = True
        return mask, np.array([1], np.int32)


def test_dataset_files_follow_the_dataset_or_the_config_rule(tmp_path):
    path = tmp_path / "frame.png"
    dark = (TWELVE_BIT // 4).astype(np.uint16)
    skimage.io.imsave(str(path), dark, check_contrast=False)
    ds = Files([path])
    with pytest.warns(BitDepthWarning, match=r"Files image 0 .*frame.png.* taken as 10-bit"):
        auto = ds.load_image(0)
    np.testing.assert_array_equal(auto[..., 0], scaled(dark, 1023))
    # A model's config with a fixed depth: training and evaluation read by that rule.
    config = type("C", (Config,), {"NAME": "c", "NUM_CLASSES": 2, "IMAGE_BIT_DEPTH": 12,
                                   "IMAGE_MIN_DIM": 64, "IMAGE_MAX_DIM": 64})()
    data.check_dataset(ds, "dataset", config)
    fixed = quiet(ds.load_image, 0)
    np.testing.assert_array_equal(fixed[..., 0], scaled(dark, 4095))
    image = data.load_image_gt(ds, config, 0)[0]
    want = check_images([dark], 3, config.IMAGE_BIT_DEPTH)[0]
    # The training image is the detect() conversion, resized the same way.
    molded = mold_inputs([want], config)[0][0] + config.MEAN_PIXEL
    np.testing.assert_allclose(image, molded, atol=1e-3)
    # A rule set on the dataset wins over the config.
    ds.image_bit_depth = "range"
    assert ds.load_image(0)[..., 0].max() == 255 and ds.load_image(0)[..., 0].min() == 0


def test_custom_loader_raw_arrays_get_the_config_rule():
    class Raw(Files):
        def load_image(self, image_id):
            return TWELVE_BIT[..., None].repeat(3, axis=-1)

    config = type("C", (Config,), {"NAME": "c", "NUM_CLASSES": 2, "IMAGE_BIT_DEPTH": 12,
                                   "IMAGE_MIN_DIM": 64, "IMAGE_MAX_DIM": 64})()
    image = data.load_image_gt(Raw(["unused"]), config, 0)[0]
    assert image.dtype == np.uint8
    molded = mold_inputs(check_images([TWELVE_BIT], 3, 12), config)[0][0] + config.MEAN_PIXEL
    np.testing.assert_allclose(image, molded, atol=1e-3)
