"""Loss primitives shared by the RPN and the ROI heads, and the layer that exposes a loss
as a named output of the training graph.

The losses themselves live with their stage: ``mrcnn.rpn`` (rpn_class, rpn_bbox) and
``mrcnn.roi_heads`` (mrcnn_class, mrcnn_bbox, mrcnn_mask); each registers its function
here under its kind with ``register_loss``. Every loss returns a scalar float32 tensor,
and 0 (not NaN) when there is nothing to average over.
"""

import keras
import tensorflow as tf

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")

_LOSS_FUNCTIONS = {}


def register_loss(kind):
    """Decorator: make ``fn`` the loss computed by ``LossLayer(kind)``."""
    def decorate(fn):
        _LOSS_FUNCTIONS[kind] = fn
        return fn
    return decorate


def smooth_l1(y_true, y_pred):
    """Element-wise smooth-L1 (Huber with delta 1): 0.5 x^2 if |x| < 1 else |x| - 0.5."""
    diff = tf.abs(y_true - y_pred)
    return tf.where(diff < 1.0, 0.5 * tf.square(diff), diff - 0.5)


def safe_mean(values, weights=None):
    """Mean of ``values`` (weighted), 0 when the weight sum is 0."""
    if weights is None:
        weights = tf.ones_like(values)
    total = tf.reduce_sum(weights)
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), total)


@keras.saving.register_keras_serializable(package="mrcnn")
class LossLayer(keras.layers.Layer):
    """Computes one loss (``kind`` in rpn_class, rpn_bbox, mrcnn_class, mrcnn_bbox,
    mrcnn_mask) as a scalar output of the graph, named after the loss."""

    def __init__(self, kind, options=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        _register_stage_losses()
        if kind not in _LOSS_FUNCTIONS:
            raise ValueError("unknown loss kind {!r}".format(kind))
        self.kind = kind
        # Keyword arguments of the loss function (e.g. class_weights); JSON-serialisable.
        self.options = dict(options or {})

    def call(self, inputs):
        fn = _LOSS_FUNCTIONS[self.kind]
        if self.kind == "rpn_bbox":
            return fn(None, *inputs, **self.options)
        return fn(*inputs, **self.options)

    def compute_output_shape(self, input_shape):
        return ()

    def get_config(self):
        config = super().get_config()
        config["kind"] = self.kind
        config["options"] = self.options
        return config


def _register_stage_losses():
    """Import the stage modules, whose import registers their losses (a LossLayer may be
    deserialised before anything imported them)."""
    import mrcnn.roi_heads  # noqa: F401  (imports mrcnn.rpn too)
