"""mrcnn.masks: instance masks following resize_image, mini masks, mask IoU."""
import random

import numpy as np
import pytest

from mrcnn import masks
from mrcnn.boxes import extract_bboxes
from mrcnn.preprocess import resize_image


def rect_mask(shape, boxes):
    """Bool [H, W, N] with one filled rectangle (y1, x1, y2, x2), y2/x2 exclusive, each."""
    m = np.zeros(tuple(shape) + (len(boxes),), dtype=bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        m[y1:y2, x1:x2, i] = True
    return m


def test_compute_overlaps_masks():
    m1 = rect_mask((10, 10), [(0, 0, 4, 4), (0, 0, 10, 10)])
    m2 = rect_mask((10, 10), [(0, 0, 2, 4), (5, 5, 10, 10), (0, 0, 0, 0)])
    ov = masks.compute_overlaps_masks(m1, m2)
    np.testing.assert_allclose(ov, [[8 / 16, 0, 0], [8 / 100, 25 / 100, 0]], rtol=1e-6)
    assert masks.compute_overlaps_masks(m1, m2[..., :0]).shape == (2, 0)
    assert masks.compute_overlaps_masks(m1[..., :0], m2).shape == (0, 3)


@pytest.mark.parametrize("mode", ["none", "square", "pad64", "crop"])
def test_resize_mask_consistent_with_resize_image(mode):
    img = np.zeros((48, 80, 3), np.uint8)
    img[10:30, 20:60] = 255
    mask = rect_mask((48, 80), [(10, 20, 30, 60)])
    random.seed(5)
    out, window, scale, padding, crop = resize_image(img, min_dim=64, max_dim=128,
                                                           mode=mode)
    rmask = masks.resize_mask(mask, scale, padding, crop)
    assert rmask.shape[:2] == out.shape[:2] and rmask.dtype == bool
    # Where the resized image is bright, the resized mask is set (up to edge pixels).
    bright = out[..., 0] > 127
    agree = np.mean(bright == rmask[..., 0])
    assert agree > 0.98
    box = extract_bboxes(rmask)[0]
    if crop is None:
        expected = np.array([10, 20, 30, 60]) * scale + np.array(window[:2] * 2)
        np.testing.assert_allclose(box, expected, atol=1.5)


def test_resize_mask_scale_1_is_padding_only():
    mask = rect_mask((5, 6), [(1, 1, 3, 4), (0, 0, 5, 6)])
    out = masks.resize_mask(mask, 1, [(2, 1), (0, 3), (0, 0)])
    assert out.shape == (8, 9, 2)
    np.testing.assert_array_equal(out[2:7, 0:6], mask)
    assert out.sum() == mask.sum()


@pytest.mark.parametrize("scale", [2.0, 1.5, 0.5, 0.37, 3.3, 64 / 48, 1388 / 1040])
def test_resize_mask_equals_scipy_zoom_then_crop_or_pad(scale):
    # The gather must reproduce Matterport's zoom-whole-stack-then-crop exactly, on
    # random (not just rectangular) masks, for odd sizes and awkward scales.
    import scipy.ndimage
    rng = np.random.default_rng(int(scale * 1000))
    for shape in [(48, 80, 3), (37, 23, 2), (1, 9, 1), (61, 61, 4)]:
        mask = rng.random(shape) > 0.6
        ref = scipy.ndimage.zoom(mask, [scale, scale, 1], order=0)
        padding = [(3, 1), (0, 5), (0, 0)]
        np.testing.assert_array_equal(masks.resize_mask(mask, scale, padding),
                                      np.pad(ref, padding))
        h, w = ref.shape[:2]
        for y, x in [(0, 0), (h // 3, w // 2), (h - min(h, 7), w - min(w, 5))]:
            crop = (y, x, min(h, 7), min(w, 5))
            np.testing.assert_array_equal(masks.resize_mask(mask, scale, padding, crop),
                                          ref[y:y + crop[2], x:x + crop[3]])


def test_minimize_expand_round_trip_rectangle():
    mask = rect_mask((40, 50), [(5, 7, 25, 40), (30, 0, 40, 3)])
    bbox = extract_bboxes(mask)
    mini = masks.minimize_mask(bbox, mask, (14, 14))
    assert mini.shape == (14, 14, 2) and mini.dtype == bool and mini.all()
    back = masks.expand_mask(bbox, mini, (40, 50, 3))
    np.testing.assert_array_equal(back, mask)


def test_minimize_mask_half_filled_box():
    mask = np.zeros((20, 20, 1), bool)
    mask[0:20, 0:10, 0] = True  # left half of its box
    mini = masks.minimize_mask(np.array([[0, 0, 20, 20]]), mask, (4, 4))
    np.testing.assert_array_equal(mini[..., 0], [[1, 1, 0, 0]] * 4)
    with pytest.raises(ValueError, match="area zero"):
        masks.minimize_mask(np.array([[3, 3, 3, 8]]), mask, (4, 4))
