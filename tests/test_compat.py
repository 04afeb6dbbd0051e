"""Matterport's module-level names stay reachable where its users' scripts import them.

Ported scripts and notebooks do ``from mrcnn import model as modellib`` and call
``modellib.load_image_gt``, ``modellib.log``, ``modellib.PyramidROIAlign``... Each name is
defined once in its own module; ``mrcnn.model`` and ``mrcnn.utils`` only re-export it.
"""

import importlib

import numpy as np
import pytest
import tensorflow as tf

from mrcnn import model as modellib
from mrcnn import utils

# name in mrcnn.model -> (defining module, name there)
MODEL_REEXPORTS = {
    "load_image_gt": ("mrcnn.data", "load_image_gt"),
    "data_generator": ("mrcnn.data", "data_generator"),
    "build_rpn_targets": ("mrcnn.data", "build_rpn_targets"),
    "mold_image": ("mrcnn.imagemeta", "mold_image"),
    "unmold_image": ("mrcnn.imagemeta", "unmold_image"),
    "compose_image_meta": ("mrcnn.imagemeta", "compose_image_meta"),
    "parse_image_meta": ("mrcnn.imagemeta", "parse_image_meta"),
    "parse_image_meta_graph": ("mrcnn.imagemeta", "parse_image_meta_graph"),
    "compute_backbone_shapes": ("mrcnn.utils", "compute_backbone_shapes"),
    "BatchNorm": ("mrcnn.backbone", "BatchNorm"),
    "resnet_graph": ("mrcnn.backbone", "resnet_graph"),
    "norm_boxes_graph": ("mrcnn.box_ops", "norm_boxes_graph"),
    "denorm_boxes_graph": ("mrcnn.box_ops", "denorm_boxes_graph"),
    "apply_box_deltas_graph": ("mrcnn.box_ops", "apply_box_deltas_graph"),
    "clip_boxes_graph": ("mrcnn.box_ops", "clip_boxes_graph"),
    "overlaps_graph": ("mrcnn.box_ops", "overlaps_graph"),
    "log2_graph": ("mrcnn.box_ops", "log2_graph"),
    "build_rpn_model": ("mrcnn.heads", "build_rpn_model"),
    "fpn_classifier_graph": ("mrcnn.heads", "fpn_classifier_graph"),
    "build_fpn_mask_graph": ("mrcnn.heads", "build_fpn_mask_graph"),
    "ProposalLayer": ("mrcnn.layers", "ProposalLayer"),
    "PyramidROIAlign": ("mrcnn.layers", "PyramidROIAlign"),
    "DetectionTargetLayer": ("mrcnn.layers", "DetectionTargetLayer"),
    "DetectionLayer": ("mrcnn.layers", "DetectionLayer"),
    "rpn_class_loss_graph": ("mrcnn.losses", "rpn_class_loss_graph"),
    "rpn_bbox_loss_graph": ("mrcnn.losses", "rpn_bbox_loss_graph"),
    "mrcnn_class_loss_graph": ("mrcnn.losses", "mrcnn_class_loss_graph"),
    "mrcnn_bbox_loss_graph": ("mrcnn.losses", "mrcnn_bbox_loss_graph"),
    "mrcnn_mask_loss_graph": ("mrcnn.losses", "mrcnn_mask_loss_graph"),
    "smooth_l1_loss": ("mrcnn.losses", "smooth_l1"),
    "log": ("mrcnn.utils", "log"),
}


@pytest.mark.parametrize("name", sorted(MODEL_REEXPORTS))
def test_model_reexports_are_the_defining_objects(name):
    module, attr = MODEL_REEXPORTS[name]
    assert getattr(modellib, name) is getattr(importlib.import_module(module), attr)


def test_utils_box_refinement_graph_matches_numpy():
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 50, (20, 2))
    box = np.concatenate([yx, yx + rng.uniform(1, 30, (20, 2))], axis=1).astype(np.float32)
    gt = box + rng.uniform(-5, 5, box.shape).astype(np.float32)
    got = utils.box_refinement_graph(tf.constant(box), tf.constant(gt)).numpy()
    np.testing.assert_allclose(got, utils.box_refinement(box, gt), rtol=1e-5, atol=1e-5)
    assert "box_refinement_graph" in dir(utils)


def test_log_prints_shape_min_max_dtype(capsys):
    modellib.log("image", np.array([[3, -1], [7, 2]], dtype=np.int16))
    modellib.log("tensor", tf.constant([0.25, 1.5]))
    modellib.log("empty", np.zeros((0, 4)))
    modellib.log("plain text")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("image") and "shape: (2, 2)" in lines[0]
    assert "min:   -1.00000" in lines[0] and "max:    7.00000" in lines[0]
    assert lines[0].endswith("int16")
    assert "min:    0.25000" in lines[1] and "max:    1.50000" in lines[1]
    assert lines[1].endswith("float32")
    assert "shape: (0, 4)" in lines[2] and "min:            " in lines[2]
    assert lines[3] == "plain text"
