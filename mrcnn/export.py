"""SavedModel export for TF Serving: pixels in, detections out.

    model = MaskRCNN("inference", config, model_dir="logs")
    model.load_weights(path, by_name=True)
    model.export("export/1")                      # or masks="full"

    python -m mrcnn.export --weights mask_rcnn_shapes_0008.h5 \
        --config samples/shapes.py:ShapesInferenceConfig --out export/1

The ``serving_default`` signature takes ``images``: uint8 [B, H, W, C] (one size per
batch, any batch size) and does everything ``MaskRCNN.detect`` does around the network,
inside the graph: resizing (utils.resize_image semantics), mean subtraction, image meta,
anchors, and unmolding back to original-image pixels. Outputs (D =
DETECTION_MAX_INSTANCES; rows at and after ``num_detections[b]`` are zero):

    boxes           int32   [B, D, 4]  (y1, x1, y2, x2) original-image pixels, y2/x2
                                        exclusive: detect()'s "rois"
    class_ids       int32   [B, D]
    scores          float32 [B, D]
    num_detections  int32   [B]
    masks           masks="small" (default): float32 [B, D, mh, mw], the mask head's
                        probabilities (MASK_SHAPE) for each box's class; paste with
                        utils.unmold_mask(masks[b, i], boxes[b, i], image.shape).
                    masks="full": bool [B, D, H, W], detect()'s masks (transposed).

Resizing reproduces skimage's bilinear ``resize`` as used by utils.resize_image (scipy's
zoom with half-pixel centres and zeros beyond the edge, clipped to the input's range,
truncated to uint8) with the same float64 operations in the same order, so the molded
image is bit-identical to mold_inputs' (checked against scikit-image 0.26 / SciPy 1.17);
mask pasting reproduces utils.unmold_mask the same way.
"""

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf

MASK_MODES = ("small", "full")
SERVING_KEYS = ("boxes", "class_ids", "scores", "num_detections", "masks")


class ExportError(ValueError):
    """An export request that cannot be honoured (existing path, unsupported config)."""


# ----------------------------------------------------------------------------- molding
def _linear_taps(positions, in_size, out_size):
    """Bilinear taps of scipy's ``zoom(order=1, grid_mode=True, mode='grid-constant')``,
    which skimage.transform.resize (and so utils.resize) calls.

    positions: float64 [..., K] output pixel indices (may lie outside [0, out_size)).
    in_size, out_size: float64 (broadcastable). Returns (i0, i1) int32 indices clamped
    into [0, in_size - 1] and (w0, w1) float64 weights, zero for taps outside the input
    (grid-constant reads zeros there). The weights are computed as scipy does (w0 = 1 - t,
    w1 = 1 - w0) so that the sums below round exactly like its C loop.
    """
    src = (positions + 0.5) * (in_size / out_size) - 0.5
    lo = tf.floor(src)
    w0 = 1.0 - (src - lo)
    w1 = 1.0 - w0
    last = in_size - 1.0
    w0 = tf.where((lo >= 0.0) & (lo <= last), w0, tf.zeros_like(w0))
    w1 = tf.where((lo + 1.0 >= 0.0) & (lo + 1.0 <= last), w1, tf.zeros_like(w1))
    top = tf.maximum(last, 0.0)
    i0 = tf.cast(tf.clip_by_value(lo, 0.0, top), tf.int32)
    i1 = tf.cast(tf.clip_by_value(lo + 1.0, 0.0, top), tf.int32)
    return i0, i1, w0, w1


def _bilinear_sum(x, rows, cols, row_axis, batch_dims, wy_shape, wx_shape):
    """Sum of the four bilinear corners in scipy's order: ((x * wy) * wx), corners
    (y0, x0), (y0, x1), (y1, x0), (y1, x1), accumulated left to right in float64."""
    i0, i1, wy0, wy1 = rows
    j0, j1, wx0, wx1 = cols
    r0 = tf.gather(x, i0, axis=row_axis, batch_dims=batch_dims)
    r1 = tf.gather(x, i1, axis=row_axis, batch_dims=batch_dims)
    wy0, wy1 = tf.reshape(wy0, wy_shape), tf.reshape(wy1, wy_shape)
    wx0, wx1 = tf.reshape(wx0, wx_shape), tf.reshape(wx1, wx_shape)

    def col(r, j):
        return tf.gather(r, j, axis=row_axis + 1, batch_dims=batch_dims)

    t = col(r0, j0) * wy0 * wx0
    t = t + col(r0, j1) * wy0 * wx1
    t = t + col(r1, j0) * wy1 * wx0
    return t + col(r1, j1) * wy1 * wx1


def resize_images_graph(images, out_h, out_w):
    """Resize a batch like utils.resize(image, (out_h, out_w), preserve_range=True) and
    the astype(uint8) that utils.resize_image applies.

    images: uint8 [B, H, W, C]. out_h, out_w: int32 scalars. Returns uint8
    [B, out_h, out_w, C]: bilinear (half-pixel centres, zeros beyond the edge) in
    float64, clipped to each image's own [min, max] over all channels (skimage's
    clip=True), truncated.
    """
    x = tf.cast(images, tf.float64)
    shape = tf.shape(images)
    in_h, in_w = tf.cast(shape[1], tf.float64), tf.cast(shape[2], tf.float64)
    rows = _linear_taps(tf.range(out_h, dtype=tf.float64), in_h,
                        tf.cast(out_h, tf.float64))
    cols = _linear_taps(tf.range(out_w, dtype=tf.float64), in_w,
                        tf.cast(out_w, tf.float64))
    x = _bilinear_sum(x, rows, cols, row_axis=1, batch_dims=0,
                      wy_shape=[1, -1, 1, 1], wx_shape=[1, 1, -1, 1])
    lo = tf.cast(tf.reduce_min(images, axis=[1, 2, 3], keepdims=True), tf.float64)
    hi = tf.cast(tf.reduce_max(images, axis=[1, 2, 3], keepdims=True), tf.float64)
    x = tf.clip_by_value(x, lo, hi)
    return tf.cast(tf.floor(x), tf.uint8)


def _python_round(x):
    """Python 3's round() (half to even) on float64 tensors, as an int32."""
    return tf.cast(tf.round(x), tf.int32)


def resize_plan_graph(h, w, config):
    """The scale and resized size utils.resize_image picks for an h x w image.

    h, w: int32 scalars. Returns (scale float64, new_h int32, new_w int32), following
    resize_image's rules for config.IMAGE_RESIZE_MODE ("none", "square", "pad64").
    """
    mode = config.IMAGE_RESIZE_MODE
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    scale = tf.constant(1.0, tf.float64)
    if mode == "none":
        return scale, h, w
    min_dim, max_dim = config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM
    if min_dim:
        scale = tf.maximum(tf.constant(1.0, tf.float64),
                           float(min_dim) / tf.minimum(hf, wf))
    if config.IMAGE_MIN_SCALE:
        scale = tf.maximum(scale, tf.constant(float(config.IMAGE_MIN_SCALE), tf.float64))
    if max_dim and mode == "square":
        image_max = tf.maximum(hf, wf)
        too_big = _python_round(image_max * scale) > max_dim
        scale = tf.where(too_big, float(max_dim) / image_max, scale)
    return scale, _python_round(hf * scale), _python_round(wf * scale)


def mold_images_graph(images, config):
    """Graph version of MaskRCNN.mold_inputs for a batch of same-size images.

    images: uint8 [B, H, W, C]. Returns (molded float32 [B, h, w, C], image_metas float32
    [B, IMAGE_META_SIZE], windows int32 [B, 4]) equal to mold_inputs' (see the module
    docstring for the resizing tolerance). Modes: "square", "pad64", "none".
    """
    mode = config.IMAGE_RESIZE_MODE
    if mode not in ("square", "pad64", "none"):
        raise ExportError("IMAGE_RESIZE_MODE = {!r} cannot be exported: 'crop' takes a "
                          "random crop; export with 'square', 'pad64' or 'none'".format(mode))
    shape = tf.shape(images)
    batch, h, w, c = shape[0], shape[1], shape[2], shape[3]
    scale, new_h, new_w = resize_plan_graph(h, w, config)
    resized = resize_images_graph(images, new_h, new_w)
    if mode == "square":
        frame_h = frame_w = tf.constant(int(config.IMAGE_MAX_DIM), tf.int32)
    elif mode == "pad64":
        frame_h = new_h + tf.math.floormod(-new_h, 64)
        frame_w = new_w + tf.math.floormod(-new_w, 64)
    else:
        frame_h, frame_w = new_h, new_w
    top = (frame_h - new_h) // 2
    left = (frame_w - new_w) // 2
    resized = tf.pad(resized, [[0, 0], [top, frame_h - new_h - top],
                               [left, frame_w - new_w - left], [0, 0]])
    if mode == "square":
        resized.set_shape([None, config.IMAGE_MAX_DIM, config.IMAGE_MAX_DIM,
                           config.IMAGE_CHANNEL_COUNT])
    molded = tf.cast(resized, tf.float32) - tf.constant(
        np.asarray(config.MEAN_PIXEL, np.float32))

    window = tf.stack([top, left, top + new_h, left + new_w])
    meta = tf.concat([
        tf.zeros([1], tf.float32),                               # image_id
        tf.cast(tf.stack([h, w, c, frame_h, frame_w, c]), tf.float32),
        tf.cast(window, tf.float32),
        tf.cast(scale, tf.float32)[None],
        tf.zeros([config.NUM_CLASSES], tf.float32),              # active_class_ids
    ], axis=0)
    metas = tf.tile(meta[None], [batch, 1])
    windows = tf.tile(window[None], [batch, 1])
    return molded, metas, windows


# ----------------------------------------------------------------------------- unmolding
def unmold_detections_graph(detections, mrcnn_mask, original_hw, frame_hw, window):
    """Batched graph version of inference.unmold_detections, without the pasting.

    detections: [B, D, 6] (y1, x1, y2, x2 normalised in the molded frame, class, score),
    zero padded. mrcnn_mask: [B, D, mh, mw, NUM_CLASSES]. original_hw, frame_hw: int32 [2].
    window: int32 [4] pixels of the image inside the frame.
    Returns boxes int32 [B, D, 4] (original pixels), class_ids int32 [B, D], scores
    float32 [B, D], masks float32 [B, D, mh, mw], num_detections int32 [B]: the kept
    detections (before the first padding row, non-zero area) moved to the front in their
    order, the rest zero. The arithmetic follows numpy's dtypes step by step, so boxes
    round exactly as in detect().
    """
    detections = tf.cast(detections, tf.float32)
    boxes = detections[..., :4]
    class_f = detections[..., 4]
    class_ids = tf.cast(class_f, tf.int32)
    scores = detections[..., 5]

    # numpy: norm_boxes(window) is float64 maths cast to float32; then float32 shifts.
    frame = tf.cast(frame_hw, tf.float64)
    scale = tf.stack([frame[0] - 1.0, frame[1] - 1.0, frame[0] - 1.0, frame[1] - 1.0])
    unit = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float64)
    win = tf.cast((tf.cast(window, tf.float64) - unit) / scale, tf.float32)
    shift = tf.stack([win[0], win[1], win[0], win[1]])
    wh, ww = win[2] - win[0], win[3] - win[1]
    boxes = (boxes - shift) / tf.stack([wh, ww, wh, ww])
    orig = tf.cast(original_hw, tf.float64)
    oscale = tf.stack([orig[0] - 1.0, orig[1] - 1.0, orig[0] - 1.0, orig[1] - 1.0])
    boxes = tf.cast(tf.round(tf.cast(boxes, tf.float64) * oscale + unit), tf.int32)

    # Rows up to the first class-0 row, with a non-zero (signed) area, as numpy does.
    prefix = tf.cast(tf.math.cumprod(tf.cast(class_f != 0.0, tf.int32), axis=1), tf.bool)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    keep = prefix & (area > 0)
    # Stable sort puts kept rows first, in their original order.
    order = tf.argsort(tf.cast(tf.logical_not(keep), tf.int32), axis=1, stable=True)
    keep = tf.gather(keep, order, batch_dims=1)
    keep_f = tf.cast(keep, tf.float32)
    keep_i = tf.cast(keep, tf.int32)

    masks = tf.transpose(tf.cast(mrcnn_mask, tf.float32), [0, 1, 4, 2, 3])
    masks = tf.gather(masks, tf.maximum(class_ids, 0), batch_dims=2)   # [B, D, mh, mw]
    boxes = tf.gather(boxes, order, batch_dims=1) * keep_i[..., None]
    class_ids = tf.gather(class_ids, order, batch_dims=1) * keep_i
    scores = tf.gather(scores, order, batch_dims=1) * keep_f
    masks = tf.gather(masks, order, batch_dims=1) * keep_f[..., None, None]
    num = tf.reduce_sum(keep_i, axis=1)
    return boxes, class_ids, scores, masks, num


def paste_masks_graph(masks, boxes, height, width, threshold=0.5):
    """Graph version of utils.unmold_mask for many masks at once.

    masks: float [N, mh, mw] in [0, 1]. boxes: int32 [N, 4] (y1, x1, y2, x2) pixels,
    y2/x2 exclusive. height, width: int32 scalars of the image. Returns bool [N, height,
    width]: each mask resized bilinearly to its box (skimage semantics, clipped to the
    mask's own range) and thresholded at ``threshold``; parts outside the image are cut
    off, empty boxes give empty masks.
    """
    masks = tf.cast(masks, tf.float32)
    mh = tf.cast(tf.shape(masks)[1], tf.float64)
    mw = tf.cast(tf.shape(masks)[2], tf.float64)
    b = tf.cast(boxes, tf.float64)

    def taps(lo, hi, size, m):
        # Pixel index inside the box for every image row (or column).
        pos = tf.range(size, dtype=tf.float64)[None, :] - lo[:, None]
        extent = hi - lo
        inside = (pos >= 0.0) & (pos < extent[:, None])
        i0, i1, w0, w1 = _linear_taps(pos, m, tf.maximum(extent, 1.0)[:, None])
        return i0, i1, w0, w1, inside

    ry0, ry1, wy0, wy1, in_y = taps(b[:, 0], b[:, 2], height, mh)
    cx0, cx1, wx0, wx1, in_x = taps(b[:, 1], b[:, 3], width, mw)
    # skimage keeps float32 masks float32: scipy sums in float64, stores float32, and the
    # range clip and threshold happen in float32.
    full = _bilinear_sum(tf.cast(masks, tf.float64), (ry0, ry1, wy0, wy1),
                         (cx0, cx1, wx0, wx1), row_axis=1, batch_dims=1,
                         wy_shape=tf.stack([-1, height, 1]),
                         wx_shape=tf.stack([-1, 1, width]))
    full = tf.cast(full, tf.float32)                                   # [N, H, W]
    lo = tf.reduce_min(masks, axis=[1, 2])[:, None, None]
    hi = tf.reduce_max(masks, axis=[1, 2])[:, None, None]
    full = tf.clip_by_value(full, lo, hi)
    inside = in_y[:, :, None] & in_x[:, None, :]
    return (full >= threshold) & inside


# ----------------------------------------------------------------------------- module
class _Holder(object):
    """Keeps a reference out of tf.Module's object tracking."""

    def __init__(self, model):
        self.model = model


class ServingModule(tf.Module):
    """tf.Module around an inference keras_model with one ``serve`` tf.function.

    keras_model: the inference functional model (MaskRCNN.keras_model). config: its Config.
    masks: "small" or "full" (see the module docstring).
    """

    def __init__(self, keras_model, config, masks="small"):
        super().__init__(name="mask_rcnn_serving")
        if masks not in MASK_MODES:
            raise ExportError("masks must be one of {}, got {!r}".format(MASK_MODES, masks))
        if config.IMAGE_RESIZE_MODE not in ("square", "pad64", "none"):
            raise ExportError(
                "{}.IMAGE_RESIZE_MODE = {!r} cannot be exported: 'crop' takes a random "
                "crop; use 'square', 'pad64' or 'none' for inference".format(
                    type(config).__name__, config.IMAGE_RESIZE_MODE))
        # Only the variables are tracked (the Keras model itself sits in a plain holder):
        # saving then skips Keras's own object graph, which is slow and not needed.
        self._holder = _Holder(keras_model)
        self.model_variables = list(keras_model.variables)
        self._config = config
        self.mask_mode = masks
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec(
                [None, None, None, config.IMAGE_CHANNEL_COUNT], tf.uint8, name="images")])

    def _serve(self, images):
        config = self._config
        molded, metas, windows = mold_images_graph(images, config)
        outputs = self._holder.model([molded, metas], training=False)
        detections, mrcnn_mask = outputs[0], outputs[3]
        original_hw = tf.shape(images)[1:3]
        frame_hw = tf.shape(molded)[1:3]
        boxes, class_ids, scores, masks, num = unmold_detections_graph(
            detections, mrcnn_mask, original_hw, frame_hw, windows[0])
        if self.mask_mode == "full":
            masks = self._full_masks(masks, boxes, num, original_hw)
        return {"boxes": boxes, "class_ids": class_ids, "scores": scores,
                "num_detections": num, "masks": masks}

    @staticmethod
    def _full_masks(masks, boxes, num, original_hw):
        """Paste only the valid detections' masks; padding rows stay empty."""
        shape = tf.shape(masks)
        batch, d = shape[0], shape[1]
        valid = tf.range(d)[None, :] < num[:, None]                         # [B, D]
        index = tf.where(valid)                                             # [n, 2]
        pasted = paste_masks_graph(tf.gather_nd(masks, index), tf.gather_nd(boxes, index),
                                   original_hw[0], original_hw[1])
        out_shape = tf.cast(tf.stack([batch, d, original_hw[0], original_hw[1]]), tf.int64)
        full = tf.scatter_nd(index, tf.cast(pasted, tf.uint8), out_shape)
        return tf.cast(full, tf.bool)


def _config_json(config, masks):
    """The config's values and the export's settings, JSON-serialisable."""
    def plain(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if callable(v):
            return getattr(v, "__name__", repr(v))
        return v
    return json.dumps({"config_class": type(config).__name__, "masks": masks,
                       "outputs": list(SERVING_KEYS),
                       "config": {k: plain(v) for k, v in config.to_dict().items()}},
                      indent=1, sort_keys=True)


def export_saved_model(model, path, masks="small"):
    """Write a SavedModel for TF Serving with a ``serving_default`` signature.

    model: a MaskRCNN in inference mode (or anything with ``keras_model``, ``config`` and
    ``mode`` attributes). path: directory to create; it must not exist (ExportError
    otherwise: an export is never overwritten). masks: "small" or "full".
    The model is written to a temporary sibling directory and renamed into place, so
    ``path`` never holds a half-written export. Also writes
    ``assets.extra/mrcnn_config.json`` (the config's values and the mask mode; TF Serving
    ignores that folder). Returns ``path``.
    """
    path = os.fspath(path)
    if os.path.lexists(path):
        raise ExportError("export path {} already exists: refusing to overwrite it; choose "
                          "a new directory (TF Serving expects <model>/<version>/)".format(path))
    if getattr(model, "mode", "inference") != "inference":
        raise ExportError("export needs a MaskRCNN built in 'inference' mode (got {!r}): "
                          "create one with the same config and load the trained weights "
                          "by name".format(model.mode))
    config = model.config
    module = ServingModule(model.keras_model, config, masks=masks)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".tmp-", dir=parent)
    try:
        target = os.path.join(tmp, "model")
        tf.saved_model.save(module, target, signatures={"serving_default": module.serve})
        extra = os.path.join(target, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "mrcnn_config.json"), "w") as f:
            f.write(_config_json(config, masks))
        if os.path.lexists(path):
            raise ExportError("export path {} appeared while exporting: not "
                              "overwritten".format(path))
        os.rename(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------- CLI
def load_config_class(spec):
    """'package.module:ClassName' or 'path/to/file.py:ClassName' -> the class."""
    if ":" not in spec:
        raise ValueError("--config must look like module:ClassName or file.py:ClassName, "
                         "got {!r}".format(spec))
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") or os.sep in where:
        if not os.path.isfile(where):
            raise FileNotFoundError("--config: no file {}".format(where))
        mod_name = "_mrcnn_export_config_" + os.path.splitext(os.path.basename(where))[0]
        spec_ = importlib.util.spec_from_file_location(mod_name, where)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module
        spec_.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, name):
        raise ValueError("--config: {} has no class {}".format(where, name))
    return getattr(module, name)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn.export",
        description="Export Mask R-CNN weights as a SavedModel for TF Serving.")
    parser.add_argument("--weights", required=True, help="Keras-2-layout .h5 weight file")
    parser.add_argument("--config", required=True,
                        help="Config class: package.module:ClassName or file.py:ClassName")
    parser.add_argument("--out", required=True, help="new directory for the SavedModel")
    parser.add_argument("--masks", choices=MASK_MODES, default="small",
                        help="small: mask-head probabilities per box (default); "
                             "full: boolean masks of the image size")
    args = parser.parse_args(argv)

    from mrcnn.config import Config
    from mrcnn.model import MaskRCNN

    if os.path.lexists(args.out):
        parser.error("--out {} already exists: refusing to overwrite it".format(args.out))
    cls = load_config_class(args.config)
    if not (isinstance(cls, type) and issubclass(cls, Config)):
        parser.error("--config {} is not a mrcnn.config.Config subclass".format(args.config))
    config = cls()
    # Export runs on one device whatever GPU_COUNT says.
    model = MaskRCNN("inference", config, model_dir=tempfile.gettempdir(),
                     strategy=tf.distribute.get_strategy())
    report = model.load_weights(args.weights, by_name=True, verbose=0)
    print(report.summary() if hasattr(report, "summary") else report)
    export_saved_model(model, args.out, masks=args.masks)
    print("SavedModel written to {} (signature serving_default: uint8 images [B, H, W, {}] "
          "-> {}; masks={})".format(args.out, config.IMAGE_CHANNEL_COUNT,
                                    ", ".join(SERVING_KEYS), args.masks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
