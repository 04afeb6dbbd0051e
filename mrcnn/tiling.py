"""Detection on images larger than the model's input: overlapping windows at scale 1.

    r = model.detect([big_image], tile=512, overlap=128, masks="crops")[0]
    # or: from mrcnn.tiling import detect_tiled; r = detect_tiled(model, big_image, 512)

How it works (``detect_tiled``):

1. Layout (``window_layout``): the image is covered by ``tile`` x ``tile`` windows
   (y1, x1, y2, x2 pixels, y2/x2 exclusive) that stay inside it and overlap their
   neighbours by at least ``overlap`` pixels; an image side shorter than ``tile`` gets
   one window of that side's length.
2. Molding (``mold_windows``): each window is cut from the image at scale 1 (never
   resized, whatever IMAGE_RESIZE_MODE says), zero padded bottom/right to a ``tile`` x
   ``tile`` frame (black, as "square" mode pads) and mean-subtracted; its meta says scale
   1 and window (0, 0, h, w). For a full window with tile == IMAGE_MAX_DIM in "square"
   mode this is exactly what ``mold_inputs`` gives (tested). ``tile`` must be a multiple
   of 64 (the frame the FPN needs); it may exceed IMAGE_MAX_DIM: the network is
   convolutional and the ROI level rule depends on box size in pixels only, so a larger
   window shows objects at the trained scale with fewer windows.
3. Network: ``batch_size`` windows (default BATCH_SIZE) per ``model.detect_molded`` call,
   the compiled graph. Each detection is kept as its box in full-image pixels and a bool
   crop of its mask of the box's size, never as a full-image mask: memory grows with the
   window batch and the objects' area, not with the image.
4. Merging (``merge_views``), the rule:
   - a detection is *cut* when its box lies within ``edge_px`` of an inner window edge
     (an edge that is not the image's own edge);
   - two detections from different windows are *views of one object* when their masks,
     restricted to the area both windows see, have IoU >= ``merge_iou`` (any classes),
     or, when one is cut, >= merge_iou of the cut one's pixels there lie in the other
     (of the smaller one's when both are cut); views are grouped transitively;
   - a group with a detection that is not cut keeps the best-scored such detection (the
     window that holds the object whole); a group of cut pieces only becomes one
     detection whose mask is the union of the pieces, with the class and score of its
     best piece;
   - finally a per-class NMS by box IoU (DETECTION_NMS_THRESHOLD) across all windows
     removes duplicates the grouping missed (class_agnostic=True: one NMS for all
     classes, which also drops the second class the network may give one object).
5. Masks out (``format_masks``): "full" bool [H, W, N] like detect(); "crops": a list of
   bool [y2 - y1, x2 - x1] arrays, one per row of rois; "rle": a list of pycocotools RLE
   dicts of the full image (encoded from the crops, no full-size mask is ever built).
   For images of more than a few megapixels use "crops" or "rle": "full" needs
   H * W * N bytes.

Everything here is numpy; the network is reached only through ``model.detect_molded``
(and ``model.config``), so any object with those two can stand in for a model.
"""

import math

import numpy as np

from mrcnn.boxes import _safe_divide
from mrcnn.preprocess import FRAME_MULTIPLE, check_images, compose_image_meta, mold_image

MASK_FORMATS = ("full", "crops", "rle")
# A box this close (pixels) to an inner window edge counts as touching it: a cut object's
# box is clipped to the window, but box regression may stop a pixel or two short.
EDGE_PX = 2
# Mask IoU, inside the area two windows share, above which two detections are one object.
MERGE_IOU = 0.5


############################################################
#  Window layout and molding
############################################################

def default_tile(config):
    """The model's IMAGE_MAX_DIM, rounded down to a multiple of 64 (at least 64)."""
    return max(FRAME_MULTIPLE, int(config.IMAGE_MAX_DIM) // FRAME_MULTIPLE * FRAME_MULTIPLE)


def default_overlap(tile):
    """tile // 4: windows overlap by a quarter, so objects up to tile / 4 pixels across
    always lie whole in some window (32 px at 128, 128 px at 512). Pass a larger overlap
    for larger objects; objects bigger than it are still merged from their pieces."""
    return int(tile) // 4


def check_tile(tile, overlap):
    """ValueError naming ``tile`` or ``overlap`` unless tile is a positive multiple of 64
    and 0 <= overlap < tile. Returns (tile, overlap) as ints."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile <= 0 \
            or tile % FRAME_MULTIPLE:
        raise ValueError("tile must be a positive multiple of {} (the network's frame), "
                         "got {!r}".format(FRAME_MULTIPLE, tile))
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) \
            or not 0 <= overlap < tile:
        raise ValueError("overlap must be an int in [0, tile={}), got {!r}".format(
            tile, overlap))
    return int(tile), int(overlap)


def axis_starts(length, tile, overlap):
    """Window start offsets along one axis of ``length`` pixels: int [n], first 0, last
    length - tile, evenly spread so neighbours overlap by >= overlap (one window at 0 when
    length <= tile). Rounding keeps the overlap: steps are floor or ceil of a step <=
    tile - overlap, an integer."""
    if length <= tile:
        return np.zeros([1], np.int64)
    n = math.ceil((length - overlap) / (tile - overlap))
    return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


def window_layout(height, width, tile, overlap):
    """Windows covering a height x width image: int [K, 4] (y1, x1, y2, x2) pixels, y2/x2
    exclusive, row-major (y outer), each tile x tile (or the image's side when shorter),
    inside the image, overlapping neighbours by at least ``overlap`` pixels."""
    ys, xs = axis_starts(height, tile, overlap), axis_starts(width, tile, overlap)
    y1, x1 = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    return np.stack([y1, x1, np.minimum(y1 + tile, height),
                     np.minimum(x1 + tile, width)], axis=1)


def mold_windows(image, windows, tile, config):
    """Cut windows out of ``image`` [H, W, C] uint8 at scale 1 for the network.

    windows: int [B, 4] (y1, x1, y2, x2). Returns molded float32 [B, tile, tile, C] (each
    window top-left, zero (black) padding bottom/right before mean subtraction, as
    resize_image's "square" padding) and metas float32 [B, IMAGE_META_SIZE] (original
    shape = the window's (h, w, C), image_shape (tile, tile, C), window (0, 0, h, w),
    scale 1).
    """
    c = image.shape[2]
    raw = np.zeros((len(windows), tile, tile, c), image.dtype)
    metas = []
    no_classes = np.zeros([config.NUM_CLASSES], np.int32)
    for i, (y1, x1, y2, x2) in enumerate(np.asarray(windows)):
        h, w = y2 - y1, x2 - x1
        raw[i, :h, :w] = image[y1:y2, x1:x2]
        metas.append(compose_image_meta(0, (h, w, c), (tile, tile, c), (0, 0, h, w), 1,
                                        no_classes))
    return mold_image(raw, config), np.stack(metas).astype(np.float32)


############################################################
#  Detections as boxes + mask crops
############################################################

def empty_detections():
    """The internal detection record with no rows: rois int32 [N, 4] full-image pixels,
    class_ids int32 [N], scores float32 [N], window int [N] (row of the layout), cut bool
    [N], crops: list of N bool [y2 - y1, x2 - x1] masks."""
    return {"rois": np.zeros([0, 4], np.int32), "class_ids": np.zeros([0], np.int32),
            "scores": np.zeros([0], np.float32), "window": np.zeros([0], np.int64),
            "cut": np.zeros([0], bool), "crops": []}


def concat_detections(parts):
    """Concatenate detection records (crops lists joined in order)."""
    out = empty_detections()
    parts = [p for p in parts if len(p["crops"])]
    if not parts:
        return out
    for key in ("rois", "class_ids", "scores", "window", "cut"):
        out[key] = np.concatenate([p[key] for p in parts])
    out["crops"] = [c for p in parts for c in p["crops"]]
    return out


def select(dets, index):
    """Rows ``index`` (int array) of a detection record."""
    out = {k: v[index] for k, v in dets.items() if k != "crops"}
    out["crops"] = [dets["crops"][i] for i in index]
    return out


def window_detections(result, window_index, window):
    """One window's detect_molded(to_original=True) result -> detection record in
    full-image pixels (boxes shifted by the window's origin, masks cropped to boxes)."""
    y1, x1, y2, x2 = (int(v) for v in window)
    rois = np.asarray(result["rois"], np.int64).reshape(-1, 4)
    rois = np.clip(rois, 0, [y2 - y1, x2 - x1, y2 - y1, x2 - x1])
    masks = result["masks"]
    crops = [masks[a:c, b:d, i] for i, (a, b, c, d) in enumerate(rois)]
    return {"rois": (rois + [y1, x1, y1, x1]).astype(np.int32),
            "class_ids": np.asarray(result["class_ids"], np.int32),
            "scores": np.asarray(result["scores"], np.float32),
            "window": np.full(len(rois), window_index, np.int64),
            "cut": np.zeros(len(rois), bool), "crops": crops}


def cut_flags(rois, windows, image_shape, edge_px=EDGE_PX):
    """bool [N]: True where a box [N, 4] touches (within edge_px) an inner edge of its
    window windows [N, 4] (an edge that is not on the image's border)."""
    rois, windows = np.asarray(rois), np.asarray(windows)
    height, width = image_shape[:2]
    inner = np.stack([windows[:, 0] > 0, windows[:, 1] > 0,
                      windows[:, 2] < height, windows[:, 3] < width], axis=1)
    near_start = rois[:, :2] <= windows[:, :2] + edge_px
    near_end = rois[:, 2:] >= windows[:, 2:] - edge_px
    return np.any(inner & np.concatenate([near_start, near_end], axis=1), axis=1)


def paste(crop, roi, region):
    """A bool crop [y2 - y1, x2 - x1] at box ``roi`` drawn into a canvas covering box
    ``region`` (both (y1, x1, y2, x2) full-image pixels): bool [rh, rw]; parts outside
    the region are cut off."""
    ry1, rx1, ry2, rx2 = (int(v) for v in region)
    y1, x1 = int(roi[0]), int(roi[1])
    canvas = np.zeros((ry2 - ry1, rx2 - rx1), bool)
    oy1, ox1 = max(y1, ry1), max(x1, rx1)
    oy2, ox2 = min(y1 + crop.shape[0], ry2), min(x1 + crop.shape[1], rx2)
    if oy2 > oy1 and ox2 > ox1:
        canvas[oy1 - ry1:oy2 - ry1, ox1 - rx1:ox2 - rx1] = \
            crop[oy1 - y1:oy2 - y1, ox1 - x1:ox2 - x1]
    return canvas


############################################################
#  Pairs, grouping, NMS
############################################################

def box_pairs(boxes):
    """Index pairs (i, j), i < j, of boxes [N, 4] whose interiors intersect: int [P, 2].

    A sweep along x (sort by x1, searchsorted for the boxes starting before each box
    ends), so the work grows with the overlapping neighbours, not with N^2.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    order = np.argsort(boxes[:, 1], kind="stable")
    b = boxes[order]
    # Sorted positions k+1 .. end[k]-1 start (x1) strictly before box k ends (x2).
    end = np.searchsorted(b[:, 1], b[:, 3], side="left")
    counts = np.maximum(end - np.arange(len(b)) - 1, 0)
    first = np.repeat(np.arange(len(b)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    second = first + 1 + offset
    ya = np.maximum(b[first, 0], b[second, 0])
    yb = np.minimum(b[first, 2], b[second, 2])
    xa = np.maximum(b[first, 1], b[second, 1])
    xb = np.minimum(b[first, 3], b[second, 3])
    hit = (yb > ya) & (xb > xa)
    pairs = np.stack([order[first[hit]], order[second[hit]]], axis=1)
    return np.sort(pairs, axis=1).reshape(-1, 2)


def shared_mask_overlap(dets, windows, i, j):
    """Overlap of detections i and j's masks restricted to the area both their windows
    see (within the union of their boxes): IoU when both are whole; when one is cut, the
    fraction of the cut one's pixels there inside the other (of the smaller one's when
    both are cut): a sliver's mask is coarse, but lies inside the object's."""
    wi, wj = windows[dets["window"][i]], windows[dets["window"][j]]
    ri, rj = dets["rois"][i], dets["rois"][j]
    # Both windows' intersection, cut down to the union box of the two detections.
    start = np.maximum(np.maximum(wi[:2], wj[:2]), np.minimum(ri[:2], rj[:2]))
    end = np.minimum(np.minimum(wi[2:], wj[2:]), np.maximum(ri[2:], rj[2:]))
    region = np.concatenate([start, end])
    if np.any(region[2:] <= region[:2]):
        return 0.0
    a = paste(dets["crops"][i], ri, region)
    b = paste(dets["crops"][j], rj, region)
    cut_i, cut_j = dets["cut"][i], dets["cut"][j]
    if not (cut_i or cut_j):
        return float(_safe_divide(np.sum(a & b), np.sum(a | b)))
    areas = [np.sum(a) if cut_i else np.inf, np.sum(b) if cut_j else np.inf]
    return float(_safe_divide(np.sum(a & b), min(areas)))


def view_groups(dets, windows, merge_iou=MERGE_IOU):
    """Group label per detection (int [N]): detections of different windows whose
    shared_mask_overlap >= merge_iou are one object, transitively (connected
    components). Needs dets["cut"]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    n = len(dets["crops"])
    pairs = box_pairs(dets["rois"])
    pairs = pairs[dets["window"][pairs[:, 0]] != dets["window"][pairs[:, 1]]]
    # One small mask comparison per overlapping cross-window pair (ragged crops).
    same = np.array([shared_mask_overlap(dets, windows, i, j) >= merge_iou
                     for i, j in pairs], bool)
    linked = pairs[same] if len(pairs) else pairs
    graph = coo_matrix((np.ones(len(linked)), (linked[:, 0], linked[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def resolve_group(dets, members):
    """One detection (record of 1 row) for a group of views ``members`` (int array): the
    best-scored whole view when there is one, else the union of the cut pieces with the
    class and score of the best piece."""
    whole = members[~dets["cut"][members]]
    if len(whole):
        return select(dets, [whole[np.argmax(dets["scores"][whole])]])
    best = members[np.argmax(dets["scores"][members])]
    rois = dets["rois"][members]
    box = np.concatenate([rois[:, :2].min(axis=0), rois[:, 2:].max(axis=0)])
    mask = np.zeros((box[2] - box[0], box[3] - box[1]), bool)
    for m in members:
        mask |= paste(dets["crops"][m], dets["rois"][m], box)
    out = select(dets, [best])
    out["rois"] = box[None].astype(np.int32)
    out["crops"] = [mask]
    return out


def merge_views(dets, windows, merge_iou=MERGE_IOU):
    """Apply the grouping rule (see the module docstring): one detection per group of
    views. Single views pass through untouched; a loop runs per multi-view group."""
    labels = view_groups(dets, windows, merge_iou)
    sizes = np.bincount(labels, minlength=len(labels))
    single = np.flatnonzero(sizes[labels] == 1)
    order = np.argsort(labels, kind="stable")
    multi = order[sizes[labels[order]] > 1]
    starts = np.flatnonzero(np.diff(labels[multi], prepend=-1))
    groups = np.split(multi, starts[1:]) if len(multi) else []
    return concat_detections([select(dets, single)] +
                             [resolve_group(dets, g) for g in groups])


def class_nms(rois, scores, class_ids, threshold):
    """Per-class greedy NMS by box IoU (a box is dropped when its IoU with a kept,
    higher-scored box of its class is > threshold), on the overlapping pairs only
    (box_pairs), so it scales to many detections. Returns kept indices, best first."""
    rois = np.asarray(rois, np.float64).reshape(-1, 4)
    rank = np.empty(len(rois), np.int64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    rank[order] = np.arange(len(rois))
    pairs = box_pairs(rois)
    pairs = pairs[class_ids[pairs[:, 0]] == class_ids[pairs[:, 1]]]
    a, b = rois[pairs[:, 0]], rois[pairs[:, 1]]
    inter = np.prod(np.maximum(np.minimum(a[:, 2:], b[:, 2:]) -
                               np.maximum(a[:, :2], b[:, :2]), 0), axis=1)
    area = lambda r: np.prod(r[:, 2:] - r[:, :2], axis=1)  # noqa: E731
    iou = _safe_divide(inter, area(a) + area(b) - inter)
    pairs = pairs[iou > threshold]
    # (stronger, weaker) edges in the stronger one's rank order: when an edge is reached,
    # the stronger box's own fate is already settled (it only loses to higher ranks).
    strong = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    weak = pairs[:, 0] + pairs[:, 1] - strong
    suppressed = np.zeros(len(rois), bool)
    for k in np.argsort(rank[strong], kind="stable"):
        if not suppressed[strong[k]]:
            suppressed[weak[k]] = True
    return order[~suppressed[order]]


############################################################
#  Mask formats
############################################################

def crops_to_full(rois, crops, image_shape):
    """Crops at their boxes -> bool [H, W, N] full-image masks (detect()'s format)."""
    height, width = image_shape[:2]
    out = np.zeros((height, width, len(crops)), bool)
    for i, (roi, crop) in enumerate(zip(rois, crops)):
        out[:, :, i] = paste(crop, roi, (0, 0, height, width))
    return out


def crop_to_rle(roi, crop, image_shape):
    """One crop at box ``roi`` -> pycocotools compressed RLE of the full H x W image,
    computed from the crop's runs (column-major, as COCO), without a full-size mask."""
    from pycocotools import mask as mask_util
    height, width = (int(s) for s in image_shape[:2])
    y1, x1 = int(roi[0]), int(roi[1])
    # Rows of crop.T are image columns; a False pad at both ends makes every run open
    # (+1) and close (-1) inside its column.
    steps = np.diff(np.pad(crop.T.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    col_s, row_s = np.nonzero(steps == 1)
    col_e, row_e = np.nonzero(steps == -1)
    starts = (x1 + col_s) * height + y1 + row_s
    ends = (x1 + col_e) * height + y1 + row_e
    # A run reaching the bottom of a column continues at the top of the next one.
    joined = np.flatnonzero(ends[:-1] == starts[1:])
    starts, ends = np.delete(starts, joined + 1), np.delete(ends, joined)
    bounds = np.concatenate([[0], np.stack([starts, ends], 1).ravel(), [height * width]])
    counts = np.diff(bounds).astype(np.int64)
    # COCO writes no empty run after a mask that ends on the image's last pixel.
    counts = counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts
    counts = counts.tolist()
    return mask_util.frPyObjects({"counts": counts, "size": [height, width]},
                                 height, width)


def format_masks(rois, crops, image_shape, masks="full"):
    """Masks of the result in format ``masks`` (MASK_FORMATS): "full" bool [H, W, N],
    "crops" the list of bool crops, "rle" a list of pycocotools RLE dicts."""
    if masks == "full":
        return crops_to_full(rois, crops, image_shape)
    if masks == "crops":
        return list(crops)
    return [crop_to_rle(r, c, image_shape) for r, c in zip(rois, crops)]


############################################################
#  Driver
############################################################

def detect_windows(model, image, windows, tile, batch_size):
    """Run the network on every window, ``batch_size`` windows per detect_molded call:
    detection record in full-image pixels (cut flags not yet set)."""
    parts = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        molded, metas = mold_windows(image, batch, tile, model.config)
        results = model.detect_molded(molded, metas, to_original=True)
        parts += [window_detections(r, start + k, w)
                  for k, (r, w) in enumerate(zip(results, batch))]
    return concat_detections(parts)


def detect_tiled(model, image, tile=None, overlap=None, masks="full", batch_size=None,
                 merge_iou=MERGE_IOU, edge_px=EDGE_PX, class_agnostic=False, verbose=0):
    """Detect instances in one (large) image by overlapping windows at scale 1.

    model: an inference MaskRCNN (anything with ``config`` and ``detect_molded``).
    image: [H, W, C] as detect() takes it (a uint8 np.memmap is sliced, not loaded).
    tile: window side in pixels, a multiple of 64 (default: IMAGE_MAX_DIM rounded down
    to one). overlap: pixels shared by neighbouring windows (default tile // 4; make it
    at least the largest object's size so every object lies whole in a window).
    masks: "full" | "crops" | "rle" (see format_masks). batch_size: windows per network
    call (default BATCH_SIZE). merge_iou, edge_px: the merging rule's thresholds (module
    docstring). class_agnostic: the final NMS ignores classes, so a place the network
    labelled with two classes in one window (its NMS is per class) keeps only the
    best-scored one; for images whose objects of different classes do not overlap.
    Returns a dict like detect(): rois int32 [N, 4] (y1, x1, y2, x2 pixels
    of the image, y2/x2 exclusive), class_ids int32 [N], scores float32 [N] (best
    first) and masks in the chosen format.
    """
    config = model.config
    tile = default_tile(config) if tile is None else tile
    tile, overlap = check_tile(tile, default_overlap(tile) if overlap is None else overlap)
    if masks not in MASK_FORMATS:
        raise ValueError("masks must be one of {}, got {!r}".format(MASK_FORMATS, masks))
    image = check_images([image], config.IMAGE_CHANNEL_COUNT,
                         getattr(config, "IMAGE_BIT_DEPTH", "auto"))[0]
    windows = window_layout(image.shape[0], image.shape[1], tile, overlap)
    dets = detect_windows(model, image, windows, tile, batch_size or config.BATCH_SIZE)
    dets["cut"] = cut_flags(dets["rois"], windows[dets["window"]], image.shape, edge_px)
    merged = merge_views(dets, windows, merge_iou)
    nms_classes = np.zeros_like(merged["class_ids"]) if class_agnostic \
        else merged["class_ids"]
    keep = class_nms(merged["rois"], merged["scores"], nms_classes,
                     config.DETECTION_NMS_THRESHOLD)
    merged = select(merged, keep)
    if verbose:
        print("tiled detection: {} windows of {} px (overlap {}), {} window detections "
              "({} cut) -> {} objects".format(len(windows), tile, overlap,
                                               len(dets["crops"]), int(dets["cut"].sum()),
                                               len(keep)))
    return {"rois": merged["rois"], "class_ids": merged["class_ids"],
            "scores": merged["scores"],
            "masks": format_masks(merged["rois"], merged["crops"], image.shape, masks)}
