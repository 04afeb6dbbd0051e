"""The five Mask R-CNN losses (Matterport's definitions), batched.

Every function returns a scalar float32 tensor and returns 0 (not NaN) when there is
nothing to average over (no positive anchors, no positive ROIs). Cascade stages reuse the
three head losses with their own targets; ``LossLayer`` wraps any of them as a named
Keras layer so the training graph can expose each loss as an output.
"""

import keras
import tensorflow as tf

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")


def smooth_l1(y_true, y_pred):
    """Element-wise smooth-L1 (Huber with delta 1): 0.5 x^2 if |x| < 1 else |x| - 0.5."""
    diff = tf.abs(y_true - y_pred)
    return tf.where(diff < 1.0, 0.5 * tf.square(diff), diff - 0.5)


def _safe_mean(values, weights=None):
    """Mean of ``values`` (weighted), 0 when the weight sum is 0."""
    if weights is None:
        weights = tf.ones_like(values)
    total = tf.reduce_sum(weights)
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), total)


def rpn_class_loss_graph(rpn_match, rpn_class_logits):
    """RPN anchor classifier loss.

    rpn_match: [B, A, 1] int (1 positive, -1 negative, 0 neutral).
    rpn_class_logits: [B, A, 2] background/foreground logits.
    Cross-entropy averaged over non-neutral anchors.
    """
    rpn_match = tf.squeeze(tf.cast(rpn_match, tf.int32), -1)
    labels = tf.cast(tf.equal(rpn_match, 1), tf.int32)
    used = tf.cast(tf.not_equal(rpn_match, 0), tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(rpn_class_logits, tf.float32))
    return _safe_mean(ce, used)


def rpn_bbox_loss_graph(config, target_bbox, rpn_match, rpn_bbox):
    """RPN box regression loss over positive anchors.

    target_bbox: [B, max_positives, 4], row i holds the deltas of the image's i-th
        positive anchor in anchor order (Matterport's layout; zero padded).
    rpn_match: [B, A, 1]. rpn_bbox: [B, A, 4] predicted deltas.
    """
    del config  # kept for Matterport's signature
    rpn_match = tf.squeeze(tf.cast(rpn_match, tf.int32), -1)
    positive = tf.cast(tf.equal(rpn_match, 1), tf.int32)
    # Rank of each positive anchor among its image's positives -> its row in target_bbox.
    rank = tf.cumsum(positive, axis=1, exclusive=True)
    rank = tf.minimum(rank, tf.shape(target_bbox)[1] - 1)
    targets = tf.gather(tf.cast(target_bbox, tf.float32), rank, batch_dims=1)
    # Mean over positive anchors and the 4 coordinates (Matterport's K.mean).
    loss = tf.reduce_mean(smooth_l1(targets, tf.cast(rpn_bbox, tf.float32)), axis=-1)
    return _safe_mean(loss, tf.cast(positive, tf.float32))


def mrcnn_class_loss_graph(target_class_ids, pred_class_logits, active_class_ids):
    """Box-head classifier loss.

    target_class_ids: [B, T] (0 = background or padding). pred_class_logits: [B, T, C].
    active_class_ids: [B, C] 1 for classes of the image's source dataset. Predictions of
    classes not in the image's source are not penalised (Matterport's rule).
    """
    target_class_ids = tf.cast(target_class_ids, tf.int32)
    logits = tf.cast(pred_class_logits, tf.float32)
    pred_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
    pred_active = tf.gather(tf.cast(active_class_ids, tf.float32), pred_ids, batch_dims=1)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids, logits=logits)
    return _safe_mean(ce, pred_active)


def mrcnn_bbox_loss_graph(target_bbox, target_class_ids, pred_bbox):
    """Box-head regression loss over positive ROIs.

    target_bbox: [B, T, 4]. target_class_ids: [B, T]. pred_bbox: [B, T, C, 4] per class, or
    [B, T, 1, 4] class-agnostic (cascade).
    """
    target_class_ids = tf.cast(target_class_ids, tf.int32)
    pred_bbox = tf.cast(pred_bbox, tf.float32)
    if pred_bbox.shape[2] == 1:
        pred = pred_bbox[:, :, 0, :]
    else:
        pred = tf.gather(pred_bbox, tf.maximum(target_class_ids, 0), batch_dims=2)
    positive = tf.cast(target_class_ids > 0, tf.float32)
    # Mean over positive ROIs and the 4 coordinates (Matterport's K.mean).
    loss = tf.reduce_mean(smooth_l1(tf.cast(target_bbox, tf.float32), pred), axis=-1)
    return _safe_mean(loss, positive)


def mrcnn_mask_loss_graph(target_masks, target_class_ids, pred_masks):
    """Mask-head binary cross-entropy on the mask of each positive ROI's class.

    target_masks: [B, T, h, w] 0/1. target_class_ids: [B, T]. pred_masks: [B, T, h, w, C]
    sigmoid probabilities.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int32)
    pred = tf.transpose(tf.cast(pred_masks, tf.float32), [0, 1, 4, 2, 3])
    pred = tf.gather(pred, tf.maximum(target_class_ids, 0), batch_dims=2)  # [B, T, h, w]
    target = tf.cast(target_masks, tf.float32)
    bce = keras.ops.binary_crossentropy(target, pred)
    per_roi = tf.reduce_mean(bce, axis=[2, 3])
    positive = tf.cast(target_class_ids > 0, tf.float32)
    return _safe_mean(per_roi, positive)


_LOSS_FUNCTIONS = {
    "rpn_class": rpn_class_loss_graph,
    "rpn_bbox": rpn_bbox_loss_graph,
    "mrcnn_class": mrcnn_class_loss_graph,
    "mrcnn_bbox": mrcnn_bbox_loss_graph,
    "mrcnn_mask": mrcnn_mask_loss_graph,
}


@keras.saving.register_keras_serializable(package="mrcnn")
class LossLayer(keras.layers.Layer):
    """Computes one loss (``kind`` in rpn_class, rpn_bbox, mrcnn_class, mrcnn_bbox,
    mrcnn_mask) as a scalar output of the graph, named after the loss."""

    def __init__(self, kind, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if kind not in _LOSS_FUNCTIONS:
            raise ValueError("unknown loss kind {!r}".format(kind))
        self.kind = kind

    def call(self, inputs):
        fn = _LOSS_FUNCTIONS[self.kind]
        if self.kind == "rpn_bbox":
            return fn(None, *inputs)
        return fn(*inputs)

    def compute_output_shape(self, input_shape):
        return ()

    def get_config(self):
        config = super().get_config()
        config["kind"] = self.kind
        return config
