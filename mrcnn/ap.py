"""Average precision of instance masks (numpy): Matterport's VOC-style AP at one or several
mask-IoU thresholds, the greedy matching behind it, and box recall.

Matterport's ``utils`` names and results, with its master's fixes (see mrcnn.utils). The
COCO-style evaluation of whole datasets (pycocotools) is mrcnn.evaluate, which also reports
this AP; this module stays importable without pycocotools.
"""

import numpy as np

from mrcnn.boxes import compute_overlaps
from mrcnn.masks import compute_overlaps_masks


def trim_zeros(x):
    """Drop the rows of a 2-D array that are all zeros (padding)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError("trim_zeros: expected a 2-D array, got shape {}".format(x.shape))
    return x[~np.all(x == 0, axis=1)]


def compute_matches(gt_boxes, gt_class_ids, gt_masks,
                    pred_boxes, pred_class_ids, pred_scores, pred_masks,
                    iou_threshold=0.5, score_threshold=0.0):
    """Greedy matching of predictions to ground truth by mask IoU.

    gt_boxes [G, 4], gt_class_ids [G], gt_masks [H, W, G]; pred_boxes [P, 4],
    pred_class_ids [P], pred_scores [P], pred_masks [H, W, P]. All-zero box rows are
    treated as padding and dropped (with their masks / scores).
    Predictions, highest score first, each take the unmatched GT of the same class with the
    highest IoU >= iou_threshold (GTs with IoU < score_threshold are not considered).
    Returns (gt_match [G] float: index of the matched prediction in score order or -1,
    pred_match [P] float: matched GT index or -1, overlaps [P, G] mask IoUs with
    predictions in score order).
    """
    gt_boxes = trim_zeros(gt_boxes)
    gt_masks = np.asarray(gt_masks)[..., :gt_boxes.shape[0]]
    gt_class_ids = np.asarray(gt_class_ids)
    pred_boxes = trim_zeros(pred_boxes)
    pred_scores = np.asarray(pred_scores)[:pred_boxes.shape[0]]
    indices = np.argsort(pred_scores)[::-1]
    pred_class_ids = np.asarray(pred_class_ids)[indices]
    pred_masks = np.asarray(pred_masks)[..., indices]

    overlaps = compute_overlaps_masks(pred_masks, gt_masks)

    pred_match = -1 * np.ones([pred_boxes.shape[0]])
    gt_match = -1 * np.ones([gt_boxes.shape[0]])
    for i in range(pred_boxes.shape[0]):
        order = np.argsort(overlaps[i])[::-1]
        iou = overlaps[i, order]
        # Sorted by IoU, so these masks select prefixes, as Matterport's early breaks.
        ok = (iou >= score_threshold) & (iou >= iou_threshold) & (gt_match[order] == -1) \
            & (gt_class_ids[order] == pred_class_ids[i])
        hits = np.nonzero(ok)[0]
        if hits.size:
            j = order[hits[0]]
            gt_match[j] = i
            pred_match[i] = j
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks,
               pred_boxes, pred_class_ids, pred_scores, pred_masks,
               iou_threshold=0.5):
    """VOC-style average precision (all-point interpolation) at one mask-IoU threshold.

    Inputs as compute_matches. Returns (mAP, precisions, recalls, overlaps):
    precisions / recalls at each prediction in score order, padded with a leading 0 and
    trailing 0 / 1, precisions made non-increasing from the right. With no ground truth
    the AP is 0.0.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
        pred_masks, iou_threshold)

    tp = np.cumsum(pred_match > -1)
    precisions = tp / (np.arange(len(pred_match)) + 1)
    if len(gt_match):
        recalls = tp.astype(np.float32) / len(gt_match)
    else:
        recalls = np.zeros(len(pred_match), np.float32)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    # Precision at recall r = best precision at any recall >= r.
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    indices = np.where(recalls[:-1] != recalls[1:])[0] + 1
    mAP = np.sum((recalls[indices] - recalls[indices - 1]) * precisions[indices])
    return mAP, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask,
                     pred_box, pred_class_id, pred_score, pred_mask,
                     iou_thresholds=None, verbose=1):
    """Mean of compute_ap over IoU thresholds (default 0.5, 0.55, ..., 0.95)."""
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 1.0, 0.05)
    aps = []
    for iou_threshold in iou_thresholds:
        ap = compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                        pred_score, pred_mask, iou_threshold=iou_threshold)[0]
        if verbose:
            print("AP @{:.2f}:\t {:.3f}".format(iou_threshold, ap))
        aps.append(ap)
    ap = np.array(aps).mean()
    if verbose:
        print("AP @{:.2f}-{:.2f}:\t {:.3f}".format(iou_thresholds[0], iou_thresholds[-1],
                                                   ap))
    return ap


def compute_recall(pred_boxes, gt_boxes, iou):
    """Fraction of GT boxes that some prediction overlaps with IoU >= iou.

    pred_boxes: [P, 4], gt_boxes: [G, 4] pixels. Each prediction counts for its best GT.
    Returns (recall, positive_ids): positive_ids are the predictions whose best IoU >= iou.
    """
    gt_boxes = np.asarray(gt_boxes)
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    if overlaps.shape[0] == 0 or overlaps.shape[1] == 0:
        return 0.0, np.zeros([0], dtype=np.int64)
    iou_max = np.max(overlaps, axis=1)
    iou_argmax = np.argmax(overlaps, axis=1)
    positive_ids = np.where(iou_max >= iou)[0]
    recall = len(set(iou_argmax[positive_ids].tolist())) / gt_boxes.shape[0]
    return recall, positive_ids
