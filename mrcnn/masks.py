"""Instance masks (numpy): resizing with an image, mini masks, mask IoU.

Masks are bool (or 0/1) arrays [H, W, N], one channel per instance, in the pixels of their
image. ``resize_mask`` follows an image through mrcnn.preprocess.resize_image (same scale,
padding and crop); ``minimize_mask`` / ``expand_mask`` convert to and from the
box-relative "mini masks" (config.MINI_MASK_SHAPE) the training pipeline stores. Pasting
the mask head's small float masks into an image (unmold_mask / unmold_masks) is part of
unmolding detections and lives beside its graph version in mrcnn.preprocess.
"""

import warnings

import numpy as np
import scipy.ndimage

from mrcnn.boxes import _safe_divide
from mrcnn.preprocess import pad_for, resize


def compute_overlaps_masks(masks1, masks2):
    """IoU matrix of two sets of masks.

    masks1: [H, W, N1], masks2: [H, W, N2]; a pixel is inside when its value > 0.5.
    Returns float32 [N1, N2] (float64 zeros [N1, N2] when either set is empty).
    """
    masks1 = np.asarray(masks1)
    masks2 = np.asarray(masks2)
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]))
    m1 = np.reshape(masks1 > .5, (-1, masks1.shape[-1])).astype(np.float32)
    m2 = np.reshape(masks2 > .5, (-1, masks2.shape[-1])).astype(np.float32)
    area1 = np.sum(m1, axis=0)
    area2 = np.sum(m2, axis=0)
    intersections = np.dot(m1.T, m2)
    union = area1[:, None] + area2[None, :] - intersections
    return _safe_divide(intersections, union)


def _zoom_rows(n_in, scale):
    """Source index of each output row of scipy.ndimage.zoom(order=0) along an axis of
    n_in pixels: int64 [round(n_in * scale)], -1 where zoom reads outside the input (its
    last coordinate can round past the edge when shrinking) and so writes 0. Order-0
    zoom maps each axis on its own, so zooming arange(n_in) gives exactly the rows a
    zoom of the whole array picks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scipy.ndimage.zoom(np.arange(n_in, dtype=np.int64), scale, order=0,
                                  mode="constant", cval=-1)


def _gather_zoom(mask, rows, cols):
    """mask[rows][:, cols] with rows / columns of index -1 set to 0."""
    out = mask[np.maximum(rows, 0)][:, np.maximum(cols, 0)]
    out[rows < 0] = 0
    out[:, cols < 0] = 0
    return out


def resize_mask(mask, scale, padding, crop=None):
    """Resize masks with the scale / padding / crop returned by resize_image.

    mask: [H, W, N] (or [H, W]). Nearest-neighbour zoom (scipy.ndimage.zoom, order 0, as
    Matterport) to round(H * scale) x round(W * scale), then the crop if given, else the
    padding. Returns the same dtype.
    The zoom is done as a gather of source rows and columns (identical to zooming the
    array), and with a crop only the cropped rows and columns are gathered: upscaling a
    stack of hundreds of full-image masks and then keeping a small crop would cost far
    more than the training step it feeds.
    """
    mask = np.asarray(mask)
    # Output rows / columns kept: the crop's, else all of them.
    keep_rows, keep_cols = ((slice(crop[0], crop[0] + crop[2]), slice(crop[1], crop[1] + crop[3]))
                            if crop is not None else (slice(None), slice(None)))
    if scale == 1:
        mask = mask[keep_rows, keep_cols]
    else:
        mask = _gather_zoom(mask, _zoom_rows(mask.shape[0], scale)[keep_rows],
                            _zoom_rows(mask.shape[1], scale)[keep_cols])
    if crop is not None:
        return mask
    return np.pad(mask, pad_for(padding, mask.ndim), mode="constant", constant_values=0)


def minimize_mask(bbox, mask, mini_shape):
    """Crop each instance mask to its box and resize it to ``mini_shape``.

    bbox: [N, (y1, x1, y2, x2)] ints. mask: [H, W, N]. mini_shape: (h, w).
    Returns bool [h, w, N] (bilinear resize, then rounded). Undo with expand_mask.
    """
    mini_shape = tuple(int(s) for s in mini_shape)
    mask = np.asarray(mask)
    mini_mask = np.zeros(mini_shape + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        m = mask[y1:y2, x1:x2, i].astype(bool)
        if m.size == 0:
            raise ValueError("minimize_mask: instance {} has a box {} of area zero".format(
                i, (y1, x1, y2, x2)))
        mini_mask[:, :, i] = np.around(resize(m, mini_shape)).astype(bool)
    return mini_mask


def expand_mask(bbox, mini_mask, image_shape):
    """Inverse of minimize_mask: paste each mini mask back into its box.

    bbox: [N, (y1, x1, y2, x2)] ints. mini_mask: [h, w, N]. image_shape: (H, W[, C]).
    Returns bool [H, W, N]. Instances with an empty box stay empty.
    """
    mini_mask = np.asarray(mini_mask)
    mask = np.zeros(tuple(int(s) for s in image_shape[:2]) + (mini_mask.shape[-1],),
                    dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        if y2 <= y1 or x2 <= x1:
            continue
        m = resize(mini_mask[:, :, i], (y2 - y1, x2 - x1))
        mask[y1:y2, x1:x2, i] = np.around(m).astype(bool)
    return mask
