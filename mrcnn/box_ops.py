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
