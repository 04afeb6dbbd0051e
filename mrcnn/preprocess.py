"""Pixels in, pixels out: the image-meta schema, resizing, molding and unmolding, in numpy
and TensorFlow side by side.

Every path into and out of the network uses these functions: ``MaskRCNN.detect``
(check_images -> mold_inputs -> network -> unmold_detections), the training input pipeline
(mrcnn.data: resize_image, compose_image_meta, mold_image) and the SavedModel export
(mold_images_graph -> network -> unmold_detections_graph, paste_masks_graph). The graph
functions repeat the numpy arithmetic in the same float64 operations in the same order, so
they give bit-identical molded images, metas and windows (tested against each other).

Image meta: the per-image facts the graph needs, in one fixed-length float vector whose
layout is the table IMAGE_META_FIELDS below (Matterport's order); the offsets
(IMAGE_META_SLICES), the size (image_meta_size) and the numpy and TF compose / parse
functions are all derived from it:

    [image_id, original_image_shape (3), image_shape (3), window (4), scale (1),
     active_class_ids (NUM_CLASSES)]

``image_shape`` is the molded frame the graph sees; ``window`` is (y1, x1, y2, x2) in
pixels of that frame: the part that holds the image, excluding padding; ``scale`` is the
resize factor applied to the original image.

TensorFlow is imported on the first call of a ``*_graph`` function (mrcnn.boxes' lazy
handle): the numpy half is imported by numpy-only code (mrcnn.utils, mrcnn.config, the
input pipeline's workers).
"""

import random
import warnings

import numpy as np
import skimage.transform

from mrcnn.boxes import _LazyTF, denorm_boxes, norm_boxes

tf = _LazyTF()


############################################################
#  Image meta: one table, everything else derived from it
############################################################

# (name, length, numpy dtype of the parsed field). Length None: NUM_CLASSES, the rest of
# the vector (only the last field may have it). Fields of length 1 parse to [batch].
IMAGE_META_FIELDS = (
    ("image_id", 1, np.int32),
    ("original_image_shape", 3, np.int32),
    ("image_shape", 3, np.int32),
    ("window", 4, np.int32),
    ("scale", 1, np.float32),
    ("active_class_ids", None, np.int32),
)


def _field_slices(fields):
    """Offsets of the fields in the meta vector: {name: slice}."""
    slices, start = {}, 0
    for i, (name, length, _) in enumerate(fields):
        if length is None and i != len(fields) - 1:
            raise ValueError("image meta: only the last field may have a variable length")
        stop = None if length is None else start + length
        slices[name] = slice(start, stop)
        start = stop
    return slices


IMAGE_META_SLICES = _field_slices(IMAGE_META_FIELDS)
# Length of the fixed part (everything before active_class_ids): 12.
IMAGE_META_FIXED_SIZE = sum(length for _, length, _ in IMAGE_META_FIELDS if length)


def image_meta_size(num_classes):
    """Length of the image meta vector of a model with ``num_classes`` classes (BG included):
    config.IMAGE_META_SIZE."""
    return IMAGE_META_FIXED_SIZE + int(num_classes)


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Pack image attributes into one array, in the order of IMAGE_META_FIELDS.

    image_id: int. original_image_shape, image_shape: (H, W, C). window: (y1, x1, y2, x2)
    pixels in the molded image. scale: float. active_class_ids: [NUM_CLASSES] 0/1 flags of
    the classes of the image's source dataset.
    Returns an array [12 + NUM_CLASSES] (float64, or int64 when every value is an int).
    """
    values = (image_id, original_image_shape, image_shape, window, scale, active_class_ids)
    meta = []
    for (name, length, _), value in zip(IMAGE_META_FIELDS, values):
        part = [value] if length == 1 else list(value)
        if length is not None and len(part) != length:
            raise ValueError("compose_image_meta: {} needs {} values, got {!r}".format(
                name, length, value))
        meta += part
    return np.array(meta)


def parse_image_meta(meta):
    """Unpack meta arrays [batch, meta_size] (numpy) into a dict of arrays, one per field of
    IMAGE_META_FIELDS, with the table's dtypes (image_id and scale: [batch])."""
    meta = np.asarray(meta)
    parsed = {}
    for name, length, dtype in IMAGE_META_FIELDS:
        part = meta[:, IMAGE_META_SLICES[name]]
        parsed[name] = (part[:, 0] if length == 1 else part).astype(dtype)
    return parsed


def compose_image_meta_graph(image_id, original_image_shape, image_shape, window, scale,
                             active_class_ids):
    """TF version of compose_image_meta: the fields (tensors or values, any numeric dtype)
    cast to float32 and concatenated in table order. Returns float32 [12 + NUM_CLASSES]."""
    values = (image_id, original_image_shape, image_shape, window, scale, active_class_ids)
    return tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in values], axis=0)


def parse_image_meta_graph(meta):
    """Unpack a meta tensor [batch, meta_size] into a dict of float32 tensors (TF side),
    one per field of IMAGE_META_FIELDS (image_id and scale: [batch])."""
    meta = tf.cast(meta, tf.float32)
    parsed = {}
    for name, length, _ in IMAGE_META_FIELDS:
        part = meta[:, IMAGE_META_SLICES[name]]
        parsed[name] = part[:, 0] if length == 1 else part
    return parsed


############################################################
#  Mean pixel
############################################################

def mold_image(images, config):
    """Subtract the mean pixel. images: [..., C] uint8 or float -> float32.

    Subtracted in float64 and rounded once to float32, as Matterport's (float32 image
    minus a float64 MEAN_PIXEL): a float32 subtraction differs in the last bits and adds
    near-ties between RPN scores of its own."""
    molded = np.asarray(images).astype(np.float64) - np.asarray(config.MEAN_PIXEL,
                                                                 dtype=np.float64)
    return molded.astype(np.float32)


def unmold_image(normalized_images, config):
    """Inverse of mold_image: add the mean pixel back and return uint8."""
    out = normalized_images + np.asarray(config.MEAN_PIXEL, dtype=np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


############################################################
#  Resizing (numpy)
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


def _linear_taps_np(n_in, n_out):
    """numpy twin of linear_taps_graph along one axis: (i0, i1, w0, w1) for n_out outputs."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    lo = np.floor(src)
    w0 = 1.0 - (src - lo)
    w1 = 1.0 - w0
    last = n_in - 1.0
    w0 = np.where((lo >= 0.0) & (lo <= last), w0, 0.0)
    w1 = np.where((lo + 1.0 >= 0.0) & (lo + 1.0 <= last), w1, 0.0)
    i0 = np.clip(lo, 0.0, max(last, 0.0)).astype(np.intp)
    i1 = np.clip(lo + 1.0, 0.0, max(last, 0.0)).astype(np.intp)
    return i0, i1, w0, w1


def resize_uint8(image, out_h, out_w):
    """resize(image, (out_h, out_w), preserve_range=True).astype(np.uint8) for a uint8
    [H, W] or [H, W, C] image, bit for bit, several times faster: the four bilinear
    corners are gathered as uint8 and summed in float64 in scipy's order ((x * wy) * wx,
    left to right; see _bilinear_sum), clipped to the image's range, truncated."""
    image = np.asarray(image)
    extra = (None,) * (image.ndim - 2)
    i0, i1, wy0, wy1 = _linear_taps_np(image.shape[0], int(out_h))
    j0, j1, wx0, wx1 = _linear_taps_np(image.shape[1], int(out_w))
    wy0, wy1 = (w[(slice(None), None) + extra] for w in (wy0, wy1))
    wx0, wx1 = (w[(slice(None),) + extra] for w in (wx0, wx1))
    r0, r1 = image[i0], image[i1]
    out = _corner(r0, j0, wy0, wx0)
    out += _corner(r0, j1, wy0, wx1)
    out += _corner(r1, j0, wy1, wx0)
    out += _corner(r1, j1, wy1, wx1)
    np.clip(out, image.min(), image.max(), out=out)
    return out.astype(np.uint8)


def _corner(rows, cols, wy, wx):
    """(rows[:, cols] * wy) * wx in float64: one bilinear corner's term."""
    term = rows[:, cols].astype(np.float64)
    term *= wy
    term *= wx
    return term


RESIZE_MODES = ("none", "square", "pad64", "crop")
# The modes with a deterministic result, which the graph (export) reproduces.
GRAPH_RESIZE_MODES = ("square", "pad64", "none")
# Molded frames are multiples of this (P6 has stride 64 and the FPN adds upsampled levels).
FRAME_MULTIPLE = 64


def pad_for(padding, ndim):
    """Padding list of length ndim (extra axes unpadded)."""
    padding = [tuple(p) for p in padding][:ndim]
    return padding + [(0, 0)] * (ndim - len(padding))


def _resize_scale(h, w, min_dim, max_dim, min_scale, mode):
    """The scale resize_image applies to an h x w image (int 1 when unchanged)."""
    scale = 1
    if min_dim:
        scale = max(1, min_dim / min(h, w))  # up, never down
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max
    return scale


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
    if mode not in RESIZE_MODES:
        raise ValueError("resize_image: mode {!r} not supported; use one of {}".format(
            mode, RESIZE_MODES))
    image = np.asarray(image)
    image_dtype = image.dtype
    h, w = image.shape[:2]
    if mode == "none":
        return image, (0, 0, h, w), 1, [(0, 0), (0, 0), (0, 0)], None
    if mode == "square" and not max_dim:
        raise ValueError("resize_image: mode 'square' needs max_dim")
    if mode == "crop" and not min_dim:
        raise ValueError("resize_image: mode 'crop' needs min_dim")
    if h == 0 or w == 0:
        raise ValueError("resize_image: empty image of shape {}".format(image.shape))

    scale = _resize_scale(h, w, min_dim, max_dim, min_scale, mode)
    if scale != 1:
        # max(1, .): an extreme aspect ratio must not shrink a side to zero pixels.
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        # uint8 (every loaded image): the exact fast twin of the skimage call.
        image = (resize_uint8(image, *size) if image.dtype == np.uint8 and image.size
                 else resize(image, size, preserve_range=True))
    h, w = image.shape[:2]
    crop = None
    if mode == "crop":
        # Same calls in the same order as Matterport, so a seeded `random` gives the
        # same crop.
        y = random.randint(0, h - min_dim)
        x = random.randint(0, w - min_dim)
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
        padding = [(0, 0), (0, 0), (0, 0)]
    else:
        pad_h = max_dim - h if mode == "square" else (-h) % FRAME_MULTIPLE
        pad_w = max_dim - w if mode == "square" else (-w) % FRAME_MULTIPLE
        top, left = pad_h // 2, pad_w // 2
        padding = [(top, pad_h - top), (left, pad_w - left), (0, 0)]
        image = np.pad(image, pad_for(padding, image.ndim), mode="constant",
                       constant_values=0)
        window = (top, left, h + top, w + left)
    return image.astype(image_dtype), window, scale, padding, crop


############################################################
#  Inputs of detect() (numpy)
############################################################

class BitDepthWarning(UserWarning):
    """An image's pixel range was guessed when converting it to 8 bits (IMAGE_BIT_DEPTH)."""


# The effective bit depths "auto" chooses between for integer data (camera ADCs).
_AUTO_DEPTHS = (8, 10, 12, 14, 16, 24, 32)
BIT_DEPTH_RULES = ("auto", "range", "percentile")
_WARN_LIMIT = 5
_warned = {"count": 0}


def _guess_warning(name, message):
    """Warn for the first _WARN_LIMIT guesses of a process, then once that others follow."""
    _warned["count"] += 1
    if _warned["count"] <= _WARN_LIMIT:
        warnings.warn("{}: {}; set IMAGE_BIT_DEPTH (Config) / image_bit_depth (Dataset) "
                      "to choose the rule".format(name, message), BitDepthWarning,
                      stacklevel=3)
    elif _warned["count"] == _WARN_LIMIT + 1:
        warnings.warn("further images' bit depths are guessed without a warning",
                      BitDepthWarning, stacklevel=3)


def _stretch(image, low, high):
    """Map [low, high] linearly onto [0, 255], clipped, as uint8."""
    image = image.astype(np.float64)
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.round((image - low) * scale), 0, 255).astype(np.uint8)


def _auto_to_uint8(image, name):
    """IMAGE_BIT_DEPTH "auto" for anything but uint8 / bool (see image_to_uint8)."""
    low, high = float(image.min()), float(image.max())
    if image.dtype.kind in "ui" and low >= 0:
        depth = next((d for d in _AUTO_DEPTHS if high < 2 ** d), 64)
        if depth < 8 * image.dtype.itemsize and depth > 8:
            _guess_warning(name, "{} data with values up to {:g} taken as {}-bit".format(
                image.dtype, high, depth))
        return _stretch(image, 0.0, 2.0 ** depth - 1)
    if image.dtype.kind == "f" and low >= 0 and high <= 1.0:
        return _stretch(image, 0.0, 1.0)
    if image.dtype.kind == "f" and low >= 0 and high <= 255.0:
        return _stretch(image, 0.0, 255.0)
    _guess_warning(name, "{} data in [{:g}, {:g}] stretched from its own range to "
                         "0..255".format(image.dtype, low, high))
    return _stretch(image, low, high)


def image_to_uint8(image, bit_depth="auto", name="image"):
    """One image's pixels as uint8, by the rule ``bit_depth`` (Config.IMAGE_BIT_DEPTH).

    image: [H, W] or [H, W, C] of any real dtype (NaN / inf refused). uint8 is returned
    unchanged and bool becomes 0 / 255 under every rule. Otherwise:
      "auto" (default): integers are scaled by 255 / (2^b - 1), b the image's effective
        bit depth: the smallest of 8, 10, 12, 14, 16, 24, 32 that holds its maximum. So
        12-bit camera data in 16-bit files uses its whole range, and a 16-bit image whose
        values stay below 256 passes unchanged (as in Matterport). Floats in [0, 1] are
        scaled by 255, floats in [0, 255] kept; anything else (negative values, floats
        above 255) is stretched from its own min..max. A BitDepthWarning names the image
        whenever the rule guesses (a depth below the dtype's width, or a stretch).
      an integer N (8..32): values are N-bit data, scaled by 255 / (2^N - 1) and clipped;
        the same scale for every image (a fixed camera depth).
      "range": the image's own min..max stretched to 0..255.
      "percentile": its 0.5th..99.5th percentiles stretched to 0..255, clipped (robust to
        hot pixels).
    The same rule runs in training (data.load_image_gt, Dataset.load_image) and in
    detect(); exported models take uint8, converted by this function on the client.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype.kind not in "uif":
        raise ValueError("{}: dtype {} is not a pixel type".format(name, image.dtype))
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError("{} contains NaN or infinite values".format(name))
    if image.size == 0:
        return image.astype(np.uint8)
    check_bit_depth(bit_depth)
    if bit_depth == "auto":
        return _auto_to_uint8(image, name)
    if bit_depth == "range":
        return _stretch(image, float(image.min()), float(image.max()))
    if bit_depth == "percentile":
        low, high = np.percentile(image, [0.5, 99.5])
        return _stretch(image, float(low), float(high))
    return _stretch(image, 0.0, 2.0 ** int(bit_depth) - 1)


def check_bit_depth(bit_depth, what="IMAGE_BIT_DEPTH"):
    """Raise ValueError naming ``what`` unless bit_depth is a rule image_to_uint8 knows."""
    if bit_depth in BIT_DEPTH_RULES:
        return
    if isinstance(bit_depth, (int, np.integer)) and not isinstance(bit_depth, bool) and \
            8 <= bit_depth <= 32:
        return
    raise ValueError("{} must be one of {} or an integer from 8 to 32, got {!r}".format(
        what, BIT_DEPTH_RULES, bit_depth))


def _check_image(i, image, channels, bit_depth="auto"):
    """One image of check_images -> uint8 [H, W, channels]; ValueError naming image i."""
    try:
        image = np.asarray(image)
    except (TypeError, ValueError) as e:   # ragged nested lists
        raise ValueError("image {} is not an array of pixels: {}".format(i, e)) from None
    if image.dtype.kind not in "buif" or image.size == 0:
        raise ValueError("image {} is empty or not real-valued (shape {}, dtype "
                         "{})".format(i, image.shape, image.dtype))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError("image {} has shape {}: expected [H, W] or [H, W, C]".format(
            i, image.shape))
    image = image_to_uint8(image, bit_depth, name="image {}".format(i))
    c = image.shape[-1]
    if c == 1 and channels == 3:
        image = np.repeat(image, 3, axis=-1)
    elif c == 4 and channels == 3:
        image = image[..., :3]
    elif c != channels:
        raise ValueError("image {} has {} channels; the model expects {} "
                         "(IMAGE_CHANNEL_COUNT)".format(i, c, channels))
    if min(image.shape[:2]) < 2:
        raise ValueError("image {} is too small: {}".format(i, image.shape))
    return np.ascontiguousarray(image)


def check_images(images, channels=3, bit_depth="auto"):
    """Validate and convert the images given to detect(), before any TensorFlow code runs.

    images: a list/tuple of arrays [H, W] (grayscale), [H, W, 1|3|4], uint8/uint16/float;
    or one array [N, H, W, C]. Pixels become uint8 by image_to_uint8's rule ``bit_depth``
    (config.IMAGE_BIT_DEPTH). RGBA drops alpha.
    Returns a list of uint8 arrays [H, W, channels]; raises a clear error otherwise.
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            images = list(images)
        else:
            raise ValueError("detect() takes a list of images; got one array of shape {}. "
                             "Wrap a single image in a list: detect([image])".format(
                                 images.shape))
    if not isinstance(images, (list, tuple)):
        raise TypeError("detect() takes a list of images, got {}".format(type(images)))
    if len(images) == 0:
        raise ValueError("detect() was given an empty list of images")
    return [_check_image(i, image, channels, bit_depth) for i, image in enumerate(images)]


def _resize_for_network(i, image, config):
    """resize_image with the config's settings; refuses images that shrink to a sliver."""
    resized, window, scale, _, _ = resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
    if window[2] - window[0] < 2 or window[3] - window[1] < 2:
        # e.g. 2x300 in "square" mode at IMAGE_MAX_DIM 64: scaled to 1x64 (resize_image
        # keeps at least 1 pixel). A 1-pixel window has zero normalised size
        # (norm_boxes divides by side - 1), so unmolding would divide by zero.
        raise ValueError("image {} of shape {} is too thin: it shrinks to {}x{} pixels "
                         "at IMAGE_MAX_DIM {} ({!r} mode)".format(
                             i, image.shape, window[2] - window[0], window[3] - window[1],
                             config.IMAGE_MAX_DIM, config.IMAGE_RESIZE_MODE))
    return resized, window, scale


def _round_up(size, multiple=FRAME_MULTIPLE):
    return -(-size // multiple) * multiple


def mold_inputs(images, config):
    """Resize and normalise images for the network (Matterport's MaskRCNN.mold_inputs).

    images: list of uint8 [H, W, C]. Returns molded_images [N, h, w, C] float32 (images of
    different molded sizes are padded bottom/right to the largest, rounded up to a
    multiple of 64), image_metas [N, META] float32 (image_shape: that common frame),
    windows [N, 4] (y1, x1, y2, x2 pixels of the image inside the molded frame).
    """
    resized = [_resize_for_network(i, image, config) for i, image in enumerate(images)]
    molded = [mold_image(r, config) for r, _, _ in resized]
    # One frame for the batch, a multiple of 64: only "none" mode can give other sizes;
    # padding bottom/right leaves the windows unchanged.
    frame = (_round_up(max(m.shape[0] for m in molded)),
             _round_up(max(m.shape[1] for m in molded)), molded[0].shape[2])
    batch = np.zeros((len(molded),) + frame, np.float32)
    for i, m in enumerate(molded):
        batch[i, :m.shape[0], :m.shape[1]] = m
    no_classes = np.zeros([config.NUM_CLASSES], dtype=np.int32)
    metas = [compose_image_meta(0, image.shape, frame, window, scale, no_classes)
             for image, (_, window, scale) in zip(images, resized)]
    windows = np.stack([window for _, window, _ in resized])
    return batch, np.stack(metas).astype(np.float32), windows


############################################################
#  Outputs of detect() (numpy)
############################################################

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


def unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window):
    """Turn one image's network detections into original-image results.

    detections: [D, 6] (y1, x1, y2, x2 normalised, class_id, score), zero padded.
    mrcnn_mask: [D, mh, mw, NUM_CLASSES]. original_image_shape: (H, W, C) before resizing.
    image_shape: (h, w, C) of the molded frame. window: (y1, x1, y2, x2) pixels in it.
    Returns boxes [N, 4] int32 pixels of the original image, class_ids [N], scores [N],
    full_masks bool [H, W, N].
    """
    zero_ix = np.where(detections[:, 4] == 0)[0]
    n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5]
    masks = mrcnn_mask[np.arange(n), :, :, class_ids]

    # Boxes: normalised in the molded frame -> normalised in the window -> original pixels.
    window = norm_boxes(np.asarray(window, np.float32), image_shape[:2])
    wy1, wx1, wy2, wx2 = window
    shift = np.array([wy1, wx1, wy1, wx1])
    wh, ww = wy2 - wy1, wx2 - wx1
    boxes = np.divide(boxes - shift, np.array([wh, ww, wh, ww]))
    boxes = denorm_boxes(boxes, original_image_shape[:2])

    # Drop boxes with zero area (possible after clipping at the window's edge).
    keep = np.where((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0)[0]
    boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]

    full_masks = unmold_masks(masks, boxes, original_image_shape)
    return boxes, class_ids, scores, full_masks


############################################################
#  Resizing and molding in the graph (TF)
############################################################

def linear_taps_graph(positions, in_size, out_size):
    """Bilinear taps of scipy's ``zoom(order=1, grid_mode=True, mode='grid-constant')``,
    which skimage.transform.resize (and so ``resize``) calls: the TF twin of
    linear_resize_weights.

    positions: float [..., K] output pixel indices (may lie outside [0, out_size)).
    in_size, out_size: same float dtype (broadcastable); float64 for skimage's exact
    result, float32 where the runtime has no float64 (TFLite export). Returns (i0, i1) int32 indices clamped
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
    """Resize a batch like resize(image, (out_h, out_w), preserve_range=True) and the
    astype(uint8) that resize_image applies.

    images: uint8 [B, H, W, C]. out_h, out_w: int32 scalars. Returns uint8
    [B, out_h, out_w, C]: bilinear (half-pixel centres, zeros beyond the edge) in
    float64, clipped to each image's own [min, max] over all channels (skimage's
    clip=True), truncated.
    """
    x = tf.cast(images, tf.float64)
    shape = tf.shape(images)
    in_h, in_w = tf.cast(shape[1], tf.float64), tf.cast(shape[2], tf.float64)
    rows = linear_taps_graph(tf.range(out_h, dtype=tf.float64), in_h,
                        tf.cast(out_h, tf.float64))
    cols = linear_taps_graph(tf.range(out_w, dtype=tf.float64), in_w,
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
    """The scale and resized size resize_image picks for an h x w image (the graph twin of
    _resize_scale).

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


def _padding_graph(new_h, new_w, config):
    """The (top, bottom, left, right) zero padding resize_image adds around a new_h x new_w
    resized image, per config.IMAGE_RESIZE_MODE."""
    mode = config.IMAGE_RESIZE_MODE
    if mode == "square":
        pad_h = tf.constant(int(config.IMAGE_MAX_DIM), tf.int32) - new_h
        pad_w = tf.constant(int(config.IMAGE_MAX_DIM), tf.int32) - new_w
    elif mode == "pad64":
        pad_h = tf.math.floormod(-new_h, FRAME_MULTIPLE)
        pad_w = tf.math.floormod(-new_w, FRAME_MULTIPLE)
    else:
        pad_h = pad_w = tf.constant(0, tf.int32)
    top, left = pad_h // 2, pad_w // 2
    return top, pad_h - top, left, pad_w - left


def _round_up_graph(size, multiple=FRAME_MULTIPLE):
    return size + tf.math.floormod(-size, multiple)


def mold_images_graph(images, config):
    """Graph version of mold_inputs for a batch of same-size images.

    images: uint8 [B, H, W, C]. Returns (molded float32 [B, h, w, C], image_metas float32
    [B, IMAGE_META_SIZE], windows int32 [B, 4]), bit-identical to mold_inputs'. Modes:
    GRAPH_RESIZE_MODES ("crop" is random: ValueError).
    """
    mode = config.IMAGE_RESIZE_MODE
    if mode not in GRAPH_RESIZE_MODES:
        raise ValueError("IMAGE_RESIZE_MODE = {!r} cannot be molded in the graph: 'crop' "
                         "takes a random crop; use one of {}".format(mode,
                                                                     GRAPH_RESIZE_MODES))
    shape = tf.shape(images)
    batch, h, w, c = shape[0], shape[1], shape[2], shape[3]
    scale, new_h, new_w = resize_plan_graph(h, w, config)
    resized = resize_images_graph(images, new_h, new_w)
    top, bottom, left, right = _padding_graph(new_h, new_w, config)
    resized = tf.pad(resized, [[0, 0], [top, bottom], [left, right], [0, 0]])
    # float64 then float32, as mold_image.
    molded = tf.cast(tf.cast(resized, tf.float64) - tf.constant(
        np.asarray(config.MEAN_PIXEL, np.float64)), tf.float32)
    # As mold_inputs: the frame rounded up to a multiple of 64 by zeros after molding,
    # bottom/right (only "none" mode needs it).
    padded_h, padded_w = top + new_h + bottom, left + new_w + right
    frame_h, frame_w = _round_up_graph(padded_h), _round_up_graph(padded_w)
    molded = tf.pad(molded, [[0, 0], [0, frame_h - padded_h], [0, frame_w - padded_w],
                             [0, 0]])
    if mode == "square":      # Config checks IMAGE_MAX_DIM % 64 == 0 in this mode
        molded.set_shape([None, config.IMAGE_MAX_DIM, config.IMAGE_MAX_DIM,
                          config.IMAGE_CHANNEL_COUNT])

    window = tf.stack([top, left, top + new_h, left + new_w])
    meta = compose_image_meta_graph(0, tf.stack([h, w, c]), tf.stack([frame_h, frame_w, c]),
                                    window, scale, tf.zeros([config.NUM_CLASSES]))
    metas = tf.tile(meta[None], [batch, 1])
    windows = tf.tile(window[None], [batch, 1])
    return molded, metas, windows


############################################################
#  Unmolding in the graph (TF)
############################################################

def _window_boxes_to_original_graph(boxes, frame_hw, window, original_hw):
    """Boxes normalised in the molded frame -> int32 pixels of the original image, with
    numpy's dtypes step by step (as unmold_detections), so they round the same.

    boxes: float32 [..., 4]. frame_hw, original_hw: int32 [2]. window: int32 [4].
    """
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
    return tf.cast(tf.round(tf.cast(boxes, tf.float64) * oscale + unit), tf.int32)


def unmold_detections_graph(detections, mrcnn_mask, original_hw, frame_hw, window):
    """Batched graph version of unmold_detections, without the pasting.

    detections: [B, D, 6] (y1, x1, y2, x2 normalised in the molded frame, class, score),
    zero padded. mrcnn_mask: [B, D, mh, mw, NUM_CLASSES]. original_hw, frame_hw: int32 [2].
    window: int32 [4] pixels of the image inside the frame.
    Returns boxes int32 [B, D, 4] (original pixels), class_ids int32 [B, D], scores
    float32 [B, D], masks float32 [B, D, mh, mw], num_detections int32 [B]: the kept
    detections (before the first padding row, non-zero area) moved to the front in their
    order, the rest zero. Boxes round exactly as in detect().
    """
    detections = tf.cast(detections, tf.float32)
    class_f = detections[..., 4]
    class_ids = tf.cast(class_f, tf.int32)
    scores = detections[..., 5]
    boxes = _window_boxes_to_original_graph(detections[..., :4], frame_hw, window,
                                            original_hw)

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
    """Graph version of unmold_masks (masks first: [N, height, width]).

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
        i0, i1, w0, w1 = linear_taps_graph(pos, m, tf.maximum(extent, 1.0)[:, None])
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
