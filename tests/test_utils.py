"""Hand-computed checks of the numpy utilities in mrcnn.utils."""
import math
import random

import numpy as np
import skimage.transform
import pytest

from mrcnn import utils
from mrcnn.config import Config


def rect_mask(shape, boxes):
    """Bool [H, W, N] with one filled rectangle (y1, x1, y2, x2), y2/x2 exclusive, each."""
    m = np.zeros(tuple(shape) + (len(boxes),), dtype=bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        m[y1:y2, x1:x2, i] = True
    return m


# ---------------------------------------------------------------- boxes

def test_extract_bboxes_rectangles_and_empty():
    m = rect_mask((10, 12), [(2, 3, 5, 7), (0, 0, 0, 0), (0, 11, 10, 12)])
    m[7, 1, 1] = False  # instance 1 stays empty
    boxes = utils.extract_bboxes(m)
    assert boxes.dtype == np.int32
    np.testing.assert_array_equal(boxes, [[2, 3, 5, 7], [0, 0, 0, 0], [0, 11, 10, 12]])


def test_extract_bboxes_irregular_shape_matches_loop():
    rng = np.random.default_rng(0)
    m = rng.random((20, 15, 6)) > 0.97
    m[..., 5] = False
    expected = []
    for i in range(6):
        ys, xs = np.nonzero(m[..., i])
        expected.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1] if ys.size
                        else [0, 0, 0, 0])
    np.testing.assert_array_equal(utils.extract_bboxes(m), expected)
    assert utils.extract_bboxes(np.zeros((5, 5, 0), bool)).shape == (0, 4)


def test_compute_iou_known_values():
    box = np.array([0, 0, 10, 10])
    boxes = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10]])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = utils.compute_iou(box, boxes, 100, areas)
    np.testing.assert_allclose(iou, [25 / 175, 1.0, 0.0, 0.5])


def test_compute_overlaps_matrix():
    b1 = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0]], np.float32)
    b2 = np.array([[0, 0, 10, 10], [0, 5, 10, 15]], np.float32)
    ov = utils.compute_overlaps(b1, b2)
    assert ov.shape == (3, 2) and ov.dtype == np.float64
    np.testing.assert_allclose(ov, [[1.0, 50 / 150], [25 / 175, 50 / 150], [0.0, 0.0]],
                               rtol=1e-6)
    assert utils.compute_overlaps(np.zeros((0, 4)), b2).shape == (0, 2)


def test_compute_overlaps_equals_column_wise_compute_iou_exactly():
    # Matterport fills the matrix column by column with compute_iou; the vectorised
    # version must give bit-identical values (float32 and integer inputs).
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.int32):
        # [[y1, x1], [y2, x2]] with y1 <= y2, x1 <= x2, flattened to (y1, x1, y2, x2).
        b1 = np.sort(rng.uniform(0, 50, (7, 2, 2)), axis=1).reshape(7, 4).astype(dtype)
        b2 = np.sort(rng.uniform(0, 50, (5, 2, 2)), axis=1).reshape(5, 4).astype(dtype)
        assert np.all(b1[:, 2:] >= b1[:, :2]) and np.all(b2[:, 2:] >= b2[:, :2])
        a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
        a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
        ref = np.zeros((7, 5))
        for j in range(5):
            ref[:, j] = utils.compute_iou(b2[j], b1, a2[j], a1)
        np.testing.assert_array_equal(utils.compute_overlaps(b1, b2), ref)


def test_compute_overlaps_masks():
    m1 = rect_mask((10, 10), [(0, 0, 4, 4), (0, 0, 10, 10)])
    m2 = rect_mask((10, 10), [(0, 0, 2, 4), (5, 5, 10, 10), (0, 0, 0, 0)])
    ov = utils.compute_overlaps_masks(m1, m2)
    np.testing.assert_allclose(ov, [[8 / 16, 0, 0], [8 / 100, 25 / 100, 0]], rtol=1e-6)
    assert utils.compute_overlaps_masks(m1, m2[..., :0]).shape == (2, 0)
    assert utils.compute_overlaps_masks(m1[..., :0], m2).shape == (0, 3)


def test_non_max_suppression_known_set():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(A, B) = 81 / 119 = 0.68; IoU(A, D) = 0.9; IoU(B, D) = 72 / 118 = 0.61
    keep = utils.non_max_suppression(boxes, scores, 0.5)
    assert keep.dtype == np.int32
    np.testing.assert_array_equal(keep, [3, 2])
    np.testing.assert_array_equal(utils.non_max_suppression(boxes, scores, 0.65), [3, 1, 2])
    np.testing.assert_array_equal(utils.non_max_suppression(boxes, scores, 0.95),
                                  [3, 0, 1, 2])
    assert utils.non_max_suppression(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0


def test_box_refinement_known_and_round_trip():
    box = np.array([[0, 0, 10, 10], [10, 20, 30, 60]])
    gt = np.array([[2, 2, 12, 12], [0, 20, 40, 50]])
    d = utils.box_refinement(box, gt)
    assert d.dtype == np.float32
    # Box 2: centre (20, 40) size (20, 40) -> centre (20, 35) size (40, 30).
    np.testing.assert_allclose(d, [[0.2, 0.2, 0, 0],
                                   [0, -5 / 40, math.log(2), math.log(30 / 40)]], atol=1e-6)
    back = utils.apply_box_deltas(box, d)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, gt, atol=1e-4)


def test_apply_box_deltas_known():
    out = utils.apply_box_deltas(np.array([[0., 0., 10., 20.]]),
                                 np.array([[0.5, -0.25, math.log(2), 0.]]))
    # centre (5, 10) -> (10, 5); height 10 -> 20; width 20.
    np.testing.assert_allclose(out, [[0, -5, 20, 15]], atol=1e-5)


def test_norm_denorm_boxes():
    boxes = np.array([[0, 0, 11, 21], [5, 10, 6, 11]])
    n = utils.norm_boxes(boxes, (11, 21))
    assert n.dtype == np.float32
    np.testing.assert_allclose(n, [[0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]], atol=1e-7)
    back = utils.denorm_boxes(n, (11, 21))
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, boxes)
    # A third shape entry (channels) is ignored.
    np.testing.assert_array_equal(utils.norm_boxes(boxes, (11, 21, 3)), n)


def test_trim_zeros():
    x = np.array([[1, 2], [0, 0], [0, 3], [0, 0]])
    np.testing.assert_array_equal(utils.trim_zeros(x), [[1, 2], [0, 3]])
    with pytest.raises(ValueError):
        utils.trim_zeros(np.zeros(3))


# ---------------------------------------------------------------- anchors

def test_generate_anchors_count_order_and_ends():
    a = utils.generate_anchors(8, [0.5, 1, 2], (2, 3), 4, 1)
    assert a.shape == (18, 4) and a.dtype == np.float64
    r = math.sqrt(0.5)
    # First: centre (0, 0), ratio 0.5 -> h = 8 / sqrt(.5), w = 8 * sqrt(.5).
    np.testing.assert_allclose(a[0], [-4 / r, -4 * r, 4 / r, 4 * r])
    np.testing.assert_allclose(a[1], [-4, -4, 4, 4])
    # Index 3: next x position (x = 4), ratio 0.5 again (ratios fastest).
    np.testing.assert_allclose(a[3], [-4 / r, 4 - 4 * r, 4 / r, 4 + 4 * r])
    # Last: centre (4, 8), ratio 2 -> h = 8 / sqrt(2), w = 8 * sqrt(2).
    np.testing.assert_allclose(a[-1], [4 - 4 * r, 8 - 4 / r, 4 + 4 * r, 8 + 4 / r])
    # anchor_stride 2 keeps every other position: rows {0}, cols {0, 2}.
    a2 = utils.generate_anchors(8, [1], (2, 3), 4, 2)
    np.testing.assert_allclose(a2, [[-4, -4, 4, 4], [-4, 4, 4, 12]])


def test_generate_anchors_several_scales_scale_fastest():
    a = utils.generate_anchors([4, 8], [1, 4], (1, 1), 1, 1)
    # (ratio 1, scale 4), (ratio 1, scale 8), (ratio 4, scale 4), (ratio 4, scale 8)
    np.testing.assert_allclose(a, [[-2, -2, 2, 2], [-4, -4, 4, 4],
                                   [-1, -4, 1, 4], [-2, -8, 2, 8]])


def test_generate_pyramid_anchors_level_major():
    shapes = [[4, 4], [2, 2]]
    a = utils.generate_pyramid_anchors([8, 16], [0.5, 1, 2], shapes, [4, 8], 1)
    assert a.shape == ((16 + 4) * 3, 4)
    np.testing.assert_array_equal(a[:48], utils.generate_anchors(8, [0.5, 1, 2], [4, 4], 4, 1))
    np.testing.assert_array_equal(a[48:], utils.generate_anchors(16, [0.5, 1, 2], [2, 2], 8, 1))


class SmallConfig(Config):
    NAME = "small"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)


def test_compute_backbone_shapes_and_get_anchors():
    cfg = SmallConfig()
    np.testing.assert_array_equal(utils.compute_backbone_shapes(cfg, (100, 70, 3)),
                                  [[25, 18], [13, 9], [7, 5], [4, 3], [2, 2]])
    anchors = utils.get_anchors(cfg, (64, 64, 3))
    assert anchors.shape == (3 * (256 + 64 + 16 + 4 + 1), 4)
    np.testing.assert_allclose(anchors[1], [-4, -4, 4, 4])       # level 2, (0, 0), ratio 1
    np.testing.assert_allclose(anchors[-2], [-64, -64, 64, 64])  # level 6, (0, 0), ratio 1
    assert utils.get_anchors(cfg, (64, 64)) is anchors  # cached per shape
    assert not anchors.flags.writeable
    n = utils.norm_boxes(anchors, (64, 64))
    np.testing.assert_allclose(n[1], [-4 / 63, -4 / 63, 3 / 63, 3 / 63], rtol=1e-6)


def test_compute_backbone_shapes_callable_backbone():
    class C(SmallConfig):
        BACKBONE = staticmethod(lambda *a, **k: None)
        COMPUTE_BACKBONE_SHAPE = staticmethod(lambda shape: [[shape[0] // 4, 5]] * 5)
    cfg = C()
    np.testing.assert_array_equal(utils.compute_backbone_shapes(cfg, (64, 32, 3)),
                                  [[16, 5]] * 5)
    cfg.COMPUTE_BACKBONE_SHAPE = None
    with pytest.raises(ValueError, match="COMPUTE_BACKBONE_SHAPE"):
        utils.compute_backbone_shapes(cfg, (64, 64, 3))


# ---------------------------------------------------------------- resizing

def test_resize_wrapper_bool_and_range():
    m = np.zeros((4, 4), bool)
    m[:2] = True
    out = utils.resize(m, (8, 8))
    assert out.dtype == np.float64
    # Bilinear on 0/1 data: rounding gives back the 2x upsampled half-plane.
    np.testing.assert_array_equal(np.around(out), np.repeat(np.repeat(m, 2, 0), 2, 1))
    np.testing.assert_allclose(out[1:3, 1:7], 1.0)
    np.testing.assert_allclose(out[5:], 0.0)
    assert utils.resize(m, (8, 8), order=0).dtype == bool
    img = np.full((4, 4), 200, np.uint8)
    np.testing.assert_allclose(utils.resize(img, (2, 2), preserve_range=True), 200)


def test_resize_image_none():
    img = np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)
    out, window, scale, padding, crop = utils.resize_image(img, 64, 128, mode="none")
    assert out is img and window == (0, 0, 30, 40) and scale == 1 and crop is None
    assert padding == [(0, 0), (0, 0), (0, 0)]


def test_resize_image_square_downscale_with_padding():
    img = np.full((40, 100, 3), 7, np.uint8)
    out, window, scale, padding, crop = utils.resize_image(img, min_dim=64, max_dim=128)
    # min_dim asks 64 / 40 = 1.6, but 100 * 1.6 = 160 > 128 -> scale = 128 / 100.
    assert scale == pytest.approx(1.28)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    # round(40 * 1.28) = 51 rows: 38 above, 39 below.
    assert padding == [(38, 39), (0, 0), (0, 0)]
    assert window == (38, 0, 89, 128) and crop is None
    assert np.all(out[38:89] == 7)
    assert np.all(out[:38] == 0) and np.all(out[89:] == 0)


def test_resize_image_square_upscale_exact_fit():
    img = np.zeros((40, 80, 3), np.uint8)
    out, window, scale, padding, _ = utils.resize_image(img, min_dim=64, max_dim=128)
    assert scale == pytest.approx(1.6) and out.shape == (128, 128, 3)
    assert window == (32, 0, 96, 128)
    assert padding == [(32, 32), (0, 0), (0, 0)]


def test_resize_image_square_no_min_dim_keeps_scale_1():
    img = np.ones((50, 30, 3), np.float32)
    out, window, scale, padding, _ = utils.resize_image(img, max_dim=64)
    assert scale == 1 and out.dtype == np.float32
    assert window == (7, 17, 57, 47) and padding == [(7, 7), (17, 17), (0, 0)]
    np.testing.assert_array_equal(out[7:57, 17:47], img)


def test_resize_image_pad64():
    img = np.full((70, 100, 3), 5, np.uint8)
    out, window, scale, padding, crop = utils.resize_image(img, mode="pad64")
    assert scale == 1 and out.shape == (128, 128, 3)
    assert padding == [(29, 29), (14, 14), (0, 0)] and window == (29, 14, 99, 114)
    np.testing.assert_array_equal(out[29:99, 14:114], img)
    # min_dim scales up first: 128 / 70 -> 128 x 183, width padded to 192.
    out, window, scale, padding, _ = utils.resize_image(img, min_dim=128, mode="pad64")
    assert scale == pytest.approx(128 / 70)
    assert out.shape == (128, 192, 3)
    assert padding == [(0, 0), (4, 5), (0, 0)] and window == (0, 4, 128, 187)
    # Already a multiple of 64: nothing to pad.
    out, window, _, padding, _ = utils.resize_image(np.zeros((64, 128, 3)), mode="pad64")
    assert out.shape == (64, 128, 3) and window == (0, 0, 64, 128)


def test_resize_image_crop():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    random.seed(3)
    out, window, scale, padding, crop = utils.resize_image(img, min_dim=64, mode="crop")
    assert scale == pytest.approx(64 / 60)
    assert out.shape == (64, 64, 3) and window == (0, 0, 64, 64)
    y, x, h, w = crop
    assert (h, w) == (64, 64) and y == 0 and 0 <= x <= 96 - 64
    resized = utils.resize(img, (64, 96), preserve_range=True).astype(np.uint8)
    np.testing.assert_array_equal(out, resized[y:y + 64, x:x + 64])
    # The same seed gives the same crop.
    random.seed(3)
    assert utils.resize_image(img, min_dim=64, mode="crop")[4] == crop


def test_resize_image_bad_arguments():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="mode"):
        utils.resize_image(img, 8, 16, mode="fit")
    with pytest.raises(ValueError, match="max_dim"):
        utils.resize_image(img, mode="square")
    with pytest.raises(ValueError, match="min_dim"):
        utils.resize_image(img, mode="crop")


@pytest.mark.parametrize("mode", ["none", "square", "pad64", "crop"])
def test_resize_mask_consistent_with_resize_image(mode):
    img = np.zeros((48, 80, 3), np.uint8)
    img[10:30, 20:60] = 255
    mask = rect_mask((48, 80), [(10, 20, 30, 60)])
    random.seed(5)
    out, window, scale, padding, crop = utils.resize_image(img, min_dim=64, max_dim=128,
                                                           mode=mode)
    rmask = utils.resize_mask(mask, scale, padding, crop)
    assert rmask.shape[:2] == out.shape[:2] and rmask.dtype == bool
    # Where the resized image is bright, the resized mask is set (up to edge pixels).
    bright = out[..., 0] > 127
    agree = np.mean(bright == rmask[..., 0])
    assert agree > 0.98
    box = utils.extract_bboxes(rmask)[0]
    if crop is None:
        expected = np.array([10, 20, 30, 60]) * scale + np.array(window[:2] * 2)
        np.testing.assert_allclose(box, expected, atol=1.5)


def test_resize_mask_scale_1_is_padding_only():
    mask = rect_mask((5, 6), [(1, 1, 3, 4), (0, 0, 5, 6)])
    out = utils.resize_mask(mask, 1, [(2, 1), (0, 3), (0, 0)])
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
        np.testing.assert_array_equal(utils.resize_mask(mask, scale, padding),
                                      np.pad(ref, padding))
        h, w = ref.shape[:2]
        for y, x in [(0, 0), (h // 3, w // 2), (h - min(h, 7), w - min(w, 5))]:
            crop = (y, x, min(h, 7), min(w, 5))
            np.testing.assert_array_equal(utils.resize_mask(mask, scale, padding, crop),
                                          ref[y:y + crop[2], x:x + crop[3]])


# ---------------------------------------------------------------- masks

def test_minimize_expand_round_trip_rectangle():
    mask = rect_mask((40, 50), [(5, 7, 25, 40), (30, 0, 40, 3)])
    bbox = utils.extract_bboxes(mask)
    mini = utils.minimize_mask(bbox, mask, (14, 14))
    assert mini.shape == (14, 14, 2) and mini.dtype == bool and mini.all()
    back = utils.expand_mask(bbox, mini, (40, 50, 3))
    np.testing.assert_array_equal(back, mask)


def test_minimize_mask_half_filled_box():
    mask = np.zeros((20, 20, 1), bool)
    mask[0:20, 0:10, 0] = True  # left half of its box
    mini = utils.minimize_mask(np.array([[0, 0, 20, 20]]), mask, (4, 4))
    np.testing.assert_array_equal(mini[..., 0], [[1, 1, 0, 0]] * 4)
    with pytest.raises(ValueError, match="area zero"):
        utils.minimize_mask(np.array([[3, 3, 3, 8]]), mask, (4, 4))


def test_unmold_mask():
    small = np.zeros((4, 4), np.float32)
    small[:, :2] = 0.9
    full = utils.unmold_mask(small, (2, 4, 10, 12), (16, 16, 3))
    assert full.shape == (16, 16) and full.dtype == bool
    expected = np.zeros((16, 16), bool)
    expected[2:10, 4:8] = True
    np.testing.assert_array_equal(full, expected)
    # A box partly outside the image is cut off, not an error.
    full = utils.unmold_mask(np.ones((4, 4), np.float32), (-2, 12, 6, 20), (16, 16))
    assert full.sum() == 6 * 4 and full[0:6, 12:16].all()
    assert not utils.unmold_mask(small, (3, 3, 3, 9), (16, 16)).any()



def _skimage_unmold(mask, bbox, shape):
    """Independent reference: scikit-image's resize of the whole box, then cut and paste."""
    y1, x1, y2, x2 = (int(v) for v in bbox)
    full = np.zeros(shape[:2], bool)
    if y2 <= y1 or x2 <= x1:
        return full
    m = skimage.transform.resize(mask, (y2 - y1, x2 - x1), order=1, mode="constant",
                                 anti_aliasing=False) >= 0.5
    cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, shape[0]), min(x2, shape[1])
    if cy2 > cy1 and cx2 > cx1:
        full[cy1:cy2, cx1:cx2] = m[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
    return full


def test_unmold_masks_matches_skimage_resize():
    # Random soft masks, masks with no value below the threshold (the range clip matters
    # at the border) and binary masks (exact 0.5 ties), boxes partly outside the image.
    rng = np.random.default_rng(1)
    for k in range(300):
        m = rng.random(rng.integers(1, 40, 2)).astype(np.float32)
        if k % 3 == 1:
            m = m * 0.3 + 0.7
        elif k % 3 == 2:
            m = (m > 0.5).astype(np.float32)
        h, w = (int(v) for v in rng.integers(5, 120, 2))
        y1, x1 = int(rng.integers(-20, h)), int(rng.integers(-20, w))
        box = (y1, x1, y1 + int(rng.integers(0, 150)), x1 + int(rng.integers(0, 150)))
        np.testing.assert_array_equal(utils.unmold_mask(m, box, (h, w, 3)),
                                      _skimage_unmold(m, box, (h, w)), err_msg=str(box))


def test_unmold_masks_stacks_each_mask_in_its_box():
    rng = np.random.default_rng(2)
    masks = rng.random((5, 28, 28)).astype(np.float32)
    boxes = np.array([[0, 0, 30, 40], [10, 5, 60, 20], [50, 50, 64, 64], [3, 3, 3, 9],
                      [-10, 40, 20, 90]])
    out = utils.unmold_masks(masks, boxes, (64, 64, 3))
    assert out.shape == (64, 64, 5) and out.dtype == bool
    for i in range(5):
        np.testing.assert_array_equal(out[:, :, i], _skimage_unmold(masks[i], boxes[i],
                                                                    (64, 64)))
    assert utils.unmold_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (8, 9)).shape == (
        8, 9, 0)


# ---------------------------------------------------------------- AP / recall

def _instances():
    """Two GT instances (classes 1, 2) on a 20x20 image."""
    gt_boxes = np.array([[0, 0, 10, 10], [10, 10, 20, 20]])
    gt_masks = rect_mask((20, 20), gt_boxes)
    return gt_boxes, np.array([1, 2]), gt_masks


def test_compute_ap_perfect():
    gb, gc, gm = _instances()
    ap, precisions, recalls, overlaps = utils.compute_ap(
        gb, gc, gm, gb, gc, np.array([0.9, 0.8]), gm)
    assert ap == pytest.approx(1.0)
    np.testing.assert_allclose(precisions, [1, 1, 1, 0])
    np.testing.assert_allclose(recalls, [0, 0.5, 1, 1])
    np.testing.assert_allclose(overlaps, np.eye(2))


def test_compute_ap_none_and_wrong_class():
    gb, gc, gm = _instances()
    far = np.array([[0, 10, 10, 20]])
    ap = utils.compute_ap(gb, gc, gm, far, np.array([1]), np.array([0.9]),
                          rect_mask((20, 20), far))[0]
    assert ap == 0.0
    # Right place, wrong class.
    ap = utils.compute_ap(gb, gc, gm, gb[:1], np.array([2]), np.array([0.9]), gm[..., :1])[0]
    assert ap == 0.0


def test_compute_ap_half_and_false_positive_first():
    gb, gc, gm = _instances()
    # One of two GTs found: recall 0.5 at precision 1 -> AP 0.5.
    ap = utils.compute_ap(gb, gc, gm, gb[:1], gc[:1], np.array([0.9]), gm[..., :1])[0]
    assert ap == pytest.approx(0.5)
    # A false positive ranked first, then a hit: precision 1/2 at recall 1/2 -> 0.25.
    far = np.array([[0, 10, 10, 20], [0, 0, 10, 10]])
    ap, precisions, recalls, _ = utils.compute_ap(
        gb, gc, gm, far, np.array([1, 1]), np.array([0.9, 0.8]), rect_mask((20, 20), far))
    assert ap == pytest.approx(0.25)
    np.testing.assert_allclose(recalls, [0, 0, 0.5, 1])


def test_compute_matches_duplicate_is_false_positive_and_padding_trimmed():
    gb, gc, gm = _instances()
    # Two predictions on GT 0 (the best-scored one first) plus a zero padding row.
    pb = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 0, 0]])
    pm = rect_mask((20, 20), pb)
    gt_match, pred_match, overlaps = utils.compute_matches(
        gb, gc, gm, pb, np.array([1, 1, 0]), np.array([0.9, 0.8, 0.0]), pm)
    np.testing.assert_array_equal(gt_match, [0, -1])
    np.testing.assert_array_equal(pred_match, [0, -1])
    assert overlaps.shape == (2, 2)
    ap = utils.compute_ap(gb, gc, gm, pb, np.array([1, 1, 0]),
                          np.array([0.9, 0.8, 0.0]), pm)[0]
    assert ap == pytest.approx(0.5)


def test_compute_matches_sorts_by_score():
    gb, gc, gm = _instances()
    pb = np.array([[0, 0, 10, 9], [0, 0, 10, 10]])
    gt_match, pred_match, overlaps = utils.compute_matches(
        gb, gc, gm, pb, np.array([1, 1]), np.array([0.5, 0.9]), rect_mask((20, 20), pb))
    # In score order the exact box comes first and takes GT 0.
    np.testing.assert_allclose(overlaps[:, 0], [1.0, 0.9])
    np.testing.assert_array_equal(pred_match, [0, -1])


def test_compute_ap_range():
    gb, gc, gm = _instances()
    # The top-scored prediction covers 90% of GT 0 (IoU 0.9); the second is exact on GT 1.
    # np.arange(0.5, 1.0, 0.05) holds 0.9000000000000004 > 0.9, so 8 thresholds give AP 1
    # and 2 give a miss first, then a hit: precision 1/2 at recall 1/2 -> 0.25.
    pb = np.array([[0, 0, 10, 9], [10, 10, 20, 20]])
    pm = rect_mask((20, 20), pb)
    ap = utils.compute_ap_range(gb, gc, gm, pb, gc, np.array([0.9, 0.8]), pm, verbose=0)
    assert ap == pytest.approx(np.mean([1.0] * 8 + [0.25] * 2))
    ap = utils.compute_ap_range(gb, gc, gm, pb, gc, np.array([0.9, 0.8]), pm,
                                iou_thresholds=np.array([0.5, 0.95]), verbose=0)
    assert ap == pytest.approx(0.625)


def test_compute_recall():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = np.array([[0, 0, 10, 9], [1, 1, 10, 10], [40, 40, 50, 50]])
    recall, positive = utils.compute_recall(pred, gt, 0.5)
    assert recall == 0.5
    np.testing.assert_array_equal(positive, [0, 1])
    recall, positive = utils.compute_recall(pred, gt, 0.85)
    assert recall == 0.5 and list(positive) == [0]
    assert utils.compute_recall(np.zeros((0, 4)), gt, 0.5)[0] == 0.0


# ---------------------------------------------------------------- TF-dependent bits

def test_reexports_and_batch_slice():
    import tensorflow as tf
    from mrcnn import imagemeta
    from mrcnn.utils import compose_image_meta, parse_image_meta, mold_image, unmold_image
    assert compose_image_meta is imagemeta.compose_image_meta
    assert parse_image_meta is imagemeta.parse_image_meta
    assert mold_image is imagemeta.mold_image and unmold_image is imagemeta.unmold_image

    x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    y = tf.constant(np.ones((3, 4), np.float32))
    s = utils.batch_slice([x, y], lambda a, b: a + b, 3)
    np.testing.assert_allclose(s.numpy(), x.numpy() + 1)
    s1, s2 = utils.batch_slice(x, lambda a: (a * 2, tf.reduce_sum(a)), 3)
    np.testing.assert_allclose(s2.numpy(), [6, 22, 38])


def test_absent_optional_decoder_imports_fail_without_the_import_machinery():
    # imageio's Pillow plugin tries pillow_heif on every read: absent, it must fail from
    # sys.modules (no path search under import locks in every loader thread).
    import importlib
    import sys
    from mrcnn import utils as mutils
    mutils._fail_absent_optional_imports_fast(("mrcnn_no_such_module",))
    assert sys.modules["mrcnn_no_such_module"] is None
    with pytest.raises(ImportError, match="halted"):
        importlib.import_module("mrcnn_no_such_module")
    mutils._fail_absent_optional_imports_fast(("numpy",))      # present: left alone
    assert sys.modules["numpy"] is np
    del sys.modules["mrcnn_no_such_module"]
