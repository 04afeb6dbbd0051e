"""Export-friendly forms of the serving graph's pieces, for ONNX (tf2onnx) and TFLite.

The inference graph uses ops that either do not convert or convert with other semantics:

- ``CombinedNonMaxSuppression`` (proposal and detection NMS): no TFLite builtin; tf2onnx
  converts it, but ties between equal scores come out in another order.
- ``CropAndResize`` (PyramidROIAlign): no TFLite builtin; tf2onnx's conversion samples
  differently (masks off by up to 0.15 on a random-weight model).
- float64 arithmetic (the skimage-exact resizing and unmolding in mrcnn.preprocess),
  ``Cumprod`` and a stable ``argsort``: not TFLite builtins.

``portable_layers(keras_model)`` swaps, for the time of a trace only, the ``call`` of the
model's ProposalLayer, PyramidROIAlign and DetectionLayer instances for versions computing
the same result from plainer ops: single-image NonMaxSuppressionV5 in a loop over the
batch (per class for the detections, then top-k), ROI align as a gather of the four
bilinear corners with crop_and_resize's sample positions; and Winograd convolutions
(mrcnn.winograd.Conv3x3) compute directly. The training graph and
``detect()`` never see them (the swap is undone when the trace ends).

``mold_images_f32`` / ``unmold_detections_f32`` are float32 twins of
mrcnn.preprocess.mold_images_graph / unmold_detections_graph for TFLite, whose builtins
have no float64: pixels may differ by one grey level from detect()'s after a resize
(none without one), boxes by a pixel where a coordinate rounds at .5.
"""

import contextlib
import types

import numpy as np
import tensorflow as tf

from mrcnn.boxes import norm_boxes_graph
from mrcnn.preprocess import (FRAME_MULTIPLE, GRAPH_RESIZE_MODES, compose_image_meta_graph,
                              linear_taps_graph, parse_image_meta_graph)
from mrcnn.roi_heads import roi_pyramid_level


# ----------------------------------------------------------------------------- NMS
# TF's NonMaxSuppression gives a box of zero area IoU 0 with everything: it is never
# suppressed and suppresses nothing. TFLite's NON_MAX_SUPPRESSION_V5 kernel (TF 2.21)
# selects such a box over and over (indices [0, 4, 4, 4] where TF gives [0, 4, 3]), and
# proposals clipped to the image edge are often flat. So flat boxes stay out of the NMS
# op and join its selection afterwards, in score order: the same result as TF's.
def _flat(boxes):
    """Zero-area boxes, by the area test of TF's NMS (corners in any order)."""
    h = tf.abs(boxes[..., 2] - boxes[..., 0])
    w = tf.abs(boxes[..., 3] - boxes[..., 1])
    return h * w <= 0.0


def _nms_one(boxes, scores, max_out, iou_threshold, score_threshold):
    """Greedy NMS of one image: (indices [max_out] int32 zero padded, valid count)."""
    out = tf.raw_ops.NonMaxSuppressionV5(
        boxes=boxes, scores=scores, max_output_size=max_out, iou_threshold=iou_threshold,
        score_threshold=score_threshold, soft_nms_sigma=0.0, pad_to_max_output_size=True)
    return out[0], out[2]


def proposal_nms_portable(boxes, proposal_count, nms_threshold):
    """rpn.proposal_nms with one NonMaxSuppressionV5 per image: [B, N, 4] boxes in
    descending score order -> [B, proposal_count, 4], zero padded. Greedy NMS visits the
    boxes in input order (rank scores, as there); flat boxes are all kept."""
    real = tf.shape(boxes)[1]
    # Fewer boxes than proposals (a tiny image): zero rows, ranked 0, fill the output.
    boxes = tf.pad(boxes, [[0, 0], [0, tf.maximum(proposal_count - real, 0)], [0, 0]])
    count = tf.shape(boxes)[1]
    rank = tf.cast(tf.range(count, 0, -1), tf.float32)
    rank = tf.where(tf.range(count) < real, rank, tf.zeros_like(rank))

    def one(b):
        flat = _flat(b)
        # Rank scores are >= 1, flat boxes get -1: a 0 threshold leaves them out.
        index, valid = _nms_one(b, tf.where(flat, -tf.ones_like(rank), rank),
                                proposal_count, nms_threshold, 0.0)
        picked = tf.reduce_sum(tf.one_hot(index, count) * tf.expand_dims(tf.cast(
            tf.range(proposal_count) < valid, tf.float32), 1), axis=0)
        kept = (picked > 0.0) | flat
        # The first proposal_count kept boxes in input order: distinct keys, kept above 0.
        top = tf.math.top_k(tf.where(kept, rank, tf.zeros_like(rank)), proposal_count)
        live = tf.expand_dims(tf.cast(top.values > 0.0, tf.float32), 1)
        return tf.gather(b, top.indices) * live

    return tf.map_fn(one, boxes, fn_output_signature=tf.TensorSpec(
        [proposal_count, 4], tf.float32))


def detection_nms_portable(boxes, class_ids, scores, num_classes, max_instances,
                           nms_threshold):
    """DetectionLayer's combined NMS as per-class NonMaxSuppressionV5 then top-k.

    boxes [B, N, 4], class_ids [B, N] int32, scores [B, N] (0 for dropped ROIs).
    Returns [B, D, 6] rows (y1, x1, y2, x2, class_id, score) by descending score, zero
    padded. Like combined_non_max_suppression with score_threshold 0: only scores > 0
    take part, each ROI only in its own class; flat boxes are never suppressed.
    """
    def one(args):
        b, c, s = args
        flat = _flat(b)
        # Flat boxes bypass the NMS: candidates as they are (-1: not a candidate).
        cand_index = [tf.range(tf.shape(b)[0])]
        cand_score = [tf.where(flat & (s > 0.0), s, -tf.ones_like(s))]
        cand_class = [c]
        for k in range(1, num_classes):          # static: one NMS per foreground class
            sk = tf.where(tf.equal(c, k) & tf.logical_not(flat), s, tf.zeros_like(s))
            index, valid = _nms_one(b, sk, max_instances, nms_threshold, 0.0)
            live = tf.range(max_instances) < valid
            picked = tf.gather(sk, index)
            cand_index.append(index)
            # -1 marks padding: below every real (positive) score in the top-k.
            cand_score.append(tf.where(live, picked, -tf.ones_like(picked)))
            cand_class.append(tf.fill([max_instances], k))
        cand_index = tf.concat(cand_index, 0)
        cand_score = tf.concat(cand_score, 0)
        cand_class = tf.concat(cand_class, 0)
        top = tf.math.top_k(cand_score, max_instances, sorted=True)
        live = tf.cast(top.values > 0.0, tf.float32)[:, None]
        rows = tf.concat([tf.gather(b, tf.gather(cand_index, top.indices)),
                          tf.cast(tf.gather(cand_class, top.indices), tf.float32)[:, None],
                          top.values[:, None]], axis=1)
        return rows * live

    return tf.map_fn(one, (boxes, class_ids, scores),
                     fn_output_signature=tf.TensorSpec([max_instances, 6], tf.float32))


# ----------------------------------------------------------------------------- ROI align
def _axis_samples(lo, hi, size, crop, zero):
    """crop_and_resize's sample positions along one axis: lo, hi [..., 1] normalised box
    edges, size the feature map's extent (float32 [..., 1]), crop the sample count, zero
    a float32 0 that no converter can fold. Returns (index0, index1 int32 clamped, lerp,
    inside) each [..., crop].

    A box edge at 1.0 puts the last sample exactly on the last pixel in exact arithmetic;
    crop_and_resize decides inside/outside on its float32 rounding (outside: a zero
    row). The same operations in the same order round the same in ONNX Runtime and TFLite,
    provided no converter rewrites the division by a constant as a product by its
    reciprocal: ``zero`` keeps the divisor a run-time value."""
    if crop > 1:
        step = (hi - lo) * (size - 1.0) / (float(crop - 1) + zero)
        pos = lo * (size - 1.0) + tf.range(crop, dtype=tf.float32) * step
    else:
        pos = 0.5 * (lo + hi) * (size - 1.0) + tf.zeros([crop], tf.float32)
    inside = (pos >= 0.0) & (pos <= size - 1.0)
    top = tf.floor(pos)
    lerp = pos - top
    last = tf.cast(size, tf.int32) - 1
    i0 = tf.clip_by_value(tf.cast(top, tf.int32), 0, last)
    i1 = tf.clip_by_value(tf.cast(tf.math.ceil(pos), tf.int32), 0, last)
    return i0, i1, lerp, inside


def roi_align_portable(layer, inputs):
    """PyramidROIAlign.call by gathers: the same level rule, then crop_and_resize's
    bilinear samples read from the four corners of every sample in one flattened table of
    all levels (no CropAndResize, no per-level grouping and inverse permutation)."""
    boxes = tf.stop_gradient(tf.cast(inputs[0], tf.float32))
    image_meta, feature_maps = inputs[1], inputs[2:]
    out_dtype = feature_maps[0].dtype
    level = roi_pyramid_level(boxes, image_meta) - 2                  # [B, N] in 0..3

    shape = tf.shape(boxes)
    batch, num = shape[0], shape[1]
    channels = feature_maps[0].shape[-1]
    heights = tf.stack([tf.shape(f)[1] for f in feature_maps])
    widths = tf.stack([tf.shape(f)[2] for f in feature_maps])
    sizes = heights * widths
    offsets = tf.concat([[0], tf.cumsum(sizes)[:-1]], 0)
    total = tf.reduce_sum(sizes)
    table = tf.concat([tf.reshape(tf.cast(f, tf.float32), [batch, -1, channels])
                       for f in feature_maps], axis=1)
    table = tf.reshape(table, [-1, channels])                   # [B * total, C]

    # (TFLite's StridedSlice takes no new axis beside an ellipsis: expand_dims below.)
    fh = tf.expand_dims(tf.cast(tf.gather(heights, level), tf.float32), -1)  # [B, N, 1]
    fw = tf.expand_dims(tf.gather(widths, level), -1)
    base = tf.expand_dims(tf.gather(offsets, level) + tf.expand_dims(
        tf.range(batch) * total, 1), -1)
    s = layer.sampling_ratio
    ch, cw = layer.pool_shape[0] * s, layer.pool_shape[1] * s
    zero = tf.cast(tf.minimum(batch, 0), tf.float32)
    y0, y1, ly, in_y = _axis_samples(boxes[:, :, 0:1], boxes[:, :, 2:3], fh, ch, zero)
    x0, x1, lx, in_x = _axis_samples(boxes[:, :, 1:2], boxes[:, :, 3:4],
                                     tf.cast(fw, tf.float32), cw, zero)

    def corner(yi, xi):
        index = (tf.expand_dims(base, -1) + tf.expand_dims(yi, -1) * tf.expand_dims(fw, -1)
                 + tf.expand_dims(xi, 2))                       # [B, N, ch, cw]
        return tf.gather(table, index)                          # [B, N, ch, cw, C]

    lx = tf.expand_dims(tf.expand_dims(lx, 2), -1)              # [B, N, 1, cw, 1]
    top = corner(y0, x0)
    top = top + (corner(y0, x1) - top) * lx
    bottom = corner(y1, x0)
    bottom = bottom + (corner(y1, x1) - bottom) * lx
    crops = top + (bottom - top) * tf.expand_dims(tf.expand_dims(ly, -1), -1)
    inside = tf.cast(tf.expand_dims(in_y, -1) & tf.expand_dims(in_x, 2), tf.float32)
    crops = crops * tf.expand_dims(inside, -1)        # extrapolation_value 0 outside
    if s > 1:
        flat = tf.reshape(crops, [-1, ch, cw, channels])
        flat = tf.nn.avg_pool2d(flat, ksize=s, strides=s, padding="VALID")
        crops = tf.reshape(flat, [batch, num, layer.pool_shape[0], layer.pool_shape[1],
                                  channels])
    return tf.cast(crops, out_dtype)


# ----------------------------------------------------------------------------- layer swap
def _proposal_call(layer, inputs):
    return proposal_nms_portable(layer.top_boxes(inputs), layer.proposal_count,
                                 layer.nms_threshold)


def _detection_call(layer, inputs):
    rois, probs, deltas, image_meta = (tf.cast(x, tf.float32) for x in inputs)
    meta = parse_image_meta_graph(image_meta)
    window = norm_boxes_graph(meta["window"], meta["image_shape"][0, :2])
    boxes, class_ids, scores = layer.candidates(rois, probs, deltas, window)
    return detection_nms_portable(boxes, class_ids, scores, int(probs.shape[-1]),
                                  layer.max_instances, layer.nms_threshold)


def _roi_align_call(layer, inputs):
    return roi_align_portable(layer, inputs)


def _direct_conv_call(layer, inputs, training=None):
    # Conv2D's own call: the converters constant-fold the Winograd tile gathers into
    # feature-map-sized tables (+200 MB at 1024 px), and ONNX Runtime and TFLite have
    # fast direct convolutions of their own.
    import keras
    # Conv2D.call would come back to Conv3x3.convolution_op (Winograd): call the base op.
    outputs = keras.layers.Conv2D.convolution_op(layer, inputs, layer.kernel)
    if layer.use_bias:
        outputs = tf.nn.bias_add(outputs, layer.bias)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def _replacements():
    from mrcnn.roi_heads import DetectionLayer, PyramidROIAlign
    from mrcnn.rpn import ProposalLayer
    from mrcnn.winograd import Conv3x3
    return ((ProposalLayer, _proposal_call), (PyramidROIAlign, _roi_align_call),
            (DetectionLayer, _detection_call), (Conv3x3, _direct_conv_call))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


@contextlib.contextmanager
def portable_layers(keras_model):
    """Within the block, calls of ``keras_model`` (traced in a tf.function) use the
    export-friendly ProposalLayer, PyramidROIAlign and DetectionLayer; restored after."""
    replaced = []
    table = _replacements()
    try:
        for layer in _all_layers(keras_model):
            for cls, fn in table:
                if isinstance(layer, cls):
                    # An instance attribute shadows the class's call for this object only.
                    object.__setattr__(layer, "call", types.MethodType(fn, layer))
                    replaced.append(layer)
                    break
        yield replaced
    finally:
        for layer in replaced:
            object.__delattr__(layer, "call")


# ----------------------------------------------------------------------------- float32 pre/post
# A float32 bilinear sum lands a hair below an integer that float64 hits exactly (flat
# regions); the nudge before truncation keeps those pixels on the integer.
_TRUNC_EPS = 1e-3


def _taps_f32(out_size, in_size):
    """preprocess.linear_taps_graph in float32 over arange(out_size)."""
    return linear_taps_graph(tf.range(out_size, dtype=tf.float32), in_size,
                             tf.cast(out_size, tf.float32))


def _resize_f32(x, out_h, out_w):
    """preprocess.resize_images_graph in float32 (x float32 [B, H, W, C] of uint8 values)."""
    shape = tf.shape(x)
    i0, i1, wy0, wy1 = _taps_f32(out_h, tf.cast(shape[1], tf.float32))
    j0, j1, wx0, wx1 = _taps_f32(out_w, tf.cast(shape[2], tf.float32))
    r0, r1 = tf.gather(x, i0, axis=1), tf.gather(x, i1, axis=1)
    wy0, wy1 = tf.reshape(wy0, [1, -1, 1, 1]), tf.reshape(wy1, [1, -1, 1, 1])
    wx0, wx1 = tf.reshape(wx0, [1, 1, -1, 1]), tf.reshape(wx1, [1, 1, -1, 1])
    t = tf.gather(r0, j0, axis=2) * wy0 * wx0
    t = t + tf.gather(r0, j1, axis=2) * wy0 * wx1
    t = t + tf.gather(r1, j0, axis=2) * wy1 * wx0
    t = t + tf.gather(r1, j1, axis=2) * wy1 * wx1
    lo = tf.reduce_min(x, axis=[1, 2, 3], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)
    return tf.floor(tf.clip_by_value(t + _TRUNC_EPS, lo, hi))


def mold_images_f32(images, config):
    """mold_images_graph in float32 (same outputs; see the module docstring)."""
    mode = config.IMAGE_RESIZE_MODE
    if mode not in GRAPH_RESIZE_MODES:
        raise ValueError("IMAGE_RESIZE_MODE = {!r} cannot be molded in the graph".format(mode))
    channels = config.IMAGE_CHANNEL_COUNT
    shape = tf.shape(images)
    batch, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    x = tf.cast(images, tf.float32)
    scale = tf.constant(1.0)
    new_h, new_w = h, w
    if mode != "none":
        if config.IMAGE_MIN_DIM:
            scale = tf.maximum(1.0, float(config.IMAGE_MIN_DIM) / tf.minimum(hf, wf))
        if config.IMAGE_MIN_SCALE:
            scale = tf.maximum(scale, float(config.IMAGE_MIN_SCALE))
        if config.IMAGE_MAX_DIM and mode == "square":
            image_max = tf.maximum(hf, wf)
            too_big = tf.round(image_max * scale) > float(config.IMAGE_MAX_DIM)
            scale = tf.where(too_big, float(config.IMAGE_MAX_DIM) / image_max, scale)
        new_h = tf.cast(tf.round(hf * scale), tf.int32)
        new_w = tf.cast(tf.round(wf * scale), tf.int32)
        # At scale 1 the taps are exactly (1, 0): the resize is then the identity.
        x = _resize_f32(x, new_h, new_w)
    if mode == "square":
        pad_h = int(config.IMAGE_MAX_DIM) - new_h
        pad_w = int(config.IMAGE_MAX_DIM) - new_w
    elif mode == "pad64":
        pad_h, pad_w = tf.math.floormod(-new_h, FRAME_MULTIPLE), tf.math.floormod(
            -new_w, FRAME_MULTIPLE)
    else:
        pad_h = pad_w = tf.constant(0, tf.int32)
    top, left = pad_h // 2, pad_w // 2
    x = tf.pad(x, [[0, 0], [top, pad_h - top], [left, pad_w - left], [0, 0]])
    # mold_image subtracts in float64, then rounds: the float32 mean plus its float64
    # remainder, subtracted one after the other, round the same in all but rare cases.
    mean = np.asarray(config.MEAN_PIXEL, np.float64)
    mean_hi = mean.astype(np.float32)
    mean_lo = (mean - mean_hi.astype(np.float64)).astype(np.float32)
    molded = (x - tf.constant(mean_hi)) - tf.constant(mean_lo)
    padded_h, padded_w = new_h + pad_h, new_w + pad_w
    frame_h = padded_h + tf.math.floormod(-padded_h, FRAME_MULTIPLE)
    frame_w = padded_w + tf.math.floormod(-padded_w, FRAME_MULTIPLE)
    molded = tf.pad(molded, [[0, 0], [0, frame_h - padded_h], [0, frame_w - padded_w],
                             [0, 0]])
    # The converter infers shapes from the ops (set_shape is not one, EnsureShape is no
    # TFLite builtin): a reshape to the known sizes tells Conv2D its input channels.
    if mode == "square":
        side = int(config.IMAGE_MAX_DIM)
        molded = tf.reshape(molded, [-1, side, side, channels])
    else:
        molded = tf.reshape(molded, tf.stack([batch, frame_h, frame_w, channels]))
    window = tf.stack([top, left, top + new_h, left + new_w])
    meta = compose_image_meta_graph(0, tf.stack([h, w, channels]),
                                    tf.stack([frame_h, frame_w, channels]), window, scale,
                                    tf.zeros([config.NUM_CLASSES]))
    return molded, tf.tile(meta[None], [batch, 1]), tf.tile(window[None], [batch, 1])


def unmold_detections_f32(detections, mrcnn_mask, original_hw, frame_hw, window):
    """unmold_detections_graph in float32, without Cumprod and a stable argsort."""
    detections = tf.cast(detections, tf.float32)
    class_f = detections[..., 4]
    class_ids = tf.cast(class_f, tf.int32)
    scores = detections[..., 5]
    frame = tf.cast(frame_hw, tf.float32)
    win = (tf.cast(window, tf.float32) - [0.0, 0.0, 1.0, 1.0]) / tf.stack(
        [frame[0] - 1.0, frame[1] - 1.0, frame[0] - 1.0, frame[1] - 1.0])
    shift = tf.stack([win[0], win[1], win[0], win[1]])
    wh, ww = win[2] - win[0], win[3] - win[1]
    boxes = (detections[..., :4] - shift) / tf.stack([wh, ww, wh, ww])
    orig = tf.cast(original_hw, tf.float32)
    boxes = tf.cast(tf.round(boxes * tf.stack([orig[0] - 1.0, orig[1] - 1.0, orig[0] - 1.0,
                                               orig[1] - 1.0]) + [0.0, 0.0, 1.0, 1.0]),
                    tf.int32)
    # Rows before the first class-0 row (a running count of zeros stays 0), area > 0.
    prefix = tf.equal(tf.cumsum(tf.cast(tf.equal(class_ids, 0), tf.int32), axis=1), 0)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    keep = prefix & (area > 0)
    # Kept rows first in their order: distinct keys, kept ones all above the others.
    d = tf.shape(class_ids)[1]
    key = tf.cast(tf.range(d, 0, -1), tf.float32)[None] + tf.cast(keep, tf.float32) * \
        tf.cast(d, tf.float32)
    order = tf.math.top_k(key, d, sorted=True).indices
    keep = tf.gather(keep, order, batch_dims=1)
    keep_f = tf.cast(keep, tf.float32)
    keep_i = tf.cast(keep, tf.int32)
    masks = tf.transpose(tf.cast(mrcnn_mask, tf.float32), [0, 1, 4, 2, 3])
    masks = tf.gather(masks, tf.maximum(class_ids, 0), batch_dims=2)
    boxes = tf.gather(boxes, order, batch_dims=1) * keep_i[..., None]
    class_ids = tf.gather(class_ids, order, batch_dims=1) * keep_i
    scores = tf.gather(scores, order, batch_dims=1) * keep_f
    masks = tf.gather(masks, order, batch_dims=1) * keep_f[..., None, None]
    return boxes, class_ids, scores, masks, tf.reduce_sum(keep_i, axis=1)
