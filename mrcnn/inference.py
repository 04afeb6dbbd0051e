"""Inference-side image handling: checking and molding inputs, unmolding detections.

``mold_inputs`` and ``unmold_detections`` keep Matterport's names and return values;
``check_images`` turns what users pass to detect() (lists, 2-D arrays, floats, RGBA) into
uint8 RGB images or raises a clear error, before any TensorFlow code runs.
"""

import numpy as np

from mrcnn import utils
from mrcnn.imagemeta import compose_image_meta, mold_image


def check_images(images, channels=3):
    """Validate and convert the images given to detect().

    images: a list/tuple of arrays [H, W] (grayscale), [H, W, 1|3|4], uint8/uint16/float;
    or one array [N, H, W, C]. Floats are taken as 0-255 values, except when all values
    lie in [0, 1], which are scaled by 255. uint16 is scaled to 8 bit. RGBA drops alpha.
    Returns a list of uint8 arrays [H, W, channels].
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
    out = []
    for i, image in enumerate(images):
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
        if image.dtype.kind == "f":
            if not np.all(np.isfinite(image)):
                raise ValueError("image {} contains NaN or infinite values".format(i))
            if image.max(initial=0) <= 1.0 and image.min(initial=0) >= 0.0:
                image = image * 255.0
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        elif image.dtype == np.uint16:
            image = (image // 257).astype(np.uint8)
        elif image.dtype == bool:
            image = image.astype(np.uint8) * 255
        elif image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        c = image.shape[-1]
        if c == channels:
            pass
        elif c == 1 and channels == 3:
            image = np.repeat(image, 3, axis=-1)
        elif c == 4 and channels == 3:
            image = image[..., :3]
        else:
            raise ValueError("image {} has {} channels; the model expects {} "
                             "(IMAGE_CHANNEL_COUNT)".format(i, c, channels))
        if min(image.shape[:2]) < 2:
            raise ValueError("image {} is too small: {}".format(i, image.shape))
        out.append(np.ascontiguousarray(image))
    return out


def mold_inputs(images, config):
    """Resize and normalise images for the network (Matterport's MaskRCNN.mold_inputs).

    images: list of uint8 [H, W, C]. Returns molded_images [N, h, w, C] float32 (images of
    different molded sizes are padded bottom/right to the largest, rounded up to a
    multiple of 64), image_metas [N, META],
    windows [N, 4] (y1, x1, y2, x2 pixels of the image inside the molded frame).
    """
    molded, metas, windows = [], [], []
    for i, image in enumerate(images):
        resized, window, scale, padding, crop = utils.resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
        if window[2] - window[0] < 2 or window[3] - window[1] < 2:
            # e.g. 2x300 in "square" mode at IMAGE_MAX_DIM 64: scaled to 1x64 (resize_image
            # keeps at least 1 pixel). A 1-pixel window has zero normalised size
            # (norm_boxes divides by side - 1), so unmolding would divide by zero.
            raise ValueError("image {} of shape {} is too thin: it shrinks to {}x{} pixels "
                             "at IMAGE_MAX_DIM {} ({!r} mode)".format(
                                 i, image.shape, window[2] - window[0],
                                 window[3] - window[1], config.IMAGE_MAX_DIM,
                                 config.IMAGE_RESIZE_MODE))
        molded.append(mold_image(resized, config))
        metas.append(compose_image_meta(0, image.shape, resized.shape, window, scale,
                                        np.zeros([config.NUM_CLASSES], dtype=np.int32)))
        windows.append(window)
    # One frame for the batch, a multiple of 64 (the FPN adds P5 upsampled to C4 etc. and
    # P6 has stride 64): only "none" mode can give other sizes; padding bottom/right
    # leaves the windows unchanged.
    h = -(-max(m.shape[0] for m in molded) // 64) * 64
    w = -(-max(m.shape[1] for m in molded) // 64) * 64
    batch = np.zeros([len(molded), h, w, molded[0].shape[2]], np.float32)
    for i, m in enumerate(molded):
        batch[i, :m.shape[0], :m.shape[1]] = m
    metas = np.stack(metas).astype(np.float32)
    # The meta's image_shape must be the padded frame the graph sees.
    metas[:, 4:7] = [h, w, molded[0].shape[2]]
    return batch, metas, np.stack(windows)


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
    window = utils.norm_boxes(np.asarray(window, np.float32), image_shape[:2])
    wy1, wx1, wy2, wx2 = window
    shift = np.array([wy1, wx1, wy1, wx1])
    wh, ww = wy2 - wy1, wx2 - wx1
    boxes = np.divide(boxes - shift, np.array([wh, ww, wh, ww]))
    boxes = utils.denorm_boxes(boxes, original_image_shape[:2])

    # Drop boxes with zero area (possible after clipping at the window's edge).
    keep = np.where((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0)[0]
    boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]

    full_masks = utils.unmold_masks(masks, boxes, original_image_shape)
    return boxes, class_ids, scores, full_masks
