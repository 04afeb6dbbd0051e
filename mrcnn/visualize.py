"""Drawing helpers for images, instances, ROIs, matches, metrics and training losses.

The public names follow Matterport's Mask_RCNN ``visualize`` module. Differences:

* Headless-safe. On Linux with no display (and no explicit MPLBACKEND, not inside a
  Jupyter kernel) matplotlib is switched to Agg at import. ``plt.show()`` is only called
  for figures a function created itself and only with an interactive backend (inline
  notebooks included). With a non-interactive backend a figure written to ``save_path``
  is closed (scripts do not leak figures); one without ``save_path`` stays current so
  ``plt.savefig`` works right after, as with Matterport.
* Every plotting function takes an optional ``ax`` to draw into and an optional
  ``save_path`` (PNG written at the figure's own size: figsize * dpi pixels), and returns
  the matplotlib Figure.

Boxes are (y1, x1, y2, x2) in pixels; masks are [H, W, N] stacks.
"""

import colorsys
import html
import itertools
import math
import os
import random
import sys

import matplotlib
import numpy as np


def _no_display():
    """True when nothing could show a window: Linux without DISPLAY/WAYLAND_DISPLAY."""
    if os.environ.get("MPLBACKEND"):
        return False  # the user chose a backend explicitly
    if "ipykernel" in sys.modules:
        return False  # notebooks pick their own (inline) backend
    if sys.platform.startswith("linux"):
        return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return False


# Only before pyplot is imported: switching later would close the user's figures.
if "matplotlib.pyplot" not in sys.modules and _no_display():
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import lines, patches  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from skimage.measure import find_contours  # noqa: E402

from mrcnn import utils  # noqa: E402

_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


# --------------------------------------------------------------------------- figure plumbing

def is_interactive_backend():
    """True if the current matplotlib backend can show figures (GUI or notebook inline)."""
    return matplotlib.get_backend().lower() not in _NON_INTERACTIVE


def _new_axes(ax, figsize):
    """Return (fig, ax, created): the given ax and its figure, or a new figure."""
    if ax is not None:
        return ax.figure, ax, False
    fig, ax = plt.subplots(1, figsize=figsize)
    return fig, ax, True


def _framed_canvas(ax, image, margin, title):
    """Frame ``ax`` around the image (``margin`` pixels each side, no axis, ``title``) and
    return a float32 RGB copy of the image for masks to be painted on."""
    height, width = image.shape[:2]
    ax.set_ylim(height + margin, -margin)
    ax.set_xlim(-margin, width + margin)
    ax.axis("off")
    ax.set_title(title)
    canvas = image.astype(np.float32).copy()
    if canvas.ndim == 2:
        canvas = np.repeat(canvas[:, :, None], 3, axis=2)
    return canvas


def _finish(fig, save_path, created):
    """Save (if asked), then show or close a figure this module created. Returns fig.

    With a non-interactive backend a created figure is closed only once it was written to
    save_path; otherwise it stays the current figure so Matterport-style scripts can call
    ``plt.savefig`` right after (and ``plt.close`` when done).
    """
    if save_path:
        directory = os.path.dirname(os.path.abspath(save_path))
        os.makedirs(directory, exist_ok=True)
        # The figure's own dpi keeps the PNG at exactly figsize * dpi pixels.
        fig.savefig(save_path, dpi=fig.dpi)
    if created:
        if is_interactive_backend():
            plt.show()
        elif save_path:
            plt.close(fig)
    return fig


def _rgb(color):
    """Any matplotlib colour -> (r, g, b) floats in [0, 1]."""
    return mcolors.to_rgb(color)


def _as_image(image, name="image"):
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError("{} must be [H, W] or [H, W, C], got shape {}".format(name, image.shape))
    return image


def _to_uint8(image):
    """Image for imshow: uint8 for RGB data (clipped), unchanged for 2-D arrays."""
    image = np.asarray(image)
    if image.ndim == 3:
        if image.dtype == np.uint8:
            return image
        return np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image.astype(np.float32) if image.dtype == bool else image


def _draw_contours(ax, mask, color):
    """Outline a binary mask [H, W] on ax (padded so masks touching the border close)."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    for verts in find_contours(padded, 0.5):
        # (row, col) -> (x, y), minus the padding offset.
        verts = np.fliplr(verts) - 1
        ax.add_patch(Polygon(verts, facecolor="none", edgecolor=color))


# --------------------------------------------------------------------------- basics

def random_colors(N, bright=True, shuffle=True, seed=None):
    """N distinct colours as (r, g, b) tuples in [0, 1].

    Hues are evenly spaced (i / N); brightness 1.0 if bright else 0.7. shuffle=False keeps
    hue order (deterministic); seed makes the shuffle reproducible (default: the global
    ``random`` state, as Matterport).
    """
    N = int(N)
    if N < 0:
        raise ValueError("random_colors: N must be >= 0, got {}".format(N))
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / max(N, 1), 1.0, brightness) for i in range(N)]
    if shuffle:
        (random.Random(seed) if seed is not None else random).shuffle(colors)
    return colors


def apply_mask(image, mask, color, alpha=0.5):
    """Blend ``color`` into ``image`` where ``mask`` is set, IN PLACE (as Matterport).

    image: [H, W, C] array (uint8 0-255 or float in 0-255). mask: [H, W] (bool, 0/1 or
    0-255; set means >= 0.5). color: (r, g, b) in [0, 1] or any matplotlib colour.
    Pixels under the mask become ``(1 - alpha) * pixel + alpha * 255 * color``; others are
    untouched. Returns image.
    """
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError("apply_mask: mask shape {} does not match image shape {}".format(
            mask.shape, image.shape))
    on = mask >= 0.5
    rgb = _rgb(color)
    integer = np.issubdtype(image.dtype, np.integer)
    for c in range(min(3, image.shape[2])):
        blended = image[:, :, c][on] * (1 - alpha) + alpha * rgb[c] * 255
        if integer:
            blended = np.round(blended)
        image[:, :, c][on] = blended
    return image


def draw_box(image, box, color, thickness=2):
    """Draw a box outline into an image array IN PLACE and return it.

    box: (y1, x1, y2, x2) pixels; lines of ``thickness`` pixels start at y1, y2, x1, x2
    (as Matterport). color: value(s) for one pixel, e.g. (255, 0, 0). Clipped to the image.
    """
    y1, x1, y2, x2 = [int(round(v)) for v in box]
    h, w = image.shape[:2]
    t = int(thickness)

    def put(ys, ye, xs, xe):
        ys, ye, xs, xe = max(ys, 0), min(ye, h), max(xs, 0), min(xe, w)
        if ys < ye and xs < xe:
            image[ys:ye, xs:xe] = color

    put(y1, y1 + t, x1, x2)
    put(y2, y2 + t, x1, x2)
    put(y1, y2, x1, x1 + t)
    put(y1, y2, x2, x2 + t)
    return image


def draw_instances(image, r, class_names, alpha=0.5):
    """A uint8 RGB copy of ``image`` [H, W, 3] with each detection of ``r`` (detect()'s
    result: rois, masks [H, W, N], class_ids, scores) drawn in: mask blended, one-pixel
    box, "class score" label. Array drawing (OpenCV for the text), no figure: fast
    enough for every frame of a video (``python -m mrcnn detect`` on a video)."""
    import cv2
    out = np.array(_to_uint8(image)[..., :3], dtype=np.uint8, copy=True)
    n = len(r["class_ids"])
    for i, color in enumerate(random_colors(n, shuffle=False)):
        apply_mask(out, r["masks"][..., i], color, alpha)
        rgb = tuple(int(255 * c) for c in color)
        draw_box(out, r["rois"][i], rgb, thickness=1)
        y1, x1 = (int(v) for v in r["rois"][i][:2])
        label = "{} {:.2f}".format(class_names[r["class_ids"][i]], r["scores"][i])
        cv2.putText(out, label, (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, rgb,
                    1, cv2.LINE_AA)
    return out


def display_images(images, titles=None, cols=4, cmap=None, norm=None, interpolation=None,
                   ax=None, save_path=None, figsize=None):
    """Show images in a grid of ``cols`` columns.

    images: list of [H, W, 3] or [H, W] arrays. titles: optional list of strings.
    ax: optional sequence of at least len(images) Axes (or one Axes for one image).
    Returns the Figure.
    """
    images = list(images)
    if not images:
        raise ValueError("display_images: no images given")
    titles = list(titles) if titles is not None else [None] * len(images)
    if len(titles) != len(images):
        raise ValueError("display_images: {} titles for {} images".format(len(titles),
                                                                         len(images)))
    if ax is not None:
        axes = [ax] if not isinstance(ax, (list, tuple, np.ndarray)) else list(np.ravel(ax))
        if len(axes) < len(images):
            raise ValueError("display_images: {} axes for {} images".format(len(axes),
                                                                           len(images)))
        fig, created = axes[0].figure, False
    else:
        cols = max(1, min(int(cols), len(images)))
        rows = math.ceil(len(images) / cols)
        fig = plt.figure(figsize=figsize or (14, 14 * rows / cols))
        axes = [fig.add_subplot(rows, cols, i + 1) for i in range(len(images))]
        created = True
    for a, image, title in zip(axes, images, titles):
        image = _as_image(image)
        if title:
            a.set_title(title, fontsize=9)
        a.axis("off")
        a.imshow(_to_uint8(image), cmap=cmap, norm=norm, interpolation=interpolation)
    return _finish(fig, save_path, created)


# --------------------------------------------------------------------------- instances

def _check_instances(boxes, masks, class_ids, class_names, image):
    boxes = np.asarray(boxes).reshape(-1, 4) if boxes is not None else np.zeros((0, 4))
    n = boxes.shape[0]
    class_ids = np.asarray(class_ids).reshape(-1) if class_ids is not None else None
    if class_ids is not None and class_ids.shape[0] != n:
        raise ValueError("{} boxes but {} class_ids".format(n, class_ids.shape[0]))
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[2] != n:
            raise ValueError("masks must be [H, W, {}] for {} boxes, got {}".format(
                n, n, masks.shape))
        if masks.shape[:2] != image.shape[:2]:
            raise ValueError("masks are {}x{} but the image is {}x{}".format(
                masks.shape[0], masks.shape[1], image.shape[0], image.shape[1]))
    if class_ids is not None and class_names is not None and n:
        bad = (class_ids < 0) | (class_ids >= len(class_names))
        if np.any(bad):
            raise ValueError("class ids {} are outside class_names (length {})".format(
                class_ids[bad].tolist(), len(class_names)))
    return boxes, masks, class_ids


def display_instances(image, boxes, masks, class_ids, class_names, scores=None, title="",
                      figsize=(16, 16), ax=None, show_mask=True, show_bbox=True,
                      colors=None, captions=None, save_path=None):
    """Draw detected or ground-truth instances over an image.

    image: [H, W, 3]. boxes: [N, 4] (y1, x1, y2, x2) pixels; all-zero rows are skipped.
    masks: [H, W, N] bool or None. class_ids: [N] ints indexing class_names.
    scores: optional [N]. colors: optional list of N colours. captions: optional list of N
    strings replacing "class score". Returns the Figure.
    """
    image = _as_image(image)
    boxes, masks, class_ids = _check_instances(boxes, masks, class_ids, class_names, image)
    n = boxes.shape[0]
    if not n:
        print("\n*** No instances to display *** \n")
    if colors is not None and len(colors) < n:
        raise ValueError("display_instances: {} colors for {} instances".format(len(colors),
                                                                                 n))
    if captions is not None and len(captions) < n:
        raise ValueError("display_instances: {} captions for {} instances".format(
            len(captions), n))
    colors = colors if colors is not None else random_colors(n)
    fig, ax, created = _new_axes(ax, figsize)

    canvas = _framed_canvas(ax, image, 10, title)
    for i in range(n):
        color = _rgb(colors[i])
        if not np.any(boxes[i]):
            continue  # zero padding (e.g. from a fixed-size detection tensor)
        y1, x1, y2, x2 = boxes[i]
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7,
                                           linestyle="dashed", edgecolor=color,
                                           facecolor="none"))
        if captions is not None:
            caption = captions[i]
        else:
            label = class_names[int(class_ids[i])]
            caption = ("{} {:.3f}".format(label, float(scores[i])) if scores is not None
                       else label)
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        if masks is not None:
            mask = masks[:, :, i]
            if show_mask:
                apply_mask(canvas, mask, color)
            _draw_contours(ax, mask, color)
    ax.imshow(_to_uint8(canvas))
    return _finish(fig, save_path, created)


def save_instances_png(path, image, r, class_names, title="", figsize=None, show_mask=True,
                       show_bbox=True, colors=None):
    """Draw a ``model.detect()`` result dict (rois, masks, class_ids, scores) and write a PNG.

    figsize defaults to the image's aspect ratio, long side max(6, min(16, long/100)) in.
    Returns path.
    """
    image = _as_image(image)
    for key in ("rois", "class_ids"):
        if key not in r:
            raise ValueError("save_instances_png: result dict has no {!r} key".format(key))
    if figsize is None:
        h, w = image.shape[:2]
        long_side = max(6.0, min(16.0, max(h, w) / 100.0))
        figsize = (long_side * w / max(h, w), long_side * h / max(h, w))
    display_instances(image, r["rois"], r.get("masks"), r["class_ids"], class_names,
                      scores=r.get("scores"), title=title, figsize=figsize,
                      show_mask=show_mask, show_bbox=show_bbox, colors=colors,
                      save_path=path)
    return path


def display_differences(image, gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                        pred_score, pred_mask, class_names, title="", ax=None,
                        show_mask=True, show_box=True, iou_threshold=0.5,
                        score_threshold=0.5, figsize=(16, 16), save_path=None):
    """Ground truth (green) and predictions (red) on one image; captions "score / IoU".

    Matching is utils.compute_matches' (greedy by score, same class, mask IoU >=
    iou_threshold; score_threshold is passed on as Matterport did, where it acts as a
    lower bound on the IoU). The IoU shown is with the matched GT, or the best IoU with
    any GT when unmatched. Returns the Figure.
    """
    image = _as_image(image)
    gt_box = np.asarray(gt_box).reshape(-1, 4)
    pred_box = np.asarray(pred_box).reshape(-1, 4)
    gt_class_id = np.asarray(gt_class_id).reshape(-1)
    pred_class_id = np.asarray(pred_class_id).reshape(-1)
    pred_score = np.asarray(pred_score, dtype=np.float64).reshape(-1)
    gt_mask = np.asarray(gt_mask).reshape(image.shape[0], image.shape[1], -1)
    pred_mask = np.asarray(pred_mask).reshape(image.shape[0], image.shape[1], -1)
    n_gt, n_pred = len(gt_class_id), len(pred_class_id)
    # compute_matches returns predictions in descending-score order: map them back.
    _, by_score, overlaps_by_score = utils.compute_matches(
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    # (compute_matches drops all-zero box rows at the end as padding.)
    order = np.argsort(pred_score[:len(by_score)])[::-1]
    pred_match = -np.ones(n_pred, dtype=np.int64)
    pred_match[order] = by_score.astype(np.int64)
    overlaps = np.zeros((n_pred, n_gt))
    overlaps[order, :overlaps_by_score.shape[1]] = overlaps_by_score
    colors = [(0, 1, 0, .8)] * n_gt + [(1, 0, 0, 1)] * n_pred
    captions = [""] * n_gt
    for i in range(n_pred):
        if pred_match[i] > -1:
            iou = overlaps[i, pred_match[i]]
        else:
            iou = overlaps[i].max() if n_gt else 0.0
        captions.append("{:.2f} / {:.2f}".format(pred_score[i], iou))
    title = title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU"
    return display_instances(
        image,
        np.concatenate([gt_box, pred_box]),
        np.concatenate([gt_mask, pred_mask], axis=-1),
        np.concatenate([gt_class_id, pred_class_id]).astype(np.int64),
        class_names,
        scores=np.concatenate([np.zeros(n_gt), pred_score]),
        title=title, figsize=figsize, ax=ax, show_mask=show_mask, show_bbox=show_box,
        colors=[c[:3] for c in colors], captions=captions, save_path=save_path)


def _paste_mask(mask, box, shape):
    """Resize a small float mask [mh, mw] into box (y1, x1, y2, x2) of a [H, W] canvas."""
    from skimage.transform import resize
    y1, x1, y2, x2 = [int(v) for v in box]
    full = np.zeros(shape[:2], dtype=bool)
    h, w = y2 - y1, x2 - x1
    if h <= 0 or w <= 0:
        return full
    small = resize(np.asarray(mask, dtype=np.float32), (h, w), order=1, mode="constant",
                   anti_aliasing=False) >= 0.5
    ys, xs = max(y1, 0), max(x1, 0)
    ye, xe = min(y2, shape[0]), min(x2, shape[1])
    if ys < ye and xs < xe:
        full[ys:ye, xs:xe] = small[ys - y1:ye - y1, xs - x1:xe - x1]
    return full


def draw_rois(image, rois, refined_rois, mask, class_ids, class_names, limit=10, ax=None,
              figsize=(12, 12), seed=None, save_path=None):
    """Show up to ``limit`` random ROIs: positives dashed with their refined box (solid),
    a line between them, class label and mask; negatives grey.

    rois, refined_rois: [N, 4] pixels. mask: [N, mh, mw] per-ROI masks (of the ROI's
    class) or None. class_ids: [N] target class per ROI (0 = negative).
    Returns the Figure.
    """
    image = _as_image(image)
    rois = np.asarray(rois).reshape(-1, 4)
    refined_rois = np.asarray(refined_rois).reshape(-1, 4)
    class_ids = np.asarray(class_ids).reshape(-1)
    n = rois.shape[0]
    if refined_rois.shape[0] != n or class_ids.shape[0] != n:
        raise ValueError("draw_rois: {} rois, {} refined_rois, {} class_ids".format(
            n, refined_rois.shape[0], class_ids.shape[0]))
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    if limit and n > limit:
        ids = rng.choice(ids, limit, replace=False)
    fig, ax, created = _new_axes(ax, figsize)
    if n > len(ids):
        ax.set_title("Showing {} random ROIs out of {}".format(len(ids), n))
    else:
        ax.set_title("{} ROIs".format(len(ids)))
    ax.set_ylim(image.shape[0] + 20, -20)
    ax.set_xlim(-50, image.shape[1] + 20)
    ax.axis("off")
    canvas = image.astype(np.float32).copy()
    for i in ids:
        color = tuple(rng.random(3))
        class_id = int(class_ids[i])
        y1, x1, y2, x2 = rois[i]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                       edgecolor=color if class_id else "gray",
                                       facecolor="none", linestyle="dashed"))
        if class_id:
            ry1, rx1, ry2, rx2 = refined_rois[i]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
            ax.text(rx1, ry1 + 8, class_names[class_id], color="w", size=11,
                    backgroundcolor="none")
            if mask is not None:
                apply_mask(canvas, _paste_mask(mask[i], rois[i], image.shape), color)
    ax.imshow(_to_uint8(canvas))
    print("Positive ROIs: ", int(np.sum(class_ids > 0)))
    print("Negative ROIs: ", int(np.sum(class_ids == 0)))
    if n:
        print("Positive Ratio: {:.2f}".format(float(np.sum(class_ids > 0)) / n))
    return _finish(fig, save_path, created)


def display_top_masks(image, mask, class_ids, class_names, limit=4, ax=None,
                      save_path=None, figsize=None):
    """The image next to the combined masks of the ``limit`` classes with the largest
    total mask area. mask: [H, W, N]; class_ids: [N]. Returns the Figure."""
    image = _as_image(image)
    mask = np.asarray(mask)
    class_ids = np.asarray(class_ids).reshape(-1)
    if mask.ndim != 3 or mask.shape[2] != class_ids.shape[0]:
        raise ValueError("display_top_masks: mask shape {} vs {} class ids".format(
            mask.shape, class_ids.shape[0]))
    to_display = [image]
    titles = ["H x W={}x{}".format(image.shape[0], image.shape[1])]
    unique = np.unique(class_ids)
    areas = [np.sum(mask[:, :, class_ids == c]) for c in unique]
    top = [c for a, c in sorted(zip(areas, unique), key=lambda t: -t[0]) if a > 0]
    for i in range(limit):
        class_id = top[i] if i < len(top) else -1
        sel = mask[:, :, class_ids == class_id].astype(np.float32)
        # Number each instance of the class so the colormap separates them.
        m = np.sum(sel * np.arange(1, sel.shape[-1] + 1), axis=-1)
        to_display.append(m)
        titles.append(class_names[int(class_id)] if class_id != -1 else "-")
    return display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r", ax=ax,
                          save_path=save_path, figsize=figsize or (14, 14 / (limit + 1)))


def plot_precision_recall(AP, precisions, recalls, ax=None, figsize=(6.4, 4.8),
                          save_path=None):
    """Precision-recall curve (from utils.compute_ap) titled with its AP. Returns Figure."""
    fig, ax, created = _new_axes(ax, figsize)
    ax.set_title("Precision-Recall Curve. AP@50 = {:.3f}".format(float(AP)))
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.plot(np.asarray(recalls), np.asarray(precisions))
    return _finish(fig, save_path, created)


def plot_overlaps(gt_class_ids, pred_class_ids, pred_scores, overlaps, class_names,
                  threshold=0.5, ax=None, figsize=(12, 10), save_path=None):
    """Grid of IoUs between predictions (rows) and ground truth (columns).

    overlaps: [N_pred, N_gt] in the order of the given arrays (class id 0 entries are
    dropped from the labels, as Matterport). Cells above ``threshold`` read "match"
    (same class) or "wrong". Returns the Figure.
    """
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    pred_class_ids = np.asarray(pred_class_ids).reshape(-1)
    pred_scores = np.asarray(pred_scores).reshape(-1)
    gt_class_ids = gt_class_ids[gt_class_ids != 0]
    pred_class_ids = pred_class_ids[pred_class_ids != 0]
    overlaps = np.asarray(overlaps, dtype=np.float64).reshape(len(pred_class_ids),
                                                              len(gt_class_ids))
    fig, ax, created = _new_axes(ax, figsize)
    ax.imshow(overlaps, interpolation="nearest", cmap=plt.cm.Blues, vmin=0, vmax=1)
    ax.set_yticks(np.arange(len(pred_class_ids)))
    ax.set_yticklabels(["{} ({:.2f})".format(class_names[int(c)], float(pred_scores[i]))
                        for i, c in enumerate(pred_class_ids)])
    ax.set_xticks(np.arange(len(gt_class_ids)))
    ax.set_xticklabels([class_names[int(c)] for c in gt_class_ids], rotation=90)
    half = overlaps.max() / 2.0 if overlaps.size else 0.5
    for i, j in itertools.product(range(overlaps.shape[0]), range(overlaps.shape[1])):
        v = overlaps[i, j]
        text = ""
        if v > threshold:
            text = "match" if gt_class_ids[j] == pred_class_ids[i] else "wrong"
        color = "white" if v > half else ("black" if v > 0 else "grey")
        ax.text(j, i, "{:.3f}\n{}".format(v, text), horizontalalignment="center",
                verticalalignment="center", fontsize=9, color=color)
    ax.set_xlabel("Ground Truth")
    ax.set_ylabel("Predictions")
    if created:
        fig.tight_layout()
    return _finish(fig, save_path, created)


def _check_draw_boxes_args(boxes, refined_boxes, masks, captions, visibilities):
    """draw_boxes' inputs as arrays (boxes [N, 4] or None, refined_boxes likewise, masks
    [H, W, N] or None), after checking that every per-box argument has N entries."""
    if boxes is None and refined_boxes is None:
        raise ValueError("draw_boxes: give boxes or refined_boxes")
    boxes = None if boxes is None else np.asarray(boxes).reshape(-1, 4)
    refined_boxes = None if refined_boxes is None else np.asarray(refined_boxes).reshape(-1, 4)
    n = boxes.shape[0] if boxes is not None else refined_boxes.shape[0]
    for name, arr in (("refined_boxes", refined_boxes), ("captions", captions),
                      ("visibilities", visibilities)):
        if arr is not None and len(arr) != n:
            raise ValueError("draw_boxes: {} has {} entries for {} boxes".format(
                name, len(arr), n))
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[2] != n:
            raise ValueError("draw_boxes: masks must be [H, W, {}], got {}".format(
                n, masks.shape))
    return boxes, refined_boxes, masks


def draw_boxes(image, boxes=None, refined_boxes=None, masks=None, captions=None,
               visibilities=None, title="", ax=None, figsize=(12, 12), save_path=None):
    """Draw boxes, refined boxes (with a line from box to refined box), captions and masks.

    boxes, refined_boxes: [N, 4] pixels (at least one given). masks: [H, W, N].
    visibilities: [N] of 0 (grey, dotted), 1 (colour, dotted) or 2 (colour, solid;
    default 1). Returns the Figure.
    """
    image = _as_image(image)
    boxes, refined_boxes, masks = _check_draw_boxes_args(boxes, refined_boxes, masks,
                                                         captions, visibilities)
    n = boxes.shape[0] if boxes is not None else refined_boxes.shape[0]
    fig, ax, created = _new_axes(ax, figsize)
    colors = random_colors(n)
    canvas = _framed_canvas(ax, image, image.shape[0] // 10, title)
    for i in range(n):
        visibility = visibilities[i] if visibilities is not None else 1
        if visibility == 0:
            color, style, alpha = _rgb("gray"), "dotted", 0.5
        elif visibility == 1:
            color, style, alpha = colors[i], "dotted", 1.0
        else:
            color, style, alpha = colors[i], "solid", 1.0
        if boxes is not None:
            if not np.any(boxes[i]):
                continue
            y1, x1, y2, x2 = boxes[i]
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                           alpha=alpha, linestyle=style, edgecolor=color,
                                           facecolor="none"))
        if refined_boxes is not None and visibility > 0:
            ry1, rx1, ry2, rx2 = refined_boxes[i]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            if boxes is not None:
                ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
        if captions is not None:
            cy1, cx1 = (refined_boxes[i][:2] if refined_boxes is not None else boxes[i][:2])
            ax.text(cx1, cy1, captions[i], size=11, verticalalignment="top", color="w",
                    backgroundcolor="none",
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 2, "edgecolor": "none"})
        if masks is not None:
            apply_mask(canvas, masks[:, :, i], color)
            _draw_contours(ax, masks[:, :, i], color)
    ax.imshow(_to_uint8(canvas))
    return _finish(fig, save_path, created)


# --------------------------------------------------------------------------- tables

def _in_notebook():
    """True inside a Jupyter kernel (where HTML output renders)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def format_table(table):
    """Rows of cells -> aligned plain-text table (first row is the header)."""
    rows = [[str(c) for c in row] for row in table]
    if not rows:
        return ""
    ncols = max(len(r) for r in rows)
    rows = [r + [""] * (ncols - len(r)) for r in rows]
    widths = [max(len(r[c]) for r in rows) for c in range(ncols)]
    lines_ = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines_.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines_)


def display_table(table):
    """Show a table (list of rows, first row = header): HTML in a notebook, text elsewhere.

    Cells containing "***" (warnings) are shown in red in HTML. Returns the text shown
    (the HTML string in a notebook, the text table otherwise).
    """
    if _in_notebook():
        try:
            from IPython.display import HTML, display
        except ImportError:
            pass
        else:
            out = []
            for r, row in enumerate(table):
                tag = "th" if r == 0 else "td"
                cells = []
                for cell in row:
                    text = html.escape(str(cell))
                    if "***" in text:
                        text = "<span style='color:red'>{}</span>".format(text)
                    cells.append("<{0} style='text-align:left'>{1}</{0}>".format(tag, text))
                out.append("<tr>" + "".join(cells) + "</tr>")
            markup = "<table>" + "".join(out) + "</table>"
            display(HTML(markup))
            return markup
    text = format_table(table)
    print(text)
    return text


def _weight_layers(model):
    """Layers that own weights; nested models are opened (wrappers such as
    TimeDistributed are kept whole, their weights are the wrapped layer's)."""
    if hasattr(model, "get_trainable_layers"):
        return list(model.get_trainable_layers())
    model = getattr(model, "keras_model", model)
    out = []

    def walk(layer):
        sub = getattr(layer, "layers", None)
        if isinstance(sub, list) and sub:
            for child in sub:  # nested model: list its own layers
                walk(child)
        elif layer.weights:
            out.append(layer)

    if not hasattr(model, "layers"):
        raise ValueError("display_weight_stats: {} has no layers (give a MaskRCNN or a "
                         "keras.Model)".format(type(model).__name__))
    for layer in model.layers:
        walk(layer)
    return out


def display_weight_stats(model):
    """Table of every weight: name, shape, min, max, std; flags suspicious ones.

    model: a MaskRCNN (uses get_trainable_layers / keras_model) or a keras.Model.
    "*** dead?" marks a non-bias weight whose values are all equal; "*** Overflow?" one
    with |value| > 1000. Returns the rows (header first).
    """
    rows = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]]
    for layer in _weight_layers(model):
        for var, w in zip(layer.weights, layer.get_weights()):
            w = np.asarray(w)
            name = getattr(var, "path", None) or var.name
            alert = ""
            if w.size:
                if w.min() == w.max() and not str(name).endswith("bias"):
                    alert += " *** dead?"
                if np.abs(w).max() > 1000:
                    alert += " *** Overflow?"
                stats = ["{:+9.4f}".format(float(w.min())), "{:+10.4f}".format(float(w.max())),
                         "{:+9.4f}".format(float(w.std()))]
            else:
                stats = ["", "", ""]
            rows.append([str(name) + alert, str(w.shape)] + stats)
    display_table(rows)
    return rows


# --------------------------------------------------------------------------- training losses

def read_tensorboard_scalars(logdir):
    """Read every scalar from the TensorBoard event files under ``logdir``.

    Returns {run: {tag: (steps int64 [K], values float64 [K])}} where run is the event
    file's directory relative to logdir ("" for logdir itself, e.g. "train",
    "validation"), sorted by step (a repeated step keeps the last value written). Reads
    both TF1 ``simple_value`` and TF2 scalar tensors; a truncated last record (training
    still running) is tolerated.
    """
    if not os.path.isdir(logdir):
        raise FileNotFoundError("TensorBoard log directory not found: {}".format(logdir))
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    files = []
    for dirpath, _, filenames in os.walk(logdir):
        files += [os.path.join(dirpath, f) for f in filenames if "tfevents" in f]
    if not files:
        raise ValueError("no TensorBoard event files (*tfevents*) under {}".format(logdir))
    raw = {}
    for path in sorted(files):
        run = os.path.relpath(os.path.dirname(path), logdir)
        run = "" if run == "." else run.replace(os.sep, "/")
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                for v in event.summary.value:
                    kind = v.WhichOneof("value")
                    if kind == "simple_value":
                        value = float(v.simple_value)
                    elif kind == "tensor":
                        arr = tf.make_ndarray(v.tensor)
                        if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
                            continue  # images, histograms, text
                        value = float(arr.reshape(()))
                    else:
                        continue
                    raw.setdefault(run, {}).setdefault(v.tag, []).append(
                        (event.wall_time, int(event.step), value))
        except tf.errors.DataLossError:
            pass  # file being written: keep what was read
    out = {}
    for run, tags in raw.items():
        for tag, entries in tags.items():
            by_step = {}
            for _, step, value in sorted(entries, key=lambda e: e[0]):
                by_step[step] = value  # later writes of a step win (restarted runs)
            steps = np.array(sorted(by_step), dtype=np.int64)
            out.setdefault(run, {})[tag] = (steps, np.array([by_step[s] for s in steps],
                                                            dtype=np.float64))
    return out


def _series_from_tensorboard(scalars):
    """Map runs/tags to History-style names: train/epoch_X -> X, validation/epoch_X ->
    val_X, other runs get "run/" as prefix."""
    series = {}
    for run, tags in scalars.items():
        for tag, (steps, values) in tags.items():
            if tag.endswith("_vs_iterations"):
                continue  # Keras' duplicate of the validation curve per iteration
            name = tag[len("epoch_"):] if tag.startswith("epoch_") else tag
            if run in ("validation", "val", "eval"):
                name = "val_" + name
            elif run not in ("train", ""):
                name = run + "/" + name
            series[name] = (steps, values)
    return series, "step"


def _series_from_history(history):
    hist = getattr(history, "history", history)
    if not isinstance(hist, dict):
        raise ValueError("plot_losses: expected a Keras History, a dict of lists or a log "
                         "directory, got {}".format(type(history).__name__))
    series = {}
    for name, values in hist.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        series[name] = (np.arange(1, len(values) + 1), values)
    return series, "epoch"


def plot_losses(history_or_logdir, save_path=None, ax=None, figsize=None, losses_only=True):
    """Plot training (and validation) curves.

    history_or_logdir: a Keras History, a dict {name: [value per epoch]}, or a TensorBoard
    log directory (read with read_tensorboard_scalars; runs "train" and "validation" as
    written by keras.callbacks.TensorBoard). "val_X" is drawn in the same panel as "X".
    losses_only: keep only names containing "loss" (if any do). ax: draw every curve into
    this one Axes instead of one panel per loss. Returns the Figure.
    """
    if isinstance(history_or_logdir, (str, os.PathLike)):
        series, xlabel = _series_from_tensorboard(read_tensorboard_scalars(
            os.fspath(history_or_logdir)))
    else:
        series, xlabel = _series_from_history(history_or_logdir)
    if losses_only and any("loss" in k for k in series):
        series = {k: v for k, v in series.items() if "loss" in k}
    if not series:
        raise ValueError("plot_losses: nothing to plot")

    def base(name):
        return name[4:] if name.startswith("val_") else name.replace("/val_", "/")

    panels = []
    for name in series:
        b = base(name)
        if b not in panels:
            panels.append(b)
    # The total loss first, then the named losses in their order of appearance, then
    # curves of other TensorBoard runs ("run/name").
    panels.sort(key=lambda b: 0 if b == "loss" else (2 if "/" in b else 1))

    if ax is not None:
        fig, created, axes = ax.figure, False, {b: ax for b in panels}
    else:
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig = plt.figure(figsize=figsize or (5 * cols, 3.5 * rows))
        axes = {b: fig.add_subplot(rows, cols, i + 1) for i, b in enumerate(panels)}
        created = True
    for b in panels:
        a = axes[b]
        for name in series:
            if base(name) != b:
                continue
            steps, values = series[name]
            label = name if ax is not None else ("validation" if name != b else "train")
            a.plot(steps, values, marker="." if len(values) < 30 else None, label=label)
        if ax is None:
            a.set_title(b)
        a.set_xlabel(xlabel)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs/steps are whole
        a.legend(fontsize=8)
    if created:
        fig.tight_layout()
    return _finish(fig, save_path, created)
