"""Training input pipeline: ground truth per image, (optionally) RPN targets, tf.data batches.

Matterport semantics (``load_image_gt``, ``build_rpn_targets``, ``data_generator``) with
numpy-vectorised RPN matching and a parallel ``tf.data`` pipeline (``build_dataset``)
whose batches are dicts keyed by the training model's input names:

    input_image         [B, H, W, C]           float32  molded (mean pixel subtracted)
    input_image_meta    [B, IMAGE_META_SIZE]   float32  see mrcnn.preprocess
    input_gt_class_ids  [B, MAX_GT_INSTANCES]  int32    zero padded (crowds negative)
    input_gt_boxes      [B, MAX_GT_INSTANCES, 4] float32 pixels (y1, x1, y2, x2), y2/x2
                                                        exclusive, zero padded
    input_gt_masks      [B, mh, mw, MAX_GT_INSTANCES] bool  MINI_MASK_SHAPE with
                                                        USE_MINI_MASK, else H x W

with H, W = config.IMAGE_SHAPE[:2]. The RPN targets are computed in the training graph
(mrcnn.rpn.RpnTargetsLayer) unless config.RPN_TARGETS_IN_GRAPH is False; then, and always
in Matterport's ``data_generator``, the examples also hold build_rpn_targets' output:

    input_rpn_match     [B, A, 1]              int32    1 positive, -1 negative, 0 neutral
    input_rpn_bbox      [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4] float32 std-scaled deltas

with A = len(get_anchors(config, IMAGE_SHAPE)).
"""

import collections
import logging
import threading

import numpy as np

from mrcnn import utils
from mrcnn.masks import _gather_zoom, _zoom_rows
from mrcnn.workers import PoolClosedError
from mrcnn.rpn import build_rpn_targets, get_anchors, random_subset
from mrcnn.augment import AugmentationError, augment_image_and_masks
from mrcnn.preprocess import compose_image_meta, image_to_uint8, mold_image

logger = logging.getLogger(__name__)

DatasetError = utils.DatasetError

# Order of the training model's inputs (Matterport's data_generator list order).
INPUT_NAMES = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
               "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")
# The inputs that exist only when the RPN targets come from the pipeline.
RPN_TARGET_NAMES = ("input_rpn_match", "input_rpn_bbox")


def pipeline_rpn_targets(config, rpn_targets=None):
    """Whether examples carry the RPN targets: rpn_targets if given, else (the training
    graph's choice) not config.RPN_TARGETS_IN_GRAPH."""
    if rpn_targets is None:
        return not config.RPN_TARGETS_IN_GRAPH
    return bool(rpn_targets)


class ImageError(DatasetError):
    """An image or its annotations cannot be used; the message names id and path."""


############################################################
#  Helpers
############################################################

def describe_image(dataset, image_id):
    """'image <id> (path ..., reference ...)' for error messages; never raises."""
    parts = []
    try:
        info = dataset.image_info[image_id]
        parts.append("path {!r}".format(info.get("path")))
        if info.get("source"):
            parts.append("source {!r}".format(info["source"]))
    except Exception:
        pass
    try:
        ref = dataset.image_reference(image_id)
        if ref:
            parts.append("reference {!r}".format(ref))
    except Exception:
        pass
    return "image {}{}".format(image_id, " ({})".format(", ".join(parts)) if parts else "")


def _active_class_ids(dataset, image_id):
    active = np.zeros([dataset.num_classes], dtype=np.int32)
    source = dataset.image_info[image_id]["source"]
    try:
        active[dataset.source_class_ids[source]] = 1
    except KeyError:
        raise ImageError("{}: source {!r} has no classes (call prepare() after "
                         "add_class)".format(describe_image(dataset, image_id),
                                             source)) from None
    return active


def _checked_image(image, config, what):
    """Validate (and mildly convert) a loaded image to [H, W, C]."""
    image = np.asarray(image)
    channels = config.IMAGE_CHANNEL_COUNT
    # Same conversions as Dataset.load_image, for subclasses that return raw arrays.
    if image.ndim == 3 and image.shape[2] == 1 and channels != 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.stack([image] * channels, axis=-1)
    elif image.ndim == 3 and image.shape[2] == 4 and channels == 3:
        image = image[:, :, :3]  # drop alpha, as Matterport
    if image.ndim != 3:
        raise ImageError("{}: image must be [height, width, channels] after conversion, "
                         "got shape {}".format(what, image.shape))
    if image.shape[2] != channels:
        raise ImageError("{}: image has {} channels, config.IMAGE_CHANNEL_COUNT is "
                         "{}".format(what, image.shape[2], channels))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError("{}: image is empty (shape {})".format(what, image.shape))
    if image.dtype.kind not in "uif":
        raise ImageError("{}: image dtype {} is not numeric".format(what, image.dtype))
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        # A NaN / inf pixel would only surface later as a non-finite loss.
        raise ImageError("{}: image contains NaN or infinite values".format(what))
    # Raw arrays of a custom load_image: the same 8-bit rule as detect() applies.
    return image_to_uint8(image, config.IMAGE_BIT_DEPTH, what)


def _checked_annotations(mask, class_ids, image_shape, num_classes, what):
    """Validate load_mask() output; returns (bool [H, W, N], int32 [N])."""
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 1:
        raise ImageError("{}: class_ids must be 1-D, got shape {}".format(
            what, class_ids.shape))
    if class_ids.size and (class_ids.dtype.kind not in "iu" and not (
            class_ids.dtype.kind == "f" and np.all(class_ids == np.round(class_ids)))):
        raise ImageError("{}: class_ids must be integers, got {}".format(
            what, class_ids.dtype))
    class_ids = class_ids.astype(np.int32)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 0:
        # Matterport's default load_mask returns [0, 0, 0]: no instances, any size.
        mask = np.zeros(tuple(image_shape[:2]) + (0,), dtype=bool)
    if mask.ndim != 3:
        raise ImageError("{}: mask must be [height, width, instances], got shape "
                         "{}".format(what, mask.shape))
    if mask.shape[:2] != tuple(image_shape[:2]):
        raise ImageError("{}: mask height/width {} differ from the image's {}".format(
            what, mask.shape[:2], tuple(image_shape[:2])))
    if mask.shape[2] != class_ids.shape[0]:
        raise ImageError("{}: {} masks but {} class ids".format(
            what, mask.shape[2], class_ids.shape[0]))
    # Negative ids are crowds (Matterport/COCO) and pass through; 0 (BG) is not a class.
    bad = (class_ids == 0) | (np.abs(class_ids) >= num_classes)
    if np.any(bad):
        raise ImageError("{}: class ids {} outside [1, {}) (crowds may be negative)".format(
            what, sorted(set(class_ids[bad].tolist())), num_classes))
    if mask.dtype == np.bool_:
        pass
    elif mask.dtype.kind == "f":
        mask = mask >= 0.5
    else:
        mask = mask != 0
    return mask, class_ids


############################################################
#  Ground truth of one image
############################################################

def load_image_gt(dataset, config, image_id, augment=False, augmentation=None,
                  use_mini_mask=False, rng=None):
    """Load an image and its instances, resized per config, optionally augmented.
    Matterport's signature and defaults (full-size masks unless use_mini_mask).

    dataset: a prepared utils.Dataset. image_id: internal image id.
    augment: deprecated Matterport flag: random horizontal flip.
    augmentation: imgaug augmenter (mrcnn.augment.iaa) or None. Images get every
        augmenter, masks only the geometric ones (mrcnn.augment.MASK_AUGMENTERS). It must
        not change the image size.
    use_mini_mask: True -> MINI_MASK_SHAPE masks; None -> config.USE_MINI_MASK (what
        training uses).
    rng: np.random.Generator for the random choices here (flip, imgaug seed); None uses
        the global RNGs.

    Returns (image, image_meta, class_ids, bbox, mask):
        image: [h, w, C] as loaded (uint8 from Dataset.load_image), resized per
            IMAGE_RESIZE_MODE.
        image_meta: float64 [12 + dataset.num_classes] (mrcnn.preprocess layout).
        class_ids: int32 [N] (negative = crowd).
        bbox: int32 [N, (y1, x1, y2, x2)] pixels of the resized image, y2/x2 exclusive.
        mask: bool [h, w, N], or [MINI_MASK_SHAPE..., N] mini masks (each cropped to its
            box).
    Instances whose mask is empty after resizing / cropping / augmentation are dropped;
    N may be 0. Raises ImageError (a utils.DatasetError) naming the image id and path for
    unreadable images and inconsistent annotations.
    """
    parts = _load_gt(dataset, config, image_id, augmentation, use_mini_mask, augment, rng)
    image, class_ids, bbox, mask, original_shape, window, scale, active = parts
    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active)
    return image, image_meta, class_ids, bbox, mask


def _load_gt(dataset, config, image_id, augmentation, use_mini_mask, augment, rng):
    """load_image_gt without the meta: also returns (original_shape, window, scale,
    active_class_ids) so callers that pad the image can compose their own meta."""
    if use_mini_mask is None:
        use_mini_mask = config.USE_MINI_MASK
    if augmentation is None and hasattr(augment, "to_deterministic"):
        # An imgaug augmenter given in the `augment` slot (4th positional argument).
        augment, augmentation = False, augment
    what = describe_image(dataset, image_id)

    image = _checked_image(_call_loader(dataset, "load_image", image_id, what), config,
                           what)
    mask, class_ids = _call_loader(dataset, "load_mask", image_id, what)
    num_classes = min(dataset.num_classes, config.NUM_CLASSES)
    mask, class_ids = _checked_annotations(mask, class_ids, image.shape, num_classes, what)
    original_shape = image.shape
    image, window, scale, padding, crop = _resized_image(image, config, what)
    if use_mini_mask and not augment and not augmentation and DIRECT_MINI_MASKS:
        class_ids, bbox, mask = _direct_mini_gt(mask, class_ids, scale, padding, crop,
                                                config.MINI_MASK_SHAPE)
    else:
        mask = _resized_mask(mask, image, scale, padding, crop)
        image, mask = _augmented_gt(image, mask, augment, augmentation, rng, what)
        class_ids, bbox, mask = _kept_gt(mask, class_ids, use_mini_mask, config)
    active_class_ids = _active_class_ids(dataset, image_id)
    return (image, class_ids, bbox, mask.astype(bool, copy=False), original_shape, window,
            scale, active_class_ids)


def _kept_gt(mask, class_ids, use_mini_mask, config):
    """Drop instances left empty (cropped or augmented out), box the rest, and shrink
    their masks to mini masks if asked: (class_ids, bbox, mask)."""
    keep = np.any(mask, axis=(0, 1))
    mask = mask[:, :, keep]
    class_ids = class_ids[keep]
    bbox = utils.extract_bboxes(mask)
    if use_mini_mask:
        mask = utils.minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)
    return class_ids, bbox, mask


# True: without augmentation, mini masks are made from each instance's own box
# (_direct_mini_gt), equal to resizing the whole stack first; False: the whole stack
# (the reference path, kept for tests and benchmarks).
DIRECT_MINI_MASKS = True


def _direct_mini_gt(mask, class_ids, scale, padding, crop, mini_shape):
    """_resized_mask + _kept_gt with mini masks, the same arrays, without building the
    resized [H, W, N] stack: the nearest-neighbour zoom is a gather, so each instance's
    resized mask is zero outside the output rows / columns that read its source box, and
    only that block is gathered (upscaled DSB2018 stacks cost more than the rest)."""
    rows, top = _frame_sources(mask.shape[0], scale, crop, 0, padding)
    cols, left = _frame_sources(mask.shape[1], scale, crop, 1, padding)
    keep, boxes, minis = [], [], []
    for i, (y1, x1, y2, x2) in enumerate(utils.extract_bboxes(mask)):
        block, (by, bx) = _instance_block(mask[:, :, i], rows, cols, (y1, y2), (x1, x2))
        if block is None:
            continue
        keep.append(i)
        boxes.append((by + top, bx + left, by + top + block.shape[0],
                      bx + left + block.shape[1]))
        minis.append(utils.minimize_mask([(0, 0) + block.shape], block[:, :, None],
                                         mini_shape))
    bbox = np.array(boxes, np.int32).reshape(-1, 4)
    mini = (np.concatenate(minis, axis=2) if minis
            else np.zeros(tuple(int(v) for v in mini_shape) + (0,), bool))
    return class_ids[np.array(keep, np.intp)], bbox, mini


def _frame_sources(n_in, scale, crop, axis, padding):
    """Source index of each output pixel along an axis before padding (-1: zero), as
    resize_mask's gather, and the padding before it (0 with a crop)."""
    index = (np.arange(n_in) if scale == 1 else _zoom_rows(n_in, scale))
    if crop is not None:
        return index[crop[axis]:crop[axis] + crop[axis + 2]], 0
    return index, int(padding[axis][0])


def _instance_block(mask, rows, cols, y_range, x_range):
    """The nonzero part of one resized instance mask, and its (row, column) offset in the
    output before padding; (None, None) when it is empty. Outputs reading a source row
    or column outside the source box are zero, so only the span of those that read
    inside it is gathered (the zoom is monotone, so the span is contiguous)."""
    r = np.flatnonzero((rows >= y_range[0]) & (rows < y_range[1]))
    c = np.flatnonzero((cols >= x_range[0]) & (cols < x_range[1]))
    if not len(r) or not len(c):
        return None, (None, None)
    block = _gather_zoom(mask, rows[r[0]:r[-1] + 1], cols[c[0]:c[-1] + 1])
    ys, xs = np.flatnonzero(block.any(axis=1)), np.flatnonzero(block.any(axis=0))
    if not len(ys):
        return None, (None, None)
    block = block[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    return block.astype(bool, copy=False), (int(r[0] + ys[0]), int(c[0] + xs[0]))


def _call_loader(dataset, method, image_id, what):
    """dataset.<method>(image_id); a failure other than a DatasetError (which already
    names the image) becomes an ImageError naming the image."""
    try:
        return getattr(dataset, method)(image_id)
    except DatasetError:
        raise
    except Exception as e:
        raise ImageError("{}: {} failed: {}: {}".format(
            what, method, type(e).__name__, e)) from e


def _resized_mask(mask, image, scale, padding, crop):
    """The masks resized as resize_image resized ``image`` (now resized)."""
    if mask.shape[2]:
        return utils.resize_mask(mask, scale, padding, crop)
    # Nothing to zoom; keep the stack in step with the image.
    return np.zeros(image.shape[:2] + (0,), dtype=bool)


def _resized_image(image, config, what):
    """resize_image per config, with errors naming the image: (image, window, scale,
    padding, crop)."""
    original_shape = image.shape
    # "square" shrinks the long side to IMAGE_MAX_DIM (only it ever scales down): an
    # extreme aspect ratio (e.g. 10000 x 40 at 64) leaves a short side under 2 pixels,
    # whose window has zero normalised size (norm_boxes divides by side - 1) and whose
    # masks zoom to 0 pixels. Same limit as detect() (inference.mold_inputs).
    h, w = original_shape[:2]
    short = round(min(h, w) * config.IMAGE_MAX_DIM / max(h, w))
    if config.IMAGE_RESIZE_MODE == "square" and short < 2:
        raise ImageError("{}: image of shape {} is too thin: its short side shrinks to {} "
                         "pixel(s) at IMAGE_MAX_DIM {} ('square' mode)".format(
                             what, original_shape, short, config.IMAGE_MAX_DIM))
    try:
        image, window, scale, padding, crop = utils.resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
    except ValueError as e:
        raise ImageError("{}: cannot resize the image of shape {}: {}".format(
            what, original_shape, e)) from e
    if min(window[2] - window[0], window[3] - window[1]) < 2:   # e.g. 1 x 40, no min_dim
        raise ImageError("{}: image of shape {} is too thin: it is {}x{} pixels once "
                         "resized".format(what, original_shape, window[2] - window[0],
                                          window[3] - window[1]))
    return image, window, scale, padding, crop


def _augmented_gt(image, mask, augment, augmentation, rng, what):
    """The deprecated random flip (augment), then the imgaug augmentation, if any."""
    if augment:
        logger.warning("'augment' is deprecated; use 'augmentation' instead.")
        flip = (rng.integers(2) if rng is not None else np.random.randint(2))
        if flip:
            image = np.fliplr(image)
            mask = np.fliplr(mask)

    if augmentation:
        shape_before = image.shape
        seed = None if rng is None else int(rng.integers(2 ** 31))
        try:
            image, mask = augment_image_and_masks(image, mask, augmentation, seed=seed)
        except AugmentationError as e:
            raise ImageError("{}: {}".format(what, e)) from e
        if image.shape != shape_before:
            raise ImageError("{}: augmentation changed the image shape from {} to {}; use "
                             "size-preserving augmenters (e.g. keep_size=True)".format(
                                 what, shape_before, image.shape))
    return image, mask


############################################################
#  One training example
############################################################

def _pad_to(image, mask, use_mini_mask, target_hw, what):
    """Zero-pad image (and full masks) at the bottom/right to target_hw, so "none" and
    "pad64" images smaller than IMAGE_SHAPE batch together. The window still marks the
    real image; the caller puts the padded shape in the meta."""
    h, w = image.shape[:2]
    th, tw = int(target_hw[0]), int(target_hw[1])
    if (h, w) == (th, tw):
        return image, mask
    if h > th or w > tw:
        raise ImageError("{}: resized image is {}x{}, larger than config.IMAGE_SHAPE "
                         "{}x{} that training batches need; use smaller images or a larger "
                         "IMAGE_MAX_DIM".format(what, h, w, th, tw))
    image = np.pad(image, [(0, th - h), (0, tw - w), (0, 0)])
    if not use_mini_mask:
        mask = np.pad(mask, [(0, th - h), (0, tw - w), (0, 0)])
    return image, mask


def load_training_example(dataset, config, image_id, anchors=None, augmentation=None,
                          rng=None, rpn_targets=None):
    """Everything the training model needs for one image, as a dict of numpy arrays.

    anchors: get_anchors(config, config.IMAGE_SHAPE) (pixels; computed when None).
    rng: np.random.Generator (None: global RNGs) for subsampling and augmentation.
    rpn_targets: add input_rpn_match / input_rpn_bbox (build_rpn_targets over all the
        image's instances, as Matterport); None = pipeline_rpn_targets(config).

    Keys and shapes: see the module docstring (without the batch axis);
    input_rpn_match is [A, 1]. Images smaller than config.IMAGE_SHAPE ("none"/"pad64"
    modes) are zero-padded at the bottom/right; larger ones raise ImageError.
    With more than MAX_GT_INSTANCES instances, a random subset of MAX_GT_INSTANCES is
    kept (Matterport) so the example still fits.
    """
    example = _training_example(dataset, config, image_id, anchors, augmentation, rng,
                                rpn_targets)
    example["input_image"] = mold_image(example["input_image"], config)
    return example


def _training_example(dataset, config, image_id, anchors, augmentation, rng, rpn_targets):
    """load_training_example with the image not yet molded (uint8): what the pipeline's
    workers send (a quarter of the bytes); the float64 mean subtraction runs in TF."""
    what = describe_image(dataset, image_id)
    use_mini_mask = config.USE_MINI_MASK
    parts = _load_gt(dataset, config, image_id, augmentation, use_mini_mask, False, rng)
    image, class_ids, boxes, masks, original_shape, window, scale, active = parts
    image, masks = _pad_to(image, masks, use_mini_mask, config.IMAGE_SHAPE[:2], what)
    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active)
    targets = {}
    if pipeline_rpn_targets(config, rpn_targets):
        if anchors is None:
            anchors = get_anchors(config, config.IMAGE_SHAPE)
        rpn_match, rpn_bbox = build_rpn_targets(image.shape, anchors, class_ids, boxes,
                                                config, rng=rng)
        targets = {"input_rpn_match": rpn_match[:, np.newaxis], "input_rpn_bbox": rpn_bbox}

    max_gt = config.MAX_GT_INSTANCES
    if class_ids.shape[0] > max_gt:
        keep = np.sort(random_subset(rng, np.arange(class_ids.shape[0]), max_gt))
        class_ids, boxes, masks = class_ids[keep], boxes[keep], masks[:, :, keep]
    n = class_ids.shape[0]
    gt_class_ids = np.zeros([max_gt], dtype=np.int32)
    gt_class_ids[:n] = class_ids
    gt_boxes = np.zeros([max_gt, 4], dtype=np.float32)
    gt_boxes[:n] = boxes
    gt_masks = np.zeros(masks.shape[:2] + (max_gt,), dtype=bool)
    gt_masks[:, :, :n] = masks

    meta_size = config.IMAGE_META_SIZE
    if image_meta.shape[0] != meta_size:
        raise DatasetError("{}: image meta has {} values but config.IMAGE_META_SIZE is {}: "
                           "dataset.num_classes ({}) != config.NUM_CLASSES ({})".format(
                               what, image_meta.shape[0], meta_size, dataset.num_classes,
                               config.NUM_CLASSES))
    example = {
        "input_image": image,
        "input_image_meta": image_meta.astype(np.float32),
        "input_gt_class_ids": gt_class_ids,
        "input_gt_boxes": gt_boxes,
        "input_gt_masks": gt_masks,
    }
    example.update(targets)
    return {k: example[k] for k in INPUT_NAMES if k in example}


def example_spec(config, num_anchors=None, rpn_targets=None):
    """{input name: (shape without batch, numpy dtype)} of load_training_example, in
    INPUT_NAMES order; the RPN targets only if pipeline_rpn_targets(config, rpn_targets)."""
    h, w, c = (int(v) for v in config.IMAGE_SHAPE)
    mask_hw = tuple(config.MINI_MASK_SHAPE) if config.USE_MINI_MASK else (h, w)
    max_gt = config.MAX_GT_INSTANCES
    spec = collections.OrderedDict([
        ("input_image", ((h, w, c), np.float32)),
        ("input_image_meta", ((config.IMAGE_META_SIZE,), np.float32))])
    if pipeline_rpn_targets(config, rpn_targets):
        if num_anchors is None:
            num_anchors = get_anchors(config, config.IMAGE_SHAPE).shape[0]
        spec["input_rpn_match"] = ((int(num_anchors), 1), np.int32)
        spec["input_rpn_bbox"] = ((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32)
    spec["input_gt_class_ids"] = ((max_gt,), np.int32)
    spec["input_gt_boxes"] = ((max_gt, 4), np.float32)
    spec["input_gt_masks"] = (tuple(int(s) for s in mask_hw) + (max_gt,), np.bool_)
    return spec


############################################################
#  Checks and skip accounting
############################################################

def check_dataset(dataset, name="dataset", config=None):
    """Raise DatasetError (naming ``name``) unless the dataset can be trained on:
    prepared, with images, with classes besides BG, and (given a config) with
    dataset.num_classes == config.NUM_CLASSES."""
    if dataset is None:
        raise DatasetError("{} is None".format(name))
    check = getattr(dataset, "check_ready", None)
    try:
        if check is not None:
            check()
        else:
            if len(dataset.image_ids) == 0:
                raise DatasetError("no images")
            if dataset.num_classes <= 1:
                raise DatasetError("no classes besides BG")
    except DatasetError as e:
        raise DatasetError("{}: {}".format(name, e)) from None
    except AttributeError as e:
        raise DatasetError("{} ({}) is not a prepared Dataset: {}; call prepare() "
                           "first".format(name, type(dataset).__name__, e)) from None
    if config is not None and dataset.num_classes != config.NUM_CLASSES:
        raise DatasetError("{} has {} classes (BG included) but config.NUM_CLASSES is "
                           "{}".format(name, dataset.num_classes, config.NUM_CLASSES))
    if config is not None:
        adopt_bit_depth(dataset, config)


def adopt_bit_depth(dataset, config):
    """Let a Dataset whose image_bit_depth is None read images by the config's
    IMAGE_BIT_DEPTH, so training, evaluation and detect() share one rule."""
    if getattr(dataset, "image_bit_depth", "unset") is None:
        dataset._config_bit_depth = config.IMAGE_BIT_DEPTH


class SkipCounter(object):
    """Thread-safe tally of examples a pipeline skipped (read it at epoch end).

    errors: broken images skipped with on_error="skip". empty: images skipped because no
    (non-crowd) instance was left. messages: the last few error messages.
    ``max_consecutive``: more skips than this in a row (no example succeeding in
    between) raises, so a dataset that is entirely broken or empty cannot hang training.
    """

    def __init__(self, max_consecutive=None):
        self._lock = threading.Lock()
        self.max_consecutive = max_consecutive
        self.errors = 0
        self.empty = 0
        self.loaded = 0
        self.consecutive = 0
        self.messages = collections.deque(maxlen=20)
        # Exceptions raised with on_error="raise" (the last few; see pipeline_error).
        self.raised = collections.deque(maxlen=8)

    @property
    def skipped(self):
        return self.errors + self.empty

    def _skip(self):
        self.consecutive += 1
        if self.max_consecutive is not None and self.consecutive > self.max_consecutive:
            raise DatasetError(
                "{} consecutive images skipped ({} errors, {} without instances so far; "
                "last errors: {}): no usable training example".format(
                    self.consecutive, self.errors, self.empty, list(self.messages)[-3:]))

    def record_error(self, message):
        with self._lock:
            self.errors += 1
            self.messages.append(message)
            self._skip()

    def record_empty(self):
        with self._lock:
            self.empty += 1
            self._skip()

    def record_loaded(self):
        with self._lock:
            self.loaded += 1
            self.consecutive = 0

    def as_dict(self):
        with self._lock:
            return {"loaded": self.loaded, "errors": self.errors, "empty": self.empty}

    def __repr__(self):
        return "SkipCounter({})".format(self.as_dict())


############################################################
#  tf.data pipeline
############################################################

def repeat_factors(dataset, threshold):
    """LVIS repeat factors of a dataset's images (detectron2's RepeatFactorTrainingSampler
    rule), float64 [num_images] >= 1 in ``dataset.image_ids`` order.

    A class present in a fraction f of the images gets r_c = max(1, sqrt(threshold / f));
    an image gets the largest r_c of its (non-crowd) classes, 1 without any. Classes come
    from ``dataset.image_class_ids`` (annotation-only for COCO and VIA datasets).
    """
    per_image = [np.unique(dataset.image_class_ids(i)) for i in dataset.image_ids]
    counts = np.zeros(max(dataset.num_classes, 1), np.float64)
    for ids in per_image:
        counts[ids] += 1
    freq = counts / max(len(per_image), 1)
    with np.errstate(divide="ignore"):
        class_factor = np.maximum(1.0, np.sqrt(threshold / freq))
    return np.array([class_factor[ids].max() if len(ids) else 1.0 for ids in per_image])


def build_dataset(dataset, config, shuffle=True, augmentation=None, repeat=True,
                  batch_size=None, no_augmentation_sources=None, on_error="raise",
                  seed=None, skip_empty=True, skip_counter=None,
                  repeat_factor_threshold=None, workers=None, autotune=True):
    """A tf.data.Dataset of training batches (dicts keyed as example_spec(config): no
    RPN targets unless config.RPN_TARGETS_IN_GRAPH is False).

    dataset: prepared utils.Dataset with dataset.num_classes == config.NUM_CLASSES.
    shuffle: reshuffle the image order every pass. repeat: loop forever (Keras fit with
        steps_per_epoch); with repeat=False one pass, the last partial batch dropped.
    batch_size: default config.BATCH_SIZE; batches are always full (static shapes).
    augmentation: imgaug augmenter, not applied to sources in no_augmentation_sources.
    on_error: "raise" -> a broken image stops iteration with an error naming its id and
        path (TensorFlow wraps it, the message is kept); "skip" -> it is logged, skipped
        and counted in ``result.skip_counter.errors``.
    skip_empty: skip images left without non-crowd instances (Matterport's generator does;
        counted in ``skip_counter.empty``).
    seed: makes shuffling, subsampling and augmentation reproducible; None -> fresh
        randomness. Elements come in a fixed order when seed is set or shuffle=False.
    skip_counter: a SkipCounter to tally into (default: a new one). It is also attached to
        the returned dataset as ``.skip_counter``.
    repeat_factor_threshold: None, or repeat-factor sampling (config.REPEAT_FACTOR_THRESHOLD;
        see ``repeat_factors``): every pass takes each image floor(r) times and once more
        with probability frac(r), in a new random order.
    workers: processes loading images beside TensorFlow (mrcnn.workers.WorkerPool, forked
        on first use, attached as ``result.worker_pool``; close() it to free them early);
        None -> config.DATA_WORKERS, whose None is one per usable core (0 on one core or
        without fork). 0 loads in-process. The batches are the same either way.
    autotune: tf.data's autotuning of parallel calls and prefetch buffers. False for a
        pipeline iterated afresh again and again, as Keras does with validation data
        every epoch: an autotuned iterator's destruction waits for its tuning thread to
        wake, and that thread sleeps up to 60 s (TF 2.21), so a new validation iterator
        could stall training for a minute with every core idle. The batches are the same.

    Image size: batches need one shape, config.IMAGE_SHAPE. "square" and "crop" modes
    always give it; in "none"/"pad64" modes smaller images are zero-padded at the
    bottom/right to IMAGE_SHAPE (IMAGE_MAX_DIM square) and larger ones are errors.
    """
    check_dataset(dataset, "dataset", config)
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip', got {!r}".format(on_error))
    batch_size = int(batch_size or config.BATCH_SIZE)
    no_aug = set(no_augmentation_sources or [])
    # Anchors only for the pipeline-side RPN targets (RPN_TARGETS_IN_GRAPH = False).
    anchors = get_anchors(config, config.IMAGE_SHAPE) if pipeline_rpn_targets(config) \
        else None
    spec = example_spec(config, None if anchors is None else anchors.shape[0])
    image_ids = np.asarray(dataset.image_ids, dtype=np.int64)
    counter = skip_counter if skip_counter is not None else SkipCounter()
    if counter.max_consecutive is None:
        counter.max_consecutive = max(2 * len(image_ids), 20)
    produce = _example_producer(dataset, config, anchors, augmentation, no_aug, seed)
    pool = _worker_pool(produce, config, workers)
    load = _example_loader(dataset, produce, pool, _transport_spec(spec), on_error,
                           skip_empty, counter)
    factors = None
    if repeat_factor_threshold:
        factors = repeat_factors(dataset, repeat_factor_threshold)
        logger.info("Repeat-factor sampling (threshold %g): %d images, %.1f per pass on "
                    "average, largest factor %.2f", repeat_factor_threshold, len(factors),
                    factors.sum(), factors.max(initial=1.0))
    ds = _batched_pipeline(image_ids, _tf_loader(load, _transport_spec(spec)), shuffle,
                           repeat, seed, batch_size, factors,
                           parallel=2 * pool.processes if pool else None)
    ds = _molded_batches(ds, config)
    if not autotune:
        ds = _without_autotune(ds)
    ds.skip_counter = counter
    ds.worker_pool = pool
    return ds


def _without_autotune(ds):
    """ds with tf.data's autotuning (and so its tuning thread) switched off: AUTOTUNE
    parallelism and buffers keep TensorFlow's starting values."""
    import tensorflow as tf
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _worker_pool(produce, config, workers):
    """A WorkerPool running ``produce`` (None for in-process loading)."""
    from mrcnn import workers as worker_processes   # numpy-only, like this module
    if workers is None:
        workers = config.DATA_WORKERS
    if workers is None:
        workers = worker_processes.default_workers()
    if int(workers) <= 0:
        return None
    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        logger.warning("DATA_WORKERS=%s needs the fork start method, unavailable here: "
                       "loading in-process", workers)
        return None
    return worker_processes.WorkerPool(produce, int(workers))


def _transport_spec(spec):
    """The spec of what the loader returns: the image as uint8 (molded in TF later)."""
    out = collections.OrderedDict(spec)
    out["input_image"] = (spec["input_image"][0], np.uint8)
    return out


def _molded_batches(ds, config):
    """mold_image in TF on whole batches: float64 mean subtraction rounded to float32,
    bit for bit numpy's (both are IEEE operations in the same order), outside the GIL."""
    import tensorflow as tf
    mean = tf.constant(np.asarray(config.MEAN_PIXEL, np.float64))

    def mold(batch):
        batch = dict(batch)
        image = tf.cast(batch["input_image"], tf.float64) - mean
        batch["input_image"] = tf.cast(image, tf.float32)
        return batch

    ds = ds.map(mold, num_parallel_calls=tf.data.AUTOTUNE)
    return _device_prefetch(ds.prefetch(tf.data.AUTOTUNE))


def _device_prefetch(ds):
    """Batches copied to the GPU ahead of the step when exactly one is visible and no
    distribution strategy is in scope (strategies place batches on their replicas
    themselves, and rebatch datasets, which must then not end on a device); unchanged
    on CPU."""
    import tensorflow as tf
    if len(tf.config.list_logical_devices("GPU")) != 1 or tf.distribute.has_strategy():
        return ds
    return ds.apply(tf.data.experimental.prefetch_to_device("/gpu:0"))


def _example_producer(dataset, config, anchors, augmentation, no_aug, seed):
    """produce(image_id, index) -> the example dict (uint8 image), or an exception: numpy
    only (it runs in forked workers, which must not touch TensorFlow). The random
    generator comes from (seed, index), so a worker computes what the process would."""

    def produce(image_id, index):
        rng = (np.random.default_rng([seed, index]) if seed is not None
               else np.random.default_rng())
        source = dataset.image_info[image_id]["source"]
        aug = None if source in no_aug else augmentation
        return _training_example(dataset, config, image_id, anchors, aug, rng, None)

    return produce


def _example_loader(dataset, produce, pool, spec, on_error, skip_empty, counter):
    """build_dataset's per-image numpy function: load(image_id, index) -> the example's
    arrays in spec order plus an "ok" flag (False: skipped, arrays are zeros). Errors and
    skips are counted here, in the pipeline's process, wherever the example was made."""
    zeros = [np.zeros(shape, dtype) for shape, dtype in spec.values()]

    def load(image_id, index):
        image_id, index = int(image_id), int(index)
        try:
            example = (pool.submit(image_id, index).result() if pool is not None
                       else produce(image_id, index))
        except Exception as e:
            if on_error == "raise" or isinstance(e, PoolClosedError):
                # tf.data re-raises it wrapped in an InvalidArgumentError whose message
                # starts with TF's own text; pipeline_error() finds this original again.
                counter.raised.append(e)
                raise
            message = "{}: {}".format(type(e).__name__, e)
            if describe_image(dataset, image_id) not in message:
                message = "{}: {}".format(describe_image(dataset, image_id), message)
            logger.warning("Skipping broken image: %s", message)
            counter.record_error(message)
            return zeros + [False]
        if skip_empty and not np.any(example["input_gt_class_ids"] > 0):
            counter.record_empty()
            return zeros + [False]
        counter.record_loaded()
        return [example[k] for k in spec] + [True]

    return load


def _tf_loader(load, spec):
    """Wrap the numpy loader for tf.data: (index, image_id) -> (example dict, ok), with
    the static shapes that batching needs."""
    import tensorflow as tf

    tout = [tf.as_dtype(dtype) for _, dtype in spec.values()] + [tf.bool]

    def tf_load(index, image_id):
        out = tf.numpy_function(load, [image_id, index], tout, stateful=True)
        for tensor, (shape, _) in zip(out, spec.values()):
            tensor.set_shape(shape)
        out[-1].set_shape([])
        return dict(zip(spec.keys(), out[:-1])), out[-1]

    return tf_load


def _repeat_factor_ids(image_ids, factors, seed, repeat):
    """tf.data of image ids drawn by repeat factors, pass after pass (one pass without
    ``repeat``): each pass takes image i floor(r_i) times plus once with probability
    frac(r_i) (stochastic rounding), shuffled; passes differ, a seed fixes them all."""
    import tensorflow as tf

    base = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    ids = tf.constant(image_ids, tf.int64)
    whole = tf.constant(np.floor(factors), tf.float32)
    frac = tf.constant(factors - np.floor(factors), tf.float32)

    def one_pass(i):
        draw = tf.random.stateless_uniform(tf.shape(frac), seed=tf.stack([base, i]))
        counts = tf.cast(whole + tf.cast(draw < frac, tf.float32), tf.int64)
        chosen = tf.repeat(ids, counts)
        keys = tf.random.stateless_uniform(tf.shape(chosen), seed=tf.stack([base + 1, i]))
        return tf.data.Dataset.from_tensor_slices(tf.gather(chosen, tf.argsort(keys)))

    passes = tf.data.Dataset.counter()
    return (passes if repeat else passes.take(1)).flat_map(one_pass)


def _batched_pipeline(image_ids, tf_load, shuffle, repeat, seed, batch_size, factors=None,
                      parallel=None):
    """The tf.data pipeline over image ids: order, parallel load, skip, batch.
    factors: repeat factors per image (repeat-factor sampling, which shuffles), or None.
    parallel: loads in flight (None: AUTOTUNE); with worker processes, enough to keep
    each busy, since a waiting call costs its thread nothing."""
    import tensorflow as tf

    # Parallel loading, measured on this 2-core machine (shared, load average ~4; 256 px
    # images, 12 instances, flip + affine + multiply; batch 2, interleaved runs):
    #   serial loop                                         ~80-210 ms/batch
    #   tf.data + tf.numpy_function, num_parallel_calls=AUTOTUNE  ~80-270 ms (tracks serial)
    #   keras.utils.PyDataset workers=4 (threads)           ~160-200 ms
    #   keras.utils.PyDataset workers=2, multiprocessing    ~220 ms
    # tf.data was never slower than PyDataset, and adds static shapes, prefetch that
    # overlaps the train step and tf.distribute support, so it is the one used. With
    # more idle cores the parallel map scales where the numpy/OpenCV work drops the GIL.
    if factors is not None:
        ds = _repeat_factor_ids(image_ids, factors, seed, repeat)
    else:
        ds = tf.data.Dataset.from_tensor_slices(image_ids)
        if shuffle:
            ds = ds.shuffle(len(image_ids), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
    ds = ds.enumerate()
    # Parallel loads may finish out of order; keep the order when it is meant to be
    # reproducible (seed) or fixed (no shuffling).
    ds = ds.map(tf_load, num_parallel_calls=parallel or tf.data.AUTOTUNE,
                deterministic=seed is not None or not shuffle)
    ds = ds.filter(_is_ok).map(_drop_flag)
    return ds.batch(batch_size, drop_remainder=True)


def pipeline_error(error, *datasets):
    """The exception a build_dataset pipeline raised, given the TensorFlow error wrapping it.

    With on_error="raise", a broken image raises (e.g.) an ImageError naming its id and
    path inside tf.data; it reaches the caller (iteration, Keras fit) as a
    tf.errors.InvalidArgumentError whose message begins with TensorFlow's own text
    ("Error in user-defined function passed to ParallelMapDatasetV2 ..."). Returns that
    original exception (its message names the image at the top) when ``error`` wraps one
    raised by a pipeline in ``datasets`` (results of build_dataset, or anything with their
    ``skip_counter``), else None. Typical use:

        except tf.errors.OpError as e:
            original = pipeline_error(e, train_ds, val_ds)
            if original is None:
                raise
            raise original from None
    """
    text = str(error)
    for ds in datasets:
        counter = getattr(ds, "skip_counter", None)
        for original in reversed(list(getattr(counter, "raised", ()))):
            if "{}: {}".format(type(original).__name__, original) in text:
                return original
    return None


def _is_ok(example, ok):
    return ok


def _drop_flag(example, ok):
    return example


def skip_report_callbacks(*datasets):
    """Keras callbacks that log, at each epoch end, the images skipped by pipelines from
    build_dataset (train first, then validation; None entries are ignored)."""
    import keras

    counters = [(("train", "val")[i] if i < 2 else "data{}".format(i), ds.skip_counter)
                for i, ds in enumerate(datasets)
                if ds is not None and getattr(ds, "skip_counter", None) is not None]
    if not counters:
        return []

    class SkipReport(keras.callbacks.Callback):
        """Logs new skips per epoch; ``history`` keeps (epoch, name, counts) tuples."""

        def __init__(self):
            super().__init__()
            self.history = []
            self._last = {name: {"errors": 0, "empty": 0} for name, _ in counters}

        def on_epoch_end(self, epoch, logs=None):
            for name, counter in counters:
                now = counter.as_dict()
                new_errors = now["errors"] - self._last[name]["errors"]
                new_empty = now["empty"] - self._last[name]["empty"]
                self._last[name] = now
                self.history.append((epoch, name, now))
                if new_errors:
                    logger.warning("Epoch %d: %d broken %s image(s) skipped (%d in total); "
                                   "last: %s", epoch + 1, new_errors, name, now["errors"],
                                   counter.messages[-1] if counter.messages else "")
                if new_empty:
                    logger.info("Epoch %d: %d %s image(s) without instances skipped",
                                epoch + 1, new_empty, name)

    return [SkipReport()]


def data_generator(dataset, config, shuffle=True, augment=False, augmentation=None,
                   random_rois=0, batch_size=1, detection_targets=False,
                   no_augmentation_sources=None):
    """Matterport's Python generator, for ported scripts: yields (inputs, []) forever.

    inputs: [images, image_meta, rpn_match, rpn_bbox, gt_class_ids, gt_boxes, gt_masks]
    batched numpy arrays (dtypes as build_dataset). Images without instances are
    skipped; a broken image is logged and skipped, and the sixth error is raised (as
    Matterport). random_rois > 0 appends rpn_rois [batch, random_rois, 4] (pixels,
    generate_random_rois) to inputs, as Matterport; with detection_targets as well, the
    targets build_detection_targets makes from those ROIs follow: inputs gets rois
    [batch, TRAIN_ROIS_PER_IMAGE, 4] (pixels) and the yielded outputs are [class_ids
    [batch, T, 1], bbox [batch, T, NUM_CLASSES, 4], mask [batch, T, h, w, NUM_CLASSES]]
    (for inspecting what the heads are trained on; training builds them in the graph).
    """
    random_rois = int(random_rois or 0)
    if detection_targets and not random_rois:
        logger.warning("data_generator: detection_targets needs random_rois > 0 (the "
                       "targets are built from those ROIs); ignored, as Matterport")
    check_dataset(dataset, "dataset", config)
    anchors = get_anchors(config, config.IMAGE_SHAPE)
    spec = example_spec(config, anchors.shape[0], rpn_targets=True)
    image_ids = np.copy(dataset.image_ids)
    no_aug = set(no_augmentation_sources or [])
    error_count = 0
    index = -1
    batch = []
    while True:
        index = (index + 1) % len(image_ids)
        if shuffle and index == 0:
            np.random.shuffle(image_ids)
        image_id = int(image_ids[index])
        try:
            if augment:
                logger.warning("'augment' is deprecated; use 'augmentation' instead.")
                augmentation = augmentation or _fliplr_half()
                augment = False
            source = dataset.image_info[image_id]["source"]
            example = load_training_example(
                dataset, config, image_id, anchors,
                augmentation=None if source in no_aug else augmentation, rpn_targets=True)
        except (GeneratorExit, KeyboardInterrupt):
            raise
        except Exception:
            logger.exception("Error processing %s", describe_image(dataset, image_id))
            error_count += 1
            if error_count > 5:
                raise
            continue
        if not np.any(example["input_gt_class_ids"] > 0):
            continue
        batch.append(example)
        if len(batch) == batch_size:
            inputs, outputs = _generator_batch(batch, spec, config, random_rois,
                                               detection_targets)
            batch = []
            yield inputs, outputs


def _generator_batch(batch, spec, config, random_rois, detection_targets):
    """data_generator's (inputs, outputs) for a list of training examples."""
    inputs = [np.stack([ex[k] for ex in batch]) for k in spec]
    outputs = []
    if random_rois:
        rpn_rois = [_random_rois_for(ex, random_rois) for ex in batch]
        inputs.append(np.stack(rpn_rois))
        if detection_targets:
            targets = [build_detection_targets(r, ex["input_gt_class_ids"],
                                               ex["input_gt_boxes"],
                                               ex["input_gt_masks"], config)
                       for r, ex in zip(rpn_rois, batch)]
            rois, class_ids, bbox, mask = (np.stack(t) for t in zip(*targets))
            inputs.append(rois)
            # Keras wanted outputs and targets of the same rank (Matterport).
            outputs = [class_ids[..., np.newaxis], bbox, mask]
    return inputs, outputs


def _random_rois_for(example, count):
    """generate_random_rois around a training example's real (non-padding) GT boxes."""
    real = example["input_gt_class_ids"] > 0
    return generate_random_rois(example["input_image"].shape, count,
                                example["input_gt_class_ids"][real],
                                example["input_gt_boxes"][real])


def build_detection_targets(rpn_rois, gt_class_ids, gt_boxes, gt_masks, config):
    """Matterport's numpy detection targets of one image, computed by the graph's own
    DetectionTargetLayer (same sampling and targets as training), in Matterport's layout.

    rpn_rois: [N, 4] (y1, x1, y2, x2) proposals in pixels of the molded image.
    gt_class_ids: [G] int (0 = padding, < 0 = crowd). gt_boxes: [G, 4] pixels.
    gt_masks: [H, W, G] bool, or mini masks [MINI_MASK_SHAPE..., G] when
        config.USE_MINI_MASK (as load_image_gt / the training pipeline give them).
    Returns (T = TRAIN_ROIS_PER_IMAGE; positives first, then negatives, then zeros):
        rois: int32 [T, 4] pixels.
        class_ids: int32 [T] (0 = background or padding).
        bboxes: float32 [T, NUM_CLASSES, 4] box refinements divided by BBOX_STD_DEV, in
            the slot of the ROI's class only.
        masks: float32 [T, MASK_SHAPE[0], MASK_SHAPE[1], NUM_CLASSES] mask targets, in
            the slot of the ROI's class only.
    As in training, negatives are sampled in proportion to the positives
    (ROI_POSITIVE_RATIO), so ROIs that hit no GT box give no targets at all unless
    ROI_ADD_GT_AS_PROPOSALS adds the GT boxes to them.
    """
    import tensorflow as tf
    from mrcnn.roi_heads import DetectionTargetLayer
    shape = tuple(int(v) for v in config.IMAGE_SHAPE[:2])
    # The first (or only) box stage's targets, as graph.py builds them in training.
    layer = DetectionTargetLayer(config, positive_iou=config.stage_positive_iou(0),
                                 bbox_std_dev=config.stage_bbox_std_dev(0),
                                 add_gt_as_proposals=bool(config.ROI_ADD_GT_AS_PROPOSALS))
    gt_class_ids = np.asarray(gt_class_ids, np.int32)
    gt_boxes = np.asarray(gt_boxes, np.float32)
    out = layer([tf.constant(utils.norm_boxes(np.asarray(rpn_rois, np.float32), shape)[None]),
                 tf.constant(gt_class_ids[None]),
                 # Zero rows stay zero (padding): norm_boxes would shift them.
                 tf.constant(np.where(gt_class_ids[:, None] != 0,
                                      utils.norm_boxes(gt_boxes, shape), 0)[None],
                             tf.float32),
                 tf.constant(np.asarray(gt_masks, bool)[None])])
    rois, class_ids, deltas, masks = (t[0] for t in out)
    class_ids = class_ids.numpy().astype(np.int32)
    rois = rois.numpy()
    real = np.any(rois != 0, axis=1)
    rois = np.where(real[:, None], utils.denorm_boxes(rois, shape), 0).astype(np.int32)
    t, n = len(class_ids), config.NUM_CLASSES
    bboxes = np.zeros((t, n, 4), np.float32)
    bboxes[np.arange(t), class_ids] = deltas.numpy()
    bboxes[:, 0] = 0                            # background: no box target
    masks = masks.numpy().astype(np.float32)
    class_masks = np.zeros((t,) + masks.shape[1:] + (n,), np.float32)
    class_masks[np.arange(t), :, :, class_ids] = masks
    class_masks[..., 0] = 0
    return rois, class_ids, bboxes, class_masks


def generate_random_rois(image_shape, count, gt_class_ids, gt_boxes, rng=None):
    """Random ROI boxes, most of them near the GT boxes (Matterport's function, for
    inspecting detection targets).

    image_shape: (H, W, ...). count: ROIs wanted. gt_class_ids [G] (unused, kept for
    Matterport's signature); gt_boxes [G, 4] (y1, x1, y2, x2) pixels. About 90% of the
    ROIs (an equal share per GT box) lie in the box grown by its own height and width on
    each side, clipped to the image; the rest anywhere in the image. Every ROI is at
    least 2 px high and wide, unless the region is too small to hold that.
    Returns int32 [count, 4] (y1, x1, y2, x2) pixels.
    """
    rng = np.random.default_rng() if rng is None else rng
    h, w = int(image_shape[0]), int(image_shape[1])
    gt_boxes = np.asarray(gt_boxes, np.int64).reshape(-1, 4)
    per_box = int(0.9 * count / len(gt_boxes)) if len(gt_boxes) else 0
    regions = []
    for y1, x1, y2, x2 in gt_boxes:
        gh, gw = y2 - y1, x2 - x1
        regions.append(((max(y1 - gh, 0), min(y2 + gh, h)),
                        (max(x1 - gw, 0), min(x2 + gw, w)), per_box))
    regions.append(((0, h), (0, w), count - per_box * len(gt_boxes)))
    rois = [_random_boxes_in(rng, ys, xs, n) for ys, xs, n in regions if n > 0]
    return np.concatenate(rois).astype(np.int32) if rois else np.zeros((0, 4), np.int32)


def _random_boxes_in(rng, y_range, x_range, n, min_size=2):
    """n boxes [n, 4] with corners drawn uniformly in [lo, hi) per axis, each side at
    least min_size (or the range's span, if smaller)."""
    sides = []
    for lo, hi in (y_range, x_range):
        need = min(min_size, max(hi - lo - 1, 0))
        pairs = np.zeros((0, 2), np.int64)
        while len(pairs) < n:
            draw = np.sort(rng.integers(lo, max(hi, lo + 1), (2 * n, 2)), axis=1)
            pairs = np.concatenate([pairs, draw[draw[:, 1] - draw[:, 0] >= need]])
        sides.append(pairs[:n])
    (y1, y2), (x1, x2) = sides[0].T, sides[1].T
    return np.stack([y1, x1, y2, x2], axis=1)


def _fliplr_half():
    from mrcnn.augment import iaa
    return iaa.Fliplr(0.5)
