"""Every tunable hyperparameter reaches the graph (or the data pipeline) it is meant for.

Two tiny configurations, PLAIN (Mask R-CNN) and CASC (Cascade Mask R-CNN), set different
values for every tunable; each test checks that the built layers / output shapes / values
of each model follow its own config, so a change of the setting changes the graph. The
ResNet-50 preset (apply_preset_r50_fpn) is built plain and cascade to check the preset,
the backbone freezing, and MASK_SHAPE 28 / 56 with a 14 px mask pooler.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as KL

from mrcnn import data, utils
from mrcnn import model as modellib
from mrcnn.backbone import BatchNorm, backbone_layer_stage, build_backbone
from mrcnn.config import Config, apply_preset_r50_fpn
from mrcnn.graph import build_graph
from mrcnn.roi_heads import loss_output_names
from mrcnn.preprocess import compose_image_meta
from mrcnn.preprocess import mold_inputs
from mrcnn.training import TrainingModel
from samples.shapes import ShapesDataset


# ---------------------------------------------------------------------------- configs
def tiny_backbone(input_image, stage5=True, train_bn=False):
    """Five small convs giving C1..C5 at strides 4, 4, 8, 16, 32."""
    x = KL.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_stem")(
        input_image)
    c1 = KL.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_c1")(x)
    c2 = KL.Conv2D(8, 3, padding="same", activation="relu", name="tiny_c2")(c1)
    c3 = KL.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_c3")(c2)
    c4 = KL.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_c4")(c3)
    c5 = KL.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_c5")(c4)
    return [c1, c2, c3, c4, c5]


def tiny_backbone_shapes(image_shape):
    return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                     for s in (4, 8, 16, 32, 64)])


class Tiny(Config):
    NAME = "tiny"
    NUM_CLASSES = 4
    IMAGES_PER_GPU = 2
    BACKBONE = staticmethod(tiny_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(tiny_backbone_shapes)
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    MINI_MASK_SHAPE = (14, 14)
    WEIGHT_DECAY = 0.0


class PLAIN(Tiny):
    TOP_DOWN_PYRAMID_SIZE = 16
    FPN_CLASSIF_FC_LAYERS_SIZE = 32
    BOX_HEAD_NUM_CONVS = 0
    BOX_HEAD_NUM_FCS = 2
    BOX_HEAD_CONV_DIM = 256
    TRAIN_ROIS_PER_IMAGE = 16
    ROI_POSITIVE_RATIO = 0.25
    ROI_POSITIVE_IOU = 0.55
    ROI_ADD_GT_AS_PROPOSALS = False
    MAX_GT_INSTANCES = 4
    PRE_NMS_LIMIT_TRAINING = 300
    POST_NMS_ROIS_TRAINING = 60
    PRE_NMS_LIMIT_INFERENCE = 150
    POST_NMS_ROIS_INFERENCE = 30
    DETECTION_MAX_INSTANCES = 10
    DETECTION_MIN_CONFIDENCE = 0.5
    DETECTION_NMS_THRESHOLD = 0.3
    POOL_SIZE = 7
    MASK_POOL_SIZE = 7
    MASK_SHAPE = [14, 14]
    MASK_HEAD_CONV_DIM = 32
    ROI_SAMPLING_RATIO = 1
    RPN_CONV_DIM = 24


class CASC(Tiny):
    CASCADE = True
    TOP_DOWN_PYRAMID_SIZE = 8
    FPN_CLASSIF_FC_LAYERS_SIZE = 24
    BOX_HEAD_NUM_CONVS = 2
    BOX_HEAD_NUM_FCS = 1
    BOX_HEAD_CONV_DIM = 12
    TRAIN_ROIS_PER_IMAGE = 12
    ROI_POSITIVE_RATIO = 0.5
    ROI_ADD_GT_AS_PROPOSALS = True
    MAX_GT_INSTANCES = 2
    PRE_NMS_LIMIT_TRAINING = 250
    POST_NMS_ROIS_TRAINING = 40
    PRE_NMS_LIMIT_INFERENCE = 120
    POST_NMS_ROIS_INFERENCE = 20
    DETECTION_MAX_INSTANCES = 6
    DETECTION_MIN_CONFIDENCE = 0.6
    DETECTION_NMS_THRESHOLD = 0.5
    POOL_SIZE = 5
    MASK_POOL_SIZE = 6
    MASK_SHAPE = [24, 24]
    MASK_HEAD_CONV_DIM = 16
    ROI_SAMPLING_RATIO = 2
    RPN_CONV_DIM = 12


class R50Base(Tiny):
    BACKBONE = "resnet50"
    TRAIN_BN = True   # so frozen stages differ from the rest in their batch norm
    IMAGES_PER_GPU = 1
    TOP_DOWN_PYRAMID_SIZE = 16
    FPN_CLASSIF_FC_LAYERS_SIZE = 32
    BOX_HEAD_CONV_DIM = 16
    TRAIN_ROIS_PER_IMAGE = 8
    DETECTION_MAX_INSTANCES = 5


PRESET = apply_preset_r50_fpn(R50Base)


class PRESET_PLAIN(PRESET):
    BACKBONE_FROZEN_STAGES = 2
    MASK_SHAPE = [28, 28]


class PRESET_CASC(PRESET):
    CASCADE = True
    BACKBONE_FROZEN_STAGES = 3
    MASK_SHAPE = [56, 56]


CONFIGS = {"plain": PLAIN, "cascade": CASC, "preset_plain": PRESET_PLAIN,
           "preset_cascade": PRESET_CASC}
TINY = ["plain", "cascade"]
ALL = TINY + ["preset_plain", "preset_cascade"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Lazily built MaskRCNN objects keyed by (config name, mode), shared by the module."""
    logs = str(tmp_path_factory.mktemp("logs"))
    cache = {}

    def get(name, mode):
        if (name, mode) not in cache:
            keras.utils.set_random_seed(0)
            cache[(name, mode)] = modellib.MaskRCNN(mode, CONFIGS[name](), logs)
        return cache[(name, mode)]
    return get


def stage_suffixes(config):
    return [""] + ["_stage{}".format(k + 1) for k in range(1, config.NUM_STAGES)]


def layer_names(model):
    names = set()
    for layer in model.keras_model.layers:
        names.add(layer.name)
        if isinstance(layer, keras.Model):
            names.update(sub.name for sub in layer.layers)
    return names


def meta_64(num_classes, batch=1, shape=64):
    meta = compose_image_meta(0, (shape, shape, 3), (shape, shape, 3), (0, 0, shape, shape),
                              1.0, np.ones([num_classes], np.int32))
    return tf.constant(np.tile(meta[None], [batch, 1]).astype(np.float32))


# ---------------------------------------------------------------------------- backbone
def _conv_names(model):
    return sorted(l.name for l in model.layers if isinstance(l, KL.Conv2D))


@pytest.fixture(scope="module")
def big_backbones():
    """build_backbone (what build_graph calls) for resnet101 and resnext101."""
    out = {}
    for arch in ("resnet101", "resnext101"):
        config = type("B", (Tiny,), dict(BACKBONE=arch))()
        image = keras.Input((64, 64, 3))
        out[arch] = keras.Model(image, build_backbone(image, config))
    return out


def test_backbone_architectures_reach_the_graph(models, big_backbones):
    r50 = models("preset_plain", "training").keras_model
    names = {l.name for l in r50.layers}
    # ResNet-50: res4 has 6 blocks (a..f); 53 backbone convs.
    assert "res4f_branch2c" in names and "res4g_branch2a" not in names
    assert len([n for n in _conv_names(r50) if n == "conv1" or n.startswith("res")]) == 53
    r101, rx101 = big_backbones["resnet101"], big_backbones["resnext101"]
    for m in (r101, rx101):
        names = {l.name for l in m.layers}
        # 101 layers: res4 has 23 blocks (a..w); 104 convs with the shortcut convs.
        assert "res4w_branch2c" in names and "res4x_branch2a" not in names
        assert len([n for n in _conv_names(m) if n == "conv1" or n.startswith("res")]) == 104
    # ResNeXt: 32 groups of width 4 in res2's 3x3 conv (ResNet: one group of 64).
    assert tuple(r101.get_layer("res2a_branch2b").kernel.shape) == (3, 3, 64, 64)
    assert tuple(rx101.get_layer("res2a_branch2b").kernel.shape) == (3, 3, 4, 128)
    assert rx101.get_layer("res2a_branch2b").groups == 32
    # A callable backbone replaces the ResNet in both models.
    for name in TINY:
        names = layer_names(models(name, "training"))
        assert "tiny_c5" in names and "conv1" not in names and "res2a_branch2a" not in names


@pytest.mark.parametrize("name", ["preset_plain", "preset_cascade"])
def test_backbone_frozen_stages(models, name):
    model = models(name, "training")
    k = model.config.BACKBONE_FROZEN_STAGES
    seen = set()
    for layer in model.keras_model.layers:
        stage = backbone_layer_stage(layer.name)
        if stage is None or not layer.weights:
            continue
        seen.add(stage)
        assert layer.trainable == (stage > k), layer.name
        if isinstance(layer, BatchNorm):
            # Frozen stages keep their statistics; the others follow TRAIN_BN (True here).
            assert layer.train_bn == (stage > k), layer.name
    assert seen == {1, 2, 3, 4, 5}
    # Training "all" layers keeps the frozen stages out of the optimizer's variables.
    model.set_trainable(".*", verbose=0)
    trainer = model.compile(0.001)
    trained = {id(v) for v in trainer.trainable_variables}
    for lname, expect in (("conv1", False), ("res{}a_branch2a".format(k), False),
                          ("res{}a_branch2a".format(k + 1), True), ("fpn_p2", True)):
        layer = model.keras_model.get_layer(lname)
        assert layer.trainable == expect, lname
        assert (id(layer.kernel) in trained) == expect, lname
    # A frozen batch norm ignores training=True: moving statistics stay fixed; an
    # unfrozen one (TRAIN_BN=True) updates them.
    for stage, fixed in ((k, True), (k + 1, False)):
        bn = model.keras_model.get_layer("bn{}a_branch2a".format(stage))
        before = [w.numpy().copy() for w in bn.weights]
        bn(tf.random.normal([2, 4, 4, bn.weights[0].shape[0]]) * 5 + 3, training=True)
        same = all(np.array_equal(b, w.numpy()) for b, w in zip(before, bn.weights))
        assert same == fixed, stage


# ---------------------------------------------------------------------------- ROI sampling
def target_layers(model):
    return [model.keras_model.get_layer("proposal_targets" + s)
            for s in stage_suffixes(model.config)]


@pytest.mark.parametrize("name", TINY)
def test_train_rois_per_image_sets_target_shapes(models, name):
    model = models(name, "training")
    c = model.config
    T = c.TRAIN_ROIS_PER_IMAGE
    for layer in target_layers(model):
        assert layer.train_rois == T
        rois, ids, deltas, masks = layer.output
        assert tuple(rois.shape) == (None, T, 4) and tuple(ids.shape) == (None, T)
        assert tuple(masks.shape) == (None, T) + tuple(c.MASK_SHAPE)
    for s in stage_suffixes(c):
        assert tuple(model.keras_model.get_layer("mrcnn_class_logits" + s).output.shape) == \
            (None, T, c.NUM_CLASSES)


def _proposal_case(num_pos=20, num_neg=20, seed=0):
    """One GT box, num_pos proposals with IoU > 0.8 with it, num_neg with IoU 0."""
    rng = np.random.default_rng(seed)
    gt = np.array([0.3, 0.3, 0.7, 0.7], np.float32)
    pos = gt + rng.uniform(-0.01, 0.01, [num_pos, 4]).astype(np.float32)
    y = rng.uniform(0.75, 0.85, num_neg)
    neg = np.stack([y, y, y + 0.1, y + 0.1], axis=1).astype(np.float32)
    assert utils.compute_overlaps(pos, gt[None]).min() > 0.8
    return np.concatenate([pos, neg]), gt


@pytest.mark.parametrize("name", TINY)
def test_roi_positive_ratio_sets_positive_count(models, name):
    model = models(name, "training")
    c = model.config
    proposals, gt = _proposal_case()
    T = c.TRAIN_ROIS_PER_IMAGE
    n_pos = int(T * c.ROI_POSITIVE_RATIO)
    for stage, layer in enumerate(target_layers(model)):
        assert layer.positive_ratio == c.ROI_POSITIVE_RATIO
        assert layer.positive_iou == pytest.approx(c.stage_positive_iou(stage))
        ids = layer([tf.constant(proposals[None]), tf.constant([[2]], tf.int32),
                     tf.constant(gt[None, None]), tf.ones([1, 14, 14, 1], tf.bool)])[1]
        ids = ids.numpy()[0]
        assert np.count_nonzero(ids == 2) == n_pos
        assert np.count_nonzero(ids == 0) == T - n_pos   # negatives + padding
    # PLAIN and CASC differ (4 of 16 vs 6 of 12): the count follows each config.
    assert {PLAIN.ROI_POSITIVE_RATIO, CASC.ROI_POSITIVE_RATIO} == {0.25, 0.5}


@pytest.mark.parametrize("name", TINY)
def test_roi_positive_ratio_sets_negative_count(models, name):
    """Rois that are not positive and not padding are the negatives: int(P/r) - P."""
    model = models(name, "training")
    c = model.config
    proposals, gt = _proposal_case()
    layer = target_layers(model)[0]
    rois, ids, _, _ = layer([tf.constant(proposals[None]), tf.constant([[2]], tf.int32),
                             tf.constant(gt[None, None]), tf.ones([1, 14, 14, 1], tf.bool)])
    rois, ids = rois.numpy()[0], ids.numpy()[0]
    n_pos = int(c.TRAIN_ROIS_PER_IMAGE * c.ROI_POSITIVE_RATIO)
    negatives = np.count_nonzero(np.any(rois != 0, axis=1) & (ids == 0))
    assert negatives == int(n_pos / c.ROI_POSITIVE_RATIO) - n_pos


@pytest.mark.parametrize("name", TINY)
def test_roi_add_gt_as_proposals(models, name):
    """Proposals that all miss the GT box: the first stage gets the GT box itself as its
    positive only with ROI_ADD_GT_AS_PROPOSALS; later cascade stages always do."""
    model = models(name, "training")
    c = model.config
    _, gt = _proposal_case()
    far = np.array([[0.8, 0.8, 0.9, 0.9], [0.0, 0.0, 0.1, 0.1]], np.float32)
    for stage, layer in enumerate(target_layers(model)):
        expect = stage > 0 or c.ROI_ADD_GT_AS_PROPOSALS
        assert layer.add_gt_as_proposals == expect
        rois, ids, _, _ = layer([tf.constant(far[None]), tf.constant([[2]], tf.int32),
                                 tf.constant(gt[None, None]), tf.ones([1, 14, 14, 1], tf.bool)])
        positives = rois.numpy()[0][ids.numpy()[0] == 2]
        if expect:
            np.testing.assert_allclose(positives, gt[None], atol=1e-6)
        else:
            assert len(positives) == 0


# ---------------------------------------------------------------------------- data side
@pytest.mark.parametrize("name", TINY)
def test_max_gt_instances_sets_pipeline_shapes(name):
    config = CONFIGS[name]()
    g = config.MAX_GT_INSTANCES
    ds = ShapesDataset()
    ds.load_shapes(12, 64, 64, seed=3, max_shapes=4)
    ds.prepare()
    spec = data.build_dataset(ds, config, shuffle=False, seed=0).element_spec
    b = config.BATCH_SIZE
    assert tuple(spec["input_gt_class_ids"].shape) == (b, g)
    assert tuple(spec["input_gt_boxes"].shape) == (b, g, 4)
    assert tuple(spec["input_gt_masks"].shape) == (b, 14, 14, g)
    # An image with more instances than MAX_GT_INSTANCES keeps MAX_GT_INSTANCES of them.
    counts = [ds.load_mask(i)[1].shape[0] for i in ds.image_ids]
    crowded = int(np.argmax(counts))
    assert counts[crowded] > CASC.MAX_GT_INSTANCES
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    ex = data.load_training_example(ds, config, crowded, anchors,
                                    rng=np.random.default_rng(0))
    assert ex["input_gt_class_ids"].shape == (g,)
    assert np.count_nonzero(ex["input_gt_class_ids"]) == min(g, counts[crowded])


def _rpn_case():
    """GT (10, 10, 30, 30); anchors with IoU 1, 0.6, 0.25 and 0 with it (pixels)."""
    gt = np.array([[10, 10, 30, 30]], np.float64)
    anchors = np.array([[10, 10, 30, 30],
                        [10, 10, 30, 10 + 20 / 0.6],       # IoU 0.6
                        [10, 10, 30, 15],                  # IoU 0.25
                        [40, 40, 60, 60]], np.float64)     # IoU 0
    iou = utils.compute_overlaps(anchors, gt)[:, 0]
    np.testing.assert_allclose(iou, [1.0, 0.6, 0.25, 0.0], atol=1e-6)
    return anchors, gt


@pytest.mark.parametrize("pos, neg, expected", [
    (0.7, 0.3, [1, 0, -1, -1]),
    (0.5, 0.3, [1, 1, -1, -1]),
    (0.7, 0.2, [1, 0, 0, -1]),
    (0.55, 0.26, [1, 1, -1, -1]),
])
def test_rpn_iou_thresholds_set_rpn_match(pos, neg, expected):
    anchors, gt = _rpn_case()
    config = type("R", (PLAIN,), dict(RPN_POSITIVE_IOU=pos, RPN_NEGATIVE_IOU=neg))()
    match, _ = data.build_rpn_targets((64, 64, 3), anchors, np.array([1]), gt, config)
    np.testing.assert_array_equal(match, expected)


# ---------------------------------------------------------------------------- detection
def _detection_inputs(num_classes, agnostic):
    """ROIs: 0 (score .9, class 1); 1 overlaps 0 with IoU 0.4 (.8, class 1); 2 elsewhere
    (.55, class 2); then 8 separate boxes of class 3 (.70 .. .693). Zero deltas."""
    boxes = [[0.1, 0.1, 0.3, 0.3], [0.1, 0.1 + 3 / 35, 0.3, 0.3 + 3 / 35], [0.5, 0.1, 0.7, 0.3]]
    classes, scores = [1, 1, 2], [0.9, 0.8, 0.55]
    for i in range(8):
        y = 0.05 + 0.075 * i
        boxes.append([y, 0.8, y + 0.05, 0.85])
        classes.append(3)
        scores.append(0.7 - 0.001 * i)
    boxes = np.array(boxes, np.float32)
    assert utils.compute_overlaps(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(0.4, abs=1e-5)
    n = len(boxes)
    probs = np.zeros([n, num_classes], np.float32)
    probs[np.arange(n), classes] = scores
    probs[np.arange(n), 0] = 1 - np.array(scores)
    deltas = np.zeros([n, 1 if agnostic else num_classes, 4], np.float32)
    return boxes, probs, deltas


@pytest.mark.parametrize("name", TINY)
def test_detection_settings_reach_detection_layer(models, name):
    model = models(name, "inference")
    c = model.config
    layer = model.keras_model.get_layer("mrcnn_detection")
    assert layer.min_confidence == c.DETECTION_MIN_CONFIDENCE
    assert layer.nms_threshold == c.DETECTION_NMS_THRESHOLD
    assert layer.max_instances == c.DETECTION_MAX_INSTANCES
    assert tuple(model.keras_model.output["detections"].shape) == (None, c.DETECTION_MAX_INSTANCES, 6)
    boxes, probs, deltas = _detection_inputs(c.NUM_CLASSES, c.CASCADE)
    det = layer([tf.constant(boxes[None]), tf.constant(probs[None]), tf.constant(deltas[None]),
                 meta_64(c.NUM_CLASSES)]).numpy()[0]
    assert det.shape == (c.DETECTION_MAX_INSTANCES, 6)
    kept = {(int(r[4]), round(float(r[5]), 3)) for r in det if r[4] > 0}
    # Box 1 (IoU 0.4 with box 0): suppressed at NMS 0.3, kept at 0.5.
    assert ((1, 0.8) in kept) == (c.DETECTION_NMS_THRESHOLD > 0.4)
    # Box 2 (score 0.55): kept at min confidence 0.5, dropped at 0.6.
    assert ((2, 0.55) in kept) == (c.DETECTION_MIN_CONFIDENCE <= 0.55)
    # Box 0 and the eight class-3 boxes are always candidates; at most
    # DETECTION_MAX_INSTANCES rows are kept (PLAIN: all 10, CASC: the best 6).
    candidates = 9 + (c.DETECTION_NMS_THRESHOLD > 0.4) + (c.DETECTION_MIN_CONFIDENCE <= 0.55)
    assert len(kept) == min(c.DETECTION_MAX_INSTANCES, candidates)
    # The whole model (traced, dynamic image size) gives DETECTION_MAX_INSTANCES rows too.
    image = np.full([64, 64, 3], 120, np.uint8)
    molded, metas, _ = model.mold_inputs([image])
    out = model._inference_fn()(tf.constant(molded), tf.constant(metas))
    assert tuple(out[0].shape) == (1, c.DETECTION_MAX_INSTANCES, 6)
    assert len(model.detect([image])[0]["scores"]) <= c.DETECTION_MAX_INSTANCES


# ---------------------------------------------------------------------------- image size
@pytest.mark.parametrize("mode, min_dim, max_dim, in_hw, out_hw, window", [
    ("square", 0, 64, (80, 96), (64, 64), (5, 0, 58, 64)),        # scaled down to 64
    ("square", 64, 128, (32, 48), (128, 128), (32, 16, 96, 112)),  # scaled up to short 64
    ("square", 0, 128, (32, 48), (128, 128), (48, 40, 80, 88)),    # no scaling, padded
    ("pad64", 64, 128, (50, 80), (64, 128), (0, 13, 64, 115)),     # 64x102 padded to x64
    ("none", 0, 64, (50, 80), (64, 128), (0, 0, 50, 80)),          # as is; frame x64
    ("crop", 64, 64, (100, 120), (64, 64), (0, 0, 64, 64)),
])
def test_image_resize_settings_set_molded_shape(mode, min_dim, max_dim, in_hw, out_hw, window):
    config = type("S", (PLAIN,), dict(IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=min_dim,
                                      IMAGE_MAX_DIM=max_dim))()
    image = np.random.default_rng(0).integers(0, 255, in_hw + (3,), dtype=np.uint8)
    molded, metas, windows = mold_inputs([image], config)
    assert molded.shape == (1,) + out_hw + (3,)
    np.testing.assert_array_equal(windows[0], window)
    np.testing.assert_array_equal(metas[0, 4:7], out_hw + (3,))
    if mode in ("square", "crop"):
        # Training batches have the config's fixed IMAGE_SHAPE.
        assert tuple(config.IMAGE_SHAPE[:2]) == out_hw


@pytest.mark.parametrize("name", TINY)
def test_image_shape_reaches_training_graph_input(models, name):
    model = models(name, "training")
    assert tuple(model.keras_model.get_layer("input_image").output.shape) == \
        (None, 64, 64, 3)
    config = type("S", (CONFIGS[name],), dict(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128))()
    graph = build_graph("training", config)
    assert tuple(graph.get_layer("input_image").output.shape) == (None, 128, 128, 3)
    # Anchors follow the image size: (h/4)^2 + ... over 5 levels, 3 ratios.
    anchors = graph.get_layer("anchors")(tf.zeros([1, 128, 128, 3])).numpy()
    assert anchors.shape == (1, 3 * sum((128 // s) ** 2 for s in (4, 8, 16, 32, 64)), 4)


# ---------------------------------------------------------------------------- losses
@pytest.fixture(scope="module")
def loss_batches():
    """One batch per tiny config, from the data pipeline (MAX_GT_INSTANCES included)."""
    out = {}
    for name in TINY:
        config = CONFIGS[name]()
        ds = ShapesDataset()
        ds.load_shapes(8, 64, 64, seed=4)
        ds.prepare()
        out[name] = next(iter(data.build_dataset(ds, config, shuffle=False, seed=0)))
    return out


@pytest.mark.parametrize("name", TINY)
def test_loss_weights_and_stage_weights_set_total_loss(models, loss_batches, name):
    model = models(name, "training")
    base = CONFIGS[name]
    weights = {"rpn_class_loss": 2.0, "rpn_bbox_loss": 0.0, "mrcnn_class_loss": 0.5,
               "mrcnn_bbox_loss": 2.0, "mrcnn_mask_loss": 1.0}
    stage_weights = (1.0, 0.0, 2.0)
    config = type("W", (base,), dict(LOSS_WEIGHTS=weights,
                                     CASCADE_STAGE_WEIGHTS=stage_weights))()
    trainer = TrainingModel(model.keras_model, config)
    batch = loss_batches[name]
    with tf.GradientTape() as tape:
        total, named = trainer._compute_losses(batch, training=True)
    named = dict(zip(loss_output_names(config), [float(v) for v in named]))
    # Independent weighted sum from the names.
    expected = 0.0
    for loss, value in named.items():
        base_name, stage = loss, 0
        if "_s" in loss.split("_loss")[-1]:
            base_name, stage = loss.rsplit("_s", 1)[0], int(loss.rsplit("_s", 1)[1]) - 1
        w = weights[base_name]
        if config.CASCADE and base_name in ("mrcnn_class_loss", "mrcnn_bbox_loss"):
            w *= stage_weights[stage]
        expected += w * value
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert all(np.isfinite(v) for v in named.values())
    if config.CASCADE:
        assert named["mrcnn_class_loss_s2"] > 0 and named["mrcnn_class_loss_s3"] > 0
    # A zero weight removes the loss from training: no gradient reaches the RPN's box
    # regressor (its only other use, the proposals, is gradient-free) ...
    kernel = model.keras_model.get_layer("rpn_model").get_layer("rpn_bbox_pred").kernel
    grad = tape.gradient(total, kernel)
    assert grad is None or not np.any(grad.numpy())
    # ... while the default weight 1 trains it (every image has positive anchors).
    assert named["rpn_bbox_loss"] > 0
    trainer1 = TrainingModel(model.keras_model, type("W1", (base,), {})())
    with tf.GradientTape() as tape:
        total1, _ = trainer1._compute_losses(batch, training=True)
    assert np.any(tape.gradient(total1, kernel).numpy() != 0)


def test_stage_weight_zero_stops_that_stage_training(models, loss_batches):
    model = models("cascade", "training")
    config = type("W", (CASC,), dict(CASCADE_STAGE_WEIGHTS=(1.0, 0.0, 1.0)))()
    trainer = TrainingModel(model.keras_model, config)
    net = model.keras_model
    kernels = [net.get_layer("mrcnn_class_logits" + s).kernel for s in stage_suffixes(config)]
    with tf.GradientTape() as tape:
        total, _ = trainer._compute_losses(loss_batches["cascade"], training=True)
    grads = tape.gradient(total, kernels)
    # Stage 3 (GT boxes among its proposals, so never without samples) trains; stage 2,
    # weighted 0, does not.
    assert np.any(grads[2].numpy() != 0)
    assert grads[1] is None or not np.any(grads[1].numpy())


# ---------------------------------------------------------------------------- heads
@pytest.mark.parametrize("name", ALL)
def test_box_head_convs_and_fcs(models, name):
    model = models(name, "training")
    c = model.config
    names = layer_names(model)
    net = model.keras_model
    for s in stage_suffixes(c):
        for i in range(1, 6):
            assert ("mrcnn_box_conv{}{}".format(i, s) in names) == (i <= c.BOX_HEAD_NUM_CONVS)
            assert ("mrcnn_class_conv{}{}".format(i, s) in names) == (i <= c.BOX_HEAD_NUM_FCS)
        depth = c.TOP_DOWN_PYRAMID_SIZE
        if c.BOX_HEAD_NUM_CONVS:
            assert tuple(net.get_layer("mrcnn_box_conv1" + s).kernel.shape) == \
                (3, 3, depth, c.BOX_HEAD_CONV_DIM)
            depth = c.BOX_HEAD_CONV_DIM
        # The first FC spans the whole POOL_SIZE window.
        assert tuple(net.get_layer("mrcnn_class_conv1" + s).kernel.shape) == \
            (c.POOL_SIZE, c.POOL_SIZE, depth, c.FPN_CLASSIF_FC_LAYERS_SIZE)
        box_out = 4 if c.CASCADE else 4 * c.NUM_CLASSES
        assert tuple(net.get_layer("mrcnn_bbox_fc" + s).kernel.shape) == \
            (c.FPN_CLASSIF_FC_LAYERS_SIZE, box_out)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("mode", ["training", "inference"])
def test_pre_and_post_nms_limits_per_mode(models, name, mode):
    model = models(name, mode)
    c = model.config
    layer = model.keras_model.get_layer("ROI")
    pre = c.PRE_NMS_LIMIT_TRAINING if mode == "training" else c.PRE_NMS_LIMIT_INFERENCE
    post = c.POST_NMS_ROIS_TRAINING if mode == "training" else c.POST_NMS_ROIS_INFERENCE
    assert (layer.pre_nms_limit, layer.proposal_count) == (pre, post)
    assert tuple(layer.output.shape) == (None, post, 4)
    # The pre-NMS limit in action: the top (pre - 3) anchors are one box (NMS keeps one),
    # then 50 distinct boxes. Only 3 of those are within the limit: 4 proposals survive.
    same = np.tile([[0.1, 0.1, 0.2, 0.2]], [pre - 3, 1])
    grid = [[0.3 + 0.012 * (i // 10), 0.3 + 0.06 * (i % 10), 0.31 + 0.012 * (i // 10),
             0.31 + 0.06 * (i % 10)] for i in range(50)]
    anchors = np.concatenate([same, grid]).astype(np.float32)[None]
    n = anchors.shape[1]
    fg = np.linspace(0.99, 0.5, n, dtype=np.float32)
    probs = np.stack([1 - fg, fg], axis=-1)[None]
    out = layer([tf.constant(probs), tf.zeros([1, n, 4]), tf.constant(anchors)]).numpy()[0]
    assert out.shape == (post, 4)
    assert np.count_nonzero(np.any(out != 0, axis=1)) == 4


def _np_crop_and_resize(fmap, box, size):
    """Bilinear samples of fmap [H, W, C] on a size[0] x size[1] grid spanning the
    normalised box from edge to edge (tf.image.crop_and_resize's convention)."""
    h, w = fmap.shape[:2]
    y1, x1, y2, x2 = box
    ys = y1 * (h - 1) + np.arange(size[0]) * (y2 - y1) * (h - 1) / (size[0] - 1)
    xs = x1 * (w - 1) + np.arange(size[1]) * (x2 - x1) * (w - 1) / (size[1] - 1)
    out = np.zeros(tuple(size) + fmap.shape[2:])
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            dy, dx = y - y0, x - x0
            y1_, x1_ = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            out[i, j] = ((1 - dy) * (1 - dx) * fmap[y0, x0] + (1 - dy) * dx * fmap[y0, x1_] +
                         dy * (1 - dx) * fmap[y1_, x0] + dy * dx * fmap[y1_, x1_])
    return out


@pytest.mark.parametrize("name", ALL)
def test_poolers_sizes_and_sampling_ratio(models, name):
    model = models(name, "training")
    c = model.config
    net = model.keras_model
    box_pool = net.get_layer("roi_align_classifier")
    mask_pool = net.get_layer("roi_align_mask")
    assert box_pool.pool_shape == (c.POOL_SIZE,) * 2
    assert mask_pool.pool_shape == (c.MASK_POOL_SIZE,) * 2
    assert box_pool.sampling_ratio == mask_pool.sampling_ratio == c.ROI_SAMPLING_RATIO
    # The mask head trains on the positive slots only: int(T * ROI_POSITIVE_RATIO) ROIs.
    slots = int(c.TRAIN_ROIS_PER_IMAGE * c.ROI_POSITIVE_RATIO)
    assert tuple(mask_pool.output.shape) == (None, slots, c.MASK_POOL_SIZE, c.MASK_POOL_SIZE,
                                             c.TOP_DOWN_PYRAMID_SIZE)

    # Numbers: a small box (pooled from P2) on a quadratic feature map. Sampling ratio 1
    # is one bilinear sample per bin (Matterport's crop); s averages s x s samples.
    ch = c.TOP_DOWN_PYRAMID_SIZE
    yy, xx = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    p2 = np.stack([0.05 * yy ** 2 + 0.1 * xx * yy + k for k in range(ch)], -1)
    maps = [tf.constant(p2[None], tf.float32)] + [
        tf.zeros([1, 16 // f, 16 // f, ch]) for f in (2, 4, 8)]
    box = np.array([0.1, 0.2, 0.5, 0.45])
    for pool_layer, size in ((box_pool, c.POOL_SIZE), (mask_pool, c.MASK_POOL_SIZE)):
        out = pool_layer([tf.constant(box[None, None], tf.float32), meta_64(c.NUM_CLASSES)] +
                         maps).numpy()[0, 0]
        s = c.ROI_SAMPLING_RATIO
        fine = _np_crop_and_resize(p2, box, (size * s, size * s))
        expected = fine.reshape(size, s, size, s, ch).mean(axis=(1, 3))
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)
        other = 3 - s if s in (1, 2) else 1
        fine = _np_crop_and_resize(p2, box, (size * other, size * other))
        alternative = fine.reshape(size, other, size, other, ch).mean(axis=(1, 3))
        assert np.abs(out - alternative).max() > 1e-2


@pytest.mark.parametrize("name", ALL)
def test_mask_shape_sets_mask_head_and_targets(models, name):
    c = CONFIGS[name]()
    mh, mw = c.MASK_SHAPE
    for mode in ("training", "inference"):
        model = models(name, mode)
        names = layer_names(model)
        n = (int(c.TRAIN_ROIS_PER_IMAGE * c.ROI_POSITIVE_RATIO) if mode == "training"
             else c.DETECTION_MAX_INSTANCES)
        out = model.keras_model.get_layer("mrcnn_mask_unflatten" if mode == "training"
                                          else "mrcnn_mask_slots").output
        assert tuple(out.shape) == (None, n, mh, mw, c.NUM_CLASSES)
        # MASK_HEAD_CONV_DIM: the width of the four convolutions and the deconvolution(s).
        net = model.keras_model
        assert tuple(net.get_layer("mrcnn_mask_conv1").kernel.shape) == \
            (3, 3, c.TOP_DOWN_PYRAMID_SIZE, c.MASK_HEAD_CONV_DIM)
        assert tuple(net.get_layer("mrcnn_mask_conv4").kernel.shape)[-1] == \
            c.MASK_HEAD_CONV_DIM
        assert tuple(net.get_layer("mrcnn_mask").kernel.shape) == \
            (1, 1, c.MASK_HEAD_CONV_DIM, c.NUM_CLASSES)
        # 2x MASK_POOL_SIZE: one transposed conv; 4x: a second one.
        assert ("mrcnn_mask_deconv2" in names) == (mh == 4 * c.MASK_POOL_SIZE)
        if mode == "training":
            for layer in target_layers(model):
                assert layer.mask_shape == (mh, mw)


def test_mask_shape_28_and_56_in_the_preset_models(models):
    shapes = {name: models(name, "inference").keras_model.output["mrcnn_mask"].shape[2:4]
              for name in ("preset_plain", "preset_cascade")}
    assert shapes == {"preset_plain": (28, 28), "preset_cascade": (56, 56)}


# ---------------------------------------------------------------------------- preset
@pytest.mark.parametrize("name", ["preset_plain", "preset_cascade"])
def test_r50_preset_values_reach_the_graph(models, name):
    train = models(name, "training").keras_model
    infer = models(name, "inference").keras_model
    c = CONFIGS[name]()
    assert (c.BACKBONE, c.RPN_POSITIVE_IOU, c.RPN_NEGATIVE_IOU) == ("resnet50", 0.7, 0.3)
    roi = train.get_layer("ROI")
    assert (roi.pre_nms_limit, roi.proposal_count) == (4000, 1000)
    roi = infer.get_layer("ROI")
    assert (roi.pre_nms_limit, roi.proposal_count) == (2000, 1000)
    for net in (train, infer):
        names = {l.name for l in net.layers}
        assert "res4f_branch2c" in names and "res4g_branch2a" not in names
        for s in stage_suffixes(c):
            assert {"mrcnn_box_conv{}{}".format(i, s) for i in range(1, 5)} <= names
            assert "mrcnn_box_conv5" + s not in names
            assert {"mrcnn_class_conv1" + s, "mrcnn_class_conv2" + s} <= names
            assert "mrcnn_class_conv3" + s not in names
        assert net.get_layer("roi_align_classifier").pool_shape == (7, 7)
        assert net.get_layer("roi_align_mask").pool_shape == (14, 14)
        assert net.get_layer("roi_align_classifier").sampling_ratio == 2
        assert net.get_layer("roi_align_mask").sampling_ratio == 2
    # RPN thresholds 0.3 / 0.7 reach build_rpn_targets.
    anchors, gt = _rpn_case()
    match, _ = data.build_rpn_targets((64, 64, 3), anchors, np.array([1]), gt, c)
    np.testing.assert_array_equal(match, [1, 0, -1, -1])



def test_bn_momentum_reaches_every_batch_norm_layer():
    """BN_MOMENTUM is set on every batch-norm layer, including those of sub-models."""
    import keras as _keras
    from mrcnn.config import Config as _Config
    from mrcnn.graph import build_graph as _build

    class _C(_Config):
        NAME = "bnm"
        NUM_CLASSES = 2
        BACKBONE = "resnet50"
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 64
        IMAGES_PER_GPU = 1
        BN_MOMENTUM = 0.8
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        TOP_DOWN_PYRAMID_SIZE = 32
        MASK_HEAD_CONV_DIM = 16

    model = _build("inference", _C())
    bns = [l for l in model.layers if isinstance(l, _keras.layers.BatchNormalization)]
    assert len(bns) > 50
    assert {l.momentum for l in bns} == {0.8}


@pytest.mark.parametrize("name", TINY)
def test_rpn_conv_dim_sets_the_shared_rpn_conv(models, name):
    c = CONFIGS[name]()
    for mode in ("training", "inference"):
        rpn = models(name, mode).keras_model.get_layer("rpn_model")
        conv = rpn.get_layer("rpn_conv_shared")
        assert tuple(conv.kernel.shape) == (3, 3, c.TOP_DOWN_PYRAMID_SIZE, c.RPN_CONV_DIM)
        assert tuple(rpn.get_layer("rpn_class_raw").kernel.shape)[2] == c.RPN_CONV_DIM
    assert Config().RPN_CONV_DIM == 512   # Matterport's weight files need 512
