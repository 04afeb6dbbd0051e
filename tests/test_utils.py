"""Hand-computed checks of mrcnn.utils, Matterport's facade: the box functions under their
utils names, the anchors, batch_slice, and that every re-exported name is the defining
module's object (masks, resizing, AP and Dataset are tested in their own modules' files)."""
import math

import numpy as np
import pytest

from mrcnn import utils
from mrcnn.config import Config

from test_masks import rect_mask  # noqa: E402


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


# ---------------------------------------------------------------- TF-dependent bits

# Matterport's mrcnn.utils names -> the topic module that defines each.
UTILS_REEXPORTS = {
    "mrcnn.boxes": ["extract_bboxes", "compute_iou", "compute_overlaps", "box_refinement",
                    "box_refinement_graph", "apply_box_deltas", "non_max_suppression",
                    "norm_boxes", "denorm_boxes"],
    "mrcnn.masks": ["compute_overlaps_masks", "resize_mask", "minimize_mask", "expand_mask"],
    "mrcnn.preprocess": ["resize", "resize_image", "unmold_mask", "unmold_masks",
                         "linear_resize_weights", "compose_image_meta", "parse_image_meta",
                         "mold_image", "unmold_image"],
    "mrcnn.ap": ["trim_zeros", "compute_matches", "compute_ap", "compute_ap_range",
                 "compute_recall"],
    "mrcnn.dataset": ["Dataset", "DatasetError"],
}


@pytest.mark.parametrize("module", sorted(UTILS_REEXPORTS))
def test_utils_reexports_the_defining_objects(module):
    import importlib
    defining = importlib.import_module(module)
    for name in UTILS_REEXPORTS[module]:
        assert getattr(utils, name) is getattr(defining, name), name


def test_reexports_and_batch_slice():
    import tensorflow as tf
    from mrcnn import preprocess
    from mrcnn.utils import compose_image_meta, parse_image_meta, mold_image, unmold_image
    assert compose_image_meta is preprocess.compose_image_meta
    assert parse_image_meta is preprocess.parse_image_meta
    assert mold_image is preprocess.mold_image and unmold_image is preprocess.unmold_image

    x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    y = tf.constant(np.ones((3, 4), np.float32))
    s = utils.batch_slice([x, y], lambda a, b: a + b, 3)
    np.testing.assert_allclose(s.numpy(), x.numpy() + 1)
    s1, s2 = utils.batch_slice(x, lambda a: (a * 2, tf.reduce_sum(a)), 3)
    np.testing.assert_allclose(s2.numpy(), [6, 22, 38])
