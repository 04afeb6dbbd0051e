"""The four custom layers against hand-made cases and numpy references written here."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.preprocess import compose_image_meta
from mrcnn.roi_heads import DetectionLayer, DetectionTargetLayer, PyramidROIAlign
from mrcnn.rpn import ProposalLayer


# ---------------------------------------------------------------- numpy references
def np_iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def np_refinement(box, gt):
    h, w = box[2] - box[0], box[3] - box[1]
    gh, gw = gt[2] - gt[0], gt[3] - gt[1]
    return np.array([(gt[0] + 0.5 * gh - box[0] - 0.5 * h) / h,
                     (gt[1] + 0.5 * gw - box[1] - 0.5 * w) / w,
                     np.log(gh / h), np.log(gw / w)])


def np_apply(box, d):
    h, w = box[2] - box[0], box[3] - box[1]
    cy, cx = box[0] + 0.5 * h + d[0] * h, box[1] + 0.5 * w + d[1] * w
    h, w = h * np.exp(d[2]), w * np.exp(d[3])
    return np.array([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w])


def np_crop_and_resize(image, box, size):
    """tf.image.crop_and_resize's documented bilinear sampling, for one box.

    image [H, W, C]; box normalised (y1, x1, y2, x2): 0 -> pixel 0, 1 -> pixel H-1.
    Samples outside the image are 0 (extrapolation_value)."""
    H, W, C = image.shape
    ch, cw = size
    y1, x1, y2, x2 = box
    out = np.zeros((ch, cw, C))
    for i in range(ch):
        y = y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (ch - 1) if ch > 1 \
            else 0.5 * (y1 + y2) * (H - 1)
        if y < 0 or y > H - 1:
            continue
        t, b = int(math.floor(y)), int(math.ceil(y))
        ly = y - t
        for j in range(cw):
            x = x1 * (W - 1) + j * (x2 - x1) * (W - 1) / (cw - 1) if cw > 1 \
                else 0.5 * (x1 + x2) * (W - 1)
            if x < 0 or x > W - 1:
                continue
            left, r = int(math.floor(x)), int(math.ceil(x))
            lx = x - left
            top = image[t, left] * (1 - lx) + image[t, r] * lx
            bot = image[b, left] * (1 - lx) + image[b, r] * lx
            out[i, j] = top * (1 - ly) + bot * ly
    return out


def np_roi_align(image, box, pool, s):
    """Sample at (ph*s, pw*s) then average s x s blocks."""
    crop = np_crop_and_resize(image, box, (pool[0] * s, pool[1] * s))
    return crop.reshape(pool[0], s, pool[1], s, -1).mean(axis=(1, 3))


def meta(image_shape, window, num_classes=3, image_id=0):
    return compose_image_meta(image_id, image_shape, image_shape, window, 1.0,
                              np.ones(num_classes)).astype(np.float32)


def run_in_model(layer, inputs, batch_size=2):
    """Call ``layer`` inside a functional model on numpy inputs (batch axis first)."""
    syms = [keras.Input(shape=x.shape[1:], dtype=x.dtype.name) for x in inputs]
    out = layer(syms)
    model = keras.Model(syms, out)
    return model.predict(inputs, batch_size=batch_size, verbose=0)


def roundtrip(layer):
    """Serialise and rebuild through Keras's registry, as .keras saving does."""
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))


# ---------------------------------------------------------------- ProposalLayer
def _proposal_case():
    anchors = np.array([[0.10, 0.10, 0.40, 0.40],   # best
                        [0.11, 0.10, 0.41, 0.40],   # IoU ~0.94 with the best: suppressed
                        [0.50, 0.50, 0.90, 0.90],   # deltas move it, then clipped
                        [0.60, 0.00, 0.80, 0.20],
                        [0.00, 0.60, 0.20, 0.80]], np.float32)   # lowest score
    fg = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                   [0.1, 0.2, 0.3, 0.4, 0.95]], np.float32)
    probs = np.stack([1 - fg, fg], axis=-1)
    deltas = np.zeros((2, 5, 4), np.float32)
    # Std-scaled: with std 0.1, 2.0 -> dy 0.2 -> centre moves 0.08 (h = 0.4).
    deltas[:, 2] = [2.0, 0.0, 0.0, 0.0]
    return probs, deltas, np.stack([anchors, anchors])


def test_proposal_layer_nms_clip_and_padding():
    probs, deltas, anchors = _proposal_case()
    layer = ProposalLayer(proposal_count=6, nms_threshold=0.7, config=Config(),
                          pre_nms_limit=4, name="ROI")
    out = layer([probs, deltas, anchors]).numpy()
    assert out.shape == (2, 6, 4)
    moved = np.array([0.58, 0.5, 0.98, 0.9])  # 0.5 + 0.08, not clipped
    # Image 0: top-4 by score = anchors 0..3; anchor 1 suppressed by anchor 0.
    np.testing.assert_allclose(out[0, :3], [anchors[0, 0], moved, anchors[0, 3]], atol=1e-6)
    np.testing.assert_array_equal(out[0, 3:], 0)
    # Image 1: top-4 = anchors 4, 3, 2, 1 (anchor 0 cut by pre_nms_limit), none overlap.
    np.testing.assert_allclose(out[1, :4], [anchors[0, 4], anchors[0, 3], moved,
                                            anchors[0, 1]], atol=1e-6)
    np.testing.assert_array_equal(out[1, 4:], 0)

    # Clipping to [0, 1] and the 0.7 threshold: a larger shift pushes anchor 2 outside.
    d2 = deltas.copy()
    d2[:, 2] = [4.0, 4.0, 0.0, 0.0]   # centre +0.16 -> y2 = 1.06, x2 = 1.06
    out = layer([probs, d2, anchors]).numpy()
    np.testing.assert_allclose(out[0, 1], [0.66, 0.66, 1.0, 1.0], atol=1e-6)

    # At a threshold of 0.95 anchor 1 (IoU ~0.94 with anchor 0) survives.
    out = ProposalLayer(6, 0.95, config=Config(), pre_nms_limit=4)([probs, deltas, anchors])
    np.testing.assert_allclose(out.numpy()[0, 1], anchors[0, 1], atol=1e-6)


def test_proposal_layer_in_model_partial_batch_and_serialisation():
    probs, deltas, anchors = _proposal_case()
    # Three images, batch_size 2: the last batch is partial. pre_nms_limit > A.
    probs3 = np.concatenate([probs, probs[:1]])
    deltas3 = np.concatenate([deltas, deltas[:1]])
    anchors3 = np.concatenate([anchors, anchors[:1]])
    layer = ProposalLayer(proposal_count=8, nms_threshold=0.7, config=Config())
    eager = layer([probs3, deltas3, anchors3]).numpy()
    got = run_in_model(layer, [probs3, deltas3, anchors3])
    np.testing.assert_allclose(got, eager, atol=1e-6)
    assert got.shape == (3, 8, 4)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)
    assert np.count_nonzero(got[0].any(axis=1)) == 4   # 5 anchors, one suppressed
    clone = roundtrip(layer)
    assert isinstance(clone, ProposalLayer) and clone.pre_nms_limit == 6000
    np.testing.assert_allclose(clone([probs3, deltas3, anchors3]).numpy(), eager, atol=1e-6)


# ---------------------------------------------------------------- PyramidROIAlign
# meta image 896x896: 224/sqrt(area) = 0.25, so sqrt(h*w) of 0.0625/0.125/0.25/0.5 maps to
# levels 2/3/4/5.
_LEVEL_SIDE = {2: 0.0625, 3: 0.125, 4: 0.25, 5: 0.5}


def _roi_align_case(rng):
    maps = [rng.normal(size=(2, s, s, 3)).astype(np.float32) for s in (16, 8, 4, 2)]
    levels = [[5, 2, 4, 3, 2], [3, 3, 5, 2, 4]]
    boxes = np.zeros((2, 5, 4), np.float32)
    for b in range(2):
        for n, lv in enumerate(levels[b]):
            side = _LEVEL_SIDE[lv]
            y, x = rng.uniform(0, 1 - side, 2)
            boxes[b, n] = [y, x, y + side, x + side]
    boxes[1, 4] = 0  # padding row -> level 2, zero box samples pixel (0, 0)
    levels[1][4] = 2
    m = np.stack([meta((896, 896, 3), (0, 0, 896, 896))] * 2)
    return boxes, m, maps, levels


@pytest.mark.parametrize("s", [1, 2])
def test_pyramid_roi_align_matches_numpy(s):
    rng = np.random.default_rng(3)
    boxes, m, maps, levels = _roi_align_case(rng)
    layer = PyramidROIAlign([3, 2], sampling_ratio=s, name="roi_align_classifier")
    out = layer([boxes, m] + maps).numpy()
    assert out.shape == (2, 5, 3, 2, 3)
    for b in range(2):
        for n in range(5):
            ref = np_roi_align(maps[levels[b][n] - 2][b], boxes[b, n], (3, 2), s)
            np.testing.assert_allclose(out[b, n], ref, atol=1e-5, err_msg=str((b, n)))
    # In a functional model with a partial last batch (3 images, batch_size 2).
    boxes3 = np.concatenate([boxes, boxes[:1]])
    m3 = np.concatenate([m, m[:1]])
    maps3 = [np.concatenate([p, p[:1]]) for p in maps]
    got = run_in_model(layer, [boxes3, m3] + maps3)
    np.testing.assert_allclose(got[:2], out, atol=1e-5)
    np.testing.assert_allclose(got[2], out[0], atol=1e-5)
    clone = roundtrip(layer)
    assert clone.pool_shape == (3, 2) and clone.sampling_ratio == s


def test_pyramid_roi_align_keeps_feature_dtype_under_mixed_precision():
    rng = np.random.default_rng(4)
    boxes, m, maps, levels = _roi_align_case(rng)
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = PyramidROIAlign([2, 2], sampling_ratio=2)
        out = layer([tf.constant(boxes), m] + [tf.cast(p, tf.bfloat16) for p in maps])
        assert out.dtype == tf.bfloat16
        # Boxes stay float32 (not rounded to bf16): compare with the float32 result.
        ref = PyramidROIAlign([2, 2], sampling_ratio=2, dtype="float32")(
            [boxes, m] + [tf.cast(tf.cast(p, tf.bfloat16), tf.float32) for p in maps])
        np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), ref.numpy(), atol=0.05)
        sym = [keras.Input((5, 4)), keras.Input((m.shape[1],))] + \
              [keras.Input((s, s, 3), dtype="bfloat16") for s in (16, 8, 4, 2)]
        assert layer(sym).dtype == "bfloat16"
    finally:
        keras.config.set_dtype_policy(old)


def test_pyramid_roi_align_gradient_reaches_features():
    rng = np.random.default_rng(5)
    boxes, m, maps, levels = _roi_align_case(rng)
    maps = [tf.Variable(p) for p in maps]
    with tf.GradientTape() as tape:
        out = PyramidROIAlign([2, 2])([boxes, m] + maps)
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, maps)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


# ---------------------------------------------------------------- DetectionTargetLayer
class TargetConfig(Config):
    NAME = "targets"
    NUM_CLASSES = 4
    TRAIN_ROIS_PER_IMAGE = 8
    ROI_POSITIVE_RATIO = 0.5      # 4 positives max, negatives = positives
    POST_NMS_ROIS_TRAINING = 16
    MASK_POOL_SIZE = 2
    MASK_SHAPE = [4, 4]
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (4, 4)


def _as_set(rows):
    return {tuple(np.round(r, 5)) for r in rows}


GT = np.array([0.2, 0.2, 0.6, 0.6], np.float32)
POS = np.array([[0.2, 0.2, 0.6, 0.6], [0.22, 0.2, 0.62, 0.6], [0.2, 0.25, 0.6, 0.65]],
               np.float32)   # IoU with GT 1.0, ~0.9, ~0.78
NEG = np.array([[0.7, 0.7, 0.9, 0.9], [0.0, 0.0, 0.1, 0.1], [0.3, 0.3, 0.9, 0.9],
                [0.6, 0.0, 0.9, 0.2], [0.0, 0.7, 0.2, 0.95]], np.float32)


def _target_inputs(proposals, gt_boxes, gt_ids, masks):
    return [np.asarray(proposals, np.float32)[None], np.asarray(gt_ids, np.int32)[None],
            np.asarray(gt_boxes, np.float32)[None], np.asarray(masks)[None]]


def _mini_masks(g):
    m = np.zeros((4, 4, g), bool)
    m[:, :2, 0] = True   # left half of GT 0's box
    return m


def test_detection_target_sampling_targets_and_ratio():
    config = TargetConfig()
    proposals = np.concatenate([NEG[:2], POS, NEG[2:], np.zeros((3, 4), np.float32)])
    gt_boxes = np.array([GT, [0.0, 0.0, 0.0, 0.0]], np.float32)
    inputs = _target_inputs(proposals, gt_boxes, [2, 0], _mini_masks(2))
    rois, ids, deltas, masks = [t.numpy() for t in DetectionTargetLayer(config)(inputs)]
    assert rois.shape == (1, 8, 4) and ids.shape == (1, 8) and deltas.shape == (1, 8, 4)
    assert masks.shape == (1, 8, 4, 4) and ids.dtype == np.int32
    # 3 positives (<= 4), ratio 0.5 -> 3 negatives, then 2 zero rows.
    assert _as_set(rois[0, :3]) == _as_set(POS)
    assert _as_set(rois[0, 3:6]) <= _as_set(NEG)
    np.testing.assert_array_equal(rois[0, 6:], 0)
    np.testing.assert_array_equal(ids[0], [2, 2, 2, 0, 0, 0, 0, 0])
    for t in range(3):
        expected = np_refinement(rois[0, t], GT) / config.BBOX_STD_DEV
        np.testing.assert_allclose(deltas[0, t], expected, atol=1e-4)
    np.testing.assert_array_equal(deltas[0, 3:], 0)
    np.testing.assert_array_equal(masks[0, 3:], 0)
    # Mask of the ROI equal to the GT box: the mini mask itself (left half ones).
    t = [tuple(np.round(r, 5)) for r in rois[0]].index(tuple(np.round(POS[0], 5)))
    np.testing.assert_array_equal(masks[0, t], np.repeat([[1, 1, 0, 0]], 4, axis=0))
    # Other positives against the numpy crop of the mini mask in the GT frame.
    mini = _mini_masks(2)[..., 0:1].astype(np.float32)
    for t in range(3):
        gh, gw = GT[2] - GT[0], GT[3] - GT[1]
        r = rois[0, t]
        box = [(r[0] - GT[0]) / gh, (r[1] - GT[1]) / gw, (r[2] - GT[0]) / gh,
               (r[3] - GT[1]) / gw]
        ref = np.round(np_crop_and_resize(mini, box, (4, 4))[..., 0])
        np.testing.assert_array_equal(masks[0, t], ref)

    # positive_iou and bbox_std_dev overrides: IoU >= 0.85 leaves 2 positives.
    std = np.array([1., 1., 1., 1.], np.float32)
    rois, ids, deltas, _ = [t.numpy() for t in DetectionTargetLayer(
        config, positive_iou=0.85, bbox_std_dev=std)(inputs)]
    np.testing.assert_array_equal(ids[0], [2, 2, 0, 0, 0, 0, 0, 0])
    assert _as_set(rois[0, :2]) == _as_set(POS[:2])
    # The IoU-0.78 ROI is a negative now.
    assert _as_set(rois[0, 2:4]) <= _as_set(np.concatenate([NEG, POS[2:]]))
    np.testing.assert_array_equal(rois[0, 4:], 0)
    for t in range(2):
        np.testing.assert_allclose(deltas[0, t], np_refinement(rois[0, t], GT), atol=1e-5)


def test_detection_target_positive_cap_is_random():
    config = TargetConfig()
    # 6 positives: jitter around the GT.
    pos = np.array([GT + [d, 0, d, 0] for d in (0, 0.01, 0.02, 0.03, -0.01, -0.02)],
                   np.float32)
    proposals = np.concatenate([pos, NEG])
    inputs = _target_inputs(proposals, [GT], [1], _mini_masks(1))
    layer = DetectionTargetLayer(config)
    picks = set()
    for _ in range(6):
        rois, ids, _, _ = [t.numpy() for t in layer(inputs)]
        # 4 positives (cap int(8 * 0.5)), then 4 negatives (ratio), no padding.
        np.testing.assert_array_equal(ids[0], [1, 1, 1, 1, 0, 0, 0, 0])
        assert _as_set(rois[0, :4]) <= _as_set(pos)
        assert _as_set(rois[0, 4:]) <= _as_set(NEG) and len(_as_set(rois[0, 4:])) == 4
        picks.add(frozenset(_as_set(rois[0, :4])))
    assert len(picks) > 1   # sampling is random


def test_detection_target_matterport_ratio_with_default_fraction():
    """ROI_POSITIVE_RATIO 0.33, T 10: cap int(3.3) = 3; 1 positive -> int(1/0.33) - 1 = 2."""
    cfg = type("C", (TargetConfig,), {"TRAIN_ROIS_PER_IMAGE": 10,
                                      "ROI_POSITIVE_RATIO": 0.33})()
    proposals = np.concatenate([POS[:1], NEG])
    inputs = _target_inputs(proposals, [GT], [3], _mini_masks(1))
    rois, ids, _, _ = [t.numpy() for t in DetectionTargetLayer(cfg)(inputs)]
    np.testing.assert_array_equal(ids[0], [3, 0, 0] + [0] * 7)
    assert np.count_nonzero(rois[0].any(axis=1)) == 3


def test_detection_target_crowds_and_assignment():
    config = TargetConfig()
    crowd = np.array([0.65, 0.65, 0.95, 0.95], np.float32)   # touches NEG[0] and NEG[2]
    gt2 = np.array([0.0, 0.6, 0.25, 0.98], np.float32)       # matches NEG[4] (IoU ~0.53)
    gt_boxes = np.array([GT, crowd, gt2], np.float32)
    proposals = np.concatenate([POS[:1], NEG])
    masks = np.zeros((4, 4, 3), bool)
    inputs = _target_inputs(proposals, gt_boxes, [1, -1, 3], masks)
    rois, ids, deltas, _ = [t.numpy() for t in DetectionTargetLayer(config)(inputs)]
    # Positives: POS[0] -> GT (class 1), NEG[4] -> gt2 (class 3); crowd never a target.
    assert np_iou(NEG[4], gt2) >= 0.5
    pos_rows = {tuple(np.round(r, 5)): c for r, c in zip(rois[0], ids[0]) if c > 0}
    assert pos_rows == {tuple(np.round(POS[0], 5)): 1, tuple(np.round(NEG[4], 5)): 3}
    for t in range(2):
        gt = GT if ids[0, t] == 1 else gt2
        np.testing.assert_allclose(deltas[0, t], np_refinement(rois[0, t], gt) /
                                   config.BBOX_STD_DEV, atol=1e-4)
    # Negatives: only proposals with IoU < 0.001 with the crowd box: NEG[1], NEG[3].
    negs = _as_set(rois[0, 2:4])
    assert negs == _as_set(NEG[[1, 3]])
    np.testing.assert_array_equal(rois[0, 4:], 0)


def test_detection_target_no_gt_full_masks_and_add_gt():
    # Full-size masks (USE_MINI_MASK False), B = 2: image 0 has a GT, image 1 none.
    cfg = type("C", (TargetConfig,), {"USE_MINI_MASK": False})()
    rng = np.random.default_rng(6)
    full = rng.uniform(size=(16, 16, 2)) > 0.5
    proposals = np.stack([np.concatenate([POS, NEG]), np.concatenate([NEG, POS])])
    gt_boxes = np.array([[GT, [0, 0, 0, 0]], [[0, 0, 0, 0]] * 2], np.float32)
    gt_ids = np.array([[1, 0], [0, 0]], np.int32)
    masks = np.stack([full, np.zeros_like(full)])
    inputs = [proposals, gt_ids, gt_boxes, masks]
    layer = DetectionTargetLayer(cfg)
    rois, ids, deltas, tmask = [t.numpy() for t in layer(inputs)]
    for t in range(3):
        ref = np.round(np_crop_and_resize(full[..., :1].astype(np.float32), rois[0, t],
                                          (4, 4))[..., 0])
        np.testing.assert_array_equal(tmask[0, t], ref)
    # No GT: all negatives, up to T - int(T * ratio) = 4 of them, zero targets.
    np.testing.assert_array_equal(ids[1], 0)
    assert _as_set(rois[1, :4]) <= _as_set(np.concatenate([NEG, POS]))
    assert len(_as_set(rois[1, :4])) == 4
    np.testing.assert_array_equal(rois[1, 4:], 0)
    np.testing.assert_array_equal(deltas[1], 0)
    np.testing.assert_array_equal(tmask[1], 0)

    # Same in a functional model (bool masks input), 3 images, batch_size 2.
    inputs3 = [np.concatenate([x, x[:1]]) for x in inputs]
    got = run_in_model(layer, inputs3)
    assert [g.shape for g in got] == [(3, 8, 4), (3, 8), (3, 8, 4), (3, 8, 4, 4)]
    np.testing.assert_array_equal(got[1][:, :3], [[1, 1, 1], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(got[1][:, 3:], 0)
    assert np.count_nonzero(got[0][1].any(axis=1)) == 4

    # add_gt_as_proposals: only negatives proposed, the GT itself becomes the positive.
    layer = DetectionTargetLayer(cfg, add_gt_as_proposals=True)
    inputs = [NEG[None], gt_ids[:1], gt_boxes[:1], masks[:1]]
    rois, ids, deltas, tmask = [t.numpy() for t in layer(inputs)]
    np.testing.assert_array_equal(ids[0], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(rois[0, 0], GT, atol=1e-7)
    np.testing.assert_allclose(deltas[0, 0], 0, atol=1e-6)
    assert _as_set(rois[0, 1:2]) <= _as_set(NEG)
    clone = roundtrip(layer)
    assert clone.add_gt_as_proposals and clone.train_rois == 8
    assert clone.config["MASK_SHAPE"] == [4, 4]


def test_detection_target_fewer_proposals_than_rois():
    config = TargetConfig()
    inputs = _target_inputs(POS[:2], [GT], [1], _mini_masks(1))   # P = 2 < T = 8
    rois, ids, _, _ = [t.numpy() for t in DetectionTargetLayer(config)(inputs)]
    np.testing.assert_array_equal(ids[0], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rois[0, 2:], 0)


# ---------------------------------------------------------------- DetectionLayer
class DetConfig(Config):
    NAME = "det"
    NUM_CLASSES = 3
    DETECTION_MAX_INSTANCES = 5
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3


def _probs(cls, score, num_classes=3):
    p = np.full(num_classes, (1 - score) / (num_classes - 1))
    p[cls] = score
    return p


def _detection_case():
    rois = np.array([[0.10, 0.10, 0.50, 0.50],   # A class 1, 0.90
                     [0.12, 0.10, 0.52, 0.50],   # B class 2, 0.80: overlaps A, other class
                     [0.11, 0.10, 0.51, 0.50],   # C class 1, 0.85: suppressed by A
                     [0.60, 0.60, 0.90, 0.90],   # D background 0.95: dropped
                     [0.60, 0.10, 0.80, 0.30],   # E class 1, 0.60: below confidence
                     [0.80, 0.55, 0.99, 0.75],   # F class 2, 0.75: y2 clipped to window
                     [0.00, 0.60, 0.20, 0.90]],  # G class 1, 0.72: y1, x2 clipped
                    np.float32)
    probs = np.array([_probs(1, .9), _probs(2, .8), _probs(1, .85), _probs(0, .95),
                      _probs(1, .6), _probs(2, .75), _probs(1, .72)], np.float32)
    deltas = np.random.default_rng(7).normal(size=(7, 3, 4)).astype(np.float32)
    deltas[:, :, :] += 5.0  # garbage for the classes not chosen ...
    for n, c in enumerate(probs.argmax(axis=1)):
        deltas[n, c] = 0.0   # ... zero for each ROI's argmax class
    deltas[5, 2] = [1.0, 0.0, 0.0, 0.0]   # F: dy = 0.1 * 0.19 before clipping
    deltas[6, 1] = [0.0, 5.0, 0.0, 0.0]   # G: dx = 0.5 * 0.3 -> x2 = 1.05, clipped
    # 64x64 image, window rows 4..56 (exclusive) -> normalised y1 = 4/63, y2 = 55/63.
    m = meta((64, 64, 3), (4, 0, 56, 64))
    return rois, probs, deltas, m


def _expected_detections(rois):
    window_y2 = 55 / 63
    f = np_apply(rois[5], [0.1, 0, 0, 0])
    f = [max(f[0], 4 / 63), f[1], min(f[2], window_y2), f[3]]
    g = np_apply(rois[6], [0, 0.5, 0, 0])
    g = [max(g[0], 4 / 63), g[1], g[2], min(g[3], 1.0)]
    return np.array([list(rois[0]) + [1, 0.9], list(rois[1]) + [2, 0.8],
                     f + [2, 0.75], g + [1, 0.72], [0] * 6], np.float32)


def test_detection_layer_per_class_nms_confidence_window():
    rois, probs, deltas, m = _detection_case()
    layer = DetectionLayer(DetConfig(), name="mrcnn_detection")
    out = layer([rois[None], probs[None], deltas[None], m[None]]).numpy()
    assert out.shape == (1, 5, 6)
    np.testing.assert_allclose(out[0], _expected_detections(rois), atol=1e-5)
    assert out[0, 2, 2] == pytest.approx(55 / 63)
    assert out[0, 3, 0] == pytest.approx(4 / 63) and out[0, 3, 3] == pytest.approx(1.0)
    # Only the top DETECTION_MAX_INSTANCES by score are kept.
    cfg = type("C", (DetConfig,), {"DETECTION_MAX_INSTANCES": 2})()
    out = DetectionLayer(cfg)([rois[None], probs[None], deltas[None], m[None]]).numpy()
    np.testing.assert_allclose(out[0], _expected_detections(rois)[:2], atol=1e-5)


def test_detection_layer_class_agnostic_batch_and_model():
    rois, probs, deltas, m = _detection_case()
    agnostic = np.zeros((7, 1, 4), np.float32)
    agnostic[5, 0] = [1.0, 0.0, 0.0, 0.0]
    agnostic[6, 0] = [0.0, 5.0, 0.0, 0.0]
    # Image 1 holds the same ROIs in reverse order: same detections.
    perm = [6, 5, 4, 3, 2, 1, 0]
    batch = [np.stack([rois, rois[perm]]), np.stack([probs, probs[perm]]),
             np.stack([agnostic, agnostic[perm]]), np.stack([m, m])]
    layer = DetectionLayer(DetConfig())
    out = layer(batch).numpy()
    expected = _expected_detections(rois)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    np.testing.assert_allclose(out[1], expected, atol=1e-5)
    # bbox_std_dev override: std 0.2 on dy doubles F's shift.
    out2 = DetectionLayer(DetConfig(), bbox_std_dev=[0.2, 0.1, 0.2, 0.2])(batch).numpy()
    f = np_apply(rois[5], [0.2, 0, 0, 0])
    np.testing.assert_allclose(out2[0, 2, :4], [f[0], f[1], 55 / 63, f[3]], atol=1e-5)
    # Functional model, 3 images, batch_size 2; max instances larger than ROIs.
    cfg = type("C", (DetConfig,), {"DETECTION_MAX_INSTANCES": 9})()
    big = DetectionLayer(cfg)
    batch3 = [np.concatenate([x, x[:1]]) for x in batch]
    got = run_in_model(big, batch3)
    assert got.shape == (3, 9, 6)
    for b in range(3):
        np.testing.assert_allclose(got[b, :5], expected, atol=1e-5)
        np.testing.assert_array_equal(got[b, 4:], 0)
    clone = roundtrip(big)
    assert clone.max_instances == 9
    np.testing.assert_allclose(clone(batch3).numpy(), got, atol=1e-6)


def test_float32_layers_under_mixed_bfloat16_policy():
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        probs, deltas, anchors = _proposal_case()
        layer = ProposalLayer(6, 0.7, config=Config(), pre_nms_limit=4)
        assert layer.compute_dtype == "float32"
        out = layer([tf.cast(probs, tf.bfloat16), tf.cast(deltas, tf.bfloat16), anchors])
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy()[0, 0], anchors[0, 0], atol=1e-6)

        rois, p, d, m = _detection_case()
        det = DetectionLayer(DetConfig())
        out = det([rois[None], tf.cast(p[None], tf.bfloat16), tf.cast(d[None], tf.bfloat16),
                   m[None]])
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy()[0, :2, :4], rois[:2], atol=1e-6)

        proposals = np.concatenate([POS, NEG])
        inputs = _target_inputs(proposals, [GT], [1], _mini_masks(1))
        inputs[0] = tf.cast(inputs[0], tf.bfloat16)
        outs = DetectionTargetLayer(TargetConfig())(inputs)
        assert [o.dtype for o in outs] == [tf.float32, tf.int32, tf.float32, tf.float32]
        np.testing.assert_array_equal(outs[1].numpy()[0, :3], 1)
    finally:
        keras.config.set_dtype_policy(old)


def test_bad_config_errors_name_the_attribute():
    with pytest.raises(ValueError, match="DETECTION_MAX_INSTANCES"):
        DetectionLayer({"DETECTION_MIN_CONFIDENCE": 0.5, "DETECTION_NMS_THRESHOLD": 0.3,
                        "BBOX_STD_DEV": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match="pool_shape"):
        PyramidROIAlign([7])
    with pytest.raises(ValueError, match="sampling_ratio"):
        PyramidROIAlign([7, 7], sampling_ratio=0)


# ---------------------------------------------------------------- random cross-checks
def np_nms(boxes, scores, threshold, limit):
    """Greedy NMS: the highest score wins, IoU > threshold is suppressed."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order and len(keep) < limit:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if np_iou(boxes[i], boxes[j]) <= threshold]
    return keep


def test_proposal_layer_matches_per_image_reference():
    rng = np.random.default_rng(8)
    B, A, pre, count, thr = 2, 300, 120, 40, 0.5
    yx = rng.uniform(0, 0.8, (B, A, 2))
    anchors = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (B, A, 2))], -1)
    fg = rng.uniform(size=(B, A))
    probs = np.stack([1 - fg, fg], -1).astype(np.float32)
    deltas = rng.normal(0, 1, (B, A, 4)).astype(np.float32)
    anchors = anchors.astype(np.float32)
    std = Config.RPN_BBOX_STD_DEV
    out = ProposalLayer(count, thr, config=Config(), pre_nms_limit=pre)(
        [probs, deltas, anchors]).numpy()
    for b in range(B):
        top = np.argsort(-fg[b], kind="stable")[:pre]
        boxes = np.array([np.clip(np_apply(anchors[b, i], deltas[b, i] * std), 0, 1)
                          for i in top])
        keep = np_nms(boxes, fg[b, top], thr, count)
        ref = np.zeros((count, 4))
        ref[:len(keep)] = boxes[keep]
        np.testing.assert_allclose(out[b], ref, atol=1e-5)


def test_detection_layer_matches_per_image_reference():
    """Matterport's refine_detections_graph, image by image, in numpy."""
    rng = np.random.default_rng(9)
    B, N, C = 2, 60, 4
    cfg = type("C", (DetConfig,), {"NUM_CLASSES": C, "DETECTION_MAX_INSTANCES": 12,
                                   "DETECTION_MIN_CONFIDENCE": 0.5,
                                   "DETECTION_NMS_THRESHOLD": 0.3})()
    yx = rng.uniform(0, 0.8, (B, N, 2))
    rois = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (B, N, 2))], -1).astype(np.float32)
    logits = rng.normal(0, 2, (B, N, C))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    deltas = rng.normal(0, 1, (B, N, C, 4)).astype(np.float32)
    windows = [(4, 0, 60, 64), (0, 8, 64, 50)]
    metas = np.stack([meta((64, 64, 3), w, num_classes=C) for w in windows])
    out = DetectionLayer(cfg)([rois, probs, deltas, metas]).numpy()
    std = cfg.BBOX_STD_DEV
    for b in range(B):
        win = (np.array(windows[b], np.float64) - [0, 0, 1, 1]) / 63.0
        cls = probs[b].argmax(-1)
        score = probs[b].max(-1)
        boxes = np.array([np_apply(rois[b, n], deltas[b, n, cls[n]] * std) for n in range(N)])
        lo = np.array([win[0], win[1], win[0], win[1]])
        hi = np.array([win[2], win[3], win[2], win[3]])
        boxes = np.clip(boxes, lo, hi)
        keep = [n for n in range(N) if cls[n] > 0 and score[n] >= 0.5]
        kept = []
        for c in set(cls[keep]):
            ix = [n for n in keep if cls[n] == c]
            kept += [ix[i] for i in np_nms(boxes[ix], score[ix], 0.3, 12)]
        kept = sorted(kept, key=lambda n: -score[n])[:12]
        assert len(kept) > 3
        ref = np.zeros((12, 6))
        ref[:len(kept)] = [list(boxes[n]) + [cls[n], score[n]] for n in kept]
        np.testing.assert_allclose(out[b], ref, atol=1e-5)


def test_training_path_gradients():
    """RPN deltas -> proposals -> targets -> ROI align: features get gradients and the
    non-differentiable steps (NMS, sampling) do not break the tape."""
    probs, deltas, anchors = _proposal_case()
    rng = np.random.default_rng(10)
    _, m, maps, _ = _roi_align_case(rng)
    maps = [tf.Variable(p) for p in maps]
    rpn_bbox = tf.Variable(deltas)
    gt_boxes = np.stack([[GT], [GT]]).astype(np.float32)
    gt_ids = np.array([[1], [1]], np.int32)
    masks = np.ones((2, 4, 4, 1), bool)
    with tf.GradientTape() as tape:
        props = ProposalLayer(6, 0.7, config=Config())([probs, rpn_bbox, anchors])
        rois, ids, target_bbox, target_mask = DetectionTargetLayer(TargetConfig())(
            [props, gt_ids, gt_boxes, masks])
        pooled = PyramidROIAlign([2, 2])([rois, m] + maps)
        loss = tf.reduce_sum(pooled) + tf.reduce_sum(target_bbox)
    grads = tape.gradient(loss, maps + [rpn_bbox])
    assert grads[-1] is None
    assert grads[0] is not None and float(tf.reduce_sum(tf.abs(grads[0]))) > 0


def test_valid_detection_boxes_and_pad_slots():
    from mrcnn.roi_heads import PadSlots, ValidDetectionBoxes
    det = np.zeros((2, 5, 6), np.float32)
    det[0, :3, 4] = [2, 1, 3]          # image 0: three detections
    det[1, :1, 4] = [1]                # image 1: one
    det[..., :4] = np.random.default_rng(0).random((2, 5, 4))
    boxes = ValidDetectionBoxes()([tf.constant(det), tf.constant(det[..., :4])]).numpy()
    np.testing.assert_array_equal(boxes, det[:, :3, :4])
    # No valid detection in the batch: one slot, so the mask head still has a row.
    empty = ValidDetectionBoxes()([tf.zeros((2, 5, 6)), tf.ones((2, 5, 4))]).numpy()
    assert empty.shape == (2, 1, 4)

    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2) + 1
    padded = PadSlots(5)(tf.constant(x)).numpy()
    assert padded.shape == (2, 5, 2, 2)
    np.testing.assert_array_equal(padded[:, :3], x)
    assert not padded[:, 3:].any()
    np.testing.assert_array_equal(PadSlots(2)(tf.constant(x)).numpy(), x[:, :2])
    assert PadSlots(5).compute_output_shape((None, None, 2, 2)) == (None, 5, 2, 2)
