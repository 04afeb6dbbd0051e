"""Boxes, numpy and TensorFlow side by side: one box coder, IoU, clipping, normalisation.

Conventions (Matterport's, shared by every module):

* Boxes are ``(y1, x1, y2, x2)``. Pixel boxes are half-open (``y2``/``x2`` one past the last
  pixel); normalised boxes come from ``norm_boxes``:
  ``(box - [0, 0, 1, 1]) / [h - 1, w - 1, h - 1, w - 1]``.
* Box deltas are ``(dy, dx, log(dh), log(dw))`` relative to a box's centre and size:
  ``dy = (gcy - cy) / h``, ``dx = (gcx - cx) / w``, ``dh = log(gh / h)``, ``dw = log(gw / w)``.
  Network heads predict deltas divided by a std-dev (RPN_BBOX_STD_DEV, BBOX_STD_DEV, a
  cascade stage's std-dev); :class:`BoxCoder` is the one place that scales them, for the
  input pipeline (numpy) and the graph (TF) alike.

The numpy functions keep Matterport's ``utils`` names and bit-exact results. The TF
functions (``*_graph``) accept any number of leading dimensions and compute in float32
whatever the input type (safe under a mixed-precision policy). TensorFlow is imported on
first use of a TF function, so the numpy half stays usable without it.
"""

import importlib
import math

import numpy as np


class _LazyTF(object):
    """``tf`` for the graph functions below, imported on first attribute access."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("tensorflow"), name)


tf = _LazyTF()


############################################################
#  Numpy
############################################################

def extract_bboxes(mask):
    """Bounding boxes of instance masks.

    mask: [height, width, num_instances], nonzero = inside the instance.
    Returns int32 [num_instances, (y1, x1, y2, x2)] in pixels, y2/x2 exclusive (one past
    the last mask pixel). An empty mask gives the box (0, 0, 0, 0).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError("extract_bboxes: mask must be [height, width, instances], got "
                         "shape {}".format(mask.shape))
    h, w, n = mask.shape
    rows = np.any(mask, axis=1)  # [H, N]: does row y hold any pixel of instance n?
    cols = np.any(mask, axis=0)  # [W, N]
    present = np.any(rows, axis=0)
    y1 = np.argmax(rows, axis=0)
    y2 = h - np.argmax(rows[::-1], axis=0)
    x1 = np.argmax(cols, axis=0)
    x2 = w - np.argmax(cols[::-1], axis=0)
    boxes = np.stack([y1, x1, y2, x2], axis=1) * present[:, None]
    return boxes.reshape(n, 4).astype(np.int32)


def _safe_divide(num, den):
    """num / den elementwise, 0 where den == 0 (IoU of two empty shapes)."""
    num = np.asarray(num)
    den = np.asarray(den)
    out_dtype = np.result_type(num.dtype, den.dtype, np.float16)
    out = np.zeros(np.broadcast(num, den).shape, dtype=out_dtype)
    np.divide(num, den, out=out, where=den != 0)
    return out


def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box with each of a set of boxes.

    box: [4] (y1, x1, y2, x2). boxes: [N, 4]. box_area: area of ``box``. boxes_area: [N]
    areas of ``boxes`` (passed in so callers compute them once).
    Returns [N] IoU (0 where both areas and the intersection are 0).
    """
    box = np.asarray(box)
    boxes = np.asarray(boxes)
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = box_area + np.asarray(boxes_area) - intersection
    return _safe_divide(intersection, union)


def compute_overlaps(boxes1, boxes2):
    """IoU matrix of two sets of boxes.

    boxes1: [N1, (y1, x1, y2, x2)]. boxes2: [N2, (y1, x1, y2, x2)].
    Returns float64 [N1, N2]: overlaps[i, j] = IoU(boxes1[i], boxes2[j]).
    """
    boxes1 = np.asarray(boxes1).reshape(-1, 4)
    boxes2 = np.asarray(boxes2).reshape(-1, 4)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    b1 = boxes1[:, None, :]
    b2 = boxes2[None, :, :]
    y1 = np.maximum(b2[..., 0], b1[..., 0])
    y2 = np.minimum(b2[..., 2], b1[..., 2])
    x1 = np.maximum(b2[..., 1], b1[..., 1])
    x2 = np.minimum(b2[..., 3], b1[..., 3])
    intersection = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    # Same operand order as Matterport (area of boxes2 + area of boxes1) so the floating
    # point result is identical.
    union = area2[None, :] + area1[:, None] - intersection
    return _safe_divide(intersection, union).astype(np.float64)


def non_max_suppression(boxes, scores, threshold):
    """Greedy non-maximum suppression.

    boxes: [N, (y1, x1, y2, x2)], y2/x2 outside the box. scores: [N]. threshold: a box is
    dropped when its IoU with a kept, higher-scored box is > threshold.
    Returns int32 indices of the kept boxes, highest score first.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.shape[0] == 0:
        return np.zeros([0], dtype=np.int32)
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Same tie order as Matterport: argsort ascending, reversed.
    order = scores.argsort()[::-1]
    keep = []
    # Each pass keeps the best remaining box and drops everything it overlaps; sequential
    # by nature, vectorised inside.
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iou = compute_iou(boxes[i], boxes[rest], area[i], area[rest])
        order = rest[~(iou > threshold)]
    return np.array(keep, dtype=np.int32)


BBOX_LOG_SCALE_CLIP = math.log(1000.0 / 16)


def apply_box_deltas(boxes, deltas):
    """Apply (dy, dx, log(dh), log(dw)) deltas to boxes.

    boxes: [N, (y1, x1, y2, x2)], y2/x2 outside the box. deltas: [N, 4] (not std-scaled).
    Returns float32 [N, (y1, x1, y2, x2)].
    """
    boxes = np.asarray(boxes).astype(np.float32)
    deltas = np.asarray(deltas)
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    # In-place updates keep float32, as Matterport (values identical to its output).
    center_y += deltas[:, 0] * height
    center_x += deltas[:, 1] * width
    # Same clamp as apply_box_deltas_graph below (log(1000/16), as detectron2): no effect
    # on sane deltas, no overflow on diverged ones, and both sides stay equal.
    height *= np.exp(np.minimum(deltas[:, 2], BBOX_LOG_SCALE_CLIP))
    width *= np.exp(np.minimum(deltas[:, 3], BBOX_LOG_SCALE_CLIP))
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return np.stack([y1, x1, y1 + height, x1 + width], axis=1)


def box_refinement(box, gt_box):
    """Deltas that turn ``box`` into ``gt_box`` (inverse of apply_box_deltas).

    box, gt_box: [N, (y1, x1, y2, x2)], y2/x2 outside the box.
    Returns float32 [N, (dy, dx, log(dh), log(dw))], not divided by any std-dev.
    """
    box = np.asarray(box).astype(np.float32)
    gt_box = np.asarray(gt_box).astype(np.float32)
    height = box[:, 2] - box[:, 0]
    width = box[:, 3] - box[:, 1]
    center_y = box[:, 0] + 0.5 * height
    center_x = box[:, 1] + 0.5 * width
    gt_height = gt_box[:, 2] - gt_box[:, 0]
    gt_width = gt_box[:, 3] - gt_box[:, 1]
    gt_center_y = gt_box[:, 0] + 0.5 * gt_height
    gt_center_x = gt_box[:, 1] + 0.5 * gt_width
    dy = (gt_center_y - center_y) / height
    dx = (gt_center_x - center_x) / width
    dh = np.log(gt_height / height)
    dw = np.log(gt_width / width)
    return np.stack([dy, dx, dh, dw], axis=1)


def norm_boxes(boxes, shape):
    """Pixel boxes -> normalised: (box - [0, 0, 1, 1]) / [h - 1, w - 1, h - 1, w - 1].

    boxes: [..., (y1, x1, y2, x2)] pixels, y2/x2 outside the box. shape: (height, width)
    (extra entries ignored). Returns float32; normalised y2/x2 are inside the box.
    """
    h, w = shape[0], shape[1]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide((np.asarray(boxes) - shift), scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    """Normalised boxes -> pixels (inverse of norm_boxes), rounded to int32."""
    h, w = shape[0], shape[1]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(boxes, scale) + shift).astype(np.int32)


############################################################
#  TensorFlow
############################################################

def _f32(x):
    return tf.cast(x, tf.float32)


def log2_graph(x):
    """Base-2 logarithm of a float tensor (computed in float32)."""
    return tf.math.log(_f32(x)) / math.log(2.0)


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


############################################################
#  The box coder
############################################################

class BoxCoder(object):
    """Encode boxes as std-scaled deltas from reference boxes, and decode them back.

    std_dev: 4 positive numbers; a head predicts ``deltas / std_dev``.
    ``encode(ref, gt) = box_refinement(ref, gt) / std_dev`` and
    ``decode(ref, d) = apply_box_deltas(ref, d * std_dev)``, in numpy (``encode``/``decode``,
    boxes [N, 4]) and in TF (``encode_graph``/``decode_graph``, boxes [..., 4] broadcast
    against the deltas, float32). decode(encode(x)) = x up to float rounding.
    """

    def __init__(self, std_dev, what="std_dev"):
        std = np.asarray(std_dev, dtype=np.float64).reshape(-1)
        if std.shape != (4,) or np.any(std <= 0):
            raise ValueError("{} must be 4 positive numbers, got {!r}".format(what, std_dev))
        self.std_dev = std
        self.std_dev_f32 = std.astype(np.float32)

    def to_list(self):
        """The std-devs as Python floats (for a layer's get_config)."""
        return [float(v) for v in self.std_dev]

    def encode(self, boxes, gt_boxes):
        """Numpy: [N, 4] boxes and their targets -> float64 [N, 4] std-scaled deltas."""
        return box_refinement(boxes, gt_boxes) / self.std_dev

    def decode(self, boxes, deltas):
        """Numpy: [N, 4] boxes and std-scaled deltas -> float32 [N, 4] boxes."""
        return apply_box_deltas(boxes, np.asarray(deltas) * self.std_dev)

    def encode_graph(self, boxes, gt_boxes):
        """TF: boxes, targets [..., 4] -> float32 std-scaled deltas [..., 4]."""
        return box_refinement_graph(boxes, gt_boxes) / self.std_dev_f32

    def decode_graph(self, boxes, deltas):
        """TF: boxes [..., 4] and std-scaled deltas [..., 4] -> float32 boxes [..., 4]."""
        return apply_box_deltas_graph(boxes, _f32(deltas) * self.std_dev_f32)
