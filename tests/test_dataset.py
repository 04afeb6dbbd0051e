"""mrcnn.dataset.Dataset (utils.Dataset): source maps, image loading conversions and error
messages."""
import logging

import numpy as np
import pytest
from PIL import Image

from mrcnn.utils import Dataset, DatasetError


def two_source_dataset():
    ds = Dataset()
    ds.add_class("a", 1, "cat")
    ds.add_class("a", 2, "dog")
    ds.add_class("b", 1, "car,automobile")
    ds.add_class("b", 2, "bus")
    ds.add_class("a", 1, "cat again")  # same (source, id): ignored
    ds.add_image("a", 10, "/x/a10.png", width=4)
    ds.add_image("b", 10, "/x/b10.png")
    ds.add_image("b", "img-7", "/x/b7.png")
    return ds


def test_prepare_two_sources_with_overlapping_class_ids():
    ds = two_source_dataset()
    ds.prepare()
    assert ds.num_classes == 5
    np.testing.assert_array_equal(ds.class_ids, [0, 1, 2, 3, 4])
    assert ds.class_names == ["BG", "cat", "dog", "car", "bus"]
    assert ds.num_images == 3
    np.testing.assert_array_equal(ds.image_ids, [0, 1, 2])
    assert ds.class_from_source_map == {".0": 0, "a.1": 1, "a.2": 2, "b.1": 3, "b.2": 4}
    assert ds.image_from_source_map == {"a.10": 0, "b.10": 1, "b.img-7": 2}
    assert ds.sources == ["", "a", "b"]
    assert ds.source_class_ids == {"": [0], "a": [0, 1, 2], "b": [0, 3, 4]}
    assert ds.map_source_class_id("b.1") == 3
    assert ds.map_source_class_id("a.2") == 2
    assert ds.get_source_class_id(3, "b") == 1
    assert ds.get_source_class_id(2, "a") == 2
    assert ds.image_info[0]["width"] == 4
    assert ds.source_image_link(1) == "/x/b10.png"
    assert ds.image_reference(0) == ""
    ds.check_ready()


def test_source_map_errors():
    ds = two_source_dataset()
    ds.prepare()
    with pytest.raises(KeyError, match="c.1"):
        ds.map_source_class_id("c.1")
    with pytest.raises(DatasetError, match="source 'b'"):
        ds.get_source_class_id(3, "a")
    with pytest.raises(DatasetError, match="dot"):
        ds.add_class("a.b", 1, "x")


def test_empty_dataset_prepares_but_is_not_ready():
    ds = Dataset()
    ds.prepare()
    assert ds.num_classes == 1 and ds.num_images == 0 and ds.class_names == ["BG"]
    with pytest.raises(DatasetError, match="no classes besides BG"):
        ds.check_ready()
    ds.add_class("a", 1, "cat")
    ds.prepare()
    with pytest.raises(DatasetError, match="no images"):
        ds.check_ready()


def test_check_ready_needs_prepare_after_changes():
    ds = Dataset()
    with pytest.raises(DatasetError, match="prepare"):
        ds.check_ready()
    ds = two_source_dataset()
    ds.prepare()
    ds.add_image("a", 11, "/x/a11.png")
    with pytest.raises(DatasetError, match="prepare"):
        ds.check_ready()
    ds.prepare()
    ds.check_ready()


def test_check_ready_image_source_without_classes():
    ds = two_source_dataset()
    ds.add_image("c", 5, "/x/c5.png")
    ds.prepare()
    with pytest.raises(DatasetError) as e:
        ds.check_ready()
    msg = str(e.value)
    assert "image 3" in msg and "/x/c5.png" in msg and "'c'" in msg


def test_default_load_mask_warns_and_is_empty(caplog):
    ds = two_source_dataset()
    ds.prepare()
    with caplog.at_level(logging.WARNING):
        mask, class_ids = ds.load_mask(0)
    assert "load_mask" in caplog.text
    assert mask.shape == (0, 0, 0)
    assert class_ids.shape == (0,) and class_ids.dtype == np.int32


# ---------------------------------------------------------------- load_image

def dataset_with(paths):
    ds = Dataset()
    ds.add_class("t", 1, "thing")
    for i, p in enumerate(paths):
        ds.add_image("t", "img{}".format(i), str(p))
    ds.prepare()
    return ds


def rgb_pattern(h=6, w=8):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y * 40, x * 30, (y + x) * 10], axis=-1).astype(np.uint8)


def test_load_image_rgb_png(tmp_path):
    rgb = rgb_pattern()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img = dataset_with([tmp_path / "rgb.png"]).load_image(0)
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, rgb)


def test_load_image_gray_to_rgb(tmp_path):
    gray = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    img = dataset_with([tmp_path / "g.png"]).load_image(0)
    assert img.shape == (6, 8, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_load_image_rgba_drops_alpha(tmp_path):
    rgb = rgb_pattern()
    alpha = np.full(rgb.shape[:2] + (1,), 17, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], -1), mode="RGBA").save(tmp_path / "a.png")
    la = np.stack([rgb[..., 0], alpha[..., 0]], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    ds = dataset_with([tmp_path / "a.png", tmp_path / "la.png"])
    np.testing.assert_array_equal(ds.load_image(0), rgb)
    img = ds.load_image(1)
    assert img.shape == (6, 8, 3)
    np.testing.assert_array_equal(img[..., 2], rgb[..., 0])


def test_load_image_16bit_scaled_to_8bit(tmp_path):
    g16 = np.array([[0, 257, 65535, 32896], [514, 1000, 60000, 65280]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    img = dataset_with([tmp_path / "g16.png"]).load_image(0)
    assert img.dtype == np.uint8 and img.shape == (2, 4, 3)
    expected = np.round(g16 / 257.0).astype(np.uint8)  # 0, 1, 255, 128, 2, 4, 233, 254
    np.testing.assert_array_equal(img[..., 0], expected)
    np.testing.assert_array_equal(img[..., 1], expected)


def test_load_image_palette_and_bilevel(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    p = Image.fromarray(idx, mode="P")
    p.putpalette(palette)
    p.save(tmp_path / "p.png")
    p.info["transparency"] = 1
    p.save(tmp_path / "pt.png", transparency=1)
    Image.fromarray(np.array([[True, False], [False, True]])).save(tmp_path / "b.png")
    ds = dataset_with([tmp_path / "p.png", tmp_path / "pt.png", tmp_path / "b.png"])
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(ds.load_image(0), colours[idx])
    np.testing.assert_array_equal(ds.load_image(1), colours[idx])
    np.testing.assert_array_equal(ds.load_image(2)[..., 1], [[255, 0], [0, 255]])


def test_load_image_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "c.jpg", quality=100)
    img = dataset_with([tmp_path / "c.jpg"]).load_image(0)
    assert img.shape == (6, 8, 3) and img.dtype == np.uint8
    assert np.all(img[..., 0] > 230) and np.all(img[..., 1:] < 25)


def test_load_image_png_with_jpg_extension(tmp_path):
    rgb = rgb_pattern()
    Image.fromarray(rgb).save(tmp_path / "really_png.jpg", format="PNG")
    img = dataset_with([tmp_path / "really_png.jpg"]).load_image(0)
    np.testing.assert_array_equal(img, rgb)  # lossless: read as PNG, not JPEG


def test_load_image_jpeg_close_to_source(tmp_path):
    rgb = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "j.jpg", quality=95)
    img = dataset_with([tmp_path / "j.jpg"]).load_image(0)
    assert np.abs(img.astype(int) - rgb).max() <= 3


# ---------------------------------------------------------------- load_image errors

def _assert_error_names(excinfo, image_id, path):
    msg = str(excinfo.value)
    assert "image {}".format(image_id) in msg, msg
    assert str(path) in msg, msg
    assert isinstance(excinfo.value, ValueError)


def test_load_image_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(DatasetError) as e:
        dataset_with([path]).load_image(0)
    _assert_error_names(e, 0, path)


def test_load_image_zero_byte_and_not_an_image(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("hello, not an image")
    ds = dataset_with([empty, text])
    with pytest.raises(DatasetError) as e:
        ds.load_image(0)
    _assert_error_names(e, 0, empty)
    with pytest.raises(DatasetError) as e:
        ds.load_image(1)
    _assert_error_names(e, 1, text)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_load_image_truncated(tmp_path, fmt, ext):
    rng = np.random.default_rng(0)
    full = tmp_path / ("full." + ext)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / ("cut." + ext)
    cut.write_bytes(data[:len(data) // 2])
    ds = dataset_with([full, cut])
    assert ds.load_image(0).shape == (64, 64, 3)
    with pytest.raises(DatasetError) as e:
        ds.load_image(1)
    _assert_error_names(e, 1, cut)


def test_load_image_bad_image_id(tmp_path):
    ds = dataset_with([])
    with pytest.raises(DatasetError, match="no image with id 3"):
        ds.load_image(3)


def test_absent_optional_decoder_imports_fail_without_the_import_machinery():
    # imageio's Pillow plugin tries pillow_heif on every read: absent, it must fail from
    # sys.modules (no path search under import locks in every loader thread).
    import importlib
    import sys
    from mrcnn import dataset as mdataset
    mdataset._fail_absent_optional_imports_fast(("mrcnn_no_such_module",))
    assert sys.modules["mrcnn_no_such_module"] is None
    with pytest.raises(ImportError, match="halted"):
        importlib.import_module("mrcnn_no_such_module")
    mdataset._fail_absent_optional_imports_fast(("numpy",))      # present: left alone
    assert sys.modules["numpy"] is np
    del sys.modules["mrcnn_no_such_module"]
