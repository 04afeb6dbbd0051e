"""Evaluate a model on any mrcnn Dataset with pycocotools (COCO AP/AR) and compute_ap.

Three layers, each usable alone:

* ``build_coco_gt(dataset)`` turns the ground truth of a ``utils.Dataset`` (its
  ``load_mask``) into an in-memory pycocotools ``COCO`` object, once.
* ``detections_to_coco(image_id, result)`` turns one ``model.detect()`` result dict into
  COCO result entries (boxes as ``[x, y, w, h]``, masks as RLE with ``str`` counts).
* ``evaluate_detections(gt_coco, detections)`` runs COCOeval on precomputed detections
  and returns the twelve COCO numbers plus per-class AP, for each IoU type.

``evaluate_coco(model, dataset)`` glues them together with batched ``model.detect`` calls
and also reports Matterport's ``utils.compute_ap`` mAP@0.5 on masks, averaged over images.

Ids: COCO image ids are the dataset's internal image ids and category ids are its internal
class ids (1..num_classes-1), so any Dataset works, not only COCO. Crowd instances are
those whose class id from ``load_mask`` is negative (Matterport's CocoDataset convention).
Metrics that pycocotools cannot compute (no ground truth in an area range or class) are
-1, as in ``COCOeval.stats``.
"""

import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn import utils

# Names of COCOeval.stats entries, in pycocotools' order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


# --------------------------------------------------------------------------- helpers

def encode_masks(masks):
    """Run-length encode instance masks for COCO.

    masks: [H, W, N] bool/0-1 array. Returns a list of N RLE dicts
    ``{"size": [H, W], "counts": str}`` (counts decoded so the dicts serialise to JSON).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError("masks must have shape [H, W, N], got {}".format(masks.shape))
    if masks.shape[2] == 0:
        return []
    # pycocotools needs a Fortran-ordered uint8 [H, W, N] array.
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _check_dataset(dataset):
    for attr in ("image_ids", "class_ids", "class_names", "num_classes", "load_mask"):
        if not hasattr(dataset, attr):
            raise ValueError("dataset {} has no attribute {!r}: call dataset.prepare() on a "
                             "mrcnn.utils.Dataset first".format(type(dataset).__name__, attr))


def _category_names(dataset):
    """Unique display names of the classes (index = internal class id).

    A name used by two sources gets its source as a prefix ("source.name").
    """
    names = [str(n) for n in dataset.class_names]
    info = getattr(dataset, "class_info", None)
    out = list(names)
    for i, n in enumerate(names):
        if names.count(n) > 1 and info is not None and i < len(info):
            out[i] = "{}.{}".format(info[i].get("source", ""), n)
    return out


def _load_gt_masks(dataset, image_id):
    """load_mask with shape checks. Returns masks [H, W, N] bool, class_ids [N] int."""
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks)
    class_ids = np.asarray(class_ids).reshape(-1)
    if masks.ndim != 3:
        raise ValueError("dataset.load_mask({}) returned masks of shape {}; expected "
                         "[H, W, N]".format(image_id, masks.shape))
    if masks.shape[2] != class_ids.shape[0]:
        raise ValueError("dataset.load_mask({}) returned {} masks but {} class ids".format(
            image_id, masks.shape[2], class_ids.shape[0]))
    if class_ids.size and not np.issubdtype(class_ids.dtype, np.integer):
        if np.any(class_ids != np.round(class_ids)):
            raise ValueError("dataset.load_mask({}) returned non-integer class ids {}".format(
                image_id, class_ids))
    return masks.astype(bool), class_ids.astype(np.int64)


def _image_size(dataset, image_id, masks):
    """(height, width) of an image: from the mask stack, else image_info, else load_image."""
    if masks.shape[0] > 0 and masks.shape[1] > 0:
        h, w = masks.shape[:2]
    else:
        info = dataset.image_info[image_id] if hasattr(dataset, "image_info") else {}
        if "height" in info and "width" in info:
            h, w = info["height"], info["width"]
        else:
            h, w = np.asarray(dataset.load_image(image_id)).shape[:2]
    return int(h), int(w)


# --------------------------------------------------------------------------- ground truth

def build_coco_gt(dataset, image_ids=None, config=None):
    """Convert the ground truth of a prepared mrcnn Dataset to a pycocotools COCO object.

    dataset: a prepared ``utils.Dataset`` (load_mask gives [H, W, N] masks and [N] class
        ids; a negative class id marks a crowd region of class -id).
    image_ids: internal image ids to include (default: all ``dataset.image_ids``).
    config: optional Config; if given, its NUM_CLASSES must equal dataset.num_classes.

    Each instance becomes an annotation with an RLE ``segmentation``, ``bbox`` [x, y, w, h]
    of the mask (w = last column - first column + 1, as utils.extract_bboxes), ``area`` =
    mask pixel count and ``iscrowd``. Empty masks and class id 0 are skipped. Categories are
    the dataset's classes without BG; ids are internal ids throughout.
    """
    _check_dataset(dataset)
    if config is not None and int(config.NUM_CLASSES) != int(dataset.num_classes):
        raise ValueError("config.NUM_CLASSES = {} but the dataset has {} classes "
                         "(including BG)".format(config.NUM_CLASSES, dataset.num_classes))
    num_images = len(dataset.image_ids)
    ids = dataset.image_ids if image_ids is None else image_ids
    categories = _coco_categories(dataset)

    images, annotations = [], []
    seen = set()
    for image_id in ids:
        image_id = int(image_id)
        if not 0 <= image_id < num_images:
            raise ValueError("image id {} is not in the dataset (0..{})".format(
                image_id, num_images - 1))
        if image_id in seen:
            raise ValueError("image id {} is listed twice".format(image_id))
        seen.add(image_id)
        masks, class_ids = _load_gt_masks(dataset, image_id)
        images.append(_coco_image(dataset, image_id, masks))
        _add_annotations(annotations, dataset, image_id, masks, class_ids)

    return _indexed_coco({"info": {"description": "mrcnn ground truth"}, "images": images,
                          "annotations": annotations, "categories": categories})


def _coco_categories(dataset):
    """COCO categories of the dataset's classes without BG (id = internal class id,
    supercategory = source)."""
    names = _category_names(dataset)
    info = getattr(dataset, "class_info", None)
    categories = []
    for cid in dataset.class_ids:
        cid = int(cid)
        if cid == 0:
            continue
        source = info[cid].get("source", "") if info is not None and cid < len(info) else ""
        categories.append({"id": cid, "name": names[cid], "supercategory": source})
    return categories


def _coco_image(dataset, image_id, masks):
    """The COCO "images" entry of one image."""
    height, width = _image_size(dataset, image_id, masks)
    return {"id": image_id, "height": height, "width": width,
            "file_name": str(dataset.image_info[image_id].get("path", image_id))
            if hasattr(dataset, "image_info") else str(image_id)}


def _add_annotations(annotations, dataset, image_id, masks, class_ids):
    """Append one image's instances to annotations (ids continue its numbering)."""
    if class_ids.size == 0:
        return
    bad = np.abs(class_ids) >= dataset.num_classes
    if np.any(bad):
        raise ValueError("dataset.load_mask({}) returned class id(s) {} but the dataset "
                         "has {} classes".format(image_id, class_ids[bad].tolist(),
                                                 dataset.num_classes))
    rles = encode_masks(masks)
    areas = mask_utils.area(rles) if rles else []
    boxes = mask_utils.toBbox(rles) if rles else []
    for i, cid in enumerate(class_ids):
        # Class 0 is background and an empty mask can never be matched: skip both.
        if cid == 0 or areas[i] == 0:
            continue
        annotations.append({
            "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
            "image_id": image_id,
            "category_id": int(abs(cid)),
            "segmentation": rles[i],
            "area": float(areas[i]),
            "bbox": [float(v) for v in boxes[i]],
            "iscrowd": int(cid < 0),
        })


def _indexed_coco(content):
    """A pycocotools COCO object holding content (a COCO-format dict), indexed quietly."""
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def gt_instances(gt_coco, image_id, include_crowd=False):
    """Ground truth of one image back from a COCO object built by build_coco_gt.

    Returns (boxes [N, 4] int32 (y1, x1, y2, x2) pixels with y2/x2 exclusive,
    class_ids [N] int32, masks [H, W, N] bool). Crowd regions are left out unless
    include_crowd, in which case their class ids are negative.
    """
    img = gt_coco.imgs[image_id]
    h, w = img["height"], img["width"]
    anns = gt_coco.loadAnns(gt_coco.getAnnIds(imgIds=[image_id]))
    if not include_crowd:
        anns = [a for a in anns if not a.get("iscrowd", 0)]
    if not anns:
        return (np.zeros((0, 4), np.int32), np.zeros((0,), np.int32),
                np.zeros((h, w, 0), bool))
    masks = np.stack([gt_coco.annToMask(a).astype(bool) for a in anns], axis=-1)
    class_ids = np.array([-a["category_id"] if a.get("iscrowd", 0) else a["category_id"]
                          for a in anns], np.int32)
    # (y1, x1, y2, x2) from the COCO [x, y, w, h] box of the mask (same as extract_bboxes).
    boxes = np.array([[b[1], b[0], b[1] + b[3], b[0] + b[2]]
                      for b in (a["bbox"] for a in anns)]).round().astype(np.int32)
    return boxes, class_ids, masks


# --------------------------------------------------------------------------- detections

def detections_to_coco(image_id, result, dataset=None):
    """Convert one Matterport ``detect()`` result to COCO result entries.

    image_id: internal image id. result: dict with ``rois`` [N, 4] (y1, x1, y2, x2) pixels
    of the original image, ``class_ids`` [N], ``scores`` [N] and optionally ``masks``
    [H, W, N] bool. dataset: optional; if given, image and class ids are checked against it.
    Returns a list of dicts {image_id, category_id, bbox [x, y, w, h], score,
    segmentation (RLE, str counts; only if masks are given)}. Rows with class id 0
    (zero padding) are dropped.
    """
    image_id = int(image_id)
    for key in ("rois", "class_ids", "scores"):
        if key not in result:
            raise ValueError("detection result of image {} has no {!r} key".format(
                image_id, key))
    rois = np.asarray(result["rois"], dtype=np.float64).reshape(-1, 4)
    class_ids = np.asarray(result["class_ids"]).reshape(-1)
    scores = np.asarray(result["scores"], dtype=np.float64).reshape(-1)
    masks = result.get("masks")
    n = rois.shape[0]
    if class_ids.shape[0] != n or scores.shape[0] != n:
        raise ValueError("detection result of image {}: {} rois, {} class_ids, {} scores".format(
            image_id, n, class_ids.shape[0], scores.shape[0]))
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[2] != n:
            raise ValueError("detection result of image {}: masks of shape {} for {} rois; "
                             "expected [H, W, {}]".format(image_id, masks.shape, n, n))
    if np.any(class_ids < 0):
        raise ValueError("detection result of image {} has negative class ids {}".format(
            image_id, class_ids[class_ids < 0].tolist()))
    if dataset is not None:
        if not 0 <= image_id < len(dataset.image_ids):
            raise ValueError("image id {} is not in the dataset".format(image_id))
        if np.any(class_ids >= dataset.num_classes):
            raise ValueError("detection result of image {} has class ids {} but the dataset "
                             "has {} classes".format(image_id,
                                                     class_ids[class_ids >= dataset.num_classes]
                                                     .tolist(), dataset.num_classes))
    keep = np.nonzero(class_ids > 0)[0]
    rles = encode_masks(masks[:, :, keep]) if masks is not None else None
    out = []
    for j, i in enumerate(keep):
        y1, x1, y2, x2 = rois[i]
        entry = {"image_id": image_id,
                 "category_id": int(class_ids[i]),
                 "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                 "score": float(scores[i])}
        if rles is not None:
            entry["segmentation"] = rles[j]
        out.append(entry)
    return out


# --------------------------------------------------------------------------- COCOeval

def _empty_results(gt_coco):
    """A results COCO object with no detections (loadRes cannot take an empty list)."""
    return _indexed_coco({"info": {}, "images": list(gt_coco.dataset["images"]),
                          "categories": list(gt_coco.dataset["categories"]),
                          "annotations": []})


def _mean_precision(coco_eval):
    """AP@[.50:.95], area "all", at the largest maxDets (summarize()'s stats[0])."""
    p = coco_eval.params
    pr = coco_eval.eval["precision"][:, :, :, list(p.areaRngLbl).index("all"),
                                     int(np.argmax(p.maxDets))]
    valid = pr[pr > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _per_class_ap(coco_eval, names):
    """Per-class AP@[.50:.95] and AP@.50 from COCOeval.eval['precision'].

    precision has shape [T (IoU thresholds), R (recall points), K (classes), A (area
    ranges), M (max dets)]; use area "all" and the largest max-dets, and average over the
    entries that are not -1 (pycocotools' mark for "no ground truth"), as summarize() does.
    """
    p = coco_eval.params
    precision = coco_eval.eval["precision"]
    a = list(p.areaRngLbl).index("all")
    m = int(np.argmax(p.maxDets))
    iou50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    ap, ap50 = {}, {}
    for k, cat_id in enumerate(p.catIds):
        name = names.get(cat_id, str(cat_id))
        pr = precision[:, :, k, a, m]
        valid = pr[pr > -1]
        ap[name] = float(np.mean(valid)) if valid.size else -1.0
        pr50 = pr[iou50]
        valid50 = pr50[pr50 > -1]
        ap50[name] = float(np.mean(valid50)) if valid50.size else -1.0
    return ap, ap50


def evaluate_detections(gt_coco, detections, iou_types=IOU_TYPES, verbose=0, max_dets=100):
    """Run COCOeval on precomputed detections.

    gt_coco: COCO ground truth (e.g. from build_coco_gt); every one of its images is
    evaluated. detections: list of COCO result dicts (detections_to_coco output; "segm"
    needs a "segmentation" in every entry). iou_types: subset of ("bbox", "segm").
    verbose: print pycocotools' own output if true. max_dets: detections per image that
    count for AP (COCOeval's largest maxDets; COCO's 100). Raise it for images with more
    objects than that (crowded nuclei: DETECTION_MAX_INSTANCES), or recall is capped; the
    "AR100" entry is then the recall at max_dets.

    Returns {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
    "ARs", "ARm", "ARl", "per_class_AP": {class name: AP@[.50:.95]}, "per_class_AP50":
    {...}, "num_detections"}}. No detections at all gives AP 0 (not an error).
    """
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError("iou_types: unknown IoU type {!r}; use {}".format(t, IOU_TYPES))
    detections = list(detections)
    img_ids = set(gt_coco.getImgIds())
    _check_detection_ids(detections, img_ids, set(gt_coco.getCatIds()))
    names = {c["id"]: c["name"] for c in gt_coco.dataset["categories"]}

    metrics = {}
    for iou_type in iou_types:
        dets = _results_for(detections, iou_type)
        coco_eval = _run_cocoeval(gt_coco, dets, iou_type, sorted(img_ids), verbose,
                                  max_dets)
        m = {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats)}
        if int(max_dets) != 100:
            # summarize() computes its first figure (AP) at maxDets=100 whatever the
            # params say, which gives -1 when 100 is not among them: redo it at max_dets.
            m["AP"] = _mean_precision(coco_eval)
        m["per_class_AP"], m["per_class_AP50"] = _per_class_ap(coco_eval, names)
        m["num_detections"] = len(dets)
        m["max_dets"] = int(max_dets)
        metrics[iou_type] = m
    return metrics


def _check_detection_ids(detections, img_ids, cat_ids):
    """Raise ValueError for a detection whose image or category is not in the ground
    truth."""
    for d in detections:
        if d.get("image_id") not in img_ids:
            raise ValueError("detection for image id {!r} is not in the ground truth".format(
                d.get("image_id")))
        if d.get("category_id") not in cat_ids:
            raise ValueError("detection of image {} has category id {!r} which is not a "
                             "ground-truth category".format(d["image_id"],
                                                            d.get("category_id")))


def _results_for(detections, iou_type):
    """Fresh COCO result dicts holding only what iou_type's evaluation reads."""
    key = "bbox" if iou_type == "bbox" else "segmentation"
    dets = []
    for d in detections:
        if key not in d:
            raise ValueError("{} evaluation needs {!r} in every detection; the one of "
                             "image {} has none".format(iou_type, key, d["image_id"]))
        # Fresh dicts: loadRes edits them. For "segm" leave out the box, or loadRes
        # takes the box area as the instance area (wrong small/medium/large split).
        dets.append({"image_id": d["image_id"], "category_id": d["category_id"],
                     "score": d["score"], key: d[key]})
    return dets


def _run_cocoeval(gt_coco, dets, iou_type, img_ids, verbose, max_dets):
    """COCOeval evaluated, accumulated and summarized (pycocotools' output shown only if
    verbose)."""
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(
        io.StringIO())
    with quiet:
        res = gt_coco.loadRes(dets) if dets else _empty_results(gt_coco)
        coco_eval = COCOeval(gt_coco, res, iou_type)
        coco_eval.params.imgIds = img_ids
        coco_eval.params.maxDets = [1, 10, int(max_dets)]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


# --------------------------------------------------------------------------- end to end

def _atomic_write_json(path, obj):
    """Write JSON to path through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def evaluate_coco(model, dataset, image_ids=None, iou_types=IOU_TYPES, limit=None,
                  results_json=None, verbose=1, batch_size=None, max_dets=100):
    """Run ``model.detect`` over a dataset and evaluate with pycocotools and compute_ap.

    model: object with ``.config`` and ``.detect(images) -> list of result dicts``
        (Matterport's MaskRCNN in inference mode). Images are passed in batches of
        ``batch_size`` (default config.BATCH_SIZE); a short last batch is padded by
        repeating its last image and the extra results are dropped.
    dataset: prepared utils.Dataset. image_ids: internal ids (default all); limit: keep the
        first ``limit`` of them. results_json: if given, the detections are written there as
        a COCO results JSON (atomically). verbose: 0 silent, 1 progress lines, 2 also
        pycocotools' own output. max_dets: see evaluate_detections. Print the metrics
        with ``format_metrics``.

    Returns evaluate_detections' dict ({iou_type: {...}}) plus "mAP50_compute_ap"
    (utils.compute_ap mAP@0.5 on masks, crowds excluded, averaged over the images that have
    ground truth; NaN if none has), "num_images", "num_detections", "detect_seconds_per_image".
    """
    from mrcnn.data import adopt_bit_depth

    config = model.config
    adopt_bit_depth(dataset, config)
    batch_size = int(batch_size or config.BATCH_SIZE)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, got {}".format(batch_size))
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    if limit is not None:
        ids = ids[:int(limit)]
    ids = [int(i) for i in ids]
    gt = build_coco_gt(dataset, ids, config)

    detections, image_aps, t_detect = _detect_all(model, dataset, gt, ids, batch_size,
                                                  verbose)
    if results_json:
        _atomic_write_json(results_json, detections)
    metrics = evaluate_detections(gt, detections, iou_types, verbose=verbose >= 2,
                                  max_dets=max_dets)
    metrics["mAP50_compute_ap"] = float(np.mean(image_aps)) if image_aps else float("nan")
    metrics["num_images"] = len(ids)
    metrics["num_detections"] = len(detections)
    metrics["detect_seconds_per_image"] = t_detect / max(len(ids), 1)
    return metrics


def _detect_all(model, dataset, gt, ids, batch_size, verbose):
    """model.detect over ids in batches of batch_size (the last padded by repeating its
    last image). Returns (COCO result entries, compute_ap mAP@0.5 of each image with
    ground truth and masks, seconds spent in detect)."""
    detections, image_aps = [], []
    t_detect = 0.0
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        images = [dataset.load_image(i) for i in batch]
        padded = images + [images[-1]] * (batch_size - len(images))
        t0 = time.time()
        results = model.detect(padded)
        t_detect += time.time() - t0
        if len(results) < len(batch):
            raise ValueError("model.detect returned {} results for {} images".format(
                len(results), len(batch)))
        for image_id, image, r in zip(batch, images, results):
            _check_result_shapes(gt, image_id, image, r)
            detections.extend(detections_to_coco(image_id, r, dataset))
            ap = _image_ap(gt, image_id, r)
            if ap is not None:
                image_aps.append(ap)
        if verbose:
            done = min(start + batch_size, len(ids))
            print("evaluate_coco: {}/{} images, {:.3f} s/image in detect".format(
                done, len(ids), t_detect / max(done, 1)))
    return detections, image_aps, t_detect


def _check_result_shapes(gt, image_id, image, r):
    """The loaded image and the detected masks must match the ground truth's size."""
    h, w = gt.imgs[image_id]["height"], gt.imgs[image_id]["width"]
    if tuple(np.shape(image)[:2]) != (h, w):
        raise ValueError("image {}: load_image gives shape {} but load_mask gives "
                         "{}x{}".format(image_id, np.shape(image), h, w))
    if r.get("masks") is not None and tuple(np.shape(r["masks"])[:2]) != (h, w):
        raise ValueError("image {}: detected masks have shape {}, the image is "
                         "{}x{}".format(image_id, np.shape(r["masks"]), h, w))


def _image_ap(gt, image_id, r):
    """utils.compute_ap mAP@0.5 of one image's masks (crowds excluded); None without
    ground truth or detected masks."""
    gt_boxes, gt_class_ids, gt_masks = gt_instances(gt, image_id)
    if gt_class_ids.size == 0 or r.get("masks") is None:
        return None  # compute_ap's recall is undefined without ground truth
    ap = utils.compute_ap(gt_boxes, gt_class_ids, gt_masks,
                          np.asarray(r["rois"]), np.asarray(r["class_ids"]),
                          np.asarray(r["scores"]), np.asarray(r["masks"]),
                          iou_threshold=0.5)[0]
    return float(ap)


# --------------------------------------------------------------------------- printing

def _fmt(v):
    return "  n/a" if v is None or not np.isfinite(v) or v < 0 else "{:5.3f}".format(v)


def format_metrics(metrics):
    """A readable text table of evaluate_coco / evaluate_detections metrics."""
    lines = []
    types = [t for t in IOU_TYPES if isinstance(metrics.get(t), dict)]
    if types:
        header = "{:6}".format("") + "".join("{:>7}".format(n) for n in STAT_NAMES)
        lines.append(header)
        for t in types:
            lines.append("{:6}".format(t) + "".join(
                "{:>7}".format(_fmt(metrics[t].get(n))) for n in STAT_NAMES))
        classes = []
        for t in types:
            for c in metrics[t].get("per_class_AP", {}):
                if c not in classes:
                    classes.append(c)
        if classes:
            width = max(12, max(len(c) for c in classes) + 2)
            lines.append("")
            lines.append("{:{w}}".format("class", w=width) + "".join(
                "{:>12}".format(t + " AP") + "{:>12}".format(t + " AP50") for t in types))
            for c in classes:
                lines.append("{:{w}}".format(c, w=width) + "".join(
                    "{:>12}".format(_fmt(metrics[t]["per_class_AP"].get(c, -1)))
                    + "{:>12}".format(_fmt(metrics[t].get("per_class_AP50", {}).get(c, -1)))
                    for t in types))
    if "mAP50_compute_ap" in metrics:
        lines.append("")
        lines.append("compute_ap mAP@0.5 (masks, mean over images): {}".format(
            _fmt(metrics["mAP50_compute_ap"])))
    extra = [(k, metrics[k]) for k in ("num_images", "num_detections",
                                       "detect_seconds_per_image") if k in metrics]
    if extra:
        lines.append(", ".join("{} = {:.4g}".format(k, v) if isinstance(v, float)
                               else "{} = {}".format(k, v) for k, v in extra))
    return "\n".join(lines)
