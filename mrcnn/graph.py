"""Assembly of the Mask R-CNN / Cascade Mask R-CNN Keras functional graphs.

``build_graph(mode, config)`` wires backbone -> FPN -> RPN -> proposals -> (targets) ->
box head stages -> detections -> mask head, returning a functional ``keras.Model`` whose
layer names match Matterport's so its .h5 files load by name.

Training outputs: the named losses first (see ``loss_output_names``), then the tensors
users inspect with ``run_graph``. Inference outputs follow Matterport's order:
detections, mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois, rpn_class, rpn_bbox.
"""

import keras
import numpy as np
import tensorflow as tf

from mrcnn import box_ops
from mrcnn.boxes import norm_boxes_graph
from mrcnn.backbone import build_backbone
from mrcnn.cascade import RefineBoxesLayer, StageScoreAverage
from mrcnn.heads import box_head_graph, build_rpn_model, mask_head_graph
from mrcnn.imagemeta import parse_image_meta_graph
from mrcnn.layers import (DetectionLayer, DetectionTargetLayer, ProposalLayer,
                          PyramidROIAlign)
from mrcnn.losses import LossLayer
from mrcnn.winograd import resolve_winograd


@keras.saving.register_keras_serializable(package="mrcnn")
class AnchorsLayer(keras.layers.Layer):
    """Normalised anchors for the (possibly dynamic) image size, broadcast to the batch.

    input: molded images [B, H, W, C] -> anchors [B, A, 4] normalised. The anchor order
    and values come from box_ops.generate_pyramid_anchors_graph, tested equal to
    utils.get_anchors.
    """

    def __init__(self, config=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.config = config

    def call(self, images):
        shape = tf.shape(images)
        static_hw = tuple(images.shape[1:3])
        if callable(self.config.BACKBONE) and None in static_hw:
            # COMPUTE_BACKBONE_SHAPE is a Python function of the image shape, so with a
            # callable backbone and a dynamic size (inference) it must run at run time.
            anchors = tf.numpy_function(self._numpy_anchors, [shape[1:3]], tf.float32,
                                        stateful=False)
            anchors = tf.reshape(anchors, [-1, 4])
        else:
            hw = static_hw if None not in static_hw else shape[1:3]
            anchors = box_ops.generate_pyramid_anchors_graph(hw, self.config)
            anchors = tf.cast(anchors, tf.float32)
        return tf.broadcast_to(anchors[None], [shape[0], tf.shape(anchors)[0], 4])

    def _numpy_anchors(self, hw):
        h, w = int(hw[0]), int(hw[1])
        return numpy_anchors(self.config, (h, w, self.config.IMAGE_CHANNEL_COUNT))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, 4)


@keras.saving.register_keras_serializable(package="mrcnn")
class NormBoxesLayer(keras.layers.Layer):
    """Pixel boxes [B, N, 4] -> normalised boxes, using the molded image's size."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        boxes, images = inputs
        shape = tf.shape(images)[1:3]
        return norm_boxes_graph(tf.cast(boxes, tf.float32), shape)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="mrcnn")
class ActiveClassIds(keras.layers.Layer):
    """image_meta [B, META] -> active_class_ids [B, NUM_CLASSES]."""

    def call(self, meta):
        return parse_image_meta_graph(meta)["active_class_ids"]


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


def loss_output_names(config):
    """Names of the scalar loss outputs of the training graph, in output order."""
    names = ["rpn_class_loss", "rpn_bbox_loss"]
    for stage in range(config.NUM_STAGES):
        suffix = stage_suffix(stage)
        names += ["mrcnn_class_loss" + suffix, "mrcnn_bbox_loss" + suffix]
    names.append("mrcnn_mask_loss")
    return names


def loss_weight(config, name):
    """Total weight of a named loss: LOSS_WEIGHTS times the cascade stage weight."""
    for base in config.LOSS_WEIGHTS:
        if name == base:
            weight = config.LOSS_WEIGHTS[base]
            if config.CASCADE and base in ("mrcnn_class_loss", "mrcnn_bbox_loss"):
                weight *= config.CASCADE_STAGE_WEIGHTS[0]
            return float(weight)
        if name.startswith(base + "_s"):
            stage = int(name[len(base) + 2:]) - 1
            return float(config.LOSS_WEIGHTS[base] * config.CASCADE_STAGE_WEIGHTS[stage])
    raise KeyError(name)


def stage_suffix(stage):
    """Loss-name suffix of box stage ``stage`` (0-based): '' for the first, '_s2', ..."""
    return "" if stage == 0 else "_s{}".format(stage + 1)


def _layer_suffix(stage):
    return "" if stage == 0 else "_stage{}".format(stage + 1)


def set_bn_momentum(model, momentum):
    """Set the moving-statistics momentum of every batch-norm layer (sub-models too)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            set_bn_momentum(layer, momentum)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)


def build_graph(mode, config):
    """Build the functional model for ``mode`` in ("training", "inference")."""
    model = _build_graph(mode, config)
    set_bn_momentum(model, config.BN_MOMENTUM)
    return model


def _build_graph(mode, config):
    if mode not in ("training", "inference"):
        raise ValueError("mode must be 'training' or 'inference', got {!r}".format(mode))
    h, w = (None, None)
    if config.IMAGE_RESIZE_MODE in ("square", "crop") and mode == "training":
        h, w = int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1])
    input_image = keras.Input(shape=[h, w, config.IMAGE_CHANNEL_COUNT], name="input_image")
    input_image_meta = keras.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta")

    P2, P3, P4, P5, P6 = build_backbone(input_image, config)
    rpn_feature_maps = [P2, P3, P4, P5, P6]
    mrcnn_feature_maps = [P2, P3, P4, P5]

    # One RPN model shared across levels (Matterport's rpn_model, loadable by name).
    rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                          config.TOP_DOWN_PYRAMID_SIZE, conv_dim=config.RPN_CONV_DIM,
                          init_std=config.RPN_INIT_STD,
                          winograd=resolve_winograd(config.CONV3X3_WINOGRAD))
    level_outputs = [rpn(p) for p in rpn_feature_maps]
    rpn_class_logits, rpn_class, rpn_bbox = [
        keras.layers.Concatenate(axis=1, name=n, dtype="float32")([o[i] for o in level_outputs])
        for i, n in enumerate(["rpn_class_logits", "rpn_class", "rpn_bbox"])]

    anchors = AnchorsLayer(config, name="anchors")(input_image)
    training = mode == "training"
    proposal_count = (config.POST_NMS_ROIS_TRAINING if training
                      else config.POST_NMS_ROIS_INFERENCE)
    pre_nms = config.PRE_NMS_LIMIT_TRAINING if training else config.PRE_NMS_LIMIT_INFERENCE
    rpn_rois = ProposalLayer(proposal_count=proposal_count,
                             nms_threshold=config.RPN_NMS_THRESHOLD, config=config,
                             pre_nms_limit=pre_nms, name="ROI")([rpn_class, rpn_bbox, anchors])

    train_bn = config.TRAIN_BN
    box_pool = PyramidROIAlign([config.POOL_SIZE, config.POOL_SIZE],
                               sampling_ratio=config.ROI_SAMPLING_RATIO,
                               name="roi_align_classifier")
    mask_pool = PyramidROIAlign([config.MASK_POOL_SIZE, config.MASK_POOL_SIZE],
                                sampling_ratio=config.ROI_SAMPLING_RATIO,
                                name="roi_align_mask")

    def box_stage(rois, stage):
        pooled = box_pool([rois, input_image_meta] + mrcnn_feature_maps)
        return box_head_graph(pooled, config, train_bn=train_bn, stage=stage)

    def refine(rois, bbox, stage):
        return RefineBoxesLayer(config.stage_bbox_std_dev(stage),
                                name="refine_boxes" + _layer_suffix(stage))([rois, bbox])

    if training:
        return _build_training(config, input_image, input_image_meta, rpn_class_logits,
                               rpn_class, rpn_bbox, rpn_rois, mrcnn_feature_maps, box_stage,
                               refine, mask_pool)

    # ---- inference
    rois = rpn_rois
    stage_probs = []
    for stage in range(config.NUM_STAGES):
        if stage > 0:
            rois = refine(rois, mrcnn_bbox, stage - 1)
        mrcnn_class_logits, mrcnn_class, mrcnn_bbox = box_stage(rois, stage)
        stage_probs.append(mrcnn_class)
    if config.NUM_STAGES > 1:
        # Cascade: the final score is the mean of the stage classifiers, each applied to
        # its own stage's input boxes (Cai & Vasconcelos; detectron2 and mmdetection do
        # the same); the boxes come from the last stage's regression.
        mrcnn_class = StageScoreAverage(name="mrcnn_class_mean")(stage_probs)

    detections = DetectionLayer(config, bbox_std_dev=config.stage_bbox_std_dev(
        config.NUM_STAGES - 1), name="mrcnn_detection")(
        [rois, mrcnn_class, mrcnn_bbox, input_image_meta])
    detection_boxes = DetectionBoxes(name="detection_boxes")(detections)
    mask_boxes = ValidDetectionBoxes(name="valid_detection_boxes")(
        [detections, detection_boxes])
    pooled_masks = mask_pool([mask_boxes, input_image_meta] + mrcnn_feature_maps)
    mrcnn_mask = mask_head_graph(pooled_masks, config, train_bn=train_bn)
    # Back to one slot per detection row; the padded slots are zeros.
    mrcnn_mask = PadSlots(config.DETECTION_MAX_INSTANCES, name="mrcnn_mask_slots")(
        mrcnn_mask)

    return keras.Model([input_image, input_image_meta],
                       [detections, mrcnn_class, mrcnn_bbox, mrcnn_mask,
                        rpn_rois, rpn_class, rpn_bbox], name="mask_rcnn")


def _build_training(config, input_image, input_image_meta, rpn_class_logits, rpn_class,
                    rpn_bbox, rpn_rois, feature_maps, box_stage, refine, mask_pool):
    input_rpn_match = keras.Input(shape=[None, 1], name="input_rpn_match", dtype="int32")
    input_rpn_bbox = keras.Input(shape=[None, 4], name="input_rpn_bbox", dtype="float32")
    input_gt_class_ids = keras.Input(shape=[None], name="input_gt_class_ids", dtype="int32")
    input_gt_boxes = keras.Input(shape=[None, 4], name="input_gt_boxes", dtype="float32")
    if config.USE_MINI_MASK:
        mask_hw = list(config.MINI_MASK_SHAPE)
    else:
        mask_hw = [int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1])]
    input_gt_masks = keras.Input(shape=mask_hw + [None], name="input_gt_masks", dtype="bool")
    inputs = [input_image, input_image_meta, input_rpn_match, input_rpn_bbox,
              input_gt_class_ids, input_gt_boxes, input_gt_masks]

    gt_boxes = NormBoxesLayer(name="norm_gt_boxes")([input_gt_boxes, input_image])
    active_class_ids = ActiveClassIds(name="active_class_ids")(input_image_meta)

    if config.USE_RPN_ROIS:
        proposals = rpn_rois
    else:
        input_rois = keras.Input(shape=[None, 4], name="input_roi", dtype="float32")
        inputs.append(input_rois)
        proposals = NormBoxesLayer(name="norm_input_rois")([input_rois, input_image])

    losses = [
        LossLayer("rpn_class", name="rpn_class_loss")([input_rpn_match, rpn_class_logits]),
        LossLayer("rpn_bbox", name="rpn_bbox_loss")([input_rpn_bbox, input_rpn_match,
                                                      rpn_bbox]),
    ]
    first_targets = None
    rois = proposals
    mrcnn_bbox = None
    stage_outputs = []
    for stage in range(config.NUM_STAGES):
        suffix = stage_suffix(stage)
        if stage > 0:
            rois = refine(rois, mrcnn_bbox, stage - 1)
        targets = DetectionTargetLayer(
            config, positive_iou=config.stage_positive_iou(stage),
            bbox_std_dev=config.stage_bbox_std_dev(stage),
            add_gt_as_proposals=stage > 0 or bool(config.ROI_ADD_GT_AS_PROPOSALS),
            name="proposal_targets" + _layer_suffix(stage))(
            [rois, input_gt_class_ids, gt_boxes, input_gt_masks])
        rois, target_class_ids, target_bbox, target_mask = targets
        if first_targets is None:
            first_targets = targets
        mrcnn_class_logits, mrcnn_class, mrcnn_bbox = box_stage(rois, stage)
        stage_outputs.append((mrcnn_class_logits, mrcnn_class, mrcnn_bbox))
        losses.append(LossLayer("mrcnn_class", name="mrcnn_class_loss" + suffix)(
            [target_class_ids, mrcnn_class_logits, active_class_ids]))
        losses.append(LossLayer("mrcnn_bbox", name="mrcnn_bbox_loss" + suffix)(
            [target_bbox, target_class_ids, mrcnn_bbox]))

    # One mask head, trained on the first stage's samples (IoU >= first threshold): the
    # most positives per image and the same head Matterport's weights hold. At inference
    # it runs on the final (best localised) detections.
    positive_slots = max(1, int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO))
    mask_rois, mask_class_ids, mask_targets = PositiveSlots(
        positive_slots, name="positive_rois")(
        [first_targets[0], first_targets[1], first_targets[3]])
    pooled = mask_pool([mask_rois, input_image_meta] + feature_maps)
    mrcnn_mask = mask_head_graph(pooled, config, train_bn=config.TRAIN_BN)
    losses.append(LossLayer("mrcnn_mask", name="mrcnn_mask_loss")(
        [mask_targets, mask_class_ids, mrcnn_mask]))

    first_logits, first_class, first_bbox = stage_outputs[0]
    outputs = losses + [rpn_class_logits, rpn_class, rpn_bbox, rpn_rois, first_targets[0],
                        first_logits, first_class, first_bbox, mrcnn_mask]
    return keras.Model(inputs, outputs, name="mask_rcnn")


TRAINING_EXTRA_OUTPUTS = ("rpn_class_logits", "rpn_class", "rpn_bbox", "rpn_rois",
                          "output_rois", "mrcnn_class_logits", "mrcnn_class", "mrcnn_bbox",
                          "mrcnn_mask")
INFERENCE_OUTPUTS = ("detections", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask", "rpn_rois",
                     "rpn_class", "rpn_bbox")


def numpy_anchors(config, image_shape):
    """Normalised numpy anchors for a molded image shape (utils.get_anchors + norm_boxes)."""
    from mrcnn import utils
    return utils.norm_boxes(utils.get_anchors(config, image_shape), image_shape[:2]).astype(
        np.float32)
