"""mrcnn.boxes (TF side) and the graph anchors of mrcnn.rpn against numpy references (mrcnn.utils and formulas written here)."""
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import rpn, utils
from mrcnn import boxes as boxlib
from mrcnn.config import Config


def _random_boxes(rng, n, scale=1.0):
    y1 = rng.uniform(0, 0.6, n)
    x1 = rng.uniform(0, 0.6, n)
    h = rng.uniform(0.05, 0.4, n)
    w = rng.uniform(0.05, 0.4, n)
    return (np.stack([y1, x1, y1 + h, x1 + w], axis=1) * scale).astype(np.float32)


def _np_iou(a, b):
    """Plain double loop IoU reference."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = ih * iw
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_apply_box_deltas_matches_numpy_and_formula():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 12, scale=100.0)
    deltas = rng.normal(0, 0.3, (12, 4)).astype(np.float32)
    got = boxlib.apply_box_deltas_graph(boxes, deltas).numpy()
    np.testing.assert_allclose(got, utils.apply_box_deltas(boxes, deltas), rtol=0, atol=1e-4)
    # Hand case: box 10x20 at (0, 0), shift by half a height, double the width.
    hand = boxlib.apply_box_deltas_graph([[0., 0., 10., 20.]],
                                          [[0.5, 0., 0., np.log(2.)]]).numpy()
    np.testing.assert_allclose(hand, [[5., -10., 15., 30.]], atol=1e-5)
    # Any leading dims.
    got3 = boxlib.apply_box_deltas_graph(boxes.reshape(3, 4, 4), deltas.reshape(3, 4, 4))
    np.testing.assert_allclose(got3.numpy().reshape(12, 4), got, atol=1e-6)


def test_box_refinement_matches_numpy_and_round_trips():
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, 10)
    gt = _random_boxes(rng, 10)
    d = boxlib.box_refinement_graph(boxes, gt).numpy()
    np.testing.assert_allclose(d, utils.box_refinement(boxes, gt), atol=1e-5)
    # Hand case: gt twice as tall, same centre.
    hand = boxlib.box_refinement_graph([[0., 0., 2., 2.]], [[-1., 0., 3., 2.]]).numpy()
    np.testing.assert_allclose(hand, [[0., 0., np.log(2.), 0.]], atol=1e-6)
    back = boxlib.apply_box_deltas_graph(boxes, d).numpy()
    np.testing.assert_allclose(back, gt, atol=1e-5)
    d3 = boxlib.box_refinement_graph(boxes.reshape(2, 5, 4), gt.reshape(2, 5, 4)).numpy()
    np.testing.assert_allclose(d3.reshape(10, 4), d, atol=1e-6)


def test_clip_boxes_single_and_per_image_windows():
    boxes = np.array([[-0.2, 0.1, 0.5, 1.3], [0.3, -0.1, 1.2, 0.4]], np.float32)
    got = boxlib.clip_boxes_graph(boxes, np.array([0., 0., 1., 1.], np.float32)).numpy()
    np.testing.assert_allclose(got, [[0., 0.1, 0.5, 1.], [0.3, 0., 1., 0.4]])
    # [B, N, 4] with one window per image [B, 4].
    batch = np.stack([boxes, boxes])
    windows = np.array([[0., 0., 1., 1.], [0.2, 0.2, 0.6, 0.6]], np.float32)
    got = boxlib.clip_boxes_graph(batch, windows).numpy()
    np.testing.assert_allclose(got[0], [[0., 0.1, 0.5, 1.], [0.3, 0., 1., 0.4]])
    np.testing.assert_allclose(got[1], [[0.2, 0.2, 0.5, 0.6], [0.3, 0.2, 0.6, 0.4]])


def test_overlaps_graph_2d_batched_and_empty():
    rng = np.random.default_rng(2)
    a = _random_boxes(rng, 5)
    b = _random_boxes(rng, 3)
    b[0] = a[1]  # an exact match: IoU 1
    got = boxlib.overlaps_graph(a, b).numpy()
    np.testing.assert_allclose(got, _np_iou(a, b), atol=1e-6)
    np.testing.assert_allclose(got, utils.compute_overlaps(a, b), atol=1e-6)
    assert got[1, 0] == pytest.approx(1.0)
    # Batched [B, N, 4] x [B, M, 4] -> [B, N, M], each image against its own boxes.
    a2 = _random_boxes(rng, 5)
    b2 = np.zeros((3, 4), np.float32)  # all padding
    b2[2] = a2[4]
    got = boxlib.overlaps_graph(np.stack([a, a2]), np.stack([b, b2])).numpy()
    assert got.shape == (2, 5, 3)
    np.testing.assert_allclose(got[0], _np_iou(a, b), atol=1e-6)
    np.testing.assert_allclose(got[1], _np_iou(a2, b2), atol=1e-6)
    # Empty vs empty gives 0, not NaN.
    zero = boxlib.overlaps_graph(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32))
    assert zero.numpy()[0, 0] == 0.0


def test_norm_denorm_match_numpy():
    boxes = np.array([[0, 0, 64, 128], [10, 20, 30, 40]], np.float32)
    shape = (64, 128)
    got = boxlib.norm_boxes_graph(boxes, shape).numpy()
    np.testing.assert_allclose(got, utils.norm_boxes(boxes, shape), atol=1e-7)
    # Matterport's convention by hand: (y2 - 1) / (h - 1).
    np.testing.assert_allclose(got[0], [0, 0, 1, 1], atol=1e-7)
    np.testing.assert_allclose(got[1], [10 / 63, 20 / 127, 29 / 63, 39 / 127], atol=1e-6)
    back = boxlib.denorm_boxes_graph(got, tf.constant([64., 128.]))
    assert back.dtype == tf.int32
    np.testing.assert_array_equal(back.numpy(), boxes.astype(np.int32))
    np.testing.assert_array_equal(back.numpy(), utils.denorm_boxes(got, shape))


def test_log2_graph():
    np.testing.assert_allclose(boxlib.log2_graph([1., 8., 0.25]).numpy(), [0., 3., -2.],
                               atol=1e-6)


class _AnchorConfig(Config):
    NAME = "anchors"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)


def _numpy_anchors(config, hw):
    return utils.norm_boxes(utils.get_anchors(config, (hw[0], hw[1], 3)), hw)


@pytest.mark.parametrize("hw,stride,ratios", [((64, 64), 1, [0.5, 1, 2]),
                                              ((64, 128), 1, [0.5, 1, 2]),
                                              ((64, 64), 2, [1, 3]),
                                              ((100, 70), 1, [0.5, 1, 2])])
def test_pyramid_anchors_equal_numpy(hw, stride, ratios):
    cfg_cls = type("Cfg", (_AnchorConfig,), {"RPN_ANCHOR_STRIDE": stride,
                                             "RPN_ANCHOR_RATIOS": ratios,
                                             "IMAGE_RESIZE_MODE": "none"})
    config = cfg_cls()
    expected = _numpy_anchors(config, hw)
    got = rpn.generate_pyramid_anchors_graph(hw, config)
    assert got.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), expected)

    # Dynamic shape tensor inside a tf.function, as the model's anchors layer uses it.
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3])])
    def from_images(images):
        return rpn.generate_pyramid_anchors_graph(tf.shape(images)[1:3], config)
    got = from_images(tf.zeros([1, hw[0], hw[1], 3]))
    np.testing.assert_array_equal(got.numpy(), expected)
    # Float image_shape from the image meta.
    got = rpn.generate_pyramid_anchors_graph(tf.constant([float(hw[0]), float(hw[1]), 3.]),
                                                 config)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_pyramid_anchors_first_level_by_hand():
    """Level 0 of a 64x64 image: 16x16 positions, stride 4, ratios fastest."""
    config = _AnchorConfig()
    a = rpn.generate_pyramid_anchors_graph((64, 64), config).numpy()
    assert a.shape == (3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1 * 1), 4)
    px = a * 63.0 + np.array([0, 0, 1, 1])  # denormalise
    s2 = np.sqrt(2.0)
    # Position (0, 0): ratios 0.5, 1, 2 -> (h, w) = (8*s2, 8/s2), (8, 8), (8/s2, 8*s2).
    np.testing.assert_allclose(px[0], [-4 * s2, -4 / s2, 4 * s2, 4 / s2], atol=1e-4)
    np.testing.assert_allclose(px[1], [-4, -4, 4, 4], atol=1e-4)
    # Position (0, 1) is next (x moves fastest), centre x = 4.
    np.testing.assert_allclose(px[4], [-4, 0, 4, 8], atol=1e-4)
    # Position (1, 0) after the first row of 16.
    np.testing.assert_allclose(px[16 * 3 + 1], [0, -4, 8, 4], atol=1e-4)


def test_pyramid_anchors_callable_backbone_needs_static_shape():
    def shapes(image_shape):
        return [[int(np.ceil(image_shape[0] / s)), int(np.ceil(image_shape[1] / s))]
                for s in (4, 8, 16, 32, 64)]
    cfg_cls = type("Cfg", (_AnchorConfig,), {"BACKBONE": staticmethod(lambda *a, **k: None),
                                             "COMPUTE_BACKBONE_SHAPE": staticmethod(shapes)})
    config = cfg_cls()
    got = rpn.generate_pyramid_anchors_graph((64, 64), config)
    np.testing.assert_array_equal(got.numpy(), _numpy_anchors(config, (64, 64)))

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def dynamic(hw):
        return rpn.generate_pyramid_anchors_graph(hw, config)
    with pytest.raises(ValueError, match="static"):
        dynamic(tf.constant([64, 64]))
