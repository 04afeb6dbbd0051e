"""mrcnn.masks: instance masks following resize_image, mini masks, mask IoU, polygons."""
import os
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


# ------------------------------------------------------------------ polygon rasterisation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("MRCNN_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
BALLOON_TRAIN = os.path.join(SHARED_DATA, "balloon", "train")


def assert_polygon_like_skimage(rows, cols, shape):
    """polygon_pixels and polygon_mask give exactly skimage.draw.polygon's pixels."""
    import skimage.draw
    rr, cc = skimage.draw.polygon(rows, cols, shape)
    got_rr, got_cc = masks.polygon_pixels(rows, cols, shape)
    assert got_rr.dtype == rr.dtype and got_cc.dtype == cc.dtype
    np.testing.assert_array_equal(got_rr, rr)  # same pixels in the same order
    np.testing.assert_array_equal(got_cc, cc)
    if shape is not None:
        expected = np.zeros(shape[:2], dtype=bool)
        expected[rr, cc] = True
        got = masks.polygon_mask(rows, cols, shape)
        assert got.shape == tuple(shape[:2]) and got.dtype == bool
        np.testing.assert_array_equal(got, expected)
    return len(rr)


def random_polygon(rng, kind):
    """(rows, cols) of a random polygon (vertex order random: mostly self-intersecting),
    coordinates partly outside a <= 40 px image."""
    n = int(rng.integers(3, 41))
    if kind == "float":
        return rng.uniform(-8, 44, n), rng.uniform(-8, 44, n)
    if kind == "integer":  # crossings and vertices exactly on pixels
        return rng.integers(-4, 40, n).astype(np.float64), rng.integers(-4, 40, n) * 1.0
    if kind == "half":
        return rng.integers(-8, 80, n) / 2, rng.integers(-8, 80, n) / 2
    if kind == "near_integer":  # at, just inside and just outside skimage's vertex eps
        jitter = np.array([0, 1e-13, -1e-13, 9.9e-13, -1e-12, 1e-12, 3e-12, 1e-9])
        return (rng.integers(-4, 40, n) + rng.choice(jitter, n),
                rng.integers(-4, 40, n) + rng.choice(jitter, n))
    if kind == "float32":
        return (rng.uniform(-8, 44, n).astype(np.float32),
                rng.uniform(-8, 44, n).astype(np.float32))
    if kind == "int":
        return rng.integers(-4, 40, n), rng.integers(-4, 40, n)
    if kind == "degenerate":  # repeated vertices, horizontal / vertical runs, < 3 points
        rows, cols = rng.integers(-2, 38, n) / 2.0, rng.integers(-2, 38, n) / 2.0
        rows[1::3] = rows[0::3][:len(rows[1::3])]  # horizontal edges
        idx = np.sort(rng.integers(0, n, n))  # repeats
        m = int(rng.integers(1, 4)) if rng.random() < 0.3 else n
        return rows[idx][:m], cols[idx][:m]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["float", "integer", "half", "near_integer", "float32",
                                  "int", "degenerate"])
def test_polygon_matches_skimage_random(kind):
    rng = np.random.default_rng(["float", "integer", "half", "near_integer", "float32",
                                 "int", "degenerate"].index(kind))
    total = 0
    for i in range(250):
        rows, cols = random_polygon(rng, kind)
        shape = (None if i % 10 == 0 else
                 (int(rng.integers(1, 41)), int(rng.integers(1, 41)), 3))
        total += assert_polygon_like_skimage(rows, cols, shape)
    assert total > 0


def test_polygon_hand_made_cases():
    # Square on integer coordinates: skimage (0.26) counts the boundary as inside.
    assert assert_polygon_like_skimage([2, 2, 6, 6], [2, 6, 6, 2], (10, 10)) == 25
    np.testing.assert_array_equal(np.nonzero(masks.polygon_mask([2, 2, 6, 6], [2, 6, 6, 2],
                                                                (10, 10))[:, 4])[0],
                                  [2, 3, 4, 5, 6])
    # Triangle with a horizontal edge on row 1, and one on a half row.
    assert_polygon_like_skimage([1, 1, 7], [1, 8, 4], (10, 10))
    assert masks.polygon_mask([1, 1, 7], [1, 8, 4], (10, 10))[1, 1:9].all()
    assert_polygon_like_skimage([1.5, 1.5, 7.2], [0.5, 8.5, 4], (10, 10))
    # Wholly outside (above, left, right, below the image): nothing.
    for rows, cols in [([-9, -5, -8], [3, 6, 9]), ([2, 5, 8], [-7, -1.5, -3]),
                       ([2, 5, 8], [12, 15, 20]), ([11, 14, 19], [2, 5, 8])]:
        assert assert_polygon_like_skimage(rows, cols, (10, 10)) == 0
        assert not masks.polygon_mask(rows, cols, (10, 10)).any()
    # Partly outside with negative coordinates, covering the whole image.
    assert assert_polygon_like_skimage([-5, -5, 20, 20], [-3, 30, 30, -3], (10, 12)) == 120
    # Fewer than 3 vertices: skimage's rule gives the vertices (and nothing else here).
    assert assert_polygon_like_skimage([4], [3], (10, 10)) == 1
    assert_polygon_like_skimage([1, 6], [2, 2], (10, 10))
    # Coordinates far beyond the image: skimage's rounding, found by bisection here.
    assert_polygon_like_skimage([0, 25.3, 20], [-1e16, 3, 1e16 + 2], (30, 30))
    assert_polygon_like_skimage([-1e17, 1e17, 5.0, 12.5], [-3e15, 7e16, 1e17, 2.5], (30, 30))
    # Shapes of an empty image, and bad vertex arrays.
    assert masks.polygon_mask([1, 2, 3], [1, 5, 2], (0, 7)).shape == (0, 7)
    with pytest.raises(ValueError, match="same length"):
        masks.polygon_mask([1, 2, 3], [1, 2], (5, 5))
    with pytest.raises(ValueError, match="no vertices"):
        masks.polygon_pixels([], [], (5, 5))


def test_polygon_mask_matches_skimage_on_balloon_annotations():
    if not os.path.isdir(BALLOON_TRAIN):
        pytest.skip("balloon annotations not found: {}".format(BALLOON_TRAIN))
    import skimage.draw
    from mrcnn.datasets import ViaDataset
    ds = ViaDataset()
    ds.load_via(BALLOON_TRAIN)
    n = 0
    for info in ds.image_info:
        shape = (info["height"], info["width"])
        for poly in info["polygons"]:
            # As ViaDataset.load_mask: continuous coordinates to pixel indices.
            rows = np.asarray(poly["all_points_y"]) - 0.5
            cols = np.asarray(poly["all_points_x"]) - 0.5
            expected = np.zeros(shape, dtype=bool)
            expected[skimage.draw.polygon(rows, cols, shape)] = True
            np.testing.assert_array_equal(masks.polygon_mask(rows, cols, shape), expected)
            n += 1
    assert n > 100
