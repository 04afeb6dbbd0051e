"""The region proposal network: anchors, the shared RPN head, proposals, anchor targets and
the two RPN losses.

An image's path through this module: the anchors of its molded size (numpy
``get_anchors`` for the input side, ``generate_pyramid_anchors_graph`` / ``AnchorsLayer``
in the graph; tested equal) -> ``rpn_model`` on every FPN level (objectness logits and
std-scaled box deltas per anchor) -> ``ProposalLayer`` (top anchors by score, decoded by
the RPN's BoxCoder, clipped, NMS) -> normalised proposals for the ROI heads. For training,
``build_rpn_targets`` labels anchors and encodes their targets, and
``rpn_class_loss_graph`` / ``rpn_bbox_loss_graph`` score the head against them.

Anchor order (everywhere): level-major, then row-major over feature-map positions, ratios
fastest, centred at ``arange(0, shape, anchor_stride) * feature_stride``.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn.boxes import BoxCoder, clip_boxes_graph, norm_boxes
from mrcnn.config import Config, config_values
from mrcnn.losses import LossLayer, register_loss, safe_mean, smooth_l1
from mrcnn.winograd import conv2d, resolve_winograd


############################################################
#  Anchors (numpy: the input side)
############################################################

def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride):
    """Anchors of one feature map, in pixels.

    scales: anchor side(s) in pixels. ratios: width / height ratios. shape: (height, width)
    of the feature map. feature_stride: pixels per feature-map cell. anchor_stride: place
    anchors every anchor_stride cells.
    Returns float64 [positions * len(scales) * len(ratios), (y1, x1, y2, x2)]: positions
    row-major over (y, x), centred at (y, x) * feature_stride; per position, all
    (ratio, scale) pairs with scales fastest.
    """
    scales, ratios = np.meshgrid(np.array(scales), np.array(ratios))
    scales = scales.flatten()
    ratios = ratios.flatten()
    heights = scales / np.sqrt(ratios)
    widths = scales * np.sqrt(ratios)

    shifts_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    shifts_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    # [P, 1, 2] centres against [1, K, 2] sizes -> [P * K, 2].
    cy, cx = np.meshgrid(shifts_y, shifts_x, indexing="ij")
    centers = np.stack([cy.ravel(), cx.ravel()], axis=1)[:, None, :]
    sizes = np.stack([heights, widths], axis=1)[None, :, :]
    centers, sizes = np.broadcast_arrays(centers, sizes)
    centers = centers.reshape(-1, 2)
    sizes = sizes.reshape(-1, 2)
    return np.concatenate([centers - 0.5 * sizes, centers + 0.5 * sizes], axis=1)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides,
                             anchor_stride):
    """Anchors of all pyramid levels, in pixels: level i uses scales[i],
    feature_shapes[i] and feature_strides[i]; every level uses all ratios.

    Returns float64 [N, (y1, x1, y2, x2)], level-major (anchors of scales[0] first).
    """
    return np.concatenate([
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i],
                         anchor_stride)
        for i in range(len(scales))], axis=0)


def compute_backbone_shapes(config, image_shape):
    """Feature-map (height, width) of each pyramid level for an input image shape.

    Returns int array [levels, 2] = [ceil(H / stride), ceil(W / stride)] per
    config.BACKBONE_STRIDES, or config.COMPUTE_BACKBONE_SHAPE(image_shape) when
    config.BACKBONE is a callable.
    """
    if callable(config.BACKBONE):
        if config.COMPUTE_BACKBONE_SHAPE is None:
            raise ValueError("config.COMPUTE_BACKBONE_SHAPE must be set when "
                             "config.BACKBONE is a callable")
        return np.asarray(config.COMPUTE_BACKBONE_SHAPE(image_shape))
    return np.array([[int(math.ceil(image_shape[0] / stride)),
                      int(math.ceil(image_shape[1] / stride))]
                     for stride in config.BACKBONE_STRIDES])


_ANCHOR_CACHE = {}


_ANCHOR_CACHE_SIZE = 16


def get_anchors(config, image_shape):
    """All anchors of an image shape, in pixels: THE place that decides anchors.

    Uses config.RPN_ANCHOR_SCALES, RPN_ANCHOR_RATIOS, BACKBONE_STRIDES and
    RPN_ANCHOR_STRIDE over compute_backbone_shapes(config, image_shape).
    Returns a read-only float64 [N, (y1, x1, y2, x2)] array (cached per settings and
    shape); normalise with norm_boxes(anchors, image_shape[:2]).
    """
    shapes = compute_backbone_shapes(config, image_shape)
    key = (tuple(config.RPN_ANCHOR_SCALES), tuple(config.RPN_ANCHOR_RATIOS),
           tuple(map(tuple, np.asarray(shapes).tolist())), tuple(config.BACKBONE_STRIDES),
           config.RPN_ANCHOR_STRIDE)
    anchors = _ANCHOR_CACHE.get(key)
    if anchors is None:
        anchors = generate_pyramid_anchors(config.RPN_ANCHOR_SCALES,
                                           config.RPN_ANCHOR_RATIOS, shapes,
                                           config.BACKBONE_STRIDES,
                                           config.RPN_ANCHOR_STRIDE)
        anchors.setflags(write=False)  # shared between callers
        if len(_ANCHOR_CACHE) >= _ANCHOR_CACHE_SIZE:
            _ANCHOR_CACHE.clear()
        _ANCHOR_CACHE[key] = anchors
    return anchors


def numpy_anchors(config, image_shape):
    """Normalised numpy anchors for a molded image shape (get_anchors + norm_boxes)."""
    return norm_boxes(get_anchors(config, image_shape), image_shape[:2]).astype(
        np.float32)


############################################################
#  Anchors (TF: the graph side)
############################################################

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

    Matches compute_backbone_shapes: ceil(image / stride) for the built-in backbones,
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
    feature_stride``. Equal to ``norm_boxes(get_anchors(config, image_shape)...)``
    (computed in float64 like the numpy code, then cast).
    """
    anchors = pyramid_anchors_pixels_graph(image_shape_hw, config)
    hw = tf.cast(tf.reshape(image_shape_hw, [-1])[:2], tf.float64)
    scale = tf.stack([hw[0] - 1.0, hw[1] - 1.0, hw[0] - 1.0, hw[1] - 1.0])
    shift = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float64)
    return tf.cast((anchors - shift) / scale, tf.float32)


def pyramid_anchors_pixels_graph(image_shape_hw, config):
    """generate_pyramid_anchors_graph before normalisation: float64 [A, 4] pixel anchors,
    equal to get_anchors(config, image_shape) (same float64 operations)."""
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
    return tf.concat(levels, axis=0)


@keras.saving.register_keras_serializable(package="mrcnn")
class AnchorsLayer(keras.layers.Layer):
    """Normalised anchors for the (possibly dynamic) image size, broadcast to the batch.

    input: molded images [B, H, W, C] -> anchors [B, A, 4] normalised. The anchor order
    and values come from generate_pyramid_anchors_graph, tested equal to
    get_anchors.
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
            anchors = generate_pyramid_anchors_graph(hw, self.config)
            anchors = tf.cast(anchors, tf.float32)
        return tf.broadcast_to(anchors[None], [shape[0], tf.shape(anchors)[0], 4])

    def _numpy_anchors(self, hw):
        h, w = int(hw[0]), int(hw[1])
        return numpy_anchors(self.config, (h, w, self.config.IMAGE_CHANNEL_COUNT))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, 4)


############################################################
#  The RPN head (Matterport's rpn_model)
############################################################

def build_rpn_model(anchor_stride, anchors_per_location, depth, conv_dim=512, init_std=None,
                    winograd=False):
    """Keras model of the RPN, shared by all pyramid levels (Matterport's ``rpn_model``).

    anchor_stride: stride of anchor positions in feature-map cells (RPN_ANCHOR_STRIDE).
    anchors_per_location: anchors per position (len(RPN_ANCHOR_RATIOS)).
    depth: channels of the feature maps (TOP_DOWN_PYRAMID_SIZE).
    conv_dim: channels of the shared 3x3 conv (RPN_CONV_DIM; Matterport's weights: 512).
    init_std: None = Keras' default initialisers; a number = every conv kernel drawn from
        N(0, init_std) and zero biases (RPN_INIT_STD).
    winograd: the shared conv by Winograd on large maps (CONV3X3_WINOGRAD, mrcnn.winograd).

    Input "input_rpn_feature_map" [B, H, W, depth]; call it as ``rpn(P)``. Outputs, with
    A = ceil(H/stride) * ceil(W/stride) * anchors_per_location, anchors ordered (y, x, anchor):
        rpn_class_logits [B, A, 2] (bg, fg) before softmax, float32
        rpn_probs        [B, A, 2] softmax, float32
        rpn_bbox         [B, A, 4] (dy, dx, log(dh), log(dw)) std-scaled deltas, float32
    """
    feature_map = keras.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    outputs = rpn_graph(feature_map, anchors_per_location, anchor_stride, conv_dim=conv_dim,
                        init_std=init_std, winograd=winograd)
    # A single (non-list) input, so the model is called per level as rpn(P) without a
    # Keras input-structure warning.
    return keras.Model(feature_map, outputs, name="rpn_model")


def rpn_graph(feature_map, anchors_per_location, anchor_stride, conv_dim=512, init_std=None,
              winograd=False):
    """The RPN's layers on one feature map (Matterport's function; build_rpn_model wraps
    it in the shared ``rpn_model``). Arguments and outputs as build_rpn_model:
    [rpn_class_logits, rpn_probs, rpn_bbox]."""
    init = {} if init_std is None else dict(
        kernel_initializer=keras.initializers.RandomNormal(stddev=float(init_std)),
        bias_initializer="zeros")
    shared = conv2d(int(conv_dim), 3, winograd, strides=anchor_stride, padding="same",
                    activation="relu", name="rpn_conv_shared", **init)(feature_map)
    x = KL.Conv2D(2 * anchors_per_location, 1, padding="valid", name="rpn_class_raw",
                  **init)(shared)
    rpn_class_logits = KL.Reshape((-1, 2), dtype="float32", name="rpn_class_raw_reshape")(x)
    rpn_probs = KL.Activation("softmax", dtype="float32", name="rpn_class_xxx")(
        rpn_class_logits)
    x = KL.Conv2D(4 * anchors_per_location, 1, padding="valid", name="rpn_bbox_pred",
                  **init)(shared)
    rpn_bbox = KL.Reshape((-1, 4), dtype="float32", name="rpn_bbox_pred_reshape")(x)
    return [rpn_class_logits, rpn_probs, rpn_bbox]


############################################################
#  Proposals
############################################################

def proposal_nms(boxes, proposal_count, nms_threshold):
    """Matterport's proposal NMS on a batch: [B, N, 4] boxes sorted by descending score
    (top_k order: equal scores keep the lower anchor index first) -> [B, proposal_count,
    4] kept boxes in that order, zero padded.

    Matterport ran tf.image.non_max_suppression per image, which visits equal scores in
    index order. The batched combined_non_max_suppression does not (a trained RPN
    saturates many scores at exactly 1.0, so proposals differed), but greedy NMS depends
    on the scores only through the visiting order: given strictly decreasing scores (the
    rank in the sorted input) it visits exactly Matterport's order, and is 1.5-4x faster
    than a per-image loop of the single-image op (benchmarks/bench_proposals.py).
    """
    count = tf.shape(boxes)[1]
    rank_scores = tf.cast(tf.range(count, 0, -1), tf.float32)   # exact up to 2^24 boxes
    rank_scores = tf.broadcast_to(rank_scores, tf.shape(boxes)[:2])
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, tf.newaxis, :], rank_scores[:, :, tf.newaxis],
        max_output_size_per_class=proposal_count, max_total_size=proposal_count,
        iou_threshold=nms_threshold, score_threshold=float("-inf"),
        pad_per_class=False, clip_boxes=False, name="rpn_non_max_suppression")
    return nms.nmsed_boxes


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
            in descending score order (equal scores: lower anchor index first, as
            Matterport), zero padded. No gradient flows through it.
    """

    def __init__(self, proposal_count, nms_threshold, config=None, pre_nms_limit=None,
                 rpn_bbox_std_dev=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        name = type(self).__name__
        source = Config if config is None else config
        if pre_nms_limit is None:
            pre_nms_limit = config_values(source, ["PRE_NMS_LIMIT"], name)["PRE_NMS_LIMIT"]
        if rpn_bbox_std_dev is None:
            rpn_bbox_std_dev = config_values(source, ["RPN_BBOX_STD_DEV"],
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
        self.box_coder = BoxCoder(rpn_bbox_std_dev, "{}: RPN_BBOX_STD_DEV".format(name))

    def call(self, inputs):
        # NMS needs only the score order, which top_k gave the boxes.
        return proposal_nms(self.top_boxes(inputs), self.proposal_count, self.nms_threshold)

    def top_boxes(self, inputs):
        """[rpn_probs, rpn_bbox, anchors] -> the PRE_NMS_LIMIT best-scored anchors' decoded
        boxes [B, K, 4], normalised, clipped to the image, in descending score order."""
        rpn_probs, rpn_bbox, anchors = inputs
        scores = tf.cast(rpn_probs, tf.float32)[:, :, 1]
        deltas = tf.cast(rpn_bbox, tf.float32)
        anchors = tf.cast(anchors, tf.float32)

        # Work on the top anchors by score only: NMS cost grows with the square.
        num_anchors = scores.shape[1]
        if num_anchors is not None:
            k = min(self.pre_nms_limit, num_anchors)
        else:
            k = tf.minimum(self.pre_nms_limit, tf.shape(scores)[1])
        # top_k is stable: equal scores keep the lower anchor index first (Matterport).
        top = tf.math.top_k(scores, k, sorted=True, name="top_anchors")
        deltas = tf.gather(deltas, top.indices, batch_dims=1)
        anchors = tf.gather(anchors, top.indices, batch_dims=1)

        boxes = self.box_coder.decode_graph(anchors, deltas)
        boxes = clip_boxes_graph(boxes, tf.constant([0.0, 0.0, 1.0, 1.0]))
        # Proposals are treated as constants downstream (as in Faster R-CNN); NMS has no
        # gradient anyway.
        return tf.stop_gradient(boxes)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        config = super().get_config()
        config.update({
            "proposal_count": self.proposal_count,
            "nms_threshold": self.nms_threshold,
            "pre_nms_limit": self.pre_nms_limit,
            "rpn_bbox_std_dev": self.box_coder.to_list(),
        })
        return config


############################################################
#  Anchor targets
############################################################

# Matterport: anchors whose IoU with any crowd box reaches this are never negatives.
CROWD_IOU = 0.001


# GT boxes per IoU block in build_rpn_targets: bounds the [anchors, block] float64
# temporaries (~260k anchors at 1024 px -> about 33 MB per temporary).
_GT_BLOCK = 16


def random_subset(rng, ids, count):
    """``count`` distinct elements of ids, from ``rng`` (Generator) or numpy's global RNG."""
    if rng is None:
        return np.random.choice(ids, count, replace=False)
    return rng.choice(ids, count, replace=False)


def _max_iou_blocks(anchors, boxes):
    """IoU statistics of anchors [A, 4] against boxes [G, 4] without an [A, G] matrix.

    Returns (best_iou [A] float64, best_box [A] int64 = first box reaching it (0 if none
    overlaps),
    is_box_best [A] bool = anchor attains some box's maximum IoU, when that is > 0).
    IoU = inter / (area_anchor + area_box - inter), 0 where the union is 0. Works on
    [block, A] slabs of contiguous anchor columns: several times faster than
    compute_overlaps on ~260k anchors, whose [A, G] float64 temporaries dominate.
    """
    num_anchors = anchors.shape[0]
    ay1, ax1, ay2, ax2 = (np.ascontiguousarray(anchors[:, i]) for i in range(4))
    anchor_area = (ay2 - ay1) * (ax2 - ax1)
    # Starting from 0 with a strict ">" reproduces np.argmax over all boxes: the first
    # box with the maximum wins, and anchors touching nothing get box 0.
    best_iou = np.zeros([num_anchors])
    best_box = np.zeros([num_anchors], dtype=np.int64)
    is_box_best = np.zeros([num_anchors], dtype=bool)
    # Reused buffers: fresh [block, A] allocations page-fault and cost more than the maths.
    rows = min(_GT_BLOCK, boxes.shape[0])
    buf_inter = np.empty([rows, num_anchors])
    buf_tmp = np.empty([rows, num_anchors])
    buf_union = np.empty([rows, num_anchors])
    for start in range(0, boxes.shape[0], _GT_BLOCK):
        g = boxes[start:start + _GT_BLOCK]
        n = g.shape[0]
        inter, tmp, union = buf_inter[:n], buf_tmp[:n], buf_union[:n]
        np.minimum(ay2[None, :], g[:, 2:3], out=inter)
        inter -= np.maximum(ay1[None, :], g[:, 0:1], out=tmp)
        np.maximum(inter, 0, out=inter)
        np.minimum(ax2[None, :], g[:, 3:4], out=union)  # union: scratch for the width
        union -= np.maximum(ax1[None, :], g[:, 1:2], out=tmp)
        np.maximum(union, 0, out=union)
        inter *= union
        np.add(anchor_area[None, :], ((g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]))[:, None],
               out=union)
        union -= inter
        # In place: where union is 0 the intersection is 0 too, so IoU stays 0.
        iou = np.divide(inter, union, out=inter, where=union > 0)
        block_max = iou.max(axis=0)
        better = np.flatnonzero(block_max > best_iou)
        if better.size:
            best_iou[better] = block_max[better]
            best_box[better] = np.argmax(iou[:, better], axis=0) + start
        box_max = iou.max(axis=1)
        # Every anchor tying for a box's best IoU is matched to it (Matterport); a box
        # that overlaps no anchor at all (max 0) matches none instead of all of them.
        for j in np.flatnonzero(box_max > 0):
            is_box_best |= iou[j] == box_max[j]
    return best_iou, best_box, is_box_best


def _balance(rpn_match, total, rng):
    """In place: at most total // 2 positives, negatives fill up to ``total``; the
    anchors dropped at random become neutral (0)."""
    positive = np.flatnonzero(rpn_match == 1)
    extra = positive.shape[0] - total // 2
    if extra > 0:
        rpn_match[random_subset(rng, positive, extra)] = 0
    negative = np.flatnonzero(rpn_match == -1)
    extra = negative.shape[0] - (total - np.count_nonzero(rpn_match == 1))
    if extra > 0:
        rpn_match[random_subset(rng, negative, extra)] = 0


def build_rpn_targets(image_shape, anchors, gt_class_ids, gt_boxes, config, rng=None):
    """RPN training targets of one image (Matterport semantics, vectorised).

    image_shape: [H, W, C] (unused; Matterport signature). anchors: [A, (y1, x1, y2, x2)]
    pixels. gt_class_ids: [N] int (negative = crowd). gt_boxes: [N, 4] pixels.
    rng: np.random.Generator for the subsampling, or None for numpy's global RNG.

    Matching: an anchor is negative when its best IoU with a non-crowd GT is below
    config.RPN_NEGATIVE_IOU and its IoU with every crowd box is below 0.001; positive
    when its best IoU is >= config.RPN_POSITIVE_IOU, and each GT's best anchor(s) are
    positive whatever their IoU (ties all count; a GT overlapping no anchor is skipped).
    Then at most RPN_TRAIN_ANCHORS_PER_IMAGE // 2 positives are kept at random and
    negatives are cut to fill RPN_TRAIN_ANCHORS_PER_IMAGE; the rest become neutral.

    Returns:
        rpn_match: int32 [A], 1 positive / -1 negative / 0 neutral.
        rpn_bbox: float32 [RPN_TRAIN_ANCHORS_PER_IMAGE, (dy, dx, log(dh), log(dw))]:
            row i holds the deltas (divided by RPN_BBOX_STD_DEV) from the i-th positive
            anchor (in anchor order) to the GT it overlaps most; zero padded.
    """
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    total = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    num_anchors = anchors.shape[0]
    rpn_match = np.zeros([num_anchors], dtype=np.int32)
    rpn_bbox = np.zeros([total, 4], dtype=np.float32)

    crowd = gt_class_ids < 0
    if np.any(crowd):
        crowd_iou, _, _ = _max_iou_blocks(anchors, gt_boxes[crowd])
        no_crowd = crowd_iou < CROWD_IOU
    else:
        no_crowd = np.ones([num_anchors], dtype=bool)
    gt_boxes = gt_boxes[gt_class_ids > 0]

    if gt_boxes.shape[0]:
        best_iou, best_gt, is_gt_best = _max_iou_blocks(anchors, gt_boxes)
        # Order matters (Matterport): negatives first, then positives overwrite them.
        rpn_match[(best_iou < config.RPN_NEGATIVE_IOU) & no_crowd] = -1
        rpn_match[is_gt_best] = 1
        rpn_match[best_iou >= config.RPN_POSITIVE_IOU] = 1
    else:
        best_gt = np.zeros([num_anchors], dtype=np.int64)
        rpn_match[no_crowd] = -1

    _balance(rpn_match, total, rng)

    positive = np.flatnonzero(rpn_match == 1)
    if positive.shape[0]:
        coder = BoxCoder(config.RPN_BBOX_STD_DEV, "RPN_BBOX_STD_DEV")
        rpn_bbox[:positive.shape[0]] = coder.encode(anchors[positive],
                                                    gt_boxes[best_gt[positive]])
    return rpn_match, rpn_bbox


############################################################
#  Anchor targets in the graph
############################################################

# GT boxes per IoU block in rpn_targets_graph: one block's [B, block, A] float64 IoU is
# 2 * 8 * 261888 * 8 bytes = 34 MB at 1024 px, batch 2; a few such temporaries are alive.
_GRAPH_GT_BLOCK = 8

# Where rows that must match nothing (padding, or crowds in the object pass) are moved: a
# zero-area box no anchor reaches, whose IoU with every anchor is exactly 0.
_NOWHERE = -1e9


def _iou_block_graph(anchor_cols, anchor_area, boxes):
    """IoU of anchors (4 columns [A] float64, areas [A]) with boxes [B, k, 4] float64 ->
    [B, k, A], by the same float64 operations, in the same order, as _max_iou_blocks (so
    equal). Anchors have positive areas, so no union is 0 (numpy's guard never acts)."""
    ay1, ax1, ay2, ax2 = anchor_cols
    gy1, gx1, gy2, gx2 = (boxes[:, :, i:i + 1] for i in range(4))
    inter = tf.maximum(tf.minimum(ay2, gy2) - tf.maximum(ay1, gy1), 0.0)
    inter = inter * tf.maximum(tf.minimum(ax2, gx2) - tf.maximum(ax1, gx1), 0.0)
    return inter / ((anchor_area + (gy2 - gy1) * (gx2 - gx1)) - inter)


def _first_max_index(values, block_max, start):
    """Index (offset by start) of the first entry of values [B, k, A] along k that equals
    block_max [B, A]: np.argmax's tie rule, which tf.argmax does not promise."""
    k = tf.shape(values)[1]
    index = tf.range(k)[None, :, None]
    hit = tf.equal(values, block_max[:, None, :])
    return tf.reduce_min(tf.where(hit, index, k), axis=1) + start


def _object_block(state, iou, start):
    """Fold one block's IoU [B, k, A] into (best_iou, best_gt, is_gt_best) [B, A], as
    one loop of _max_iou_blocks."""
    best_iou, best_gt, is_gt_best = state
    block_max = tf.reduce_max(iou, axis=1)
    better = block_max > best_iou  # strict: an earlier block keeps ties (np.argmax)
    best_gt = tf.where(better, _first_max_index(iou, block_max, start), best_gt)
    best_iou = tf.where(better, block_max, best_iou)
    box_max = tf.reduce_max(iou, axis=2, keepdims=True)
    # A box touching no anchor (max 0) matches none: 2 is above any IoU.
    box_max = tf.where(box_max > 0, box_max, 2.0)
    return best_iou, best_gt, is_gt_best | tf.reduce_any(tf.equal(iou, box_max), axis=1)


def _crowd_block(state, iou, start):
    """Fold one block's IoU [B, k, A] into the best crowd IoU [B, A]."""
    return (tf.maximum(state[0], tf.reduce_max(iou, axis=1)),)


def _rows_first(gt_boxes, wanted, block):
    """The rows where wanted [B, G] first, in their order (so first-max ties go as in
    numpy), the others moved to _NOWHERE; cut to the batch's largest count rounded up to
    a multiple of block. Returns (boxes [B, n, 4], n)."""
    order = tf.argsort(tf.cast(~wanted, tf.int32), axis=1, stable=True)
    keep = tf.gather(wanted, order, batch_dims=1)[:, :, None]
    boxes = tf.where(keep, tf.gather(gt_boxes, order, batch_dims=1), _NOWHERE)
    count = tf.reduce_max(tf.reduce_sum(tf.cast(wanted, tf.int32), axis=1))
    padded = (count + block - 1) // block * block
    boxes = tf.pad(boxes[:, :count], [[0, 0], [0, padded - count], [0, 0]],
                   constant_values=_NOWHERE)
    return boxes, padded


def _fold_blocks(fold, state, anchors, boxes, count, block):
    """state = fold(state, IoU of anchors with boxes[:, start:start + block], start) for
    start = 0, block, ... < count: a graph loop, one block's temporaries at a time."""
    anchor_cols = [anchors[:, i] for i in range(4)]
    anchor_area = (anchor_cols[2] - anchor_cols[0]) * (anchor_cols[3] - anchor_cols[1])

    def body(start, state):
        iou = _iou_block_graph(anchor_cols, anchor_area, boxes[:, start:start + block])
        return start + block, fold(state, iou, start)

    # parallel_iterations=1: blocks run one after another (the memory bound).
    _, state = tf.while_loop(lambda start, _: start < count, body, (0, state),
                             parallel_iterations=1)
    return state


def _match_anchors_graph(anchors, gt_class_ids, gt_boxes, block=None):
    """Per-anchor IoU statistics, looping over blocks of GT boxes.

    anchors [A, 4], gt_boxes [B, G, 4] float64 pixels; gt_class_ids [B, G] int32.
    Returns object_boxes [B, n, 4] (the non-crowd GT first, in order; best_gt indexes
    them), best_iou [B, A], best_gt [B, A] int32, is_gt_best [B, A] bool and crowd_iou
    [B, A] (best IoU with a crowd box). Only the batch's largest object (crowd) count
    is looped over, not the padding.
    """
    block = int(block or _GRAPH_GT_BLOCK)
    zeros = tf.zeros([tf.shape(gt_boxes)[0], tf.shape(anchors)[0]], tf.float64)
    objects, count = _rows_first(gt_boxes, gt_class_ids > 0, block)
    best_iou, best_gt, is_gt_best = _fold_blocks(
        _object_block, (zeros, tf.zeros_like(zeros, tf.int32), tf.zeros_like(zeros, tf.bool)),
        anchors, objects, count, block)
    crowds, count = _rows_first(gt_boxes, gt_class_ids < 0, block)
    crowd_iou, = _fold_blocks(_crowd_block, (zeros,), anchors, crowds, count, block)
    return objects, best_iou, best_gt, is_gt_best, crowd_iou


def _random_keep(candidates, k, count):
    """Keep min(count, k, #candidates) random True entries of candidates [B, A] per image
    (count [B] int32); returns bool [B, A]. Random keys + top_k: no per-image loop."""
    keys = tf.where(candidates, tf.random.uniform(tf.shape(candidates)), -1.0)
    top = tf.math.top_k(keys, k)
    take = (top.values >= 0) & (tf.range(k)[None, :] < count[:, None])
    batch = tf.broadcast_to(tf.range(tf.shape(keys)[0])[:, None], tf.shape(top.indices))
    where = tf.stack([batch, top.indices], axis=-1)
    return tf.scatter_nd(where, tf.cast(take, tf.int32), tf.shape(keys)) > 0


def _balance_graph(positive, negative, total):
    """_balance for a batch: at most total // 2 positives, negatives fill up to total."""
    num_anchors = tf.shape(positive)[1]
    count = tf.fill([tf.shape(positive)[0]], total // 2)
    positive = _random_keep(positive, tf.minimum(total // 2, num_anchors), count)
    count = total - tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
    negative = _random_keep(negative, tf.minimum(total, num_anchors), count)
    return positive, negative


def _positive_deltas_graph(positive, anchors, gt_boxes, best_gt, coder, total):
    """rpn_bbox [B, total, 4]: row i = encoded deltas of the image's i-th positive anchor
    in anchor order (at most total // 2 of them), zero padded."""
    num_anchors = tf.shape(positive)[1]
    k = tf.minimum(total // 2, num_anchors)
    # Descending keys A - index pick the positives, lowest index first.
    keys = tf.where(positive, num_anchors - tf.range(num_anchors)[None, :], 0)
    top = tf.math.top_k(keys, k)
    index = num_anchors - top.values
    valid = top.values > 0
    index = tf.where(valid, index, 0)
    # One spare row: a batch without objects has no GT row for the padding to gather.
    gt_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
    gt = tf.gather(gt_boxes, tf.gather(best_gt, index, batch_dims=1), batch_dims=1)
    deltas = coder.encode_graph(tf.gather(anchors, index), gt)
    deltas = tf.where(valid[:, :, None], deltas, 0.0)
    return tf.ensure_shape(tf.pad(deltas, [[0, 0], [0, total - k], [0, 0]]),
                           [None, total, 4])


def rpn_targets_graph(anchors, gt_class_ids, gt_boxes, config, block=None):
    """build_rpn_targets for a batch, in TF ops (no per-image or per-box Python loop).

    anchors: [A, 4] pixels (pyramid_anchors_pixels_graph; float64 keeps the IoU equal to
    the numpy one). gt_class_ids: [B, G] int (0 = padding, < 0 = crowd).
    gt_boxes: [B, G, 4] pixels. block: GT boxes per IoU block (memory bound).
    Same rules as build_rpn_targets; the subsampling draws tf.random.uniform keys.
    Returns rpn_match int32 [B, A] (1 / -1 / 0) and rpn_bbox float32
    [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4] (std-scaled deltas of the positives in anchor order,
    zero padded).
    """
    anchors = tf.cast(anchors, tf.float64)
    gt_boxes = tf.cast(gt_boxes, tf.float64)
    gt_class_ids = tf.cast(gt_class_ids, tf.int32)
    total = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    gt_boxes, best_iou, best_gt, is_gt_best, crowd_iou = _match_anchors_graph(
        anchors, gt_class_ids, gt_boxes, block)
    # build_rpn_targets' order: negatives first, then positives overwrite them.
    positive = is_gt_best | (best_iou >= config.RPN_POSITIVE_IOU)
    negative = ~positive & (best_iou < config.RPN_NEGATIVE_IOU) & (crowd_iou < CROWD_IOU)
    positive, negative = _balance_graph(positive, negative, total)
    rpn_match = tf.cast(positive, tf.int32) - tf.cast(negative, tf.int32)
    coder = BoxCoder(config.RPN_BBOX_STD_DEV, "RPN_BBOX_STD_DEV")
    rpn_bbox = _positive_deltas_graph(positive, anchors, gt_boxes, best_gt, coder, total)
    return rpn_match, rpn_bbox


@keras.saving.register_keras_serializable(package="mrcnn")
class RpnTargetsLayer(keras.layers.Layer):
    """The RPN's training targets computed in the graph (config.RPN_TARGETS_IN_GRAPH).

    inputs: [molded images [B, H, W, C] (for the anchors of their size), gt_class_ids
    [B, G], gt_boxes [B, G, 4] pixels] -> [rpn_match int32 [B, A, 1], rpn_bbox float32
    [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4]], the layout of input_rpn_match / input_rpn_bbox.
    """

    def __init__(self, config=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.config = config

    def call(self, inputs):
        images, gt_class_ids, gt_boxes = inputs
        anchors = self._pixel_anchors(images)
        rpn_match, rpn_bbox = rpn_targets_graph(anchors, gt_class_ids, gt_boxes,
                                                self.config)
        return [tf.stop_gradient(rpn_match[:, :, None]), tf.stop_gradient(rpn_bbox)]

    def _pixel_anchors(self, images):
        static_hw = tuple(images.shape[1:3])
        if callable(self.config.BACKBONE) and None in static_hw:
            # COMPUTE_BACKBONE_SHAPE is Python: call get_anchors at run time.
            anchors = tf.numpy_function(self._numpy_anchors, [tf.shape(images)[1:3]],
                                        tf.float64, stateful=False)
            return tf.reshape(anchors, [-1, 4])
        hw = static_hw if None not in static_hw else tf.shape(images)[1:3]
        return pyramid_anchors_pixels_graph(hw, self.config)

    def _numpy_anchors(self, hw):
        return get_anchors(self.config, (int(hw[0]), int(hw[1]),
                                         self.config.IMAGE_CHANNEL_COUNT))

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        return [(batch, None, 1), (batch, self.config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4)]


############################################################
#  Losses
############################################################


@register_loss("rpn_class")
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
    return safe_mean(ce, used)


@register_loss("rpn_bbox")
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
    return safe_mean(loss, tf.cast(positive, tf.float32))


############################################################
#  The RPN in the graph
############################################################

def rpn_outputs(input_image, feature_maps, config, training):
    """The RPN on the FPN maps [P2..P6] and its proposals.

    Returns a dict: rpn_class_logits [B, A, 2], rpn_class [B, A, 2], rpn_bbox [B, A, 4]
    (all levels, anchor order) and rpn_rois [B, POST_NMS_ROIS_{TRAINING,INFERENCE}, 4]
    normalised proposals.
    """
    # One RPN model shared across levels (Matterport's rpn_model, loadable by name).
    rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                          config.TOP_DOWN_PYRAMID_SIZE, conv_dim=config.RPN_CONV_DIM,
                          init_std=config.RPN_INIT_STD,
                          winograd=resolve_winograd(config.CONV3X3_WINOGRAD))
    level_outputs = [rpn(p) for p in feature_maps]
    names = ["rpn_class_logits", "rpn_class", "rpn_bbox"]
    out = {name: KL.Concatenate(axis=1, name=name, dtype="float32")(
        [o[i] for o in level_outputs]) for i, name in enumerate(names)}
    anchors = AnchorsLayer(config, name="anchors")(input_image)
    proposal_count = (config.POST_NMS_ROIS_TRAINING if training
                      else config.POST_NMS_ROIS_INFERENCE)
    pre_nms = config.PRE_NMS_LIMIT_TRAINING if training else config.PRE_NMS_LIMIT_INFERENCE
    out["rpn_rois"] = ProposalLayer(proposal_count=proposal_count,
                                    nms_threshold=config.RPN_NMS_THRESHOLD, config=config,
                                    pre_nms_limit=pre_nms, name="ROI")(
        [out["rpn_class"], out["rpn_bbox"], anchors])
    return out


def rpn_losses(rpn, rpn_match, rpn_bbox_targets):
    """The two RPN losses as named graph outputs.

    rpn: rpn_outputs' dict. rpn_match [B, A, 1], rpn_bbox_targets [B, RPN_TRAIN_ANCHORS, 4]
    (build_rpn_targets' layout). Returns {rpn_class_loss, rpn_bbox_loss}.
    """
    return {
        "rpn_class_loss": LossLayer("rpn_class", name="rpn_class_loss")(
            [rpn_match, rpn["rpn_class_logits"]]),
        "rpn_bbox_loss": LossLayer("rpn_bbox", name="rpn_bbox_loss")(
            [rpn_bbox_targets, rpn_match, rpn["rpn_bbox"]]),
    }
