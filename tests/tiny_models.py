"""A tiny callable backbone shared by the tests that need a model, not ResNet-50's cost."""
import math

import keras
import numpy as np


def tiny_backbone(input_image, stage5=True, train_bn=False):
    """Five stride-2 3x3 convolutions, C1..C5 at strides 2..32: builds and traces in a
    fraction of ResNet-50's time (a user-callable BACKBONE)."""
    x, out = input_image, []
    for i, channels in enumerate((8, 8, 16, 16, 32)):
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu",
                                name="tiny_c{}".format(i + 1))(x)
        out.append(x)
    return out


def tiny_backbone_shapes(image_shape):
    """COMPUTE_BACKBONE_SHAPE for tiny_backbone: [[ceil(H/s), ceil(W/s)] per level]."""
    return np.array([[math.ceil(image_shape[0] / s), math.ceil(image_shape[1] / s)]
                     for s in (4, 8, 16, 32, 64)])


def shapes_64px_config_class():
    """The 64-px shapes config (ShapesConfig's backbone) with narrow heads and small
    proposal / ROI counts: the smallest useful Mask R-CNN (imported lazily:
    samples.shapes is a script module)."""
    from samples.shapes import ShapesConfig

    class Shapes64Config(ShapesConfig):
        NAME = "tiny"
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        IMAGES_PER_GPU = 2
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        TOP_DOWN_PYRAMID_SIZE = 32
        FPN_CLASSIF_FC_LAYERS_SIZE = 64
        TRAIN_ROIS_PER_IMAGE = 16
        RPN_TRAIN_ANCHORS_PER_IMAGE = 32
        PRE_NMS_LIMIT = 200
        POST_NMS_ROIS_TRAINING = 50
        POST_NMS_ROIS_INFERENCE = 30
        POOL_SIZE = 7
        MASK_POOL_SIZE = 7
        MASK_SHAPE = [14, 14]
        MINI_MASK_SHAPE = (14, 14)
        MAX_GT_INSTANCES = 4
        DETECTION_MAX_INSTANCES = 10
        STEPS_PER_EPOCH = 2
        VALIDATION_STEPS = 1
        LEARNING_RATE = 0.01

    return Shapes64Config


def tiny_shapes_config_class():
    """shapes_64px_config_class on tiny_backbone with still narrower heads, shared by the
    resume, robustness, warm-up and memory tests."""

    class TinyShapesConfig(shapes_64px_config_class()):
        NAME = "tiny_shapes"
        BACKBONE = staticmethod(tiny_backbone)
        COMPUTE_BACKBONE_SHAPE = staticmethod(tiny_backbone_shapes)
        TOP_DOWN_PYRAMID_SIZE = 16
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        MASK_HEAD_CONV_DIM = 8
        STEPS_PER_EPOCH = 3
        VALIDATION_STEPS = 0

    return TinyShapesConfig


def small_resnet_config_class():
    """A 64-px ResNet-50 config with narrow heads and random-weight-friendly detection
    (every non-background detection kept), shared by the export and mixed-precision tests."""
    from mrcnn.config import Config

    class SmallResNetConfig(Config):
        NAME = "small_resnet"
        NUM_CLASSES = 3
        BACKBONE = "resnet50"
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        TOP_DOWN_PYRAMID_SIZE = 16
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        PRE_NMS_LIMIT = 200
        POST_NMS_ROIS_TRAINING = 32
        POST_NMS_ROIS_INFERENCE = 32
        TRAIN_ROIS_PER_IMAGE = 16
        MAX_GT_INSTANCES = 4
        DETECTION_MAX_INSTANCES = 10
        # Random weights: keep every non-background detection so comparisons have rows.
        DETECTION_MIN_CONFIDENCE = 0.0

    return SmallResNetConfig


def fixed_training_batch(dataset, config, rng):
    """One training batch (dict of stacked numpy arrays, data.load_training_example's
    keys) of the first BATCH_SIZE images of ``dataset`` that hold an object; ``rng``
    (np.random.Generator) fixes the RPN anchor sampling."""
    from mrcnn import data, utils
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    examples = []
    for image_id in dataset.image_ids:
        ex = data.load_training_example(dataset, config, image_id, anchors, rng=rng)
        if np.any(ex["input_gt_class_ids"] > 0):
            examples.append(ex)
        if len(examples) == config.BATCH_SIZE:
            break
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
