"""Settings shared by the notebooks in this folder.

By default every notebook uses the real tutorial values (128 px shapes, 8 epochs of 100
steps, 50 validation images). With the environment variable ``MRCNN_NB_FAST=1`` (set by
tests/test_notebooks.py) they shrink to a smoke test: 64 px images, a couple of training
steps, four images, so that CI can execute every notebook on a small CPU.

Other environment variables:

* ``MRCNN_NB_LOGS``: where models write logs and checkpoints (default: ``<repo>/logs``).
* ``MRCNN_NB_WEIGHTS``: a shapes .h5 checkpoint for demo / inspect_model /
  inspect_weights (default: the newest checkpoint of train_shapes.ipynb in the logs).
* ``MRCNN_NB_BALLOON_WEIGHTS``: balloon weights (samples/balloon.py) for the demo's
  real-photo section; without them the photo is shown with its annotations only.
* ``MRCNN_SHARED_DATA``: folder holding ``balloon/`` and ``dsb2018/`` (default:
  ``<repo>/../shared/data``). Sections that need it are skipped when it is absent.

Importing this module puts the repository root and ``samples/`` on ``sys.path``.
"""

import os
import sys

NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(NOTEBOOK_DIR)
for _path in (ROOT, os.path.join(ROOT, "samples")):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


FAST = _flag("MRCNN_NB_FAST")


def choose(real, fast):
    """``real`` normally, ``fast`` when MRCNN_NB_FAST is set."""
    return fast if FAST else real


LOGS = os.path.abspath(os.environ.get("MRCNN_NB_LOGS") or os.path.join(ROOT, "logs"))
SHARED_DATA = os.path.abspath(os.environ.get("MRCNN_SHARED_DATA")
                              or os.path.join(ROOT, "..", "shared", "data"))
WEIGHTS = os.environ.get("MRCNN_NB_WEIGHTS") or None
BALLOON_WEIGHTS = os.environ.get("MRCNN_NB_BALLOON_WEIGHTS") or None

# Synthetic shapes (samples/shapes.py). Real values are those of `shapes.py train`.
IMAGE_SIZE = choose(128, 64)
IMAGES_PER_GPU = choose(4, 2)
TRAIN_IMAGES = choose(500, 4)
VAL_IMAGES = choose(50, 4)
STEPS_PER_EPOCH = choose(100, 1)
VALIDATION_STEPS = choose(5, 0)
EPOCHS = choose(8, 2)
# "heads" in fast mode: the gradient graph then stops at the FPN, which makes the
# one-off graph tracing of the first step about three times quicker on a CPU.
TRAIN_LAYERS = choose("all", "heads")
EVAL_IMAGES = choose(50, 4)
# How many images the notebooks loop over when they show or summarise several.
SHOW_IMAGES = choose(4, 2)
STATS_IMAGES = choose(500, 4)
REAL_IMAGES = choose(20, 2)


def weights_path(model):
    """Shapes weights for an inference notebook, or None.

    MRCNN_NB_WEIGHTS if set (it must exist), else the newest checkpoint under LOGS
    written by train_shapes.ipynb (model.find_last()), else None.
    """
    if WEIGHTS:
        # A relative path may be meant from the notebook folder or from the repository.
        for candidate in (WEIGHTS, os.path.join(ROOT, WEIGHTS)):
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        raise FileNotFoundError("MRCNN_NB_WEIGHTS={!r}: no such file".format(WEIGHTS))
    try:
        return model.find_last()
    except FileNotFoundError:
        return None


def shared(*parts):
    """Path under SHARED_DATA if it exists, else None."""
    path = os.path.join(SHARED_DATA, *parts)
    return path if os.path.exists(path) else None


def summary():
    """One line describing the active settings."""
    return ("{} mode: {} px shapes, {} train / {} val images, {} epoch(s) x {} step(s); "
            "logs in {}".format("FAST (CI)" if FAST else "tutorial", IMAGE_SIZE,
                                TRAIN_IMAGES, VAL_IMAGES, EPOCHS, STEPS_PER_EPOCH, LOGS))
