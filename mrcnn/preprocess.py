"""Image meta: the per-image facts the graph needs, in one fixed-length vector.

Layout (length 12 + NUM_CLASSES), written once here for both numpy and TF:

    [image_id, original_image_shape (3), image_shape (3), window (4), scale (1),
     active_class_ids (NUM_CLASSES)]

``window`` is (y1, x1, y2, x2) in pixels of the molded image: the part that holds the
image, excluding padding. ``scale`` is the resize factor applied to the original image.

Also here: mold_image / unmold_image, the mean-pixel normalisation shared by training,
inference and export.
"""

import numpy as np
import tensorflow as tf

# Offsets of each field in the meta vector.
_ID = slice(0, 1)
_ORIGINAL_SHAPE = slice(1, 4)
_IMAGE_SHAPE = slice(4, 7)
_WINDOW = slice(7, 11)
_SCALE = slice(11, 12)
_ACTIVE = 12


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Pack image attributes into one float array.

    image_id: int. original_image_shape, image_shape: (H, W, C). window: (y1, x1, y2, x2)
    pixels in the molded image. scale: float. active_class_ids: [NUM_CLASSES] 0/1 flags of
    the classes of the image's source dataset.
    Returns a float64 array [12 + NUM_CLASSES].
    """
    meta = np.array(
        [image_id] +
        list(original_image_shape) +
        list(image_shape) +
        list(window) +
        [scale] +
        list(active_class_ids)
    )
    return meta


def parse_image_meta(meta):
    """Unpack meta arrays [batch, meta_size] (numpy) into a dict of arrays."""
    meta = np.asarray(meta)
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, _ORIGINAL_SHAPE].astype(np.int32),
        "image_shape": meta[:, _IMAGE_SHAPE].astype(np.int32),
        "window": meta[:, _WINDOW].astype(np.int32),
        "scale": meta[:, _SCALE.start].astype(np.float32),
        "active_class_ids": meta[:, _ACTIVE:].astype(np.int32),
    }


def parse_image_meta_graph(meta):
    """Unpack a meta tensor [batch, meta_size] into a dict of float32 tensors (TF side)."""
    meta = tf.cast(meta, tf.float32)
    return {
        "image_id": meta[:, 0],
        "original_image_shape": meta[:, _ORIGINAL_SHAPE],
        "image_shape": meta[:, _IMAGE_SHAPE],
        "window": meta[:, _WINDOW],
        "scale": meta[:, _SCALE][:, 0],
        "active_class_ids": meta[:, _ACTIVE:],
    }


def mold_image(images, config):
    """Subtract the mean pixel. images: [..., C] uint8 or float -> float32."""
    return images.astype(np.float32) - np.asarray(config.MEAN_PIXEL, dtype=np.float32)


def unmold_image(normalized_images, config):
    """Inverse of mold_image: add the mean pixel back and return uint8."""
    out = normalized_images + np.asarray(config.MEAN_PIXEL, dtype=np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
