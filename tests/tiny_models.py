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
