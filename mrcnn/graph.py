"""The Mask R-CNN / Cascade Mask R-CNN functional graph, read top to bottom.

``build_graph(mode, config)``: inputs -> backbone + FPN (mrcnn.backbone) -> RPN and
proposals (mrcnn.rpn) -> ROI heads (mrcnn.roi_heads: box stages, detections and masks; in
training their targets and losses) -> outputs. Layer names are Matterport's, so its .h5
files load by name.

The model returns a dict of named outputs (``output_names(mode, config)``): in training
the losses of ``loss_output_names`` and TRAINING_EXTRA_OUTPUTS; in inference
INFERENCE_OUTPUTS. ``keras_model.output[name]`` is the symbolic tensor of one of them.
"""

import keras
import tensorflow as tf

from mrcnn import roi_heads, rpn
from mrcnn.backbone import build_backbone
from mrcnn.boxes import norm_boxes_graph
from mrcnn.preprocess import parse_image_meta_graph
from mrcnn.roi_heads import loss_output_names

TRAINING_EXTRA_OUTPUTS = ("rpn_class_logits", "rpn_class", "rpn_bbox", "rpn_rois",
                          "output_rois", "mrcnn_class_logits", "mrcnn_class", "mrcnn_bbox",
                          "mrcnn_mask")
INFERENCE_OUTPUTS = ("detections", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask", "rpn_rois",
                     "rpn_class", "rpn_bbox")


def output_names(mode, config):
    """Names of the graph's outputs for ``mode`` (losses first in training)."""
    if mode == "training":
        return loss_output_names(config) + list(TRAINING_EXTRA_OUTPUTS)
    return list(INFERENCE_OUTPUTS)


def build_graph(mode, config):
    """Build the functional model for ``mode`` in ("training", "inference")."""
    if mode not in ("training", "inference"):
        raise ValueError("mode must be 'training' or 'inference', got {!r}".format(mode))
    training = mode == "training"
    inputs = model_inputs(mode, config)
    image, image_meta = inputs["input_image"], inputs["input_image_meta"]

    P2, P3, P4, P5, P6 = build_backbone(image, config)
    outputs = rpn.rpn_outputs(image, [P2, P3, P4, P5, P6], config, training)
    if training:
        gt = ground_truth(inputs, config)
        proposals = outputs["rpn_rois"] if config.USE_RPN_ROIS else gt["input_rois"]
        outputs.update(rpn.rpn_losses(outputs, *rpn_targets(inputs, config)))
        outputs.update(roi_heads.training_heads(config, proposals, image_meta,
                                                [P2, P3, P4, P5], gt))
    else:
        outputs.update(roi_heads.inference_heads(config, outputs["rpn_rois"], image_meta,
                                                 [P2, P3, P4, P5]))
    # Outputs by name: callers index the result by name, never by position.
    model = keras.Model(list(inputs.values()),
                        {name: outputs[name] for name in output_names(mode, config)},
                        name="mask_rcnn")
    set_bn_momentum(model, config.BN_MOMENTUM)
    return model


def model_inputs(mode, config):
    """The graph's keras.Input tensors by name, in input order.

    Both modes: input_image [B, H, W, IMAGE_CHANNEL_COUNT] (H, W fixed in training with
    "square"/"crop" resizing), input_image_meta [B, IMAGE_META_SIZE]. Training adds the
    RPN targets input_rpn_match / input_rpn_bbox only without RPN_TARGETS_IN_GRAPH (else
    the graph computes them), the GT class ids / pixel boxes / masks (mini masks with
    USE_MINI_MASK) and, without USE_RPN_ROIS, input_roi (pixel proposals).
    """
    h = w = None
    if config.IMAGE_RESIZE_MODE in ("square", "crop") and mode == "training":
        h, w = int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1])
    inputs = {
        "input_image": keras.Input(shape=[h, w, config.IMAGE_CHANNEL_COUNT],
                                   name="input_image"),
        "input_image_meta": keras.Input(shape=[config.IMAGE_META_SIZE],
                                        name="input_image_meta"),
    }
    if mode != "training":
        return inputs
    if config.USE_MINI_MASK:
        mask_hw = list(config.MINI_MASK_SHAPE)
    else:
        mask_hw = [int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1])]
    specs = [] if config.RPN_TARGETS_IN_GRAPH else [
        ("input_rpn_match", [None, 1], "int32"), ("input_rpn_bbox", [None, 4], "float32")]
    specs += [("input_gt_class_ids", [None], "int32"), ("input_gt_boxes", [None, 4], "float32"),
              ("input_gt_masks", mask_hw + [None], "bool")]
    if not config.USE_RPN_ROIS:
        specs.append(("input_roi", [None, 4], "float32"))
    for name, shape, dtype in specs:
        inputs[name] = keras.Input(shape=shape, name=name, dtype=dtype)
    return inputs


def rpn_targets(inputs, config):
    """(rpn_match [B, A, 1], rpn_bbox [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4]): computed from
    the pixel GT boxes and the anchors of the image size (RPN_TARGETS_IN_GRAPH), else the
    inputs fed by the pipeline."""
    if not config.RPN_TARGETS_IN_GRAPH:
        return inputs["input_rpn_match"], inputs["input_rpn_bbox"]
    return rpn.RpnTargetsLayer(config, name="rpn_targets")(
        [inputs["input_image"], inputs["input_gt_class_ids"], inputs["input_gt_boxes"]])


def ground_truth(inputs, config):
    """What the ROI heads train against: gt_class_ids, gt_boxes (normalised), gt_masks,
    active_class_ids and, without USE_RPN_ROIS, input_rois (normalised)."""
    image = inputs["input_image"]
    gt = {"gt_class_ids": inputs["input_gt_class_ids"],
          "gt_boxes": NormBoxesLayer(name="norm_gt_boxes")([inputs["input_gt_boxes"], image]),
          "gt_masks": inputs["input_gt_masks"],
          "active_class_ids": ActiveClassIds(name="active_class_ids")(
              inputs["input_image_meta"])}
    if not config.USE_RPN_ROIS:
        gt["input_rois"] = NormBoxesLayer(name="norm_input_rois")([inputs["input_roi"], image])
    return gt


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


def set_bn_momentum(model, momentum):
    """Set the moving-statistics momentum of every batch-norm layer (sub-models too)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            set_bn_momentum(layer, momentum)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
