"""The five losses against numpy computations on hand-made tensors."""
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import roi_heads, rpn


def np_smooth_l1(d):
    d = np.abs(d)
    return np.where(d < 1, 0.5 * d ** 2, d - 0.5)


def np_ce(logits, labels):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


def test_rpn_class_loss_ignores_neutral_anchors():
    rng = np.random.default_rng(0)
    match = np.array([[1, -1, 0, 0, 1], [0, -1, -1, 0, 0]], np.int32)[..., None]
    logits = rng.normal(size=(2, 5, 2)).astype(np.float32)
    got = rpn.rpn_class_loss_graph(tf.constant(match), tf.constant(logits)).numpy()
    m = match[..., 0]
    used = m != 0
    expected = np_ce(logits, (m == 1).astype(int))[used].mean()
    assert got == pytest.approx(expected, rel=1e-5)


def test_rpn_bbox_loss_uses_positive_order_and_zero_without_positives():
    match = np.array([[0, 1, -1, 1], [0, 0, 0, 0]], np.int32)[..., None]
    pred = np.zeros((2, 4, 4), np.float32)
    pred[0, 1] = [0.5, 0, 0, 0]
    pred[0, 3] = [0, 3.0, 0, 0]
    target = np.zeros((2, 3, 4), np.float32)
    target[0, 0] = [0, 0, 0, 0]      # first positive anchor (index 1)
    target[0, 1] = [0, 1.0, 0, 0]    # second positive anchor (index 3)
    got = rpn.rpn_bbox_loss_graph(None, tf.constant(target), tf.constant(match),
                                     tf.constant(pred)).numpy()
    # anchor 1: |0.5| -> 0.125 ; anchor 3: |2.0| -> 1.5 ; mean over 2 positives x 4 coords
    assert got == pytest.approx((0.125 + 1.5) / 8, rel=1e-6)
    empty = rpn.rpn_bbox_loss_graph(None, tf.constant(target), tf.zeros_like(match),
                                       tf.constant(pred)).numpy()
    assert empty == 0.0


def test_mrcnn_class_loss_masks_inactive_predictions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 4, 3)).astype(np.float32)
    logits[0, 0] = [0, 0, 9]  # predicts class 2, which is inactive below
    target = np.array([[1, 0, 2, 1]], np.int32)
    active = np.array([[1, 1, 0]], np.float32)
    got = roi_heads.mrcnn_class_loss_graph(tf.constant(target), tf.constant(logits),
                                        tf.constant(active)).numpy()
    ce = np_ce(logits, target)
    w = active[0][logits.argmax(-1)]
    assert got == pytest.approx((ce * w).sum() / w.sum(), rel=1e-5)


def test_mrcnn_class_loss_with_class_weights_by_hand():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 3)).astype(np.float32)
    target = np.array([[1, 0, 2, 1, 0], [2, 2, 0, 0, 1]], np.int32)
    active = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    weights = (0.5, 1.0, 4.0)

    def loss(w):
        return roi_heads.mrcnn_class_loss_graph(
            tf.constant(target), tf.constant(logits), tf.constant(active),
            class_weights=w).numpy()

    ce = np_ce(logits, target)
    pred_active = np.take_along_axis(active[:, None, :].repeat(5, 1),
                                     logits.argmax(-1)[..., None], -1)[..., 0]
    w = pred_active * np.asarray(weights)[target]
    assert loss(weights) == pytest.approx((ce * w).sum() / w.sum(), rel=1e-5)
    # Equal weights (any value) give the unweighted loss: the scale stays comparable.
    assert loss((3.0, 3.0, 3.0)) == pytest.approx(loss(None), rel=1e-6)
    assert loss(weights) != pytest.approx(loss(None), rel=1e-3)
    # Nothing carries weight (only background ROIs, background weight 0): 0, not NaN.
    only_bg = roi_heads.mrcnn_class_loss_graph(
        tf.zeros_like(target), tf.constant(logits), tf.constant(active),
        class_weights=(0.0, 1.0, 1.0)).numpy()
    assert only_bg == 0.0


def test_mrcnn_bbox_loss_per_class_and_class_agnostic():
    target = np.array([[[0.1, 0, 0, 0], [0, 0, 0, 0], [0, 2.0, 0, 0]]], np.float32)
    ids = np.array([[2, 0, 1]], np.int32)
    pred = np.zeros((1, 3, 3, 4), np.float32)
    pred[0, 0, 2] = [0.3, 0, 0, 0]     # roi 0, class 2
    pred[0, 2, 1] = [0, 0.5, 0, 0]     # roi 2, class 1
    got = roi_heads.mrcnn_bbox_loss_graph(tf.constant(target), tf.constant(ids),
                                       tf.constant(pred)).numpy()
    expected = (np_smooth_l1(np.array([0.2])).sum() + np_smooth_l1(np.array([1.5])).sum()) / 8
    assert got == pytest.approx(expected, rel=1e-5)
    agnostic = np.zeros((1, 3, 1, 4), np.float32)
    agnostic[0, 0, 0] = [0.3, 0, 0, 0]
    agnostic[0, 2, 0] = [0, 0.5, 0, 0]
    got2 = roi_heads.mrcnn_bbox_loss_graph(tf.constant(target), tf.constant(ids),
                                        tf.constant(agnostic)).numpy()
    assert got2 == pytest.approx(expected, rel=1e-5)


def test_mrcnn_mask_loss_selects_target_class_channel():
    rng = np.random.default_rng(2)
    pred = rng.uniform(0.05, 0.95, size=(1, 2, 4, 4, 3)).astype(np.float32)
    target = (rng.uniform(size=(1, 2, 4, 4)) > 0.5).astype(np.float32)
    ids = np.array([[2, 0]], np.int32)
    got = roi_heads.mrcnn_mask_loss_graph(tf.constant(target), tf.constant(ids),
                                       tf.constant(pred)).numpy()
    p = pred[0, 0, :, :, 2]
    t = target[0, 0]
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    assert got == pytest.approx(expected, rel=1e-4)
    none = roi_heads.mrcnn_mask_loss_graph(tf.constant(target), tf.zeros_like(ids),
                                        tf.constant(pred)).numpy()
    assert none == 0.0
