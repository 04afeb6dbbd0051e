"""Instance masks (numpy): resizing with an image, mini masks, mask IoU.

Masks are bool (or 0/1) arrays [H, W, N], one channel per instance, in the pixels of their
image. ``resize_mask`` follows an image through mrcnn.preprocess.resize_image (same scale,
padding and crop); ``minimize_mask`` / ``expand_mask`` convert to and from the
box-relative "mini masks" (config.MINI_MASK_SHAPE) the training pipeline stores. Pasting
the mask head's small float masks into an image (unmold_mask / unmold_masks) is part of
unmolding detections and lives beside its graph version in mrcnn.preprocess.
``polygon_mask`` / ``polygon_pixels`` rasterise polygon annotations (the pixels of
skimage.draw.polygon, vectorised).
"""

import math
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


# skimage's point_in_polygon (skimage/_shared/geometry.pyx) counts a point within this
# distance of a vertex (in both coordinates) as on the vertex, hence inside.
_VERTEX_EPS = 1e-12


def _crossing_value(x_cur, y_cur, x_prev, y_prev, c, r):
    """skimage's crossing test value of the edge (prev -> cur) for the point (c, r): > 0
    when the edge crosses row r right of c, < 0 left of it. Same float64 operations in
    the same order as skimage (the exact sign near the edge depends on the rounding)."""
    x0 = x_cur - c
    y0 = y_cur - r
    x1 = x_prev - c
    y1 = y_prev - r
    return (x0 * y1 - x1 * y0) / (y1 - y0)


def _first_true(pred, lo, hi):
    """Per element, the smallest integer c in [lo, hi] with pred(c, index) true, hi when
    none is (pred non-decreasing in c). Vectorised bisection."""
    lo, hi = lo.copy(), hi.copy()
    idx = np.arange(len(lo))
    while True:
        active = np.flatnonzero(lo < hi)
        if len(active) == 0:
            return lo
        mid = (lo[active] + hi[active]) // 2
        p = pred(mid, idx[active])
        hi[active] = np.where(p, mid, hi[active])
        lo[active] = np.where(p, lo[active], mid + 1)


def _polygon_window(rows, cols, shape):
    """The pixels skimage.draw.polygon tests, and which are inside.

    Returns (r0, c0, inside): inside is bool [h, w] over rows r0..r0+h-1 and columns
    c0..c0+w-1 (h or w may be 0). See polygon_pixels for the rule.
    """
    ys = np.atleast_1d(np.asarray(rows))
    xs = np.atleast_1d(np.asarray(cols))
    if ys.ndim != 1 or xs.shape != ys.shape:
        raise ValueError("polygon: rows and cols must be 1-D of the same length, got "
                         "shapes {} and {}".format(ys.shape, xs.shape))
    if ys.size == 0:
        raise ValueError("polygon: no vertices")
    # skimage tests in float64 (exact for int, float16 and float32 vertices).
    ys = ys.astype(np.float64)
    xs = xs.astype(np.float64)
    if not (np.isfinite(ys).all() and np.isfinite(xs).all()):
        raise ValueError("polygon: vertex coordinates must be finite")
    # skimage's window: from max(0, min) truncated to ceil(max), capped by shape - 1.
    minr, maxr = int(max(0.0, ys.min())), math.ceil(ys.max())
    minc, maxc = int(max(0.0, xs.min())), math.ceil(xs.max())
    if shape is not None:
        maxr = min(int(shape[0]) - 1, maxr)
        maxc = min(int(shape[1]) - 1, maxc)
    h, w = maxr - minr + 1, maxc - minc + 1
    if h <= 0 or w <= 0:
        return minr, minc, np.zeros((max(h, 0), max(w, 0)), dtype=bool)

    # skimage's point_in_polygon (O'Rourke) for the point (c, r), edge i from vertex i-1
    # to vertex i: a right crossing when exactly one end has y > r and the crossing value
    # is > 0, a left crossing when exactly one end has y < r and the value is < 0. Inside
    # (or on the boundary) when either count is odd, or the point is on a vertex (eps).
    # Per row, the value is non-increasing in c (IEEE rounding is monotone and the edge's
    # ends have opposite signs of y - r), so each (edge, row) pair is a threshold column:
    # k_right = first c with value <= 0, k_left = first c with value < 0. A row has an
    # even count of each kind of edge (a closed polygon crosses a level an even number of
    # times), so the parity of "c < k_right" equals that of "c >= k_right": a toggle at
    # k_right (resp. k_left), and a running xor along the row gives both parities.
    xp, yp = np.roll(xs, 1), np.roll(ys, 1)
    lo, hi = np.minimum(ys, yp), np.maximum(ys, yp)
    first = np.clip(np.ceil(lo), minr, maxr + 1).astype(np.int64)
    last = np.clip(np.floor(hi), minr - 1, maxr).astype(np.int64)
    count = np.maximum(last - first + 1, 0)  # rows with lo <= r <= hi
    edge = np.repeat(np.arange(len(xs)), count)
    row = first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count))
    rowf = row.astype(np.float64)
    x0, y0, x1, y1 = xs[edge], ys[edge], xp[edge], yp[edge]
    right = (y0 > rowf) != (y1 > rowf)  # the sign of y - r as skimage computes it
    left = (y0 < rowf) != (y1 < rowf)
    keep = right | left  # drops horizontal edges lying on a row
    row, rowf, right, left = row[keep], rowf[keep], right[keep], left[keep]
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]

    # Thresholds: evaluate skimage's value at 4 columns around an estimate of the crossing
    # and count; fall back to bisection where the 4 do not bracket it (the estimate or
    # skimage's rounding off by more than a pixel: coordinates far beyond the image).
    cross = x1 + (x0 - x1) * ((rowf - y1) / (y0 - y1))
    base = np.floor(np.clip(cross, minc - 1, maxc + 1)).astype(np.int64) - 1
    q = _crossing_value(x0[:, None], y0[:, None], x1[:, None], y1[:, None],
                        (base[:, None] + np.arange(4)).astype(np.float64), rowf[:, None])
    # Candidates past the window's ends need not bracket: thresholds get clipped to it.
    at_left, at_right = base <= minc, base + 3 > maxc
    k_right = base + np.count_nonzero(q > 0, axis=1)
    k_left = base + np.count_nonzero(q >= 0, axis=1)
    lo_c, hi_c = np.full(len(base), minc, np.int64), np.full(len(base), maxc + 1, np.int64)
    ok_right = ((q[:, 0] > 0) | at_left) & ((q[:, 3] <= 0) | at_right)
    ok_left = ((q[:, 0] >= 0) | at_left) & ((q[:, 3] < 0) | at_right)
    for k, ok, strict in ((k_right, ok_right, False), (k_left, ok_left, True)):
        bad = np.flatnonzero(~ok)
        if len(bad):
            def pred(c, i, bad=bad, strict=strict):
                v = _crossing_value(x0[bad[i]], y0[bad[i]], x1[bad[i]], y1[bad[i]],
                                    c.astype(np.float64), rowf[bad[i]])
                return v < 0 if strict else v <= 0
            k[bad] = _first_true(pred, lo_c[bad], hi_c[bad])

    # Toggles in a [h, w + 1] grid (the extra column takes thresholds past the window),
    # bit 1 for right crossings, bit 2 for left ones; toggles at one place cancel in pairs.
    stride = w + 1
    offset = (row - minr) * stride - minc
    keys = np.concatenate([(offset + np.clip(k_right, minc, maxc + 1))[right] * 2,
                           (offset + np.clip(k_left, minc, maxc + 1))[left] * 2 + 1])
    keys, n = np.unique(keys, return_counts=True)
    keys = keys[n % 2 == 1]
    pos = keys >> 1
    state = np.bitwise_xor.accumulate((1 + (keys & 1)).astype(np.uint8))
    # Runs between toggle positions: the grid is np.repeat of each run's state (each
    # row's toggles cancel out, so a row starts at 0).
    last_at = np.ones(len(pos), dtype=bool)
    last_at[:-1] = pos[1:] != pos[:-1]
    starts = np.concatenate([[0], pos[last_at]])
    values = np.concatenate([[0], state[last_at]]) != 0
    lengths = np.diff(np.append(starts, h * stride))
    inside = np.repeat(values, lengths).reshape(h, stride)[:, :w]

    # Pixels on a vertex, as skimage snaps them (same subtraction, same eps).
    vc, vr = np.rint(xs), np.rint(ys)
    dx, dy = xs - vc, ys - vr
    hit = ((-_VERTEX_EPS < dx) & (dx < _VERTEX_EPS) & (-_VERTEX_EPS < dy) & (dy < _VERTEX_EPS)
           & (vr >= minr) & (vr <= maxr) & (vc >= minc) & (vc <= maxc))
    inside[vr[hit].astype(np.int64) - minr, vc[hit].astype(np.int64) - minc] = True
    return minr, minc, inside


def polygon_pixels(rows, cols, shape=None):
    """Pixels of a polygon: bit-identical to ``skimage.draw.polygon(rows, cols, shape)``.

    rows, cols: [N] vertex coordinates (row = y, column = x) in pixel-index units as
    skimage's: pixel (r, c) is the point (r, c), so a pixel centre at 0.5 in continuous
    coordinates (VIA, COCO, labelme) is -0.5 here. Any real dtype (int, float32: made
    float64 as skimage does), finite values, any position (parts outside the image or
    at negative coordinates are cut off), self-intersecting polygons (even-odd rule),
    degenerate ones (fewer than 3 vertices, repeated vertices, zero area: same rule).
    shape: (H, W, ...) or None (then no upper limit). Returns (rr, cc), intp [K] each,
    in skimage's order (row-major).

    Same result because the same predicate is evaluated on the same float64 numbers:
    skimage (0.26) tests every pixel of its window with point_in_polygon, O'Rourke's
    crossing rule that also counts the boundary (edges and vertices, within 1e-12) as
    inside. Here the crossing value of each (edge, row) pair is skimage's expression in
    its operation order, evaluated only at the few columns next to the crossing (the
    value is monotone along a row), and rows are filled between crossings: numpy work
    in the (edge, row) crossings plus one pass over the window, instead of skimage's test
    of every window pixel against every edge. The window is skimage's (rows
    int(max(0, min(rows))) .. ceil(max(rows)), capped at shape[0] - 1; columns alike).
    """
    r0, c0, inside = _polygon_window(rows, cols, shape)
    rr, cc = np.nonzero(inside)
    return rr + r0, cc + c0


def polygon_mask(rows, cols, shape):
    """bool [H, W] mask of a polygon: True exactly at the pixels of
    ``skimage.draw.polygon(rows, cols, shape)`` (see polygon_pixels for the conventions
    and why it is identical). rows, cols: [N] vertex coordinates in pixel-index units.
    shape: (H, W, ...); only H and W are used."""
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), dtype=bool)
    r0, c0, inside = _polygon_window(rows, cols, (height, width))
    mask[r0:r0 + inside.shape[0], c0:c0 + inside.shape[1]] = inside
    return mask
