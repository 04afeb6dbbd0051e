"""Cascade R-CNN pieces: stage-to-stage box refinement and the score ensemble.

Stage k+1 takes stage k's boxes refined by stage k's (class-agnostic) regression, with
gradients stopped (the refined boxes are inputs of the next stage, not trained through).
At inference the class scores of all stages are averaged.
"""

import keras
import numpy as np
import tensorflow as tf

from mrcnn import boxes


@keras.saving.register_keras_serializable(package="mrcnn")
class RefineBoxesLayer(keras.layers.Layer):
    """Apply class-agnostic deltas to ROIs.

    inputs: rois [B, N, 4] normalised (zero rows are padding), deltas [B, N, 1, 4] or
    [B, N, C, 4] (column 0 is used; cascade heads are class-agnostic), scaled by
    ``bbox_std_dev``. Returns refined normalised boxes [B, N, 4] clipped to [0, 1];
    padding rows stay zero; no gradient flows through.
    """

    def __init__(self, bbox_std_dev, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.bbox_std_dev = [float(v) for v in np.asarray(bbox_std_dev).reshape(4)]

    def call(self, inputs):
        rois, deltas = inputs
        rois = tf.stop_gradient(tf.cast(rois, tf.float32))
        deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))[:, :, 0, :]
        deltas = deltas * tf.constant(self.bbox_std_dev, tf.float32)
        refined = boxes.apply_box_deltas_graph(rois, deltas)
        refined = tf.clip_by_value(refined, 0.0, 1.0)
        valid = tf.reduce_any(tf.not_equal(rois, 0.0), axis=-1, keepdims=True)
        # A box can collapse to zero area after clipping; keep it valid but non-empty so
        # IoU maths stays finite downstream.
        return tf.where(valid, refined, tf.zeros_like(refined))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config["bbox_std_dev"] = self.bbox_std_dev
        return config


@keras.saving.register_keras_serializable(package="mrcnn")
class StageScoreAverage(keras.layers.Layer):
    """Mean of the stages' class probabilities: list of [B, N, C] -> [B, N, C]."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        return tf.add_n([tf.cast(p, tf.float32) for p in inputs]) / float(len(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape[0]
