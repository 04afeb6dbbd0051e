"""SavedModel export for TF Serving: pixels in, detections out.

    model = MaskRCNN("inference", config, model_dir="logs")
    model.load_weights(path, by_name=True)
    model.export("export/1")                      # or masks="full"

    python -m mrcnn export --weights mask_rcnn_shapes_0008.h5 \
        --config samples/shapes.py:ShapesInferenceConfig --out export/1

The ``serving_default`` signature takes ``images``: uint8 [B, H, W, C] (one size per
batch, any batch size) and does everything ``MaskRCNN.detect`` does around the network,
inside the graph, with the graph twins of detect()'s own functions (mrcnn.preprocess):
resizing and molding (mold_images_graph: bit-identical to mold_inputs), image meta,
anchors, and unmolding back to original-image pixels (unmold_detections_graph,
paste_masks_graph). Outputs (D = DETECTION_MAX_INSTANCES; rows at and after
``num_detections[b]`` are zero):

    boxes           int32   [B, D, 4]  (y1, x1, y2, x2) original-image pixels, y2/x2
                                        exclusive: detect()'s "rois"
    class_ids       int32   [B, D]
    scores          float32 [B, D]
    num_detections  int32   [B]
    masks           masks="small" (default): float32 [B, D, mh, mw], the mask head's
                        probabilities (MASK_SHAPE) for each box's class; paste with
                        utils.unmold_mask(masks[b, i], boxes[b, i], image.shape).
                    masks="full": bool [B, D, H, W], detect()'s masks (transposed).

This module holds the serving tf.Module and the saving; the command line is mrcnn.cli
(``python -m mrcnn.export ...`` still works and runs ``python -m mrcnn export ...``).
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf

from mrcnn.preprocess import (GRAPH_RESIZE_MODES, mold_images_graph, paste_masks_graph,
                              unmold_detections_graph)

MASK_MODES = ("small", "full")
SERVING_KEYS = ("boxes", "class_ids", "scores", "num_detections", "masks")


class ExportError(ValueError):
    """An export request that cannot be honoured (existing path, unsupported config)."""


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
        if config.IMAGE_RESIZE_MODE not in GRAPH_RESIZE_MODES:
            raise ExportError(
                "{}.IMAGE_RESIZE_MODE = {!r} cannot be exported: 'crop' takes a random "
                "crop; use one of {} for inference".format(
                    type(config).__name__, config.IMAGE_RESIZE_MODE, GRAPH_RESIZE_MODES))
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
        detections, mrcnn_mask = outputs["detections"], outputs["mrcnn_mask"]
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


if __name__ == "__main__":
    from mrcnn.cli import main
    sys.exit(main(["export"] + sys.argv[1:]))
