"""The ROI heads: pooling, training-target sampling, the box stages, detections, the mask
head, and the three head losses.

An image's path through this module: proposals (normalised, from mrcnn.rpn) ->
``PyramidROIAlign`` (FPN level by box size, ROI align) -> box stages: the box head gives
class probabilities and std-scaled deltas; a cascade decodes them into the next stage's
boxes (``RefineBoxesLayer``) -> ``DetectionLayer`` (decode, clip to the window, per-class
NMS, top-N) -> the mask head on the detections. For training, ``DetectionTargetLayer``
samples each stage's ROIs and builds their class, box and mask targets, and
``mrcnn_class_loss_graph`` / ``mrcnn_bbox_loss_graph`` / ``mrcnn_mask_loss_graph`` score
the heads.

A plain Mask R-CNN is the one-stage case of the cascade: ``stage_specs`` lists each box
stage's IoU threshold, std-devs, loss weights and names (the one place they live), and
``run_box_stages`` is the one stage loop, used by the training and inference graphs.

Matterport wraps every head layer in ``TimeDistributed`` over the ROI axis. Here the ROI
axis is folded into the batch once ([B, N, ...] -> [B*N, ...]), plain Conv2D/BatchNorm
layers run on that, and the result is unfolded. A Conv2D named ``mrcnn_class_conv1`` holds
exactly the kernel/bias shapes of Matterport's ``TimeDistributed(Conv2D)`` of that name, so
by-name loading is unaffected.

Mixed precision: box arithmetic is always float32 (the box layers default to a float32
policy; PyramidROIAlign returns features in the feature maps' dtype); the layers whose
outputs feed losses or box maths are float32.
"""

import collections
import numbers

import keras
import tensorflow as tf
from keras import layers as KL

from mrcnn.backbone import BatchNorm
from mrcnn.boxes import (BoxCoder, clip_boxes_graph, log2_graph, norm_boxes_graph,
                         overlaps_graph)
from mrcnn.config import config_values
from mrcnn.preprocess import parse_image_meta_graph
from mrcnn.losses import LossLayer, register_loss, safe_mean, smooth_l1
from mrcnn.rpn import CROWD_IOU


############################################################
#  ROI align
############################################################

def _dim(tensor, axis):
    """Static size of ``axis`` if known, else the dynamic one."""
    size = tensor.shape[axis]
    return size if size is not None else tf.shape(tensor)[axis]


def roi_pyramid_level(boxes, image_meta):
    """The FPN level (2-5) each ROI is pooled from: boxes [B, N, 4] normalised float32,
    image_meta [B, META] -> int32 [B, N]. FPN paper eq. 1 in normalised coordinates: a
    224x224-pixel ROI maps to P4."""
    image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]
    image_area = image_shape[0] * image_shape[1]
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    level = log2_graph(tf.sqrt(tf.maximum(h * w, 0.0)) / (224.0 / tf.sqrt(image_area)))
    # Clip before the int cast so empty boxes (log2 = -inf) land safely on P2.
    level = tf.clip_by_value(4.0 + tf.round(level), 2.0, 5.0)
    # A NaN box (diverged weights) must still land on one level, or the inverse
    # permutation of PyramidROIAlign fails with an opaque error.
    return tf.cast(tf.where(tf.math.is_finite(level), level, 2.0), tf.int32)


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

        level = roi_pyramid_level(boxes, image_meta)

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
#  Training targets
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
        values = config_values(config, _TARGET_CONFIG, name)
        self.config = values
        self.train_rois = int(values["TRAIN_ROIS_PER_IMAGE"])
        self.positive_ratio = float(values["ROI_POSITIVE_RATIO"])
        self.positive_iou = float(values["ROI_POSITIVE_IOU"] if positive_iou is None
                                  else positive_iou)
        std = values["BBOX_STD_DEV"] if bbox_std_dev is None else bbox_std_dev
        self.box_coder = BoxCoder(std, "{}: bbox_std_dev".format(name))
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
        gt_boxes = tf.stop_gradient(tf.cast(gt_boxes, tf.float32))
        gt_class_ids = tf.cast(gt_class_ids, tf.int32)
        proposals, positive, negative, real_overlaps, has_gt = self._label(
            proposals, gt_class_ids, gt_boxes)
        roi_idx, roi_ok, roi_pos = self._sample(positive, negative, has_gt, pos_quota)

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
        deltas = self.box_coder.encode_graph(safe_rois, safe_gt)
        deltas = tf.where(pos3, deltas, 0.0)

        masks = self._mask_targets(gt_masks, safe_rois[:, :pos_quota],
                                   safe_gt[:, :pos_quota], roi_gt[:, :pos_quota])
        # Positives occupy the first n_pos <= pos_quota slots; the rest get zero masks.
        masks = masks * tf.cast(roi_pos[:, :pos_quota], tf.float32)[..., None, None]
        masks = tf.pad(masks, [[0, 0], [0, T - pos_quota], [0, 0], [0, 0]])

        return [tf.stop_gradient(rois), tf.stop_gradient(class_ids),
                tf.stop_gradient(deltas), tf.stop_gradient(masks)]

    def _label(self, proposals, gt_class_ids, gt_boxes):
        """Proposals (GT added, padded to >= T slots) [B, P, 4], their positive and
        negative flags [B, P], IoUs with the real GT boxes [B, P, G] (-1 for crowd and
        padding GT) and whether each image has a real GT box [B]."""
        T = self.train_rois
        proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
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
                                  crowd_iou_max < CROWD_IOU)
        return proposals, positive, negative, real_overlaps, tf.reduce_any(gt_real, axis=1)

    def _sample(self, positive, negative, has_gt, pos_quota):
        """Random positives and negatives packed to the front of T slots: for each slot
        the proposal index [B, T], whether it is used and whether it is positive."""
        T = self.train_rois
        # Counts per image, following Matterport's ratio rule (float32 arithmetic).
        n_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), pos_quota)
        ratio_neg = tf.cast((1.0 / self.positive_ratio) * tf.cast(n_pos, tf.float32),
                            tf.int32) - n_pos
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
        return (tf.gather(cand_idx, slot, batch_dims=1),
                tf.gather(cand_ok, slot, batch_dims=1),
                tf.gather(cand_pos, slot, batch_dims=1))

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
            "bbox_std_dev": self.box_coder.to_list(),
            "add_gt_as_proposals": self.add_gt_as_proposals,
        })
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class PositiveSlots(keras.layers.Layer):
    """Keep the first ``count`` ROI slots of each target tensor.

    DetectionTargetLayer puts positives first and never more than
    int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO) of them, so these slots hold every
    positive ROI. The mask loss only uses positives: running the mask head on the other
    slots would triple its cost for nothing.
    """

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, inputs):
        return [t[:, :self.count] for t in inputs]

    def compute_output_shape(self, input_shape):
        return [(s[0], self.count) + tuple(s[2:]) for s in input_shape]

    def get_config(self):
        config = super().get_config()
        config["count"] = self.count
        return config


############################################################
#  Box head (one per stage)
############################################################

@keras.saving.register_keras_serializable(package="mrcnn")
class FlattenRois(KL.Layer):
    """Fold the ROI axis into the batch: [B, N, *rest] -> [B*N, *rest].

    ``rest`` must be static. Does not cast (keeps the input dtype).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    def call(self, inputs):
        rest = tuple(inputs.shape[2:])
        if any(d is None for d in rest):
            raise ValueError("{}: trailing dimensions must be static, got shape {}".format(
                self.name, inputs.shape))
        return keras.ops.reshape(inputs, (-1,) + rest)

    def compute_output_shape(self, input_shape):
        b, n = input_shape[0], input_shape[1]
        bn = None if b is None or n is None else b * n
        return (bn,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="mrcnn")
class UnflattenRois(KL.Layer):
    """Undo :class:`FlattenRois`: inputs [x [B*N, *r], reference [B, N, ...]].

    Returns x reshaped to [B, N, *target_shape] (target_shape defaults to x's trailing
    shape ``r``; a different target with the same element count squeezes, e.g.
    [B*N, 1, 1, F] -> [B, N, F]). B and N are read from ``reference`` at run time.
    """

    def __init__(self, target_shape=None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.target_shape = None if target_shape is None else tuple(int(d) for d in
                                                                    target_shape)

    def _trailing(self, x_shape):
        return self.target_shape if self.target_shape is not None else tuple(x_shape[1:])

    def call(self, inputs):
        x, reference = inputs
        n = reference.shape[1]
        if n is None:
            n = keras.ops.shape(reference)[1]
        return keras.ops.reshape(x, (-1, n) + self._trailing(x.shape))

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (ref_shape[0], ref_shape[1]) + self._trailing(x_shape)

    def get_config(self):
        config = super().get_config()
        config["target_shape"] = self.target_shape
        return config


def _check_pooled(pooled, size, attr, head):
    shape = tuple(pooled.shape)
    if len(shape) != 5 or tuple(shape[2:4]) != (size, size) or shape[4] is None:
        raise ValueError("{}: pooled features must be [batch, rois, {s}, {s}, channels] with "
                         "{}={s}, got shape {}".format(head, attr, shape, s=size))


def box_head_graph(pooled, config, train_bn, stage=0):
    """Box head of one (cascade) stage on ROI-aligned features.

    pooled: [B, N, POOL_SIZE, POOL_SIZE, C] Keras tensor.
    config: uses POOL_SIZE, NUM_CLASSES, BOX_HEAD_NUM_CONVS, BOX_HEAD_CONV_DIM,
        BOX_HEAD_NUM_FCS, FPN_CLASSIF_FC_LAYERS_SIZE, CASCADE (True: class-agnostic boxes).
    train_bn: False keeps the batch-norm statistics fixed.
    stage: 0-based cascade stage; stage k > 0 suffixes every layer name with
        "_stage{k+1}" (mrcnn_class_conv1_stage2, ...), stage 0 uses Matterport's names.

    Layers: BOX_HEAD_NUM_CONVS x (3x3 conv mrcnn_box_conv{i}, mrcnn_box_bn{i}, ReLU), then
    BOX_HEAD_NUM_FCS fully connected layers as convs (mrcnn_class_conv1: POOL_SIZE kernel,
    valid; mrcnn_class_conv{i>1}: 1x1), each with mrcnn_class_bn{i} and ReLU.

    Returns (all float32):
        mrcnn_class_logits [B, N, NUM_CLASSES]
        mrcnn_probs        [B, N, NUM_CLASSES]
        mrcnn_bbox         [B, N, NUM_CLASSES or 1, 4] (dy, dx, log(dh), log(dw)) deltas,
                           std-scaled; one class-agnostic box when config.CASCADE.
    """
    if not isinstance(stage, numbers.Integral) or stage < 0:
        raise ValueError("box_head_graph: stage must be an integer >= 0, got {!r}".format(stage))
    sfx = "" if stage == 0 else "_stage{}".format(stage + 1)
    pool = config.POOL_SIZE
    fc_size = config.FPN_CLASSIF_FC_LAYERS_SIZE
    num_classes = config.NUM_CLASSES
    _check_pooled(pooled, pool, "POOL_SIZE", "box_head_graph")

    x = FlattenRois(name="mrcnn_box_flatten" + sfx)(pooled)
    for i in range(1, config.BOX_HEAD_NUM_CONVS + 1):
        x = KL.Conv2D(config.BOX_HEAD_CONV_DIM, 3, padding="same",
                      name="mrcnn_box_conv{}{}".format(i, sfx))(x)
        x = BatchNorm(train_bn=train_bn, name="mrcnn_box_bn{}{}".format(i, sfx))(x)
        x = KL.Activation("relu", name="mrcnn_box_relu{}{}".format(i, sfx))(x)
    for i in range(1, config.BOX_HEAD_NUM_FCS + 1):
        # The first FC sees the whole pool window; later ones are 1x1 on the 1x1 map.
        kernel = pool if i == 1 else 1
        x = KL.Conv2D(fc_size, kernel, padding="valid",
                      name="mrcnn_class_conv{}{}".format(i, sfx))(x)
        x = BatchNorm(train_bn=train_bn, name="mrcnn_class_bn{}{}".format(i, sfx))(x)
        x = KL.Activation("relu", name="mrcnn_class_relu{}{}".format(i, sfx))(x)
    # [B*N, 1, 1, F] -> [B, N, F]
    shared = UnflattenRois(target_shape=(fc_size,), name="pool_squeeze" + sfx)([x, pooled])

    mrcnn_class_logits = KL.Dense(num_classes, dtype="float32",
                                  name="mrcnn_class_logits" + sfx)(shared)
    mrcnn_probs = KL.Activation("softmax", dtype="float32",
                                name="mrcnn_class" + sfx)(mrcnn_class_logits)

    box_classes = 1 if config.CASCADE else num_classes
    x = KL.Dense(box_classes * 4, dtype="float32", name="mrcnn_bbox_fc" + sfx)(shared)
    mrcnn_bbox = KL.Reshape((-1, box_classes, 4), dtype="float32", name="mrcnn_bbox" + sfx)(x)
    return mrcnn_class_logits, mrcnn_probs, mrcnn_bbox


############################################################
#  Box stages
############################################################

StageSpec = collections.namedtuple(
    "StageSpec", "index positive_iou bbox_std_dev weight loss_suffix layer_suffix")
StageSpec.__doc__ = """One box stage: its 0-based index, the IoU at which its training ROIs
are positive, its box std-devs [4], the weight of its two losses, the suffix of its loss
names ('', '_s2', ...) and of its layer names ('', '_stage2', ...)."""


def stage_specs(config):
    """The box stages of ``config``: one StageSpec per stage (a plain model has one).

    The one place the per-stage values are read: CASCADE_IOUS, CASCADE_BBOX_STD_DEVS and
    CASCADE_STAGE_WEIGHTS with CASCADE; ROI_POSITIVE_IOU and BBOX_STD_DEV (weight 1)
    without. Stage 0 keeps Matterport's layer and loss names.
    """
    specs = []
    for k in range(config.NUM_STAGES):
        weight = float(config.CASCADE_STAGE_WEIGHTS[k]) if config.CASCADE else 1.0
        specs.append(StageSpec(index=k, positive_iou=config.stage_positive_iou(k),
                               bbox_std_dev=config.stage_bbox_std_dev(k), weight=weight,
                               loss_suffix="" if k == 0 else "_s{}".format(k + 1),
                               layer_suffix="" if k == 0 else "_stage{}".format(k + 1)))
    return specs


def loss_output_names(config):
    """Names of the scalar loss outputs of the training graph, in output order."""
    names = ["rpn_class_loss", "rpn_bbox_loss"]
    for spec in stage_specs(config):
        names += ["mrcnn_class_loss" + spec.loss_suffix, "mrcnn_bbox_loss" + spec.loss_suffix]
    return names + ["mrcnn_mask_loss"]


def loss_weight(config, name):
    """Total weight of a named loss: LOSS_WEIGHTS times its box stage's weight."""
    for spec in stage_specs(config):
        for base in ("mrcnn_class_loss", "mrcnn_bbox_loss"):
            if name == base + spec.loss_suffix:
                return float(config.LOSS_WEIGHTS[base] * spec.weight)
    if name in config.LOSS_WEIGHTS:
        return float(config.LOSS_WEIGHTS[name])
    raise KeyError(name)


def run_box_stages(config, proposals, pool, train_bn, sample=None):
    """The one box-stage loop of the training and the inference graph.

    proposals: [B, N, 4] normalised. pool: ``pool(rois) -> [B, n, POOL, POOL, C]`` (ROI
    align on the FPN maps). sample: training only, ``sample(rois, spec) -> (rois,
    class_ids, deltas, masks)`` targets of that stage (its ROIs replace the input ones).
    Stage k > 0 starts from stage k-1's ROIs decoded by stage k-1's (class-agnostic)
    deltas, without gradient. Returns one dict per stage: spec, rois, targets (None at
    inference), class_logits, probs, bbox.
    """
    stages = []
    rois = proposals
    for spec in stage_specs(config):
        if stages:
            prev = stages[-1]
            rois = RefineBoxesLayer(prev["spec"].bbox_std_dev,
                                    name="refine_boxes" + prev["spec"].layer_suffix)(
                [prev["rois"], prev["bbox"]])
        targets = sample(rois, spec) if sample is not None else None
        if targets is not None:
            rois = targets[0]
        logits, probs, bbox = box_head_graph(pool(rois), config, train_bn, stage=spec.index)
        stages.append(dict(spec=spec, rois=rois, targets=targets, class_logits=logits,
                           probs=probs, bbox=bbox))
    return stages


def _poolers(config, image_meta, feature_maps):
    """pool_boxes(rois), pool_masks(rois): ROI align of the box and the mask head."""
    box_align = PyramidROIAlign([config.POOL_SIZE, config.POOL_SIZE],
                                sampling_ratio=config.ROI_SAMPLING_RATIO,
                                name="roi_align_classifier")
    mask_align = PyramidROIAlign([config.MASK_POOL_SIZE, config.MASK_POOL_SIZE],
                                 sampling_ratio=config.ROI_SAMPLING_RATIO,
                                 name="roi_align_mask")
    maps = list(feature_maps)
    return (lambda rois: box_align([rois, image_meta] + maps),
            lambda rois: mask_align([rois, image_meta] + maps))


def inference_heads(config, proposals, image_meta, feature_maps):
    """ROI heads of the inference graph.

    proposals [B, N, 4] normalised; feature_maps [P2..P5]. Returns a dict: detections
    [B, D, 6] (y1, x1, y2, x2 normalised, class_id, score), mrcnn_class [B, N, C] (the
    stages' mean with a cascade: Cai & Vasconcelos, as detectron2 and mmdetection),
    mrcnn_bbox (last stage's deltas), mrcnn_mask [B, D, h, w, C] (zeros after the valid
    detections).
    """
    pool_boxes, pool_masks = _poolers(config, image_meta, feature_maps)
    stages = run_box_stages(config, proposals, pool_boxes, config.TRAIN_BN)
    last = stages[-1]
    probs = last["probs"]
    if len(stages) > 1:
        probs = StageScoreAverage(name="mrcnn_class_mean")([s["probs"] for s in stages])
    detections = DetectionLayer(config, bbox_std_dev=last["spec"].bbox_std_dev,
                                name="mrcnn_detection")(
        [last["rois"], probs, last["bbox"], image_meta])
    detection_boxes = DetectionBoxes(name="detection_boxes")(detections)
    # The mask head runs on the batch's valid detections only, then back to D slots.
    mask_boxes = ValidDetectionBoxes(name="valid_detection_boxes")(
        [detections, detection_boxes])
    masks = mask_head_graph(pool_masks(mask_boxes), config, train_bn=config.TRAIN_BN)
    masks = PadSlots(config.DETECTION_MAX_INSTANCES, name="mrcnn_mask_slots")(masks)
    return {"detections": detections, "mrcnn_class": probs, "mrcnn_bbox": last["bbox"],
            "mrcnn_mask": masks}


def training_heads(config, proposals, image_meta, feature_maps, gt):
    """ROI heads of the training graph with their targets and losses.

    gt: dict of gt_class_ids [B, G], gt_boxes [B, G, 4] normalised, gt_masks
    [B, h, w, G], active_class_ids [B, C]. Returns a dict of the head losses (named by
    loss_output_names) and of output_rois, mrcnn_class_logits, mrcnn_class, mrcnn_bbox (first
    stage) and mrcnn_mask (on the first stage's positive ROIs).
    """
    pool_boxes, pool_masks = _poolers(config, image_meta, feature_maps)

    def sample(rois, spec):
        add_gt = spec.index > 0 or bool(config.ROI_ADD_GT_AS_PROPOSALS)
        return DetectionTargetLayer(config, positive_iou=spec.positive_iou,
                                    bbox_std_dev=spec.bbox_std_dev,
                                    add_gt_as_proposals=add_gt,
                                    name="proposal_targets" + spec.layer_suffix)(
            [rois, gt["gt_class_ids"], gt["gt_boxes"], gt["gt_masks"]])

    stages = run_box_stages(config, proposals, pool_boxes, config.TRAIN_BN, sample)
    out = {}
    for s in stages:
        _, target_class_ids, target_bbox, _ = s["targets"]
        sfx = s["spec"].loss_suffix
        out["mrcnn_class_loss" + sfx] = LossLayer(
            "mrcnn_class", name="mrcnn_class_loss" + sfx,
            options=dict(class_weights=config.CLASS_LOSS_WEIGHTS))(
            [target_class_ids, s["class_logits"], gt["active_class_ids"]])
        out["mrcnn_bbox_loss" + sfx] = LossLayer("mrcnn_bbox", name="mrcnn_bbox_loss" + sfx)(
            [target_bbox, target_class_ids, s["bbox"]])
    # One mask head, trained on the first stage's samples (IoU >= first threshold): the
    # most positives per image and the same head Matterport's weights hold. At inference
    # it runs on the final (best localised) detections.
    first = stages[0]
    positive_slots = max(1, int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO))
    rois, class_ids, _, mask_targets = first["targets"]
    mask_rois, mask_class_ids, mask_targets = PositiveSlots(
        positive_slots, name="positive_rois")([rois, class_ids, mask_targets])
    masks = mask_head_graph(pool_masks(mask_rois), config, train_bn=config.TRAIN_BN)
    out["mrcnn_mask_loss"] = LossLayer("mrcnn_mask", name="mrcnn_mask_loss")(
        [mask_targets, mask_class_ids, masks])
    out.update(output_rois=rois, mrcnn_class_logits=first["class_logits"],
               mrcnn_class=first["probs"], mrcnn_bbox=first["bbox"], mrcnn_mask=masks)
    return out


@keras.saving.register_keras_serializable(package="mrcnn")
class RefineBoxesLayer(keras.layers.Layer):
    """Apply class-agnostic deltas to ROIs.

    inputs: rois [B, N, 4] normalised (zero rows are padding), deltas [B, N, 1, 4] or
    [B, N, C, 4] (column 0 is used; cascade heads are class-agnostic), scaled by
    ``bbox_std_dev``. Returns refined normalised boxes [B, N, 4] clipped to [0, 1];
    padding rows stay zero; no gradient flows through.
    """

    def __init__(self, bbox_std_dev, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.box_coder = BoxCoder(bbox_std_dev, "RefineBoxesLayer: bbox_std_dev")

    def call(self, inputs):
        rois, deltas = inputs
        rois = tf.stop_gradient(tf.cast(rois, tf.float32))
        deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))[:, :, 0, :]
        refined = self.box_coder.decode_graph(rois, deltas)
        refined = tf.clip_by_value(refined, 0.0, 1.0)
        valid = tf.reduce_any(tf.not_equal(rois, 0.0), axis=-1, keepdims=True)
        # A box can collapse to zero area after clipping; keep it valid but non-empty so
        # IoU maths stays finite downstream.
        return tf.where(valid, refined, tf.zeros_like(refined))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config["bbox_std_dev"] = self.box_coder.to_list()
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class StageScoreAverage(keras.layers.Layer):
    """Mean of the stages' class probabilities: list of [B, N, C] -> [B, N, C]."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        return tf.add_n([tf.cast(p, tf.float32) for p in inputs]) / float(len(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


############################################################
#  Detections
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
        values = config_values(config, _DETECTION_CONFIG, name)
        self.config = values
        self.max_instances = int(values["DETECTION_MAX_INSTANCES"])
        self.min_confidence = float(values["DETECTION_MIN_CONFIDENCE"])
        self.nms_threshold = float(values["DETECTION_NMS_THRESHOLD"])
        std = values["BBOX_STD_DEV"] if bbox_std_dev is None else bbox_std_dev
        self.box_coder = BoxCoder(std, "{}: bbox_std_dev".format(name))
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

    def candidates(self, rois, probs, deltas, window):
        """Every ROI's refined box [B, N, 4] (clipped to the window), argmax class
        [B, N] int32 and score [B, N], 0 for background or below DETECTION_MIN_CONFIDENCE:
        the input of the per-class NMS."""
        class_ids = tf.argmax(probs, axis=-1, output_type=tf.int32)          # [B, N]
        scores = tf.reduce_max(probs, axis=-1)
        # Per-class deltas [B, N, C, 4] -> the argmax class's; class-agnostic [B, N, 1, 4]
        # -> its only row (min(class, q - 1) = 0).
        delta_ix = tf.minimum(class_ids, tf.shape(deltas)[2] - 1)
        deltas = tf.gather(deltas, delta_ix, batch_dims=2)                  # [B, N, 4]
        boxes = clip_boxes_graph(self.box_coder.decode_graph(rois, deltas), window)
        keep = tf.logical_and(class_ids > 0, scores >= self.min_confidence)
        return boxes, class_ids, tf.where(keep, scores, 0.0)

    def refine(self, rois, probs, deltas, window):
        """The detections of ``call`` from a normalised window [B, 4] instead of the image
        meta (rois, probs, deltas as ``call``'s inputs, float32). Returns [B, D, 6]."""
        boxes, class_ids, scores = self.candidates(rois, probs, deltas, window)
        # Only the argmax class of a kept ROI has a non-zero score, so the per-class NMS of
        # combined_non_max_suppression (score_threshold 0 drops the zeros) is Matterport's.
        num_classes = _dim(probs, 2)
        class_scores = tf.one_hot(class_ids, num_classes) * scores[..., tf.newaxis]
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
                       "bbox_std_dev": self.box_coder.to_list()})
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionBoxes(keras.layers.Layer):
    """detections [B, D, 6] -> their boxes [B, D, 4] (stop-gradient)."""

    def call(self, detections):
        return tf.stop_gradient(detections[..., :4])


@keras.saving.register_keras_serializable(package="mrcnn")
class ValidDetectionBoxes(keras.layers.Layer):
    """[detections [B, D, 6], boxes [B, D, 4]] -> boxes [B, n, 4], n = the batch's largest
    number of valid detections (at least 1).

    DetectionLayer sorts each image's detections by score and zero-pads after them, so
    the first n slots hold every valid box. A trained model keeps a few detections out of
    DETECTION_MAX_INSTANCES; the mask head, the costliest part of inference after the
    backbone, then runs on those only.
    """

    def call(self, inputs):
        detections, boxes = inputs
        valid = tf.reduce_sum(tf.cast(detections[..., 4] > 0, tf.int32), axis=1)
        count = tf.maximum(tf.reduce_max(valid), 1)
        return boxes[:, :count]

    def compute_output_shape(self, input_shape):
        return (input_shape[1][0], None, input_shape[1][2])


@keras.saving.register_keras_serializable(package="mrcnn")
class PadSlots(keras.layers.Layer):
    """x [B, n, ...] -> [B, count, ...], zero padded after the n given slots."""

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, x):
        pad = tf.maximum(self.count - tf.shape(x)[1], 0)
        paddings = tf.concat([[[0, 0], [0, pad]],
                              tf.zeros([tf.rank(x) - 2, 2], tf.int32)], axis=0)
        return tf.pad(x[:, :self.count], paddings)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.count) + tuple(input_shape[2:])

    def get_config(self):
        config = super().get_config()
        config["count"] = self.count
        return config


############################################################
#  Mask head
############################################################

def mask_head_graph(pooled, config, train_bn):
    """Mask head on ROI-aligned features.

    pooled: [B, N, MASK_POOL_SIZE, MASK_POOL_SIZE, C] Keras tensor.
    config: uses MASK_POOL_SIZE, MASK_SHAPE (2x or 4x MASK_POOL_SIZE), NUM_CLASSES.
    train_bn: False keeps the batch-norm statistics fixed.

    Layers: 4 x (3x3 conv mrcnn_mask_conv{i}, MASK_HEAD_CONV_DIM; mrcnn_mask_bn{i}; ReLU), then
    mrcnn_mask_deconv (2x2/2 transposed conv, ReLU), mrcnn_mask_deconv2 when MASK_SHAPE is
    4x MASK_POOL_SIZE, then mrcnn_mask (1x1 conv, NUM_CLASSES, sigmoid).

    Returns per-class mask probabilities [B, N, MASK_SHAPE[0], MASK_SHAPE[1], NUM_CLASSES],
    float32.
    """
    pool = config.MASK_POOL_SIZE
    _check_pooled(pooled, pool, "MASK_POOL_SIZE", "mask_head_graph")
    mask_shape = tuple(int(d) for d in config.MASK_SHAPE)
    if mask_shape == (2 * pool, 2 * pool):
        upsamplings = 1
    elif mask_shape == (4 * pool, 4 * pool):
        upsamplings = 2
    else:
        raise ValueError("MASK_SHAPE = {}: must be MASK_POOL_SIZE ({}) times 2 or 4".format(
            list(config.MASK_SHAPE), pool))

    dim = int(getattr(config, "MASK_HEAD_CONV_DIM", 256))
    x = FlattenRois(name="mrcnn_mask_flatten")(pooled)
    for i in range(1, 5):
        x = KL.Conv2D(dim, 3, padding="same",
                      name="mrcnn_mask_conv{}".format(i))(x)
        x = BatchNorm(train_bn=train_bn, name="mrcnn_mask_bn{}".format(i))(x)
        x = KL.Activation("relu", name="mrcnn_mask_relu{}".format(i))(x)
    for i in range(upsamplings):
        x = KL.Conv2DTranspose(dim, 2, strides=2, activation="relu",
                               name="mrcnn_mask_deconv" + ("" if i == 0 else str(i + 1)))(x)
    x = KL.Conv2D(config.NUM_CLASSES, 1, activation="sigmoid", dtype="float32",
                  name="mrcnn_mask")(x)
    return UnflattenRois(name="mrcnn_mask_unflatten")([x, pooled])


############################################################
#  Losses
############################################################

@register_loss("mrcnn_class")
def mrcnn_class_loss_graph(target_class_ids, pred_class_logits, active_class_ids,
                           class_weights=None):
    """Box-head classifier loss.

    target_class_ids: [B, T] (0 = background or padding). pred_class_logits: [B, T, C].
    active_class_ids: [B, C] 1 for classes of the image's source dataset. Predictions of
    classes not in the image's source are not penalised (Matterport's rule).
    class_weights: None or C weights (config.CLASS_LOSS_WEIGHTS): each ROI's cross-entropy
    counts with the weight of its target class, and the loss is the weighted mean, so
    equal weights give the unweighted loss; 0 when no ROI carries weight.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int32)
    logits = tf.cast(pred_class_logits, tf.float32)
    pred_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
    weight = tf.gather(tf.cast(active_class_ids, tf.float32), pred_ids, batch_dims=1)
    if class_weights is not None:
        weight = weight * tf.gather(tf.constant(class_weights, tf.float32), target_class_ids)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids, logits=logits)
    return safe_mean(ce, weight)


@register_loss("mrcnn_bbox")
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
    return safe_mean(loss, positive)


@register_loss("mrcnn_mask")
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
    return safe_mean(per_roi, positive)
