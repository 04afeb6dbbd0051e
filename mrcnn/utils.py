"""Numpy utilities of Mask R-CNN: boxes, anchors, resizing, masks, AP, and the Dataset class.

Same public names, signatures and conventions as Matterport's ``mrcnn/utils.py``:

* Boxes are ``(y1, x1, y2, x2)`` in pixels unless a name says "normalised". Pixel boxes
  from ``extract_bboxes`` are half-open: ``y2``/``x2`` are one past the last pixel.
  ``norm_boxes`` maps pixels to normalised coordinates with
  ``(box - [0, 0, 1, 1]) / [h - 1, w - 1, h - 1, w - 1]`` (there, y2/x2 are inside the box).
* Box deltas are ``(dy, dx, log(dh), log(dw))`` relative to the box's centre and size.
* Anchors are level-major, then row-major over feature-map positions, ratios fastest,
  centred at ``arange(0, shape, anchor_stride) * feature_stride`` (no half-stride offset).

Nothing here imports TensorFlow at module import: ``compose_image_meta``,
``parse_image_meta``, ``mold_image`` and ``unmold_image`` (from ``mrcnn.imagemeta``) are
re-exported lazily on first access, and ``batch_slice`` imports TensorFlow when called.
The box functions live in ``mrcnn.boxes`` (numpy and TF side by side) and are re-exported
here under Matterport's names.

Deliberate differences from Matterport (outputs on valid inputs are the same):

* IoU of two empty boxes / masks (union 0) is 0 instead of NaN; empty instance sets give
  empty overlap matrices instead of errors.
* ``compute_matches`` uses the fixed "already matched" test of Matterport's master
  (``gt_match[j] > -1``, PR #1018), so one GT is never matched twice.
* ``compute_ap`` with no ground truth returns 0.0 (Matterport: NaN from 0/0).
* ``resize_image`` checks its arguments up front (ValueError) and does not require
  ``min_dim % 64 == 0`` in "pad64" mode (the padding makes the sides multiples of 64 anyway).
* ``resize`` follows Matterport master's wrapper (bilinear, no anti-aliasing by default)
  and accepts bool images on scikit-image 0.26.
* ``mold_mask`` (an empty stub in Matterport) is not provided.
"""

import importlib.util
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import urllib.request
import warnings

import numpy as np
import scipy.ndimage
import skimage.io
import skimage.transform

from mrcnn.boxes import (BBOX_LOG_SCALE_CLIP, _safe_divide,  # noqa: F401  (Matterport's names)
                         apply_box_deltas, box_refinement, box_refinement_graph,
                         compute_iou, compute_overlaps, denorm_boxes, extract_bboxes,
                         non_max_suppression, norm_boxes)


def _fail_absent_optional_imports_fast(names=("pillow_heif",)):
    """Mark absent optional modules that image decoding tries to import on every read.

    imageio's Pillow plugin runs ``from pillow_heif import ...`` on each imread; when the
    package is absent, every attempt searches sys.path under Python's import locks, from
    all of tf.data's loader threads at once. Racing with a first import in the main
    thread, that hung the test suite (about one run in four of test_robustness.py). A None
    entry in sys.modules makes such an import fail at once, without locks or file system.
    """
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None


_fail_absent_optional_imports_fast()

logger = logging.getLogger(__name__)

# Matterport's release of the COCO-trained Mask R-CNN weights.
COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"

# Names re-exported on first access (PEP 562), so that importing this numpy module does
# not pull in TensorFlow: Matterport's utils held these TF-side helpers too.
_LAZY_NAMES = {"compose_image_meta": "mrcnn.imagemeta", "parse_image_meta": "mrcnn.imagemeta",
               "mold_image": "mrcnn.imagemeta", "unmold_image": "mrcnn.imagemeta",
               # Anchors live with the RPN (mrcnn.rpn), which imports TensorFlow.
               "generate_anchors": "mrcnn.rpn", "generate_pyramid_anchors": "mrcnn.rpn",
               "compute_backbone_shapes": "mrcnn.rpn", "get_anchors": "mrcnn.rpn"}


def __getattr__(name):
    if name in _LAZY_NAMES:
        import importlib
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))


def __dir__():
    return sorted(list(globals()) + list(_LAZY_NAMES))


class DatasetError(ValueError):
    """A dataset cannot be used: unreadable image, no classes, no images, bad ids.

    The message names the image id and path (or the missing part) so the bad entry can be
    found.
    """


############################################################
#  Bounding boxes
############################################################


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


############################################################
#  Dataset
############################################################

def _image_to_uint8_rgb(image):
    """Turn a decoded image array into uint8 RGB [H, W, 3].

    Grayscale -> 3 equal channels; an alpha channel is dropped (not composited, as
    Matterport); 16-bit integer data is scaled by 255/65535; floats in [0, 1] are scaled
    by 255, other floats are clipped to [0, 255].
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (2, 3, 4):
        raise ValueError("unsupported image shape {}".format(image.shape))
    if image.shape[-1] == 2:  # gray + alpha
        image = np.stack([image[..., 0]] * 3, axis=-1)
    image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype.kind in "ui":
        if image.dtype.itemsize == 1:  # int8
            return np.clip(image, 0, 255).astype(np.uint8)
        # 16-bit (or wider) integer data: map the full 16-bit range onto 8 bits.
        image = np.clip(image.astype(np.float64), 0, 65535) / 257.0
        return np.round(image).astype(np.uint8)
    if image.dtype.kind == "f":
        image = image.astype(np.float64)
        if np.nanmax(image, initial=0) <= 1.0:
            image = image * 255.0
        return np.round(np.clip(np.nan_to_num(image), 0, 255)).astype(np.uint8)
    raise ValueError("unsupported image dtype {}".format(image.dtype))


def _read_with_pil(path):
    from PIL import Image
    with Image.open(path) as img:
        img.seek(0)  # first frame of multi-frame files
        img.load()  # decode now so truncated files fail here
        mode = img.mode
        if mode in ("P", "PA"):
            img = img.convert("RGBA")  # palette (with or without transparency) -> colours
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        return np.array(img)


class Dataset(object):
    """Base class of datasets (Matterport API).

    Subclass it, register classes with ``add_class`` and images with ``add_image``, override
    ``load_mask`` (and ``image_reference``), then call ``prepare()``. Internal class ids are
    0 (BG), 1, 2, ... in order of ``add_class``; internal image ids are 0..num_images-1.

    ``prepare()`` accepts an empty dataset, as Matterport does (useful to list classes for
    inference); ``check_ready()`` is the gate before training or evaluation: it raises
    DatasetError when the dataset is not prepared, has no classes besides BG, or has no
    images.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        # Background is always class 0.
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}
        self._prepared = False

    def add_class(self, source, class_id, class_name):
        """Register class ``class_id`` of dataset ``source``; repeats are ignored."""
        if "." in source:
            raise DatasetError("add_class: source name {!r} must not contain a dot "
                               "(source class keys are 'source.id')".format(source))
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        """Register an image; extra keyword arguments are stored in its info dict."""
        image_info = {"id": image_id, "source": source, "path": path}
        image_info.update(kwargs)
        self.image_info.append(image_info)

    def image_reference(self, image_id):
        """A link or description of the image for debugging. Override; default ''."""
        return ""

    def prepare(self, class_map=None):
        """Build the lookup tables after all classes and images were added.

        Sets num_classes, class_ids, class_names (text before the first comma),
        num_images, _image_ids, class_from_source_map / image_from_source_map
        ("source.id" -> internal id), sources (every class source, including "" of BG,
        sorted) and source_class_ids (source -> internal class ids, BG included).
        ``class_map`` is accepted and ignored, as in Matterport. An empty dataset is
        allowed here; call ``check_ready()`` before training.
        """
        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [",".join(c["name"].split(",")[:1]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)

        self.class_from_source_map = {"{}.{}".format(info["source"], info["id"]): i
                                      for info, i in zip(self.class_info, self.class_ids)}
        self.image_from_source_map = {"{}.{}".format(info["source"], info["id"]): i
                                      for info, i in zip(self.image_info, self.image_ids)}

        # Sorted so the order does not depend on string hashing.
        self.sources = sorted(set(info["source"] for info in self.class_info))
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info)
                if i == 0 or info["source"] == source]
        self._prepared = True

    def check_ready(self):
        """Raise DatasetError unless the dataset can be trained / evaluated on.

        Checks: prepare() was called (after the last add_*), there is at least one class
        besides BG and at least one image, and every image's source has classes.
        """
        name = type(self).__name__
        if not getattr(self, "_prepared", False) or \
                getattr(self, "num_images", None) != len(self.image_info) or \
                getattr(self, "num_classes", None) != len(self.class_info):
            raise DatasetError("{}: call prepare() after adding classes and images and "
                               "before training".format(name))
        if self.num_classes <= 1:
            raise DatasetError("{}: no classes besides BG; call add_class(source, id, "
                               "name) before prepare()".format(name))
        if self.num_images == 0:
            raise DatasetError("{}: no images; call add_image(source, image_id, path) "
                               "before prepare()".format(name))
        for image_id, info in enumerate(self.image_info):
            if info["source"] not in self.source_class_ids:
                raise DatasetError(
                    "{}: image {} (id {!r}, path {!r}) has source {!r} with no classes; "
                    "known sources: {}".format(name, image_id, info["id"], info["path"],
                                               info["source"], self.sources))

    def map_source_class_id(self, source_class_id):
        """Internal class id of "source.class_id", e.g. map_source_class_id("coco.12")."""
        try:
            return self.class_from_source_map[source_class_id]
        except KeyError:
            raise KeyError("unknown source class {!r}; known: {}".format(
                source_class_id, sorted(self.class_from_source_map))) from None

    def get_source_class_id(self, class_id, source):
        """Class id in dataset ``source`` of internal class ``class_id``."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise DatasetError("class {} belongs to source {!r}, not {!r}".format(
                class_id, info["source"], source))
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        """Path or URL of the image. Override to return a URL."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """Read an image as uint8 RGB [H, W, 3].

        Grayscale becomes 3 equal channels, alpha is dropped, 16-bit data is scaled to
        8 bits, palette / CMYK images are converted to RGB. The format is detected from
        the file's content, not its extension; EXIF orientation is not applied
        (annotations refer to the stored pixel grid). Raises DatasetError naming the image
        id and path when the file is missing, empty, truncated or not an image.
        """
        try:
            info = self.image_info[image_id]
        except (IndexError, TypeError):
            raise DatasetError("{}: no image with id {!r} ({} images)".format(
                type(self).__name__, image_id, len(self.image_info))) from None
        path = info["path"]
        try:
            image = _read_with_pil(path)
        except Exception as pil_error:
            # PIL cannot read everything skimage can (URLs, some TIFFs): try it too.
            try:
                image = skimage.io.imread(path)
            except Exception:
                raise DatasetError("{}: cannot read image {} (id {!r}, path {!r}): "
                                   "{}: {}".format(type(self).__name__, image_id,
                                                   info.get("id"), path,
                                                   type(pil_error).__name__,
                                                   pil_error)) from pil_error
        try:
            return _image_to_uint8_rgb(image)
        except ValueError as e:
            raise DatasetError("{}: image {} (id {!r}, path {!r}): {}".format(
                type(self).__name__, image_id, info.get("id"), path, e)) from None

    def load_mask(self, image_id):
        """Instance masks of an image: (bool [H, W, N], int32 class_ids [N]).

        Override for your dataset. This default logs a warning and returns empty arrays
        (mask shape [0, 0, 0], as Matterport).
        """
        logger.warning("You are using the default load_mask() of %s, which returns no "
                       "instances; override it for your dataset.", type(self).__name__)
        mask = np.empty([0, 0, 0], dtype=bool)
        class_ids = np.empty([0], np.int32)
        return mask, class_ids


############################################################
#  Resizing
############################################################

def resize(image, output_shape, order=1, mode="constant", cval=0, clip=True,
           preserve_range=False, anti_aliasing=False, anti_aliasing_sigma=None):
    """skimage.transform.resize with Matterport's defaults (bilinear, no anti-aliasing).

    Works on scikit-image 0.26, which refuses bool images for order != 0: they are cast
    to float64 (0/1) first, as older scikit-image did.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_ and order != 0:
        image = image.astype(np.float64)
    return skimage.transform.resize(
        image, output_shape, order=order, mode=mode, cval=cval, clip=clip,
        preserve_range=preserve_range, anti_aliasing=anti_aliasing,
        anti_aliasing_sigma=anti_aliasing_sigma)


_RESIZE_MODES = ("none", "square", "pad64", "crop")


def _pad_for(padding, ndim):
    """Padding list of length ndim (extra axes unpadded)."""
    padding = [tuple(p) for p in padding][:ndim]
    return padding + [(0, 0)] * (ndim - len(padding))


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square"):
    """Resize an image keeping its aspect ratio, then pad or crop per ``mode``.

    image: [H, W, C] (or [H, W]). min_dim: scale up (never down) so the short side is at
    least min_dim. min_scale: scale up by at least this factor. max_dim ("square" only):
    scale down so the long side is at most max_dim.
    mode:
      "none":   unchanged image, window (0, 0, H, W), scale 1.
      "square": resize, then zero-pad to [max_dim, max_dim] (image centred).
      "pad64":  resize by min_dim / min_scale, then zero-pad each side to a multiple of 64.
      "crop":   resize by min_dim / min_scale, then a random min_dim x min_dim crop (uses
                Python's ``random``, as Matterport).
    Returns (image, window, scale, padding, crop):
      image: same dtype as the input (float results are truncated by astype, as Matterport).
      window: (y1, x1, y2, x2) pixels of the image inside the output, y2/x2 exclusive.
      scale: resize factor (int 1 when unchanged).
      padding: [(top, bottom), (left, right), (0, 0)].
      crop: (y, x, h, w) of the crop in the resized image, or None.
    """
    if mode not in _RESIZE_MODES:
        raise ValueError("resize_image: mode {!r} not supported; use one of {}".format(
            mode, _RESIZE_MODES))
    image = np.asarray(image)
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale = 1
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None

    if mode == "none":
        return image, window, scale, padding, crop
    if mode == "square" and not max_dim:
        raise ValueError("resize_image: mode 'square' needs max_dim")
    if mode == "crop" and not min_dim:
        raise ValueError("resize_image: mode 'crop' needs min_dim")
    if h == 0 or w == 0:
        raise ValueError("resize_image: empty image of shape {}".format(image.shape))

    if min_dim:
        scale = max(1, min_dim / min(h, w))  # up, never down
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max

    if scale != 1:
        # max(1, .): an extreme aspect ratio must not shrink a side to zero pixels.
        image = resize(image, (max(1, round(h * scale)), max(1, round(w * scale))),
                       preserve_range=True)

    h, w = image.shape[:2]
    if mode == "square":
        top = (max_dim - h) // 2
        left = (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
        image = np.pad(image, _pad_for(padding, image.ndim), mode="constant",
                       constant_values=0)
        window = (top, left, h + top, w + left)
    elif mode == "pad64":
        pad_h = (-h) % 64
        pad_w = (-w) % 64
        top, left = pad_h // 2, pad_w // 2
        padding = [(top, pad_h - top), (left, pad_w - left), (0, 0)]
        image = np.pad(image, _pad_for(padding, image.ndim), mode="constant",
                       constant_values=0)
        window = (top, left, h + top, w + left)
    else:  # crop
        # Same calls in the same order as Matterport, so a seeded `random` gives the
        # same crop.
        y = random.randint(0, h - min_dim)
        x = random.randint(0, w - min_dim)
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image.astype(image_dtype), window, scale, padding, crop


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
    return np.pad(mask, _pad_for(padding, mask.ndim), mode="constant", constant_values=0)


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


def linear_resize_weights(n_in, n_out):
    """Weights of a bilinear resize along one axis, as skimage's ``resize`` (order 1, mode
    "constant" with cval 0, no anti-aliasing) computes it.

    Returns float64 [n_out, n_in]: output sample i reads input coordinate
    (i + 0.5) * n_in / n_out - 0.5 (half-pixel centres); taps that fall outside [0, n_in)
    read zero. ``W_y @ image @ W_x.T`` resizes a 2-D array.
    """
    n_in, n_out = int(n_in), int(n_out)
    coord = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    j0 = np.floor(coord).astype(np.int64)
    frac = coord - j0
    # Two extra columns catch the taps at -1 and n_in, which read the zero border.
    weights = np.zeros((n_out, n_in + 2))
    rows = np.arange(n_out)
    weights[rows, j0 + 1] += 1.0 - frac
    weights[rows, j0 + 2] += frac
    return weights[:, 1:-1]


def unmold_masks(masks, boxes, image_shape, threshold=0.5):
    """Fit small float masks (e.g. 28x28 from the mask head) into their boxes in the image.

    masks: [N, h, w] float in [0, 1]. boxes: [N, (y1, x1, y2, x2)] pixels, y2/x2 exclusive.
    image_shape: (H, W[, C]). Returns bool [H, W, N]: each mask resized bilinearly to its
    box (skimage ``resize`` semantics, clipped to the mask's own value range) and
    thresholded at ``threshold``. Parts of a box outside the image are cut off; an empty
    box gives an empty mask. Only the box regions are written, so the cost grows with the
    boxes' area, not with N x H x W.
    """
    masks = np.asarray(masks)
    boxes = np.asarray(boxes).reshape(-1, 4)
    height, width = (int(s) for s in image_shape[:2])
    out = np.zeros((height, width, masks.shape[0]), dtype=bool)
    for i in range(masks.shape[0]):
        y1, x1, y2, x2 = (int(v) for v in boxes[i])
        cy1, cx1 = max(y1, 0), max(x1, 0)
        cy2, cx2 = min(y2, height), min(x2, width)
        if y2 <= y1 or x2 <= x1 or cy2 <= cy1 or cx2 <= cx1:
            continue
        m = masks[i]
        # Only the rows and columns of the box that lie inside the image are computed.
        wy = linear_resize_weights(m.shape[0], y2 - y1)[cy1 - y1:cy2 - y1]
        wx = linear_resize_weights(m.shape[1], x2 - x1)[cx1 - x1:cx2 - x1]
        resized = (wy @ m.astype(np.float64) @ wx.T).astype(np.float32)
        # skimage clips the result to the input's range (float32 in, float32 out).
        m32 = m.astype(np.float32)
        resized = np.clip(resized, m32.min(), m32.max())
        out[cy1:cy2, cx1:cx2, i] = resized >= threshold
    return out


def unmold_mask(mask, bbox, image_shape):
    """Fit a small float mask (e.g. 28x28 from the mask head) into its box in the image.

    mask: [h, w] float in [0, 1]. bbox: (y1, x1, y2, x2) pixels. image_shape: (H, W[, C]).
    Returns bool [H, W]: the mask resized (bilinear) to the box and thresholded at 0.5.
    Parts of the box outside the image are cut off; an empty box gives an empty mask.
    (One mask of ``unmold_masks``.)
    """
    mask = np.asarray(mask)
    return unmold_masks(mask[None], np.asarray(bbox)[None, :4], image_shape)[:, :, 0]


############################################################
#  Anchors
############################################################


############################################################
#  Evaluation
############################################################

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


############################################################
#  Miscellaneous
############################################################

def batch_slice(inputs, graph_fn, batch_size, names=None):
    """Run graph_fn on each batch item of the input tensors and stack the results.

    Kept for compatibility with Matterport code; new graph code works on whole batches.
    inputs: tensor or list of tensors with the same first dimension. batch_size: items.
    Returns one stacked tensor, or a list when graph_fn returns several.
    """
    import tensorflow as tf
    if not isinstance(inputs, list):
        inputs = [inputs]
    outputs = []
    for i in range(batch_size):
        out = graph_fn(*[x[i] for x in inputs])
        if not isinstance(out, (tuple, list)):
            out = [out]
        outputs.append(out)
    outputs = list(zip(*outputs))
    if names is None:
        names = [None] * len(outputs)
    result = [tf.stack(o, axis=0, name=n) for o, n in zip(outputs, names)]
    return result[0] if len(result) == 1 else result


def download_trained_weights(coco_model_path, verbose=1):
    """Download Matterport's COCO-trained weights (COCO_MODEL_URL) to coco_model_path.

    Written to a temporary file in the same directory and renamed when complete, so an
    interrupted download never leaves a partial .h5 at coco_model_path.
    """
    if verbose > 0:
        print("Downloading pretrained model to " + coco_model_path + " ...")
    directory = os.path.dirname(os.path.abspath(coco_model_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(COCO_MODEL_URL) as resp:
                shutil.copyfileobj(resp, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, coco_model_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    if verbose > 0:
        print("... done downloading pretrained model!")


############################################################
#  Printing arrays (notebooks)
############################################################

def log(text, array=None):
    """Print ``text``, and for an array its shape, min, max and dtype on the same line.

    Matterport's notebook helper (``modellib.log("image", image)``). ``array`` may be
    anything np.asarray accepts (numpy array, TF tensor, list); min/max are left blank
    for empty or non-numeric arrays.
    """
    if array is not None:
        array = np.asarray(array)
        numeric = array.size and (np.issubdtype(array.dtype, np.number)
                                  or array.dtype == np.bool_)
        low = "{:10.5f}".format(float(array.min())) if numeric else ""
        high = "{:10.5f}".format(float(array.max())) if numeric else ""
        text = "{:25}shape: {:20}  min: {:>10}  max: {:>10}  {}".format(
            str(text), str(array.shape), low, high, array.dtype)
    print(text)
