"""TensorFlow box maths for the graph side of Mask R-CNN (Matterport conventions).

Boxes are ``(y1, x1, y2, x2)``. Functions accept any number of leading dimensions unless a
docstring says otherwise, and compute in float32 whatever the input float type (so they are
safe under a mixed-precision policy). Pixel boxes are normalised as in Matterport's
``utils.norm_boxes``: ``(box - [0, 0, 1, 1]) / [h - 1, w - 1, h - 1, w - 1]``.

Box deltas are ``(dy, dx, log(dh), log(dw))`` relative to the box centre and size:
``dy = (gcy - cy) / h``, ``dx = (gcx - cx) / w``, ``dh = log(gh / h)``, ``dw = log(gw / w)``.
"""

import math

import numpy as np
import tensorflow as tf


def _f32(x):
    return tf.cast(x, tf.float32)


def log2_graph(x):
    """Base-2 logarithm of a float tensor (computed in float32)."""
    return tf.math.log(_f32(x)) / math.log(2.0)


from mrcnn.utils import BBOX_LOG_SCALE_CLIP  # noqa: E402  (one value for both sides)


def apply_box_deltas_graph(boxes, deltas):
    """Apply refinement deltas to boxes.

    boxes: [..., 4] (y1, x1, y2, x2). deltas: [..., 4] (dy, dx, log(dh), log(dw)), already
    multiplied by the std-dev if they came from a network head. Leading dims must broadcast.
    Returns float32 [..., 4] refined boxes in the same coordinate frame as ``boxes``.
    """
    boxes = _f32(boxes)
    deltas = _f32(deltas)
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    center_y = boxes[..., 0] + 0.5 * height + deltas[..., 0] * height
    center_x = boxes[..., 1] + 0.5 * width + deltas[..., 1] * width
    # Clamp the log-scale deltas (detectron2 does the same, at log(1000/16)): an untrained
    # or diverging head can predict exp() overflows, and inf - inf boxes become NaN.
    height = height * tf.exp(tf.minimum(deltas[..., 2], BBOX_LOG_SCALE_CLIP))
    width = width * tf.exp(tf.minimum(deltas[..., 3], BBOX_LOG_SCALE_CLIP))
    # Same operation order as Matterport (y2 = y1 + h) so results match bit for bit.
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return tf.stack([y1, x1, y1 + height, x1 + width], axis=-1, name="apply_box_deltas_out")


def clip_boxes_graph(boxes, window):
    """Clip boxes to a window.

    boxes: [..., N, 4]. window: [4] (one window for all boxes), or one window per leading
    index with the box axis left out, e.g. [B, 4] for boxes [B, N, 4], or any shape that
    broadcasts against ``boxes``, e.g. [B, 1, 4].
    Returns float32 boxes of the shape of ``boxes``, each coordinate clamped to the window.
    """
    boxes = _f32(boxes)
    window = _f32(window)
    if window.shape.rank is not None and boxes.shape.rank is not None and \
            window.shape.rank >= 2 and window.shape.rank == boxes.shape.rank - 1:
        # Per-image windows [B, 4] against [B, N, 4]: add the box axis.
        window = tf.expand_dims(window, -2)
    wy1, wx1, wy2, wx2 = (window[..., i] for i in range(4))
    y1 = tf.maximum(tf.minimum(boxes[..., 0], wy2), wy1)
    x1 = tf.maximum(tf.minimum(boxes[..., 1], wx2), wx1)
    y2 = tf.maximum(tf.minimum(boxes[..., 2], wy2), wy1)
    x2 = tf.maximum(tf.minimum(boxes[..., 3], wx2), wx1)
    return tf.stack([y1, x1, y2, x2], axis=-1, name="clipped_boxes")


def box_refinement_graph(box, gt_box):
    """Deltas that turn ``box`` into ``gt_box``.

    box, gt_box: [..., 4] (broadcastable). Returns float32 [..., 4] (dy, dx, log(dh), log(dw)),
    not divided by any std-dev. Inverse of apply_box_deltas_graph.
    """
    box = _f32(box)
    gt_box = _f32(gt_box)
    height = box[..., 2] - box[..., 0]
    width = box[..., 3] - box[..., 1]
    center_y = box[..., 0] + 0.5 * height
    center_x = box[..., 1] + 0.5 * width

    gt_height = gt_box[..., 2] - gt_box[..., 0]
    gt_width = gt_box[..., 3] - gt_box[..., 1]
    gt_center_y = gt_box[..., 0] + 0.5 * gt_height
    gt_center_x = gt_box[..., 1] + 0.5 * gt_width

    dy = (gt_center_y - center_y) / height
    dx = (gt_center_x - center_x) / width
    dh = tf.math.log(gt_height / height)
    dw = tf.math.log(gt_width / width)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def overlaps_graph(boxes1, boxes2):
    """IoU between two sets of boxes.

    boxes1: [..., N, 4], boxes2: [..., M, 4] with equal (or broadcastable) leading dims,
    e.g. [N, 4] x [M, 4] -> [N, M] or, batched, [B, N, 4] x [B, M, 4] -> [B, N, M].
    Returns float32 [..., N, M]. A pair whose union is zero (two empty boxes) gets IoU 0
    instead of Matterport's NaN.
    """
    b1 = tf.expand_dims(_f32(boxes1), -2)  # [..., N, 1, 4]
    b2 = tf.expand_dims(_f32(boxes2), -3)  # [..., 1, M, 4]
    y1 = tf.maximum(b1[..., 0], b2[..., 0])
    x1 = tf.maximum(b1[..., 1], b2[..., 1])
    y2 = tf.minimum(b1[..., 2], b2[..., 2])
    x2 = tf.minimum(b1[..., 3], b2[..., 3])
    intersection = tf.maximum(x2 - x1, 0.0) * tf.maximum(y2 - y1, 0.0)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    union = area1 + area2 - intersection
    return tf.math.divide_no_nan(intersection, union)


def _shape_scale(shape):
    """(h, w) tensor [..., 2] -> scale [..., 4] = [h-1, w-1, h-1, w-1] (float32)."""
    shape = _f32(shape)
    h = shape[..., 0:1]
    w = shape[..., 1:2]
    return tf.concat([h, w, h, w], axis=-1) - 1.0


def norm_boxes_graph(boxes, shape):
    """Pixel boxes -> normalised boxes (Matterport convention).

    boxes: [..., 4] pixels, (y2, x2) exclusive. shape: [2] (height, width) of the image, or
    [..., 2] broadcastable against ``boxes``' leading dims.
    Returns float32 [..., 4] = (boxes - [0, 0, 1, 1]) / [h - 1, w - 1, h - 1, w - 1].
    """
    shift = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.math.divide(_f32(boxes) - shift, _shape_scale(shape))


def denorm_boxes_graph(boxes, shape):
    """Normalised boxes -> pixel boxes, inverse of norm_boxes_graph.

    boxes: [..., 4] normalised. shape: [2] (height, width) or broadcastable [..., 2].
    Returns int32 [..., 4] pixel boxes, rounded, (y2, x2) exclusive (as Matterport).
    """
    shift = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.cast(tf.round(_f32(boxes) * _shape_scale(shape) + shift), tf.int32)


def _static_hw(image_shape_hw):
    """(h, w) as Python ints if known without running the graph, else None."""
    if isinstance(image_shape_hw, (tf.Tensor, tf.Variable)):
        value = tf.get_static_value(image_shape_hw)
        if value is None:
            return None
    else:
        value = image_shape_hw
    value = np.asarray(value).reshape(-1)
    if value.size < 2:
        raise ValueError("image_shape_hw must hold (height, width), got {!r}".format(
            image_shape_hw))
    return int(round(float(value[0]))), int(round(float(value[1])))


def _backbone_shapes(image_shape_hw, config):
    """Feature-map (height, width) per pyramid level as a list of int32 tensors [2].

    Matches utils.compute_backbone_shapes: ceil(image / stride) for the built-in backbones,
    config.COMPUTE_BACKBONE_SHAPE(image_shape) for a callable BACKBONE.
    """
    if callable(config.BACKBONE):
        if config.COMPUTE_BACKBONE_SHAPE is None:
            raise ValueError("config.COMPUTE_BACKBONE_SHAPE must be set when "
                             "config.BACKBONE is a callable")
        hw = _static_hw(image_shape_hw)
        if hw is None:
            raise ValueError("generate_pyramid_anchors_graph: with a callable "
                             "config.BACKBONE the image shape must be static (ints)")
        shapes = config.COMPUTE_BACKBONE_SHAPE(np.array([hw[0], hw[1], 3]))
        return [tf.constant([int(s[0]), int(s[1])], tf.int32) for s in shapes]
    hw = tf.cast(tf.round(tf.cast(tf.reshape(image_shape_hw, [-1])[:2], tf.float64)),
                 tf.int32)
    # Integer ceil(h / stride), as math.ceil on ints.
    return [(hw + stride - 1) // stride for stride in config.BACKBONE_STRIDES]


def generate_pyramid_anchors_graph(image_shape_hw, config):
    """Anchors of every pyramid level, normalised, in Matterport's order.

    image_shape_hw: (height, width) of the molded image, as Python ints, a numpy array or a
    tensor (e.g. the image_shape from the image meta). config: a Config (uses
    RPN_ANCHOR_SCALES, RPN_ANCHOR_RATIOS, BACKBONE_STRIDES, RPN_ANCHOR_STRIDE, BACKBONE,
    COMPUTE_BACKBONE_SHAPE).

    Returns float32 [A, 4] normalised (y1, x1, y2, x2): level-major, then row-major over
    feature positions, ratios fastest; centres at ``arange(0, shape, anchor_stride) *
    feature_stride``. Equal to ``utils.norm_boxes(utils.get_anchors(config, image_shape)...)``
    (computed in float64 like the numpy code, then cast).
    """
    scales = list(config.RPN_ANCHOR_SCALES)
    ratios = np.asarray(config.RPN_ANCHOR_RATIOS, dtype=np.float64)
    strides = list(config.BACKBONE_STRIDES)
    anchor_stride = int(config.RPN_ANCHOR_STRIDE)
    if len(scales) != len(strides):
        raise ValueError("config.RPN_ANCHOR_SCALES has {} entries but config.BACKBONE_STRIDES "
                         "has {}".format(len(scales), len(strides)))
    feature_shapes = _backbone_shapes(image_shape_hw, config)

    levels = []
    for scale, feature_stride, fshape in zip(scales, strides, feature_shapes):
        heights = tf.constant(scale / np.sqrt(ratios), tf.float64)  # [R]
        widths = tf.constant(scale * np.sqrt(ratios), tf.float64)   # [R]
        shifts_y = tf.cast(tf.range(0, fshape[0], anchor_stride) * feature_stride, tf.float64)
        shifts_x = tf.cast(tf.range(0, fshape[1], anchor_stride) * feature_stride, tf.float64)
        ny = tf.shape(shifts_y)[0]
        nx = tf.shape(shifts_x)[0]
        # [ny, nx, R]: positions row-major (y, then x), ratios fastest.
        cy = tf.broadcast_to(shifts_y[:, None, None], [ny, nx, len(ratios)])
        cx = tf.broadcast_to(shifts_x[None, :, None], [ny, nx, len(ratios)])
        h = tf.broadcast_to(heights[None, None, :], [ny, nx, len(ratios)])
        w = tf.broadcast_to(widths[None, None, :], [ny, nx, len(ratios)])
        boxes = tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
        levels.append(tf.reshape(boxes, [-1, 4]))
    anchors = tf.concat(levels, axis=0)

    hw = tf.cast(tf.reshape(image_shape_hw, [-1])[:2], tf.float64)
    scale = tf.stack([hw[0] - 1.0, hw[1] - 1.0, hw[0] - 1.0, hw[1] - 1.0])
    shift = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float64)
    return tf.cast((anchors - shift) / scale, tf.float32)
