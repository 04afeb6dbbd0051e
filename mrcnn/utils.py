"""Matterport's ``mrcnn.utils``: the numpy helpers its scripts and notebooks import, under
the same names, signatures and conventions. Each is defined once in its topic module and
re-exported here:

    mrcnn.boxes       boxes: IoU, NMS, deltas, normalisation (numpy and TF)
    mrcnn.masks       masks: resize_mask, minimize_mask / expand_mask, mask IoU
    mrcnn.preprocess  image meta, resize / resize_image, mold / unmold (numpy and TF)
    mrcnn.ap          trim_zeros, compute_matches, compute_ap(_range), compute_recall
    mrcnn.dataset     Dataset, DatasetError

Defined here: batch_slice, download_trained_weights / COCO_MODEL_URL, and log. The
anchors (generate_anchors, generate_pyramid_anchors, compute_backbone_shapes,
get_anchors) live with the RPN in mrcnn.rpn and are re-exported on first access.

Conventions:

* Boxes are ``(y1, x1, y2, x2)`` in pixels unless a name says "normalised". Pixel boxes
  from ``extract_bboxes`` are half-open: ``y2``/``x2`` are one past the last pixel.
  ``norm_boxes`` maps pixels to normalised coordinates with
  ``(box - [0, 0, 1, 1]) / [h - 1, w - 1, h - 1, w - 1]`` (there, y2/x2 are inside the box).
* Box deltas are ``(dy, dx, log(dh), log(dw))`` relative to the box's centre and size.
* Anchors are level-major, then row-major over feature-map positions, ratios fastest,
  centred at ``arange(0, shape, anchor_stride) * feature_stride`` (no half-stride offset).

Nothing here imports TensorFlow at module import: the TF functions re-exported from
mrcnn.boxes and mrcnn.preprocess import it on first use, ``batch_slice`` when called, and
the anchor names (mrcnn.rpn imports TensorFlow) are re-exported lazily (PEP 562).

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

import importlib
import os
import shutil
import tempfile
import urllib.request

import numpy as np

# Matterport's names, each defined once in its topic module.
from mrcnn.ap import (compute_ap, compute_ap_range, compute_matches,  # noqa: F401
                      compute_recall, trim_zeros)
from mrcnn.boxes import (BBOX_LOG_SCALE_CLIP, apply_box_deltas,  # noqa: F401
                         box_refinement, box_refinement_graph, compute_iou,
                         compute_overlaps, denorm_boxes, extract_bboxes,
                         non_max_suppression, norm_boxes)
from mrcnn.dataset import Dataset, DatasetError  # noqa: F401
from mrcnn.masks import (compute_overlaps_masks, expand_mask, minimize_mask,  # noqa: F401
                         resize_mask)
from mrcnn.preprocess import (compose_image_meta, linear_resize_weights,  # noqa: F401
                              mold_image, parse_image_meta, resize, resize_image,
                              unmold_image, unmold_mask, unmold_masks)

# Matterport's release of the COCO-trained Mask R-CNN weights.
COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"


# Re-exported on first access (PEP 562), so that importing this numpy module does not
# pull in TensorFlow: the anchors live with the RPN (mrcnn.rpn), which imports it.
_LAZY_NAMES = {"generate_anchors": "mrcnn.rpn", "generate_pyramid_anchors": "mrcnn.rpn",
               "compute_backbone_shapes": "mrcnn.rpn", "get_anchors": "mrcnn.rpn"}


def __getattr__(name):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))


def __dir__():
    return sorted(list(globals()) + list(_LAZY_NAMES))


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
