"""Matterport's four custom Keras layers, written with batched TF ops.

ProposalLayer, PyramidROIAlign, DetectionTargetLayer and DetectionLayer keep Matterport's
inputs, outputs and semantics (see docs/design.md) but process the whole batch at once
(top-k, ``tf.gather(batch_dims=...)``, batched NMS, one ``crop_and_resize`` for the batch), so
they work for any batch size, including a partial last batch.

Mixed precision: box arithmetic is always float32. ProposalLayer, DetectionTargetLayer and
DetectionLayer default to a float32 dtype policy (Keras then casts half-precision inputs
up); PyramidROIAlign does not autocast and returns features in the dtype of its feature-map
inputs.

Every layer is registered with Keras (package "mrcnn") and serialises through get_config;
``config`` is stored as a plain dict of the values the layer uses, so a saved layer needs no
Config object to load, and ``config`` may be given as such a dict.
"""

import numpy as np
import keras
import tensorflow as tf

from mrcnn.boxes import (apply_box_deltas_graph, box_refinement_graph, clip_boxes_graph,
                           log2_graph, norm_boxes_graph, overlaps_graph)
from mrcnn.config import Config
from mrcnn.imagemeta import parse_image_meta_graph


def _to_builtin(value):
    """numpy values -> plain Python (JSON-serialisable)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def _config_values(config, names, layer_name):
    """Read ``names`` from a Config instance or a dict; error names the missing one."""
    if config is None:
        raise ValueError("{}: a config (Config instance or dict) is required".format(
            layer_name))
    values = {}
    for name in names:
        if isinstance(config, dict):
            if name not in config:
                raise ValueError("{}: config dict has no key {!r}".format(layer_name, name))
            value = config[name]
        else:
            if not hasattr(config, name):
                raise ValueError("{}: config has no attribute {}".format(layer_name, name))
            value = getattr(config, name)
        values[name] = _to_builtin(value)
    return values


def _std_dev(value, what, layer_name):
    """Validated std-devs as float32 [4] (for the graph)."""
    std = np.asarray(value, dtype=np.float64).reshape(-1)
    if std.shape != (4,) or np.any(std <= 0):
        raise ValueError("{}: {} must be 4 positive numbers, got {!r}".format(
            layer_name, what, value))
    return std.astype(np.float32)


def _std_list(value):
    """Std-devs as Python floats for get_config (no float32 round-off in the JSON)."""
    return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def _dim(tensor, axis):
    """Static size of ``axis`` if known, else the dynamic one."""
    size = tensor.shape[axis]
    return size if size is not None else tf.shape(tensor)[axis]


############################################################
#  Proposal layer
############################################################

@keras.saving.register_keras_serializable(package="mrcnn")
class ProposalLayer(keras.layers.Layer):
    """Refine anchors with the RPN deltas and keep the best non-overlapping ones.

    Args:
        proposal_count: proposals returned per image (after NMS), zero padded.
        nms_threshold: IoU above which the lower-scored box is suppressed.
        config: Config (or dict) giving RPN_BBOX_STD_DEV and PRE_NMS_LIMIT; None uses the
            Config class defaults.
        pre_nms_limit: anchors kept by score before NMS (default config.PRE_NMS_LIMIT);
            min(pre_nms_limit, A) is used.
        rpn_bbox_std_dev: overrides config.RPN_BBOX_STD_DEV.

    Inputs: [rpn_probs [B, A, 2] (bg, fg), rpn_bbox [B, A, 4] std-scaled deltas,
             anchors [B, A, 4] normalised].
    Output: [B, proposal_count, 4] normalised (y1, x1, y2, x2) proposals clipped to [0, 1],
            in descending score order, zero padded. No gradient flows through it.
    """

    def __init__(self, proposal_count, nms_threshold, config=None, pre_nms_limit=None,
                 rpn_bbox_std_dev=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        name = type(self).__name__
        source = Config if config is None else config
        if pre_nms_limit is None:
            pre_nms_limit = _config_values(source, ["PRE_NMS_LIMIT"], name)["PRE_NMS_LIMIT"]
        if rpn_bbox_std_dev is None:
            rpn_bbox_std_dev = _config_values(source, ["RPN_BBOX_STD_DEV"],
                                              name)["RPN_BBOX_STD_DEV"]
        if int(proposal_count) <= 0:
            raise ValueError("{}: proposal_count must be > 0, got {!r}".format(
                name, proposal_count))
        if not 0 < float(nms_threshold) <= 1:
            raise ValueError("{}: nms_threshold must be in (0, 1], got {!r}".format(
                name, nms_threshold))
        if int(pre_nms_limit) <= 0:
            raise ValueError("{}: pre_nms_limit must be > 0, got {!r}".format(
                name, pre_nms_limit))
        self.config = config  # kept for Matterport-style access; not serialised
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = _std_dev(rpn_bbox_std_dev, "RPN_BBOX_STD_DEV", name)
        self._rpn_bbox_std_dev_config = _std_list(rpn_bbox_std_dev)

    def call(self, inputs):
        rpn_probs, rpn_bbox, anchors = inputs
        scores = tf.cast(rpn_probs, tf.float32)[:, :, 1]
        deltas = tf.cast(rpn_bbox, tf.float32) * self.rpn_bbox_std_dev.reshape([1, 1, 4])
        anchors = tf.cast(anchors, tf.float32)

        # Work on the top anchors by score only: NMS cost grows with the square.
        num_anchors = scores.shape[1]
        if num_anchors is not None:
            k = min(self.pre_nms_limit, num_anchors)
        else:
            k = tf.minimum(self.pre_nms_limit, tf.shape(scores)[1])
        top = tf.math.top_k(scores, k, sorted=True, name="top_anchors")
        scores = top.values
        deltas = tf.gather(deltas, top.indices, batch_dims=1)
        anchors = tf.gather(anchors, top.indices, batch_dims=1)

        boxes = apply_box_deltas_graph(anchors, deltas)
        boxes = clip_boxes_graph(boxes, tf.constant([0.0, 0.0, 1.0, 1.0]))
        # Proposals are treated as constants downstream (as in Faster R-CNN); NMS has no
        # gradient anyway.
        boxes = tf.stop_gradient(boxes)
        scores = tf.stop_gradient(scores)

        # One-class batched NMS; padding rows come back as zeros.
        nms = tf.image.combined_non_max_suppression(
            boxes[:, :, tf.newaxis, :], scores[:, :, tf.newaxis],
            max_output_size_per_class=self.proposal_count,
            max_total_size=self.proposal_count,
            iou_threshold=self.nms_threshold,
            score_threshold=float("-inf"),
            pad_per_class=False, clip_boxes=False, name="rpn_non_max_suppression")
        return nms.nmsed_boxes

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        config = super().get_config()
        config.update({
            "proposal_count": self.proposal_count,
            "nms_threshold": self.nms_threshold,
            "pre_nms_limit": self.pre_nms_limit,
            "rpn_bbox_std_dev": self._rpn_bbox_std_dev_config,
        })
        return config


############################################################
#  ROI Align
############################################################

@keras.saving.register_keras_serializable(package="mrcnn")
class PyramidROIAlign(keras.layers.Layer):
    """ROI Align on the FPN level that suits each box's size.

    Args:
        pool_shape: (pool_height, pool_width) of the output.
        sampling_ratio: s >= 1. Boxes are bilinearly sampled at (ph * s, pw * s) points
            (tf.image.crop_and_resize) and averaged over s x s blocks; s = 1 is
            Matterport's single sample per bin.

    Inputs: [boxes [B, N, 4] normalised (zero padded), image_meta [B, META],
             P2, P3, P4, P5 each [B, H_l, W_l, C]].
    Output: [B, N, ph, pw, C] in the feature maps' dtype, boxes in their input order.

    Level = clip(4 + round(log2(sqrt(h * w) / (224 / sqrt(image_area)))), 2, 5), with h, w
    the normalised box size and image_area from the image_shape of the first image's meta
    (all images of a batch share the molded shape). Empty (padding) boxes go to P2.
    """

    def __init__(self, pool_shape, sampling_ratio=1, **kwargs):
        # Feature maps keep their dtype (bfloat16 under mixed precision); boxes must not be
        # rounded to half precision, so no autocast: call() casts what it needs.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        pool_shape = tuple(int(p) for p in pool_shape)
        if len(pool_shape) != 2 or min(pool_shape) <= 0:
            raise ValueError("PyramidROIAlign: pool_shape must be (height, width) > 0, got "
                             "{!r}".format(pool_shape))
        if int(sampling_ratio) != sampling_ratio or int(sampling_ratio) < 1:
            raise ValueError("PyramidROIAlign: sampling_ratio must be an integer >= 1, got "
                             "{!r}".format(sampling_ratio))
        self.pool_shape = pool_shape
        self.sampling_ratio = int(sampling_ratio)

    def call(self, inputs):
        if len(inputs) != 6:
            raise ValueError("PyramidROIAlign expects [boxes, image_meta, P2, P3, P4, P5], "
                             "got {} inputs".format(len(inputs)))
        boxes = tf.stop_gradient(tf.cast(inputs[0], tf.float32))
        image_meta = inputs[1]
        feature_maps = inputs[2:]
        out_dtype = feature_maps[0].dtype

        # FPN paper eq. 1 in normalised coordinates: a 224x224-pixel ROI maps to P4.
        image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]
        image_area = image_shape[0] * image_shape[1]
        h = boxes[..., 2] - boxes[..., 0]
        w = boxes[..., 3] - boxes[..., 1]
        level = log2_graph(tf.sqrt(tf.maximum(h * w, 0.0)) / (224.0 / tf.sqrt(image_area)))
        # Clip before the int cast so empty boxes (log2 = -inf) land safely on P2.
        level = tf.clip_by_value(4.0 + tf.round(level), 2.0, 5.0)
        # A NaN box (diverged weights) must still land on one level, or the inverse
        # permutation below fails with an opaque error.
        level = tf.cast(tf.where(tf.math.is_finite(level), level, 2.0), tf.int32)

        batch = _dim(boxes, 0)
        num_boxes = _dim(boxes, 1)
        flat_boxes = tf.reshape(boxes, [-1, 4])
        flat_level = tf.reshape(level, [-1])
        # Image index of every flattened box, for crop_and_resize's box_indices.
        box_image = tf.repeat(tf.range(tf.shape(boxes)[0]), tf.shape(boxes)[1])

        s = self.sampling_ratio
        crop_size = [self.pool_shape[0] * s, self.pool_shape[1] * s]
        pooled, order = [], []
        for i, fmap in enumerate(feature_maps):
            ix = tf.cast(tf.where(tf.equal(flat_level, i + 2))[:, 0], tf.int32)
            # crop_and_resize takes no bfloat16: sample in float32.
            crops = tf.image.crop_and_resize(
                tf.cast(fmap, tf.float32), tf.gather(flat_boxes, ix),
                tf.gather(box_image, ix), crop_size, method="bilinear")
            if s > 1:
                crops = tf.nn.avg_pool2d(crops, ksize=s, strides=s, padding="VALID")
            pooled.append(crops)
            order.append(ix)
        pooled = tf.concat(pooled, axis=0)
        # Every flat box is in exactly one level: undo the grouping by level.
        pooled = tf.gather(pooled, tf.math.invert_permutation(tf.concat(order, axis=0)))
        channels = _dim(feature_maps[0], -1)
        pooled = tf.reshape(pooled, [batch, num_boxes, self.pool_shape[0],
                                     self.pool_shape[1], channels])
        return tf.cast(pooled, out_dtype)

    def compute_output_shape(self, input_shape):
        return (tuple(input_shape[0][:2]) + self.pool_shape + (input_shape[2][-1],))

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape([tuple(x.shape) for x in inputs])
        return keras.KerasTensor(shape, dtype=inputs[2].dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"pool_shape": list(self.pool_shape),
                       "sampling_ratio": self.sampling_ratio})
        return config


############################################################
#  Detection target layer
############################################################

_TARGET_CONFIG = ("TRAIN_ROIS_PER_IMAGE", "ROI_POSITIVE_RATIO", "ROI_POSITIVE_IOU",
                  "BBOX_STD_DEV", "USE_MINI_MASK", "MASK_SHAPE")


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionTargetLayer(keras.layers.Layer):
    """Sample training ROIs from the proposals and build their head targets.

    Args:
        config: Config (or dict) giving TRAIN_ROIS_PER_IMAGE (T), ROI_POSITIVE_RATIO,
            ROI_POSITIVE_IOU, BBOX_STD_DEV, USE_MINI_MASK, MASK_SHAPE.
        positive_iou: IoU with a GT box at which an ROI is positive (default
            config.ROI_POSITIVE_IOU); ROIs below it are negative.
        bbox_std_dev: divisor of the box targets (default config.BBOX_STD_DEV).
        add_gt_as_proposals: append the (non-crowd) GT boxes to the proposals first.

    Inputs: [proposals [B, P, 4] normalised, zero padded;
             gt_class_ids [B, G] int (0 = padding, < 0 = crowd);
             gt_boxes [B, G, 4] normalised;
             gt_masks [B, h, w, G] bool/0-1 (mini masks if USE_MINI_MASK, else full image)].
    Outputs: rois [B, T, 4] normalised; target_class_ids [B, T] int32;
             target_bbox [B, T, 4] = box_refinement(roi, gt) / bbox_std_dev;
             target_mask [B, T, MASK_SHAPE[0], MASK_SHAPE[1]] 0/1.
             Positives first, then negatives, then zero padding. No gradient flows.

    Sampling (Matterport): positives are proposals with IoU >= positive_iou with a non-crowd
    GT box, at most int(T * ROI_POSITIVE_RATIO), drawn at random; negatives have IoU <
    positive_iou with every GT box and IoU < 0.001 with every crowd box, and their count is
    int(n_pos / ROI_POSITIVE_RATIO) - n_pos, drawn at random. Each positive takes the GT box
    of highest IoU. Deviation: an image with no non-crowd GT box at all gets up to
    T - int(T * ROI_POSITIVE_RATIO) negatives (Matterport's ratio rule would give none).
    """

    def __init__(self, config, positive_iou=None, bbox_std_dev=None,
                 add_gt_as_proposals=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        name = type(self).__name__
        values = _config_values(config, _TARGET_CONFIG, name)
        self.config = values
        self.train_rois = int(values["TRAIN_ROIS_PER_IMAGE"])
        self.positive_ratio = float(values["ROI_POSITIVE_RATIO"])
        self.positive_iou = float(values["ROI_POSITIVE_IOU"] if positive_iou is None
                                  else positive_iou)
        std = values["BBOX_STD_DEV"] if bbox_std_dev is None else bbox_std_dev
        self.bbox_std_dev = _std_dev(std, "bbox_std_dev", name)
        self._bbox_std_dev_config = _std_list(std)
        self.use_mini_mask = bool(values["USE_MINI_MASK"])
        self.mask_shape = tuple(int(m) for m in values["MASK_SHAPE"])
        self.add_gt_as_proposals = bool(add_gt_as_proposals)
        if self.train_rois <= 0:
            raise ValueError("{}: TRAIN_ROIS_PER_IMAGE must be > 0".format(name))
        if not 0 < self.positive_ratio <= 1:
            raise ValueError("{}: ROI_POSITIVE_RATIO must be in (0, 1]".format(name))
        if not 0 < self.positive_iou <= 1:
            raise ValueError("{}: positive_iou must be in (0, 1], got {!r}".format(
                name, self.positive_iou))
        if len(self.mask_shape) != 2 or min(self.mask_shape) <= 0:
            raise ValueError("{}: MASK_SHAPE must be (height, width) > 0".format(name))

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        T = self.train_rois
        pos_quota = int(T * self.positive_ratio)
        proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
        gt_boxes = tf.stop_gradient(tf.cast(gt_boxes, tf.float32))
        gt_class_ids = tf.cast(gt_class_ids, tf.int32)

        if self.add_gt_as_proposals:
            # Crowd and padding rows become zero boxes, i.e. padding.
            real = tf.cast(gt_class_ids > 0, tf.float32)[..., tf.newaxis]
            proposals = tf.concat([proposals, gt_boxes * real], axis=1)
        # At least T proposal slots, so top-k below can always ask for T entries.
        pad = tf.maximum(T - tf.shape(proposals)[1], 0)
        proposals = tf.pad(proposals, [[0, 0], [0, pad], [0, 0]])

        valid = tf.reduce_any(tf.not_equal(proposals, 0.0), axis=-1)        # [B, P]
        gt_valid = tf.reduce_any(tf.not_equal(gt_boxes, 0.0), axis=-1)     # [B, G]
        gt_real = tf.logical_and(gt_valid, gt_class_ids > 0)
        gt_crowd = tf.logical_and(gt_valid, gt_class_ids < 0)

        overlaps = overlaps_graph(proposals, gt_boxes)                     # [B, P, G]
        real_overlaps = tf.where(gt_real[:, tf.newaxis, :], overlaps, -1.0)
        roi_iou_max = tf.reduce_max(real_overlaps, axis=2)
        crowd_iou_max = tf.reduce_max(
            tf.where(gt_crowd[:, tf.newaxis, :], overlaps, 0.0), axis=2)
        positive = tf.logical_and(valid, roi_iou_max >= self.positive_iou)
        negative = tf.logical_and(tf.logical_and(valid, roi_iou_max < self.positive_iou),
                                  crowd_iou_max < 0.001)

        # Counts per image, following Matterport's ratio rule (float32 arithmetic).
        n_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), pos_quota)
        ratio_neg = tf.cast((1.0 / self.positive_ratio) * tf.cast(n_pos, tf.float32),
                            tf.int32) - n_pos
        has_gt = tf.reduce_any(gt_real, axis=1)
        neg_target = tf.where(has_gt, ratio_neg, T - pos_quota)
        neg_target = tf.minimum(neg_target, T - n_pos)
        n_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), neg_target)

        # Random subsets: top-k over uniform keys is a batched shuffle-and-take.
        keys = tf.random.uniform(tf.shape(positive))
        pos_idx = tf.math.top_k(tf.where(positive, keys, -1.0), pos_quota).indices
        neg_idx = tf.math.top_k(tf.where(negative, keys, -1.0), T).indices
        pos_ok = tf.range(pos_quota)[tf.newaxis, :] < n_pos[:, tf.newaxis]
        neg_ok = tf.range(T)[tf.newaxis, :] < n_neg[:, tf.newaxis]

        # Pack the chosen ones to the front (positives, then negatives), T slots.
        cand_idx = tf.concat([pos_idx, neg_idx], axis=1)
        cand_ok = tf.concat([pos_ok, neg_ok], axis=1)
        cand_pos = tf.concat([pos_ok, tf.zeros_like(neg_ok)], axis=1)
        num_cand = pos_quota + T
        rank = tf.where(cand_ok, num_cand - tf.range(num_cand)[tf.newaxis, :], 0)
        slot = tf.math.top_k(rank, T).indices                               # [B, T]
        roi_idx = tf.gather(cand_idx, slot, batch_dims=1)
        roi_ok = tf.gather(cand_ok, slot, batch_dims=1)
        roi_pos = tf.gather(cand_pos, slot, batch_dims=1)

        rois = tf.gather(proposals, roi_idx, batch_dims=1) * \
            tf.cast(roi_ok, tf.float32)[..., tf.newaxis]

        # GT box of highest IoU for each ROI (only used for positives).
        assignment = tf.argmax(real_overlaps, axis=2, output_type=tf.int32)
        roi_gt = tf.gather(assignment, roi_idx, batch_dims=1)               # [B, T]
        roi_gt_boxes = tf.gather(gt_boxes, roi_gt, batch_dims=1)
        class_ids = tf.where(roi_pos, tf.gather(gt_class_ids, roi_gt, batch_dims=1), 0)

        # Unit boxes in non-positive slots keep log/div finite; those slots are zeroed.
        pos3 = roi_pos[..., tf.newaxis]
        unit = tf.constant([0.0, 0.0, 1.0, 1.0])
        safe_rois = tf.where(pos3, rois, unit)
        safe_gt = tf.where(pos3, roi_gt_boxes, unit)
        deltas = box_refinement_graph(safe_rois, safe_gt) / self.bbox_std_dev
        deltas = tf.where(pos3, deltas, 0.0)

        masks = self._mask_targets(gt_masks, safe_rois[:, :pos_quota],
                                   safe_gt[:, :pos_quota], roi_gt[:, :pos_quota])
        # Positives occupy the first n_pos <= pos_quota slots; the rest get zero masks.
        masks = masks * tf.cast(roi_pos[:, :pos_quota], tf.float32)[..., None, None]
        masks = tf.pad(masks, [[0, 0], [0, T - pos_quota], [0, 0], [0, 0]])

        return [tf.stop_gradient(rois), tf.stop_gradient(class_ids),
                tf.stop_gradient(deltas), tf.stop_gradient(masks)]

    def _mask_targets(self, gt_masks, rois, gt_boxes, roi_gt):
        """Crop each ROI's GT mask. rois, gt_boxes [B, K, 4], roi_gt [B, K] -> [B, K, mh, mw]."""
        if gt_masks.dtype == tf.bool:
            gt_masks = tf.cast(gt_masks, tf.uint8)  # 1 byte per pixel, crop_and_resize takes it
        elif gt_masks.dtype not in (tf.uint8, tf.float32):
            gt_masks = tf.cast(gt_masks, tf.float32)
        boxes = rois
        if self.use_mini_mask:
            # ROI in the frame of its GT box, which is what the mini mask covers.
            gy1, gx1, gy2, gx2 = (gt_boxes[..., i] for i in range(4))
            gh = gy2 - gy1
            gw = gx2 - gx1
            boxes = tf.stack([(rois[..., 0] - gy1) / gh, (rois[..., 1] - gx1) / gw,
                              (rois[..., 2] - gy1) / gh, (rois[..., 3] - gx1) / gw], axis=-1)
        num_gt = tf.shape(gt_masks)[3]
        # [B, h, w, G] -> [B * G, h, w, 1]: one crop_and_resize for the whole batch.
        stack = tf.transpose(gt_masks, [0, 3, 1, 2])
        stack = tf.reshape(stack, [-1, tf.shape(gt_masks)[1], tf.shape(gt_masks)[2], 1])
        batch = tf.shape(rois)[0]
        k = _dim(rois, 1)
        box_ind = tf.range(batch)[:, tf.newaxis] * num_gt + roi_gt
        crops = tf.image.crop_and_resize(stack, tf.reshape(boxes, [-1, 4]),
                                         tf.reshape(box_ind, [-1]), self.mask_shape)
        # Binary targets for the mask's binary cross-entropy.
        crops = tf.round(crops)
        return tf.reshape(crops, [batch, k, self.mask_shape[0], self.mask_shape[1]])

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        T = self.train_rois
        return [(batch, T, 4), (batch, T), (batch, T, 4),
                (batch, T, self.mask_shape[0], self.mask_shape[1])]

    def compute_output_spec(self, inputs):
        shapes = self.compute_output_shape([tuple(x.shape) for x in inputs])
        dtypes = ["float32", "int32", "float32", "float32"]
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes)]

    def compute_mask(self, inputs, mask=None):
        return [None, None, None, None]

    def get_config(self):
        config = super().get_config()
        config.update({
            "config": dict(self.config),
            "positive_iou": self.positive_iou,
            "bbox_std_dev": self._bbox_std_dev_config,
            "add_gt_as_proposals": self.add_gt_as_proposals,
        })
        return config


############################################################
#  Detection layer
############################################################

_DETECTION_CONFIG = ("DETECTION_MAX_INSTANCES", "DETECTION_MIN_CONFIDENCE",
                     "DETECTION_NMS_THRESHOLD", "BBOX_STD_DEV")


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionLayer(keras.layers.Layer):
    """Turn classified, refined ROIs into final detections.

    Args:
        config: Config (or dict) giving DETECTION_MAX_INSTANCES (D),
            DETECTION_MIN_CONFIDENCE, DETECTION_NMS_THRESHOLD, BBOX_STD_DEV.
        bbox_std_dev: multiplier of the box deltas (default config.BBOX_STD_DEV).

    Inputs: [rois [B, N, 4] normalised, mrcnn_class [B, N, C] probabilities,
             mrcnn_bbox [B, N, C, 4] per-class or [B, N, 1, 4] class-agnostic std-scaled
             deltas, image_meta [B, META]].
    Output: [B, D, 6] rows (y1, x1, y2, x2, class_id, score), normalised, by descending
            score, zero padded.

    Matterport semantics: each ROI takes its argmax class and that class's deltas; ROIs of
    class 0 or with score < DETECTION_MIN_CONFIDENCE are dropped; refined boxes are clipped
    to the image window (normalised with the first image's image_shape); NMS runs per class
    at DETECTION_NMS_THRESHOLD; the top D by score are kept.
    """

    def __init__(self, config=None, bbox_std_dev=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        name = type(self).__name__
        values = _config_values(config, _DETECTION_CONFIG, name)
        self.config = values
        self.max_instances = int(values["DETECTION_MAX_INSTANCES"])
        self.min_confidence = float(values["DETECTION_MIN_CONFIDENCE"])
        self.nms_threshold = float(values["DETECTION_NMS_THRESHOLD"])
        std = values["BBOX_STD_DEV"] if bbox_std_dev is None else bbox_std_dev
        self.bbox_std_dev = _std_dev(std, "bbox_std_dev", name)
        self._bbox_std_dev_config = _std_list(std)
        if self.max_instances <= 0:
            raise ValueError("{}: DETECTION_MAX_INSTANCES must be > 0".format(name))

    def call(self, inputs):
        rois, probs, deltas, image_meta = inputs
        rois = tf.stop_gradient(tf.cast(rois, tf.float32))
        probs = tf.stop_gradient(tf.cast(probs, tf.float32))
        deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))

        meta = parse_image_meta_graph(image_meta)
        window = norm_boxes_graph(meta["window"], meta["image_shape"][0, :2])  # [B, 4]
        return self.refine(rois, probs, deltas, window)

    def refine(self, rois, probs, deltas, window):
        """The detections of ``call`` from a normalised window [B, 4] instead of the image
        meta (rois, probs, deltas as ``call``'s inputs, float32). Returns [B, D, 6]."""
        class_ids = tf.argmax(probs, axis=-1, output_type=tf.int32)          # [B, N]
        scores = tf.reduce_max(probs, axis=-1)
        # Per-class deltas [B, N, C, 4] -> the argmax class's; class-agnostic [B, N, 1, 4]
        # -> its only row (min(class, q - 1) = 0).
        delta_ix = tf.minimum(class_ids, tf.shape(deltas)[2] - 1)
        deltas = tf.gather(deltas, delta_ix, batch_dims=2)                  # [B, N, 4]
        boxes = apply_box_deltas_graph(rois, deltas * self.bbox_std_dev)
        boxes = clip_boxes_graph(boxes, window)

        keep = tf.logical_and(class_ids > 0, scores >= self.min_confidence)
        # Only the argmax class of a kept ROI has a non-zero score, so the per-class NMS of
        # combined_non_max_suppression (score_threshold 0 drops the zeros) is Matterport's.
        num_classes = _dim(probs, 2)
        class_scores = tf.one_hot(class_ids, num_classes) * \
            tf.where(keep, scores, 0.0)[..., tf.newaxis]
        nms = tf.image.combined_non_max_suppression(
            boxes[:, :, tf.newaxis, :], class_scores,
            max_output_size_per_class=self.max_instances,
            max_total_size=self.max_instances,
            iou_threshold=self.nms_threshold, score_threshold=0.0,
            pad_per_class=False, clip_boxes=False, name="detection_nms")
        return tf.concat([nms.nmsed_boxes,
                          nms.nmsed_classes[..., tf.newaxis],
                          nms.nmsed_scores[..., tf.newaxis]], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.max_instances, 6)

    def get_config(self):
        config = super().get_config()
        config.update({"config": dict(self.config),
                       "bbox_std_dev": self._bbox_std_dev_config})
        return config


############################################################
#  Matterport's per-image graph functions
############################################################

def trim_zeros_graph(boxes, name="trim_zeros"):
    """Drop all-zero (padding) rows. boxes [N, 4] -> (boxes [n, 4], non_zeros [N] bool)."""
    non_zeros = tf.cast(tf.reduce_sum(tf.abs(boxes), axis=1), tf.bool)
    return tf.boolean_mask(boxes, non_zeros, name=name), non_zeros


def batch_pack_graph(x, counts, num_rows):
    """The first counts[i] rows of each x[i], concatenated. x [num_rows, N, ...], counts
    [num_rows] int -> [sum(counts), ...]."""
    keep = tf.sequence_mask(counts[:num_rows], tf.shape(x)[1])
    return tf.boolean_mask(x[:num_rows], keep)


def detection_targets_graph(proposals, gt_class_ids, gt_boxes, gt_masks, config):
    """DetectionTargetLayer on one image (Matterport's per-image function).

    proposals [P, 4] normalised, zero padded; gt_class_ids [G] int; gt_boxes [G, 4]
    normalised; gt_masks [h, w, G]. Returns rois [T, 4] normalised, class_ids [T] int32,
    deltas [T, 4], masks [T, MASK_SHAPE[0], MASK_SHAPE[1]] (T = TRAIN_ROIS_PER_IMAGE).
    """
    layer = DetectionTargetLayer(config)
    out = layer([proposals[tf.newaxis], gt_class_ids[tf.newaxis], gt_boxes[tf.newaxis],
                 gt_masks[tf.newaxis]])
    return [t[0] for t in out]


def refine_detections_graph(rois, probs, deltas, window, config):
    """DetectionLayer on one image (Matterport's per-image function).

    rois [N, 4] normalised; probs [N, NUM_CLASSES]; deltas [N, NUM_CLASSES, 4] std-scaled;
    window [4] (y1, x1, y2, x2) of the image in the padded frame, normalised. Returns
    [DETECTION_MAX_INSTANCES, 6] rows (y1, x1, y2, x2, class_id, score), zero padded.
    """
    def batch_of_one(t):
        return tf.cast(t, tf.float32)[tf.newaxis]
    return DetectionLayer(config).refine(batch_of_one(rois), batch_of_one(probs),
                                         batch_of_one(deltas), batch_of_one(window))[0]
