"""Export for serving: SavedModel (TF Serving), ONNX, TFLite; pixels in, detections out.

    model = MaskRCNN("inference", config, model_dir="logs")
    model.load_weights(path, by_name=True)
    model.export("export/1")                      # SavedModel; or masks="full"
    model.export("mask_rcnn.onnx")                # ONNX (tf2onnx, opset ONNX_OPSET)
    model.export("mask_rcnn.tflite")              # TFLite, builtin ops only
    ExportedModel("mask_rcnn.onnx").detect(images)   # any of the three, detect()-style

    python -m mrcnn export --weights mask_rcnn_shapes_0008.h5 \
        --config samples/shapes.py:ShapesInferenceConfig --out export/1 [--format onnx]

All three formats take the same input and give the same outputs (below). The SavedModel
runs detect()'s own graph; ONNX and TFLite run the export-friendly form of its NMS and
ROI align (mrcnn.export_graph), TFLite also float32 molding (see there and
docs/serving.md for what differs and how much).

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
# The serving graph's forms: "exact" (SavedModel: detect()'s own ops, bit-identical
# molding), "onnx" (export-friendly NMS and ROI align, mrcnn.export_graph), "tflite"
# (those plus float32 molding/unmolding: TFLite builtins have no float64).
GRAPH_FORMS = ("exact", "onnx", "tflite")


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
    masks: "small" or "full" (see the module docstring). graph: one of GRAPH_FORMS.
    """

    def __init__(self, keras_model, config, masks="small", graph="exact"):
        super().__init__(name="mask_rcnn_serving")
        if masks not in MASK_MODES:
            raise ExportError("masks must be one of {}, got {!r}".format(MASK_MODES, masks))
        if graph not in GRAPH_FORMS:
            raise ExportError("graph must be one of {}, got {!r}".format(GRAPH_FORMS, graph))
        if graph == "tflite" and config.IMAGE_RESIZE_MODE != "square":
            raise ExportError("TFLite export needs IMAGE_RESIZE_MODE = 'square' (got {!r}): "
                              "the anchors of a frame whose size varies are computed in "
                              "float64, which TFLite builtins lack; export a 'square' "
                              "config".format(config.IMAGE_RESIZE_MODE))
        if graph == "tflite" and masks == "full":
            raise ExportError("masks='full' cannot be exported to TFLite (the mask pasting "
                              "needs float64 and ScatterNd): use masks='small' and paste "
                              "with utils.unmold_mask")
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
        self.graph = graph
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec(
                [None, None, None, config.IMAGE_CHANNEL_COUNT], tf.uint8, name="images")])

    def _serve(self, images):
        config = self._config
        model = self._holder.model
        if self.graph == "exact":
            molded, metas, windows = mold_images_graph(images, config)
            outputs = model([molded, metas], training=False)
            unmold = unmold_detections_graph
        else:
            from mrcnn import export_graph
            if self.graph == "tflite":
                molded, metas, windows = export_graph.mold_images_f32(images, config)
                unmold = export_graph.unmold_detections_f32
            else:
                molded, metas, windows = mold_images_graph(images, config)
                unmold = unmold_detections_graph
            # This function body runs only while tf.function traces it: the swap lasts
            # for the trace, and the model's own graph (detect(), training) is untouched.
            with export_graph.portable_layers(model):
                outputs = model([molded, metas], training=False)
        detections, mrcnn_mask = outputs["detections"], outputs["mrcnn_mask"]
        original_hw = tf.shape(images)[1:3]
        frame_hw = tf.shape(molded)[1:3]
        boxes, class_ids, scores, masks, num = unmold(
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


def _config_json(config, masks, class_names=None):
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
                       "class_names": list(class_names) if class_names else None,
                       "config": {k: plain(v) for k, v in config.to_dict().items()}},
                      indent=1, sort_keys=True)


def export_saved_model(model, path, masks="small", class_names=None):
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
            f.write(_config_json(config, masks, class_names))
        if os.path.lexists(path):
            raise ExportError("export path {} appeared while exporting: not "
                              "overwritten".format(path))
        os.rename(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------- ONNX, TFLite
EXPORT_FORMATS = ("saved_model", "onnx", "tflite")
# ONNX opset of the export: 17 is read by ONNX Runtime >= 1.13 and most other runtimes,
# and has everything the graph needs (NonMaxSuppression, TopK, GatherND, Loop, Resize).
ONNX_OPSET = 17
# The ONNX model's metadata_props key, and the suffix of the TFLite side file, holding the
# config JSON (as SavedModel's assets.extra/mrcnn_config.json).
CONFIG_KEY = "mrcnn_config"
TFLITE_CONFIG_SUFFIX = ".json"


def _optional(name):
    """Import an optional export dependency, or say how to install it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ExportError("ONNX export and running .onnx models need {} ({}): pip install "
                          "-e .[export], or pip install tf2onnx onnx "
                          "onnxruntime".format(name, e)) from None


def export_format(path, format=None):
    """The export format of ``format`` or, when None, of the path's suffix (.onnx,
    .tflite, else a SavedModel directory). ExportError naming the path for another."""
    if format is None:
        ext = os.path.splitext(os.fspath(path))[1].lower()
        return {".onnx": "onnx", ".tflite": "tflite"}.get(ext, "saved_model")
    if format not in EXPORT_FORMATS:
        raise ExportError("unknown export format {!r} for {}: use one of {}".format(
            format, path, ", ".join(EXPORT_FORMATS)))
    return format


def _check_target(model, path):
    path = os.fspath(path)
    if os.path.lexists(path):
        raise ExportError("export path {} already exists: refusing to overwrite it".format(
            path))
    if getattr(model, "mode", "inference") != "inference":
        raise ExportError("export needs a MaskRCNN built in 'inference' mode (got {!r}): "
                          "create one with the same config and load the trained weights "
                          "by name".format(model.mode))
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return path, parent


def _move_into_place(tmp_file, path):
    if os.path.lexists(path):
        raise ExportError("export path {} appeared while exporting: not overwritten".format(
            path))
    os.rename(tmp_file, path)


def export_onnx(model, path, masks="small", opset=ONNX_OPSET, class_names=None):
    """Write an ONNX model of the serving function (tf2onnx, ``opset``): input ``images``
    uint8 [B, H, W, C], outputs as the SavedModel's (SERVING_KEYS), computed by the
    export-friendly graph (mrcnn.export_graph). The config JSON is in the model's
    metadata_props under CONFIG_KEY. Refuses an existing path; written atomically."""
    tf2onnx = _optional("tf2onnx")
    onnx = _optional("onnx")
    path, parent = _check_target(model, path)
    module = ServingModule(model.keras_model, model.config, masks=masks, graph="onnx")
    spec = tf.TensorSpec([None, None, None, model.config.IMAGE_CHANNEL_COUNT], tf.uint8,
                         name="images")
    proto, _ = tf2onnx.convert.from_function(module.serve, input_signature=[spec],
                                             opset=int(opset))
    onnx.helper.set_model_props(proto, {CONFIG_KEY: _config_json(
        model.config, masks, class_names)})
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        _move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_tflite(model, path, masks="small", class_names=None):
    """Write a TFLite flatbuffer of the serving function, TFLite builtin ops only (it runs
    in tf.lite.Interpreter / LiteRT without the Flex delegate): the export-friendly graph
    with float32 molding (mrcnn.export_graph). masks="small" only. The config JSON goes to
    ``path + TFLITE_CONFIG_SUFFIX``. Refuses an existing path; written atomically."""
    path, parent = _check_target(model, path)
    side = path + TFLITE_CONFIG_SUFFIX
    if os.path.lexists(side):
        raise ExportError("export path {} already exists: refusing to overwrite it".format(
            side))
    module = ServingModule(model.keras_model, model.config, masks=masks, graph="tflite")
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".tmp-", dir=parent)
    try:
        # Converting the live module keeps the weights as uninitialised resource
        # variables (READ_VARIABLE fails at run time); through a saved and reloaded
        # signature the converter freezes them into the flatbuffer.
        saved = os.path.join(tmp, "saved_model")
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
        loaded = tf.saved_model.load(saved)
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [loaded.signatures["serving_default"]], loaded)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flat = converter.convert()
        target = os.path.join(tmp, "model.tflite")
        with open(target, "wb") as f:
            f.write(flat)
        with open(target + TFLITE_CONFIG_SUFFIX, "w") as f:
            f.write(_config_json(model.config, masks, class_names))
        _move_into_place(target + TFLITE_CONFIG_SUFFIX, side)
        _move_into_place(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_model(model, path, format=None, masks="small", opset=ONNX_OPSET,
                 class_names=None):
    """Export in ``format`` (EXPORT_FORMATS; None: from the path's suffix). Returns path."""
    format = export_format(path, format)
    if format == "onnx":
        return export_onnx(model, path, masks=masks, opset=opset, class_names=class_names)
    if format == "tflite":
        return export_tflite(model, path, masks=masks, class_names=class_names)
    return export_saved_model(model, path, masks=masks, class_names=class_names)


# ----------------------------------------------------------------------------- running exports
class ExportedModel(object):
    """An exported model of any format, loaded for inference: ``run(images)`` (uint8
    [B, H, W, C] numpy) -> dict of numpy SERVING_KEYS outputs; ``detect(images)`` ->
    detect()-style result dicts (rois, class_ids, scores, masks [H, W, N] bool).

    path: a SavedModel directory, a .onnx or a .tflite file (ExportError naming it
    otherwise). ``info``: the export's config JSON (config, masks, class_names).
    threads: intra-op threads of ONNX Runtime / TFLite (None: their default).
    """

    def __init__(self, path, threads=None):
        path = os.fspath(path)
        self.path = path
        if os.path.isdir(path):
            self.format = "saved_model"
            if not os.path.isfile(os.path.join(path, "saved_model.pb")):
                raise ExportError("{} is a folder but not a SavedModel (no "
                                  "saved_model.pb)".format(path))
            fn = tf.saved_model.load(path).signatures["serving_default"]
            self._run = lambda x: {k: v.numpy() for k, v in fn(images=tf.constant(x)).items()}
            self.info = self._read_json(os.path.join(path, "assets.extra",
                                                     "mrcnn_config.json"))
        elif not os.path.isfile(path):
            raise ExportError("exported model not found: {}".format(path))
        elif path.lower().endswith(".onnx"):
            self.format = "onnx"
            ort = _optional("onnxruntime")
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            self._run = lambda x: dict(zip(names, session.run(None, {"images": x})))
            meta = session.get_modelmeta().custom_metadata_map
            self.info = json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else {}
        elif path.lower().endswith(".tflite"):
            self.format = "tflite"
            import warnings
            with warnings.catch_warnings():
                # TF 2.21 points to LiteRT (ai_edge_litert) here; the stock interpreter
                # still runs builtin-op models, which is all this export needs.
                warnings.simplefilter("ignore", UserWarning)
                interpreter = tf.lite.Interpreter(model_path=path, num_threads=threads)
            runner = interpreter.get_signature_runner("serving_default")
            self._run = lambda x: runner(images=x)
            self.info = self._read_json(path + TFLITE_CONFIG_SUFFIX)
        else:
            raise ExportError("{}: not an exported model (a SavedModel folder, .onnx or "
                              ".tflite file)".format(path))
        self.masks = self.info.get("masks", "small")
        self.class_names = self.info.get("class_names")

    @staticmethod
    def _read_json(path):
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def run(self, images):
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return {k: np.asarray(v) for k, v in self._run(images).items()}

    def detect(self, images):
        """detect()'s results for a list of uint8 [H, W, C] images; images of one size
        go through the model together."""
        from mrcnn.utils import unmold_mask
        results = [None] * len(images)
        groups = {}
        for i, image in enumerate(images):
            groups.setdefault(np.shape(image), []).append(i)
        for shape, ids in groups.items():
            out = self.run(np.stack([images[i] for i in ids]))
            for b, i in enumerate(ids):
                n = int(out["num_detections"][b])
                boxes = out["boxes"][b, :n].astype(np.int32)
                if self.masks == "full":
                    masks = np.transpose(out["masks"][b, :n], (1, 2, 0)).astype(bool)
                elif n:
                    masks = np.stack([unmold_mask(out["masks"][b, k], boxes[k], shape)
                                      for k in range(n)], axis=-1)
                else:
                    masks = np.zeros(shape[:2] + (0,), bool)
                results[i] = {"rois": boxes, "class_ids": out["class_ids"][b, :n].astype(
                    np.int32), "scores": out["scores"][b, :n].astype(np.float32),
                    "masks": masks}
        return results


def count_twin_detections(got, ref, score_tol=1e-3, min_box_iou=0.99, min_mask_iou=0.98):
    """How many of ``ref``'s detections have a twin in ``got`` (both detect()-style
    dicts: rois [N, 4] pixels (y1, x1, y2, x2), class_ids [N], scores [N], masks
    [H, W, N]): same class, |score difference| <= score_tol, box IoU >= min_box_iou and
    mask IoU >= min_mask_iou. Each of ``got``'s detections twins at most one (the
    reference rows in order, each taking its best-box-IoU candidate), so the order among
    near-equal scores does not matter. The check of an export against detect()."""
    from mrcnn.boxes import compute_overlaps
    from mrcnn.masks import compute_overlaps_masks
    n_ref, n_got = len(ref["class_ids"]), len(got["class_ids"])
    if not n_ref or not n_got:
        return 0
    box = compute_overlaps(np.asarray(ref["rois"], np.float64),
                           np.asarray(got["rois"], np.float64))
    mask = compute_overlaps_masks(ref["masks"], got["masks"])
    # Two empty masks (a box too thin for a pixel) agree.
    empty_ref = ~np.reshape(ref["masks"], (-1, n_ref)).any(0)
    empty_got = ~np.reshape(got["masks"], (-1, n_got)).any(0)
    mask = np.where(empty_ref[:, None] & empty_got[None], 1.0, mask)
    ok = ((np.asarray(ref["class_ids"])[:, None] == np.asarray(got["class_ids"])[None])
          & (np.abs(np.asarray(ref["scores"], np.float64)[:, None]
                    - np.asarray(got["scores"], np.float64)[None]) <= score_tol)
          & (box >= min_box_iou) & (mask >= min_mask_iou))
    free = np.ones(n_got, bool)
    twins = 0
    for i in range(n_ref):
        cands = np.flatnonzero(ok[i] & free)
        if cands.size:
            free[cands[np.argmax(box[i, cands])]] = False
            twins += 1
    return twins


if __name__ == "__main__":
    from mrcnn.cli import main
    sys.exit(main(["export"] + sys.argv[1:]))
