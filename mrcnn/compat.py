"""Matterport's module-level names that the library itself does not use.

Matterport's scripts and notebooks call these per-image graph functions and head
builders; they are thin wrappers over the batched layers of mrcnn.rpn and mrcnn.roi_heads.
``mrcnn.model`` re-exports them (with every other Matterport name of ``model.py``), as
``mrcnn.utils`` does for Matterport's ``utils.py`` names.
"""

from types import SimpleNamespace

import tensorflow as tf

from mrcnn.backbone import BatchNorm, conv_block, identity_block, resnet_graph
from mrcnn.boxes import (apply_box_deltas_graph, clip_boxes_graph, denorm_boxes_graph,
                         log2_graph, norm_boxes_graph, overlaps_graph)
from mrcnn.data import (build_detection_targets, data_generator, generate_random_rois,
                        load_image_gt)
from mrcnn.preprocess import compose_image_meta, mold_image, parse_image_meta, unmold_image
from mrcnn.losses import smooth_l1 as smooth_l1_loss
from mrcnn.roi_heads import (DetectionLayer, DetectionTargetLayer, PyramidROIAlign,
                             box_head_graph, mask_head_graph, mrcnn_bbox_loss_graph,
                             mrcnn_class_loss_graph, mrcnn_mask_loss_graph)
from mrcnn.rpn import (ProposalLayer, build_rpn_model, build_rpn_targets,
                       compute_backbone_shapes, get_anchors, rpn_bbox_loss_graph,
                       rpn_class_loss_graph, rpn_graph)
from mrcnn.utils import log

# What ``from mrcnn.compat import *`` gives mrcnn.model: Matterport's model.py names.
__all__ = [
    "BatchNorm", "conv_block", "identity_block", "resnet_graph",
    "apply_box_deltas_graph", "clip_boxes_graph", "denorm_boxes_graph", "log2_graph",
    "norm_boxes_graph", "overlaps_graph",
    "build_detection_targets", "data_generator", "generate_random_rois", "load_image_gt",
    "compose_image_meta", "mold_image", "parse_image_meta", "unmold_image",
    "smooth_l1_loss", "log",
    "DetectionLayer", "DetectionTargetLayer", "PyramidROIAlign", "ProposalLayer",
    "mrcnn_bbox_loss_graph", "mrcnn_class_loss_graph", "mrcnn_mask_loss_graph",
    "build_rpn_model", "build_rpn_targets", "compute_backbone_shapes", "get_anchors",
    "rpn_bbox_loss_graph", "rpn_class_loss_graph", "rpn_graph",
    "trim_zeros_graph", "batch_pack_graph", "detection_targets_graph",
    "refine_detections_graph", "fpn_classifier_graph", "build_fpn_mask_graph",
]


############################################################
#  Per-image graph functions
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


############################################################
#  Head builders with Matterport's signatures
############################################################

def fpn_classifier_graph(rois, feature_maps, image_meta, pool_size, num_classes,
                         train_bn=True, fc_layers_size=1024):
    """Matterport's box head: PyramidROIAlign "roi_align_classifier" + 2-FC head.

    rois [B, N, 4] normalised; feature_maps [P2, P3, P4, P5]; image_meta [B, META].
    Returns (mrcnn_class_logits [B, N, C], mrcnn_probs [B, N, C], mrcnn_bbox [B, N, C, 4]).
    """
    pooled = PyramidROIAlign([pool_size, pool_size], name="roi_align_classifier")(
        [rois, image_meta] + list(feature_maps))
    settings = SimpleNamespace(POOL_SIZE=pool_size, NUM_CLASSES=num_classes,
                               FPN_CLASSIF_FC_LAYERS_SIZE=fc_layers_size,
                               BOX_HEAD_NUM_CONVS=0, BOX_HEAD_CONV_DIM=256,
                               BOX_HEAD_NUM_FCS=2, CASCADE=False)
    return box_head_graph(pooled, settings, train_bn)


def build_fpn_mask_graph(rois, feature_maps, image_meta, pool_size, num_classes,
                         train_bn=True):
    """Matterport's mask head: PyramidROIAlign "roi_align_mask" + mask head (2x upsampling).

    Returns masks [B, N, 2*pool_size, 2*pool_size, num_classes].
    """
    pooled = PyramidROIAlign([pool_size, pool_size], name="roi_align_mask")(
        [rois, image_meta] + list(feature_maps))
    settings = SimpleNamespace(MASK_POOL_SIZE=pool_size, MASK_SHAPE=[2 * pool_size] * 2,
                               NUM_CLASSES=num_classes)
    return mask_head_graph(pooled, settings, train_bn)
