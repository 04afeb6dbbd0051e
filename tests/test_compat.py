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
    "mold_image": ("mrcnn.preprocess", "mold_image"),
    "unmold_image": ("mrcnn.preprocess", "unmold_image"),
    "compose_image_meta": ("mrcnn.preprocess", "compose_image_meta"),
    "parse_image_meta": ("mrcnn.preprocess", "parse_image_meta"),
    "parse_image_meta_graph": ("mrcnn.preprocess", "parse_image_meta_graph"),
    "compute_backbone_shapes": ("mrcnn.utils", "compute_backbone_shapes"),
    "BatchNorm": ("mrcnn.backbone", "BatchNorm"),
    "resnet_graph": ("mrcnn.backbone", "resnet_graph"),
    "identity_block": ("mrcnn.backbone", "identity_block"),
    "conv_block": ("mrcnn.backbone", "conv_block"),
    "rpn_graph": ("mrcnn.rpn", "rpn_graph"),
    "generate_random_rois": ("mrcnn.data", "generate_random_rois"),
    "build_detection_targets": ("mrcnn.data", "build_detection_targets"),
    "trim_zeros_graph": ("mrcnn.compat", "trim_zeros_graph"),
    "batch_pack_graph": ("mrcnn.compat", "batch_pack_graph"),
    "detection_targets_graph": ("mrcnn.compat", "detection_targets_graph"),
    "refine_detections_graph": ("mrcnn.compat", "refine_detections_graph"),
    "norm_boxes_graph": ("mrcnn.boxes", "norm_boxes_graph"),
    "denorm_boxes_graph": ("mrcnn.boxes", "denorm_boxes_graph"),
    "apply_box_deltas_graph": ("mrcnn.boxes", "apply_box_deltas_graph"),
    "clip_boxes_graph": ("mrcnn.boxes", "clip_boxes_graph"),
    "overlaps_graph": ("mrcnn.boxes", "overlaps_graph"),
    "log2_graph": ("mrcnn.boxes", "log2_graph"),
    "build_rpn_model": ("mrcnn.rpn", "build_rpn_model"),
    "fpn_classifier_graph": ("mrcnn.compat", "fpn_classifier_graph"),
    "build_fpn_mask_graph": ("mrcnn.compat", "build_fpn_mask_graph"),
    "ProposalLayer": ("mrcnn.rpn", "ProposalLayer"),
    "PyramidROIAlign": ("mrcnn.roi_heads", "PyramidROIAlign"),
    "DetectionTargetLayer": ("mrcnn.roi_heads", "DetectionTargetLayer"),
    "DetectionLayer": ("mrcnn.roi_heads", "DetectionLayer"),
    "rpn_class_loss_graph": ("mrcnn.rpn", "rpn_class_loss_graph"),
    "rpn_bbox_loss_graph": ("mrcnn.rpn", "rpn_bbox_loss_graph"),
    "mrcnn_class_loss_graph": ("mrcnn.roi_heads", "mrcnn_class_loss_graph"),
    "mrcnn_bbox_loss_graph": ("mrcnn.roi_heads", "mrcnn_bbox_loss_graph"),
    "mrcnn_mask_loss_graph": ("mrcnn.roi_heads", "mrcnn_mask_loss_graph"),
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
    # Each corner moves by up to 40% of the box's size: gt boxes keep a positive size.
    size = np.tile(box[:, 2:] - box[:, :2], 2)
    gt = (box + rng.uniform(-0.4, 0.4, box.shape) * size).astype(np.float32)
    assert (gt[:, 2:] > gt[:, :2]).all()
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


def test_conv_and_identity_blocks_have_matterports_names_and_shapes():
    import keras
    inp = keras.Input((32, 32, 64))
    x = modellib.conv_block(inp, 3, [64, 64, 256], stage=2, block="a", strides=(1, 1),
                            train_bn=False)
    x = modellib.identity_block(x, 3, [64, 64, 256], stage=2, block="b", train_bn=False)
    y = modellib.conv_block(x, 3, [128, 128, 512], stage=3, block="a", use_bias=False)
    net = keras.Model(inp, [x, y])
    names = {layer.name for layer in net.layers}
    assert {"res2a_branch2a", "res2a_branch2b", "res2a_branch2c", "res2a_branch1",
            "bn2a_branch1", "res2b_branch2c", "res2b_out", "res3a_branch1"} <= names
    assert "res2b_branch1" not in names                  # identity shortcut
    assert net.output_shape == [(None, 32, 32, 256), (None, 16, 16, 512)]
    assert net.get_layer("res3a_branch2a").bias is None  # use_bias=False
    assert net.get_layer("res3a_branch2a").strides == (2, 2)   # stride on the first 1x1
    # The identity block adds its input: zero the branch's last BN scale and shift and
    # the block is relu(input).
    bn = net.get_layer("bn2b_branch2c")
    bn.set_weights([np.zeros_like(w) if i < 2 else w for i, w in enumerate(bn.get_weights())])
    sub = keras.Model(net.get_layer("res2b_branch2a").input, x)
    z = np.random.default_rng(0).normal(size=(1, 32, 32, 256)).astype(np.float32)
    np.testing.assert_allclose(sub(z).numpy(), np.maximum(z, 0), atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        modellib.conv_block(inp, 3, [8, 8, 16], stage=9, block="a", strides=(1, 2))


def test_rpn_graph_builds_the_rpn_layers_on_a_tensor():
    import keras
    fmap = keras.Input((8, 10, 16))
    logits, probs, bbox = modellib.rpn_graph(fmap, 3, 1, conv_dim=32)
    net = keras.Model(fmap, [logits, probs, bbox])
    assert net.get_layer("rpn_conv_shared").kernel.shape == (3, 3, 16, 32)
    assert net.output_shape == [(None, 240, 2), (None, 240, 2), (None, 240, 4)]
    out = net(np.random.default_rng(1).normal(size=(2, 8, 10, 16)).astype(np.float32))
    np.testing.assert_allclose(out[1].numpy(), tf.nn.softmax(out[0]).numpy(), atol=1e-6)


def test_trim_zeros_and_batch_pack_graphs():
    boxes = tf.constant([[1, 2, 3, 4], [0, 0, 0, 0], [5, 6, 7, 8]], tf.float32)
    kept, non_zeros = modellib.trim_zeros_graph(boxes)
    np.testing.assert_array_equal(kept.numpy(), [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(non_zeros.numpy(), [True, False, True])
    x = tf.reshape(tf.range(24), [3, 4, 2])
    packed = modellib.batch_pack_graph(x, tf.constant([2, 0, 3]), 3)
    np.testing.assert_array_equal(packed.numpy(), np.concatenate(
        [x.numpy()[0, :2], x.numpy()[2, :3]]))


class _TargetConfig(object):
    TRAIN_ROIS_PER_IMAGE = 8
    ROI_POSITIVE_RATIO = 0.5
    ROI_POSITIVE_IOU = 0.5
    BBOX_STD_DEV = [0.1, 0.1, 0.2, 0.2]
    USE_MINI_MASK = False
    MASK_SHAPE = [4, 4]
    DETECTION_MAX_INSTANCES = 5
    DETECTION_MIN_CONFIDENCE = 0.5
    DETECTION_NMS_THRESHOLD = 0.3


def _as_dict(cls):
    return {k: getattr(cls, k) for k in dir(cls) if k.isupper()}


def test_detection_targets_graph_is_the_layer_on_one_image():
    gt_boxes = tf.constant([[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]], tf.float32)
    gt_ids = tf.constant([3, 0], tf.int32)
    masks = np.zeros((20, 20, 2), bool)
    masks[1:12, 1:12, 0] = True       # covers both positive ROIs' sample points
    proposals = tf.constant([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.5, 0.52],
                             [0.6, 0.6, 0.9, 0.9], [0, 0, 0, 0]], tf.float32)
    rois, class_ids, deltas, mask_t = modellib.detection_targets_graph(
        proposals, gt_ids, gt_boxes, tf.constant(masks), _as_dict(_TargetConfig))
    assert rois.shape == (8, 4) and mask_t.shape == (8, 4, 4)
    # Two positives (IoU >= 0.5 with the class-3 box), then the one negative, then padding.
    np.testing.assert_array_equal(class_ids.numpy(), [3, 3, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(sorted(map(tuple, rois.numpy()[:2].round(3))),
                               [(0.1, 0.1, 0.5, 0.5), (0.12, 0.1, 0.5, 0.52)], atol=1e-6)
    np.testing.assert_allclose(rois.numpy()[2], [0.6, 0.6, 0.9, 0.9])
    for roi, delta in zip(rois.numpy()[:2], deltas.numpy()[:2]):
        want = utils.box_refinement(roi[None], gt_boxes.numpy()[:1])[0] / \
            np.array(_TargetConfig.BBOX_STD_DEV)
        np.testing.assert_allclose(delta, want, rtol=1e-4, atol=1e-5)
    assert mask_t.numpy()[:2].min() == 1.0 and mask_t.numpy()[2:].max() == 0.0


def test_refine_detections_graph_is_the_layer_on_one_image():
    rois = tf.constant([[0.1, 0.1, 0.4, 0.4], [0.11, 0.1, 0.41, 0.4], [0.5, 0.5, 0.9, 0.9],
                        [0.2, 0.2, 0.3, 0.3]], tf.float32)
    probs = tf.constant([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7],
                         [0.6, 0.4, 0.0]], tf.float32)
    deltas = tf.zeros([4, 3, 4])
    window = tf.constant([0.0, 0.0, 0.8, 1.0])
    det = modellib.refine_detections_graph(rois, probs, deltas, window,
                                           _as_dict(_TargetConfig)).numpy()
    assert det.shape == (5, 6)
    # ROI 1 overlaps ROI 0 (same class, lower score): suppressed; ROI 3 is background;
    # ROI 2 is clipped to the window's bottom (0.8).
    np.testing.assert_allclose(det[0], [0.1, 0.1, 0.4, 0.4, 1, 0.9], atol=1e-6)
    np.testing.assert_allclose(det[1], [0.5, 0.5, 0.8, 0.9, 2, 0.7], atol=1e-6)
    assert not det[2:].any()


def test_generate_random_rois_cluster_around_gt_boxes():
    rng = np.random.default_rng(0)
    gt = np.array([[10, 20, 30, 60], [50, 50, 60, 70]])
    rois = modellib.generate_random_rois((100, 120, 3), 1000, np.array([1, 2]), gt, rng=rng)
    assert rois.shape == (1000, 4) and rois.dtype == np.int32
    y1, x1, y2, x2 = rois.T
    assert (y2 - y1 >= 2).all() and (x2 - x1 >= 2).all()
    assert (y1 >= 0).all() and (x1 >= 0).all() and (y2 <= 100).all() and (x2 <= 120).all()
    # 450 per GT box, inside the box grown by its height and width each side.
    near0 = rois[:450]
    assert (near0[:, 0] >= 0).all() and (near0[:, 2] <= 50).all()
    assert (near0[:, 1] >= 0).all() and (near0[:, 3] <= 100).all()
    near1 = rois[450:900]
    assert (near1[:, 0] >= 40).all() and (near1[:, 2] <= 70).all()
    assert (near1[:, 1] >= 30).all() and (near1[:, 3] <= 90).all()
    assert len(modellib.generate_random_rois((64, 64), 7, [], np.zeros((0, 4)))) == 7
