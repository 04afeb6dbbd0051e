"""mrcnn: Mask R-CNN and Cascade Mask R-CNN for TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
