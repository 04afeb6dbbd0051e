"""Image augmentation with imgaug, safe for instance-mask stacks.

This is the ONE module that imports imgaug. imgaug 0.4.0 predates numpy 2; the aliases
it reads at import time (``np.sctypes``, ``np.complex``) are defined by the package's
``mrcnn/__init__.py``, which Python runs before this module, so a user's own
``import imgaug`` also works once any mrcnn module is imported. Import the augmenters
from here::

    from mrcnn.augment import iaa
    augmentation = iaa.Sequential([iaa.Fliplr(0.5), iaa.Multiply((0.8, 1.2))])

``augment_image_and_masks`` applies one random draw of an augmenter to an image and to its
instance masks. Masks only see the geometric augmenters named in ``MASK_AUGMENTERS``
(Matterport's rule); colour augmenters (Multiply, GaussianBlur, ...) change the image only.
"""

import imgaug  # the numpy aliases it needs: mrcnn/__init__.py
import imgaug.augmenters as iaa
import numpy as np

__all__ = ["iaa", "imgaug", "MASK_AUGMENTERS", "MAX_CV2_CHANNELS", "AugmentationError",
           "augment_image_and_masks", "mask_hook"]


def _patch_elastic_for_opencv5():
    """ElasticTransformation builds float64 remap grids; OpenCV 5's cv2.convertMaps only
    accepts float32 and raises for every image. Cast the displacement fields to float32
    (harmless on older OpenCV) so the augmenter works at all."""
    cls = iaa.ElasticTransformation
    if getattr(cls, "_mrcnn_float32_maps", False):
        return
    original = cls._map_coordinates  # a classmethod, already bound to cls

    def _map_coordinates(klass, image, dx, dy, *args, **kwargs):
        return original(image, np.asarray(dx, dtype=np.float32),
                        np.asarray(dy, dtype=np.float32), *args, **kwargs)

    cls._map_coordinates = classmethod(_map_coordinates)
    cls._mrcnn_float32_maps = True


_patch_elastic_for_opencv5()

# Augmenters allowed to act on masks, by class name (Matterport's list plus the other
# geometric ones that imgaug implements). A subclass of a listed class counts too
# (iaa.Rotate / ShearX / TranslateX are Affine subclasses). Append names here for your own
# geometric augmenters; always check new settings on masks (e.g. Affine with a non-zero
# cval would fill mask borders).
MASK_AUGMENTERS = ["Sequential", "SomeOf", "OneOf", "Sometimes",
                   "Fliplr", "Flipud", "CropAndPad", "Affine", "PiecewiseAffine",
                   "Rot90", "Resize", "PerspectiveTransform", "ElasticTransformation",
                   "Crop", "Pad",
                   "CropToFixedSize", "PadToFixedSize", "KeepSizeByResize"]

# OpenCV (cv2.flip, cv2.resize, cv2.warpPerspective, ...) rejects arrays with more than
# this many channels, so mask stacks are augmented in chunks of at most this size.
MAX_CV2_CHANNELS = 128


class AugmentationError(ValueError):
    """An augmenter produced an image and masks that no longer line up."""


def _is_mask_augmenter(augmenter, names):
    return any(klass.__name__ in names for klass in type(augmenter).__mro__)


def mask_hook(names=None):
    """imgaug HooksImages that deactivates every augmenter not in ``names``.

    names: class names (default: ``MASK_AUGMENTERS``, read at call time so appending to it
    takes effect). Containers in the list still run; their non-listed children do not.
    """
    def activator(images, augmenter, parents, default):
        allowed = MASK_AUGMENTERS if names is None else names
        return default and _is_mask_augmenter(augmenter, allowed)

    return imgaug.HooksImages(activator=activator)


def augment_image_and_masks(image, masks, augmentation, mask_augmenters=None,
                            chunk_size=MAX_CV2_CHANNELS, seed=None):
    """Apply one random draw of ``augmentation`` to an image and its instance masks.

    image: [H, W, C] uint8 (any channel count imgaug accepts).
    masks: [H, W, N] bool (N may be 0 or several hundred).
    augmentation: an imgaug augmenter, or None (inputs returned unchanged).
    mask_augmenters: class names allowed on masks (default ``MASK_AUGMENTERS``).
    chunk_size: masks go through imgaug at most this many channels at a time, all with the
        same deterministic augmenter, because OpenCV rejects more than 128 channels.
    seed: int to make the random draw reproducible (the augmenter itself is not
        modified); None draws from the augmenter's own random state.

    The image gets every augmenter; masks only the geometric ones. Masks travel as uint8
    0/255 and come back as ``>= 128``, i.e. thresholded at 0.5 after whatever
    interpolation the augmenter used (exact for flips, crops, Rot90; the nearest-neighbour
    boundary for linear interpolation).

    Returns (image, masks): image with the input's dtype, masks [H', W', N] bool.
    Raises AugmentationError if the augmenter left image and masks with different
    heights/widths (e.g. an unlisted geometric augmenter).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError("masks must be [H, W, N], got shape {}".format(masks.shape))
    if image.shape[:2] != masks.shape[:2]:
        raise ValueError("image {} and masks {} differ in height/width before "
                         "augmentation".format(image.shape, masks.shape))
    if augmentation is None:
        return image, masks.astype(bool)
    if chunk_size < 1 or chunk_size > MAX_CV2_CHANNELS:
        raise ValueError("chunk_size must be in [1, {}]".format(MAX_CV2_CHANNELS))

    # One frozen random draw, reused for the image and every mask chunk.
    det = augmentation.to_deterministic()
    if seed is not None:
        det.seed_(int(seed), deterministic_too=True)
    image_aug = det.augment_images([image])[0]

    if masks.shape[2] == 0:
        # Nothing to warp; keep the mask stack's size in step with the image.
        return image_aug, np.zeros(image_aug.shape[:2] + (0,), dtype=bool)

    chunks = _augment_mask_chunks(det, masks, chunk_size, mask_hook(mask_augmenters))
    shapes = {c.shape[:2] for c in chunks}
    if len(shapes) != 1 or image_aug.shape[:2] not in shapes:
        raise AugmentationError(
            "augmentation changed the image to {} but the masks to {}: a geometric "
            "augmenter is missing from mrcnn.augment.MASK_AUGMENTERS (or is not "
            "deterministic)".format(image_aug.shape[:2], sorted(shapes)))
    masks_aug = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=2)
    return image_aug, masks_aug


def _augment_mask_chunks(det, masks, chunk_size, hooks):
    """Run the frozen augmenter ``det`` over masks [H, W, N] in chunks of at most
    ``chunk_size`` channels (OpenCV's limit); returns a list of bool [H', W', n] arrays."""
    encoded = masks.astype(np.uint8) * np.uint8(255)
    chunks = []
    for start in range(0, masks.shape[2], chunk_size):
        chunk = encoded[:, :, start:start + chunk_size]
        # A list of one image avoids imgaug's warning for >= 32 channels.
        out = det.augment_images([chunk], hooks=hooks)[0]
        if out.ndim == 2:  # some OpenCV paths drop a single channel axis
            out = out[:, :, np.newaxis]
        chunks.append(out >= 128)
    return chunks
