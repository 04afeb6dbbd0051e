"""Tests for mrcnn.backbone and the heads of mrcnn.rpn / mrcnn.roi_heads: names, parameter counts, shapes, freezing,
numeric agreement of the heads with a numpy reference."""
import re

import numpy as np
import pytest

import keras
from keras import layers as KL

from mrcnn import backbone, compat, roi_heads
from mrcnn import rpn as rpn_lib
from mrcnn.config import Config

BN_EPS = 1e-3  # Keras (2 and 3) BatchNormalization default


class TinyConfig(Config):
    NAME = "tiny"
    IMAGES_PER_GPU = 1
    NUM_CLASSES = 3
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    BACKBONE = "resnet50"
    TOP_DOWN_PYRAMID_SIZE = 16
    FPN_CLASSIF_FC_LAYERS_SIZE = 32
    BOX_HEAD_CONV_DIM = 8
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]


def make_config(**overrides):
    return type("Cfg", (TinyConfig,), overrides)()


# ---------------------------------------------------------------- independent param formulas
def conv_params(k, cin, cout, groups=1):
    return k * k * (cin // groups) * cout + cout


def bn_params(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


def resnet_params(stage_plan, groups=1):
    """stage_plan: [(mid, out, blocks)] for res2..res5 of a bottleneck ResNet(/Xt)."""
    total = conv_params(7, 3, 64) + bn_params(64)
    cin = 64
    for mid, out, blocks in stage_plan:
        for i in range(blocks):
            total += conv_params(1, cin, mid) + bn_params(mid)
            total += conv_params(3, mid, mid, groups) + bn_params(mid)
            total += conv_params(1, mid, out) + bn_params(out)
            if i == 0:
                total += conv_params(1, cin, out) + bn_params(out)
            cin = out
    return total


R50_PLAN = [(64, 256, 3), (128, 512, 4), (256, 1024, 6), (512, 2048, 3)]
R101_PLAN = [(64, 256, 3), (128, 512, 4), (256, 1024, 23), (512, 2048, 3)]
RX101_PLAN = [(128, 256, 3), (256, 512, 4), (512, 1024, 23), (1024, 2048, 3)]


def build_resnet(arch, **kwargs):
    image = keras.Input((64, 64, 3))
    kwargs.setdefault("stage5", True)
    cs = backbone.resnet_graph(image, arch, **kwargs)
    return keras.Model(image, cs), cs


def weight_layers(model):
    return [layer for layer in model.layers if layer.weights]


def stage_of(name):
    """Independent stage parser for the test (stem = 1)."""
    if name in ("conv1", "bn_conv1"):
        return 1
    m = re.match(r"(res|bn)(\d)", name)
    assert m, name
    return int(m.group(2))


# ---------------------------------------------------------------- backbones
@pytest.fixture(scope="module")
def r101():
    return build_resnet("resnet101")


@pytest.fixture(scope="module")
def r50():
    return build_resnet("resnet50")


def test_resnet_param_counts_match_keras2_resnet(r50, r101):
    m50, _ = r50
    m101, _ = r101
    assert resnet_params(R50_PLAN) == 23587712  # Keras-2 ResNet50(include_top=False)
    assert resnet_params(R101_PLAN) == 42658176  # Keras-2 ResNet101(include_top=False)
    assert m50.count_params() == resnet_params(R50_PLAN)
    assert m101.count_params() == resnet_params(R101_PLAN)


def test_resnet_layer_names(r50, r101):
    names50 = {layer.name for layer in r50[0].layers}
    names101 = {layer.name for layer in r101[0].layers}
    for name in ("conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch2a", "res2a_branch1",
                 "bn2a_branch1", "res3d_branch2c", "res4f_branch2c", "res5c_branch2c",
                 "bn5c_branch2c"):
        assert name in names50 and name in names101
    assert "res4w_branch2c" in names101 and "bn4w_branch2c" in names101
    assert "res4x_branch2a" not in names101
    assert "res4g_branch2a" not in names50 and "res4w_branch2c" not in names50
    # Exactly Matterport's weight layers: 1 + 3 per block + 1 shortcut per stage, x2 for BN.
    blocks101 = 3 + 4 + 23 + 3
    assert len(weight_layers(r101[0])) == 2 * (1 + 3 * blocks101 + 4)
    # Matterport's resnet convs have biases; kernel shapes as Keras-2.
    layer = r101[0].get_layer("res3a_branch1")
    assert [tuple(w.shape) for w in layer.weights] == [(1, 1, 256, 512), (512,)]
    assert tuple(r101[0].get_layer("conv1").kernel.shape) == (7, 7, 3, 64)


@pytest.mark.parametrize("fixture", ["r50", "r101"])
def test_resnet_output_shapes(fixture, request):
    _, cs = request.getfixturevalue(fixture)
    expected = [(16, 16, 64), (16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]
    assert [tuple(c.shape[1:]) for c in cs] == expected


def test_resnext101_structure():
    model, cs = build_resnet("resnext101")
    assert [tuple(c.shape[1:]) for c in cs] == [
        (16, 16, 64), (16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]
    assert model.count_params() == resnet_params(RX101_PLAN, groups=32)
    names = {layer.name for layer in model.layers}
    assert {"conv1", "bn_conv1", "res2a_branch2b", "res4w_branch2c", "bn5c_branch2c"} <= names
    conv = model.get_layer("res2a_branch2b")
    assert conv.groups == 32
    assert tuple(conv.kernel.shape) == (3, 3, 4, 128)  # 32 groups of width 4
    assert tuple(model.get_layer("res5a_branch2b").kernel.shape) == (3, 3, 32, 1024)
    # ResNeXt strides the grouped 3x3, not the first 1x1.
    assert model.get_layer("res3a_branch2a").strides == (1, 1)
    assert model.get_layer("res3a_branch2b").strides == (2, 2)


def test_stage5_false_and_bad_arguments():
    image = keras.Input((64, 64, 3))
    cs = backbone.resnet_graph(image, "resnet50", stage5=False)
    assert cs[4] is None and tuple(cs[3].shape[1:]) == (4, 4, 1024)
    # Matterport's default: no res5.
    assert backbone.resnet_graph(keras.Input((64, 64, 3)), "resnet50")[4] is None
    with pytest.raises(ValueError, match="vgg"):
        backbone.resnet_graph(image, "vgg")
    with pytest.raises(ValueError, match="frozen_stages"):
        backbone.resnet_graph(image, "resnet50", frozen_stages=6)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_frozen_stages_trainable_flags(k):
    model, _ = build_resnet("resnet50", frozen_stages=k)
    layers = weight_layers(model)
    assert len(layers) == 2 * (1 + 3 * 16 + 4)
    for layer in layers:
        frozen = stage_of(layer.name) <= k
        assert layer.trainable == (not frozen), layer.name
        assert backbone.backbone_layer_stage(layer.name) == stage_of(layer.name)
    expected_trainable = sum(int(np.prod(w.shape)) for layer in layers
                             if stage_of(layer.name) > k for w in layer.trainable_weights)
    got = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert got == expected_trainable
    if k == 5:
        assert got == 0


def test_frozen_bn_keeps_moving_stats_in_training_call():
    model, _ = build_resnet("resnet50", train_bn=True, frozen_stages=2)
    frozen_bns = ["bn_conv1", "bn2a_branch2a", "bn2c_branch2c"]
    live_bns = ["bn3a_branch2a", "bn5c_branch2c"]
    before = {n: [np.array(v) for v in model.get_layer(n).non_trainable_weights]
              for n in frozen_bns + live_bns}
    x = np.random.RandomState(0).normal(0, 50, (2, 64, 64, 3)).astype("float32")
    model(x, training=True)
    for n in frozen_bns:
        after = [np.array(v) for v in model.get_layer(n).non_trainable_weights]
        for a, b in zip(before[n], after):
            np.testing.assert_array_equal(a, b)
    for n in live_bns:
        after_mean = np.array(model.get_layer(n).moving_mean)
        assert np.abs(after_mean - before[n][0]).max() > 1e-4, n


def test_backbone_layer_stage_helper():
    f = backbone.backbone_layer_stage
    assert f("conv1") == 1 and f("bn_conv1") == 1 and f("pool1") == 1
    assert f("res2a_branch2a") == 2 and f("bn3b_branch2c") == 3
    assert f("res4w_branch2c") == 4 and f("res5c_out") == 5 and f("res4b_add") == 4
    assert f("fpn_p2") is None and f("mrcnn_class_conv1") is None and f("rpn_model") is None


# ---------------------------------------------------------------- BatchNorm
def test_batchnorm_train_bn_switch():
    rng = np.random.RandomState(1)
    x = rng.normal(3.0, 2.0, (8, 5)).astype("float32")
    fixed = backbone.BatchNorm(train_bn=False)
    out = np.array(fixed(x, training=True))
    # Initial moving stats mean 0, var 1: inference mode only rescales by 1/sqrt(1+eps).
    np.testing.assert_allclose(out, x / np.sqrt(1 + BN_EPS), rtol=1e-5)
    np.testing.assert_array_equal(np.array(fixed.moving_mean), 0)
    assert len(fixed.trainable_weights) == 2  # gamma, beta still trainable

    live = backbone.BatchNorm(train_bn=True)
    out = np.array(live(x, training=True))
    ref = (x - x.mean(0)) / np.sqrt(x.var(0) + BN_EPS)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(live.moving_mean), 0.01 * x.mean(0), rtol=1e-4)

    clone = backbone.BatchNorm.from_config(fixed.get_config())
    assert clone.train_bn is False


def _set_bn_weights(layer, rng, c):
    layer.gamma.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    layer.beta.assign(rng.normal(0.0, 1.0, c).astype("float32"))
    layer.moving_mean.assign(rng.normal(0.0, 1.0, c).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.2, 3.0, c).astype("float32"))
    return [np.array(w, dtype=np.float64) for w in (
        layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]


@pytest.mark.parametrize("train_bn, trainable, training", [
    (False, True, True), (True, True, False), (True, False, True), (True, True, None)])
def test_batchnorm_fixed_statistics_fused_op_values_and_gradients(train_bn, trainable,
                                                                  training):
    """Every case that normalises with the moving statistics runs one FusedBatchNormV3:
    values and the gradients in x, gamma and beta equal the numpy formula."""
    import tensorflow as tf
    rng = np.random.RandomState(2)
    c = 6
    x = rng.normal(1.0, 3.0, (2, 5, 4, c)).astype("float32")
    layer = backbone.BatchNorm(train_bn=train_bn)
    layer.build(x.shape)
    layer.trainable = trainable
    g, b, mean, var = _set_bn_weights(layer, rng, c)
    upstream = rng.normal(size=x.shape)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=training)
        loss = tf.reduce_sum(y * tf.constant(upstream, tf.float32))
    grads = tape.gradient(loss, [xt] + (
        [layer.gamma, layer.beta] if trainable else []))

    inv = 1.0 / np.sqrt(var + BN_EPS)
    xhat = (x - mean) * inv
    np.testing.assert_allclose(np.array(y), g * xhat + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(grads[0]), upstream * g * inv, rtol=1e-5, atol=1e-5)
    if trainable:
        np.testing.assert_allclose(np.array(grads[1]), (upstream * xhat).sum((0, 1, 2)),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.array(grads[2]), upstream.sum((0, 1, 2)),
                                   rtol=1e-4, atol=1e-4)
    # The statistics never move in these cases.
    np.testing.assert_array_equal(np.array(layer.moving_mean, np.float64), mean)

    ops = {op.type for op in tf.function(lambda t: layer(t, training=training))
           .get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph.get_operations()}
    assert "FusedBatchNormV3" in ops


def test_batchnorm_fixed_statistics_bfloat16_and_other_ranks():
    """bfloat16 inputs stay bfloat16 (the statistics are applied in float32 inside the op);
    inputs that are not 4-D take Keras' own path with the same result."""
    import tensorflow as tf
    rng = np.random.RandomState(3)
    c = 4
    weights = None
    for shape in ((3, 2, 2, c), (5, c), (2, 3, c), (1, 2, 2, 2, c)):
        layer = backbone.BatchNorm(train_bn=False, dtype="mixed_bfloat16"
                                   if len(shape) == 4 else "float32")
        layer.build(shape)
        if weights is None:
            weights = _set_bn_weights(layer, np.random.RandomState(4), c)
        else:
            layer.set_weights([np.float32(w) for w in weights])
        g, b, mean, var = weights
        x = rng.normal(size=shape).astype("float32")
        y = layer(tf.constant(x, tf.bfloat16 if len(shape) == 4 else tf.float32))
        if len(shape) == 4:
            assert y.dtype == tf.bfloat16
            x = np.array(tf.cast(tf.constant(x, tf.bfloat16), tf.float32))
            y = tf.cast(y, tf.float32)
            tol = 1e-2  # the output's bfloat16 rounding
        else:
            tol = 1e-5
        np.testing.assert_allclose(np.array(y), g * (x - mean) / np.sqrt(var + BN_EPS) + b,
                                   rtol=tol, atol=tol)


# ---------------------------------------------------------------- FPN / build_backbone
def test_build_backbone_fpn_names_and_shapes():
    config = make_config()
    image = keras.Input((64, 64, 3))
    ps = backbone.build_backbone(image, config)
    model = keras.Model(image, ps)
    assert [tuple(p.shape[1:]) for p in ps] == [
        (16, 16, 16), (8, 8, 16), (4, 4, 16), (2, 2, 16), (1, 1, 16)]
    names = {layer.name for layer in model.layers}
    for n in ("fpn_c5p5", "fpn_c4p4", "fpn_c3p3", "fpn_c2p2", "fpn_p5upsampled",
              "fpn_p4upsampled", "fpn_p3upsampled", "fpn_p4add", "fpn_p3add", "fpn_p2add",
              "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6"):
        assert n in names, n
    assert isinstance(model.get_layer("fpn_p6"), KL.MaxPooling2D)
    fpn = sum(layer.count_params() for layer in model.layers if layer.name.startswith("fpn_"))
    expected = (conv_params(1, 2048, 16) + conv_params(1, 1024, 16) + conv_params(1, 512, 16)
                + conv_params(1, 256, 16) + 4 * conv_params(3, 16, 16))
    assert fpn == expected
    assert model.count_params() == resnet_params(R50_PLAN) + expected
    # P6 = P5 subsampled with stride 2 (1x1 max-pool keeps the top-left cell).
    x = np.random.RandomState(2).normal(0, 1, (1, 64, 64, 3)).astype("float32")
    p = model(x)
    np.testing.assert_allclose(np.array(p[4])[0, 0, 0], np.array(p[3])[0, 0, 0])


def test_build_backbone_user_callable_and_errors():
    calls = {}

    def tiny_backbone(input_image, stage5=True, train_bn=None):
        calls["args"] = (stage5, train_bn)
        x = input_image
        out = []
        for i, (stride, ch) in enumerate([(4, 8), (1, 8), (2, 8), (2, 8), (2, 8)]):
            x = KL.Conv2D(ch, 3, strides=stride, padding="same", name="tiny_c%d" % (i + 1))(x)
            out.append(x)
        return out

    config = make_config(BACKBONE=staticmethod(tiny_backbone), TRAIN_BN=True)
    assert callable(config.BACKBONE)
    image = keras.Input((64, 64, 3))
    ps = backbone.build_backbone(image, config)
    assert calls["args"] == (True, True)
    assert [tuple(p.shape[1:3]) for p in ps] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert {"tiny_c5", "fpn_c5p5"} <= {l.name for l in keras.Model(image, ps).layers}

    config.BACKBONE_FROZEN_STAGES = 2
    with pytest.raises(ValueError, match="BACKBONE_FROZEN_STAGES"):
        backbone.build_backbone(keras.Input((64, 64, 3)), config)
    config = make_config()
    config.BACKBONE = "vgg16"
    with pytest.raises(ValueError, match="BACKBONE = 'vgg16'"):
        backbone.build_backbone(keras.Input((64, 64, 3)), config)


# ---------------------------------------------------------------- RPN
def test_rpn_model_names_anchor_count_and_order():
    depth, apl = 16, 3
    rpn = rpn_lib.build_rpn_model(anchor_stride=1, anchors_per_location=apl, depth=depth)
    assert rpn.name == "rpn_model"
    assert rpn.inputs[0].name == "input_rpn_feature_map"
    names = {layer.name for layer in rpn.layers}
    assert {"rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"} <= names
    assert tuple(rpn.get_layer("rpn_conv_shared").kernel.shape) == (3, 3, depth, 512)
    assert tuple(rpn.get_layer("rpn_class_raw").kernel.shape) == (1, 1, 512, 2 * apl)
    assert tuple(rpn.get_layer("rpn_bbox_pred").kernel.shape) == (1, 1, 512, 4 * apl)

    rng = np.random.RandomState(3)
    sizes = [16, 8, 4, 2, 1]  # P2..P6 of a 64x64 image
    maps = [rng.normal(0, 1, (2, s, s, depth)).astype("float32") for s in sizes]
    outs = [rpn(m) for m in maps]
    logits = np.concatenate([np.array(o[0]) for o in outs], axis=1)
    probs = np.concatenate([np.array(o[1]) for o in outs], axis=1)
    bbox = np.concatenate([np.array(o[2]) for o in outs], axis=1)
    a = sum(s * s * apl for s in sizes)
    assert a == 1023
    assert logits.shape == (2, a, 2) and probs.shape == (2, a, 2) and bbox.shape == (2, a, 4)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)

    # Anchor order is (y, x, anchor) within a level: compare with the raw conv maps.
    raw = keras.Model(rpn.input, [rpn.get_layer("rpn_class_raw").output,
                                   rpn.get_layer("rpn_bbox_pred").output])
    cls_raw, box_raw = [np.array(t) for t in raw(maps[1])]
    y, x, k = 5, 2, 1
    idx = (y * 8 + x) * apl + k
    off = 16 * 16 * apl  # level P3 starts after P2's anchors
    np.testing.assert_allclose(logits[:, off + idx], cls_raw[:, y, x, 2 * k:2 * k + 2],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bbox[:, off + idx], box_raw[:, y, x, 4 * k:4 * k + 4],
                               rtol=1e-5, atol=1e-6)


def test_rpn_init_std_draws_normal_kernels_and_zero_biases():
    keras.utils.set_random_seed(0)
    rpn = rpn_lib.build_rpn_model(1, 3, 64, conv_dim=256, init_std=0.01)
    for name in ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"):
        kernel, bias = rpn.get_layer(name).get_weights()
        assert np.all(bias == 0), name
        assert abs(kernel.mean()) < 0.002 and 0.008 < kernel.std() < 0.012, (name, kernel.std())
    # The shared conv has 147,456 weights: its std is 0.01 to well within 1%.
    shared = rpn.get_layer("rpn_conv_shared").get_weights()[0]
    assert shared.std() == pytest.approx(0.01, rel=0.01)
    # Default (None): Keras' Glorot-uniform, bounded by sqrt(6 / (fan_in + fan_out)).
    default = rpn_lib.build_rpn_model(1, 3, 64, conv_dim=256)
    kernel = default.get_layer("rpn_conv_shared").get_weights()[0]
    limit = np.sqrt(6.0 / (9 * 64 + 9 * 256))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit


def test_rpn_anchor_stride_2():
    rpn = rpn_lib.build_rpn_model(anchor_stride=2, anchors_per_location=3, depth=4)
    out = rpn(np.zeros((1, 8, 8, 4), "float32"))
    assert tuple(out[0].shape) == (1, 4 * 4 * 3, 2)


# ---------------------------------------------------------------- box head
def box_head_model(config, n=3, channels=4, stage=0, train_bn=False):
    pooled = keras.Input((n, config.POOL_SIZE, config.POOL_SIZE, channels))
    outs = roi_heads.box_head_graph(pooled, config, train_bn, stage=stage)
    return keras.Model(pooled, list(outs))


def randomise_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, backbone.BatchNorm):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)])


def np_bn(x, layer):
    g, b, m, v = [np.array(w) for w in layer.get_weights()]
    return (x - m) / np.sqrt(v + BN_EPS) * g + b


def box_head_param_formula(config, channels):
    c, fc, pool = channels, config.FPN_CLASSIF_FC_LAYERS_SIZE, config.POOL_SIZE
    total = 0
    for _ in range(config.BOX_HEAD_NUM_CONVS):
        total += conv_params(3, c, config.BOX_HEAD_CONV_DIM) + bn_params(config.BOX_HEAD_CONV_DIM)
        c = config.BOX_HEAD_CONV_DIM
    for i in range(config.BOX_HEAD_NUM_FCS):
        total += conv_params(pool if i == 0 else 1, c if i == 0 else fc, fc) + bn_params(fc)
    boxes = 1 if config.CASCADE else config.NUM_CLASSES
    return total + (fc + 1) * config.NUM_CLASSES + (fc + 1) * boxes * 4


def test_box_head_matches_numpy_reference():
    config = make_config()
    model = box_head_model(config, n=3, channels=4)
    rng = np.random.RandomState(4)
    randomise_bn(model, rng)
    pooled = rng.normal(0, 1, (2, 3, 7, 7, 4)).astype("float32")
    logits, probs, bbox = [np.array(t) for t in model(pooled)]

    k1, b1 = [np.array(w) for w in model.get_layer("mrcnn_class_conv1").get_weights()]
    k2, b2 = [np.array(w) for w in model.get_layer("mrcnn_class_conv2").get_weights()]
    x = np.einsum("bnhwc,hwcf->bnf", pooled, k1) + b1
    x = np.maximum(np_bn(x, model.get_layer("mrcnn_class_bn1")), 0)
    x = x @ k2[0, 0] + b2
    x = np.maximum(np_bn(x, model.get_layer("mrcnn_class_bn2")), 0)
    wl, bl = model.get_layer("mrcnn_class_logits").get_weights()
    wb, bb = model.get_layer("mrcnn_bbox_fc").get_weights()
    ref_logits = x @ wl + bl
    ref_bbox = (x @ wb + bb).reshape(2, 3, 3, 4)
    e = np.exp(ref_logits - ref_logits.max(-1, keepdims=True))
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probs, e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bbox, ref_bbox, rtol=1e-4, atol=1e-4)
    assert model.count_params() == box_head_param_formula(config, 4)
    # Matterport's TimeDistributed(Conv2D) kernel shape, by name.
    assert tuple(model.get_layer("mrcnn_class_conv1").kernel.shape) == (7, 7, 4, 32)


@pytest.mark.parametrize("convs,fcs", [(2, 2), (0, 1), (0, 3), (1, 3)])
def test_box_head_conv_fc_variants(convs, fcs):
    config = make_config(BOX_HEAD_NUM_CONVS=convs, BOX_HEAD_NUM_FCS=fcs)
    model = box_head_model(config, n=2, channels=4)
    names = {layer.name for layer in model.layers}
    for i in range(1, 5):
        assert (("mrcnn_box_conv%d" % i) in names) == (i <= convs)
        assert (("mrcnn_box_bn%d" % i) in names) == (i <= convs)
        assert (("mrcnn_class_conv%d" % i) in names) == (i <= fcs)
        assert (("mrcnn_class_bn%d" % i) in names) == (i <= fcs)
    assert model.count_params() == box_head_param_formula(config, 4)
    if convs:
        assert tuple(model.get_layer("mrcnn_box_conv1").kernel.shape) == (3, 3, 4, 8)
        assert tuple(model.get_layer("mrcnn_class_conv1").kernel.shape) == (7, 7, 8, 32)
    # Each ROI is processed independently: ROI (b, n) alone gives the same outputs.
    rng = np.random.RandomState(5)
    pooled = rng.normal(0, 1, (2, 2, 7, 7, 4)).astype("float32")
    full = [np.array(t) for t in model(pooled)]
    single = box_head_model(config, n=1, channels=4)
    # Layer names repeat across the two models (separate graphs), weights copied by name.
    for layer in single.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    one = [np.array(t) for t in single(pooled[1:2, 1:2])]
    for f, o in zip(full, one):
        np.testing.assert_allclose(f[1:2, 1:2], o, rtol=1e-4, atol=1e-5)
    assert full[2].shape == (2, 2, 3, 4)


def test_box_head_cascade_class_agnostic_and_stage_names():
    config = make_config(CASCADE=True)
    pooled = keras.Input((5, 7, 7, 4))
    s1 = roi_heads.box_head_graph(pooled, config, False, stage=0)
    s2 = roi_heads.box_head_graph(pooled, config, False, stage=1)
    s3 = roi_heads.box_head_graph(pooled, config, False, stage=2)
    model = keras.Model(pooled, list(s1) + list(s2) + list(s3))  # no name clashes
    names = {layer.name for layer in model.layers}
    assert {"mrcnn_class_conv1", "mrcnn_class_conv1_stage2", "mrcnn_class_bn2_stage2",
            "mrcnn_class_logits_stage2", "mrcnn_bbox_fc_stage2", "mrcnn_class_conv1_stage3",
            "mrcnn_bbox_stage3", "mrcnn_class_stage3"} <= names
    assert tuple(model.get_layer("mrcnn_bbox_fc_stage2").kernel.shape) == (32, 4)
    for logits, probs, bbox in (s1, s2, s3):
        assert tuple(logits.shape) == (None, 5, 3)
        assert tuple(probs.shape) == (None, 5, 3)
        assert tuple(bbox.shape) == (None, 5, 1, 4)
    out = model(np.zeros((2, 5, 7, 7, 4), "float32"))
    assert tuple(out[2].shape) == (2, 5, 1, 4)


def test_box_head_rejects_wrong_pool_size():
    config = make_config()
    with pytest.raises(ValueError, match="POOL_SIZE"):
        roi_heads.box_head_graph(keras.Input((3, 5, 5, 4)), config, False)


# ---------------------------------------------------------------- mask head
@pytest.mark.parametrize("mask_shape", [28, 56])
def test_mask_head_shapes_and_names(mask_shape):
    config = make_config(MASK_SHAPE=[mask_shape, mask_shape])
    pooled = keras.Input((2, 14, 14, 4))
    masks = roi_heads.mask_head_graph(pooled, config, train_bn=False)
    model = keras.Model(pooled, masks)
    assert tuple(masks.shape) == (None, 2, mask_shape, mask_shape, 3)
    names = {layer.name for layer in model.layers}
    assert {"mrcnn_mask_conv1", "mrcnn_mask_bn1", "mrcnn_mask_conv4", "mrcnn_mask_bn4",
            "mrcnn_mask_deconv", "mrcnn_mask"} <= names
    assert ("mrcnn_mask_deconv2" in names) == (mask_shape == 56)
    assert tuple(model.get_layer("mrcnn_mask_deconv").kernel.shape) == (2, 2, 256, 256)
    expected = (conv_params(3, 4, 256) + 3 * conv_params(3, 256, 256) + 4 * bn_params(256)
                + (1 if mask_shape == 28 else 2) * conv_params(2, 256, 256)
                + conv_params(1, 256, 3))
    assert model.count_params() == expected

    rng = np.random.RandomState(6)
    x = rng.normal(0, 1, (1, 2, 14, 14, 4)).astype("float32")
    out = np.array(model(x))
    assert out.shape == (1, 2, mask_shape, mask_shape, 3)
    assert out.min() >= 0 and out.max() <= 1
    # ROI 1 alone gives the same masks (fold/unfold of the ROI axis keeps order).
    single_in = keras.Input((1, 14, 14, 4))
    single = keras.Model(single_in, roi_heads.mask_head_graph(single_in, config, False))
    for layer in single.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    np.testing.assert_allclose(np.array(single(x[:, 1:2])), out[:, 1:2], rtol=1e-4,
                               atol=1e-5)


def test_mask_head_rejects_bad_shapes():
    config = make_config()
    with pytest.raises(ValueError, match="MASK_POOL_SIZE"):
        roi_heads.mask_head_graph(keras.Input((2, 7, 7, 4)), config, False)
    config.MASK_SHAPE = [42, 42]
    with pytest.raises(ValueError, match="MASK_SHAPE"):
        roi_heads.mask_head_graph(keras.Input((2, 14, 14, 4)), config, False)


# ---------------------------------------------------------------- mixed precision, saving
def test_heads_float32_outputs_under_mixed_bfloat16():
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        config = make_config(MASK_POOL_SIZE=7, MASK_SHAPE=[14, 14])
        rpn = rpn_lib.build_rpn_model(1, 3, 8)
        assert rpn.get_layer("rpn_conv_shared").compute_dtype == "bfloat16"
        rpn_out = rpn(np.ones((1, 4, 4, 8), "float32"))
        pooled = keras.Input((2, 7, 7, 8))
        outs = list(roi_heads.box_head_graph(pooled, config, False))
        outs.append(roi_heads.mask_head_graph(pooled, config, False))
        model = keras.Model(pooled, outs)
        assert model.get_layer("mrcnn_class_conv1").compute_dtype == "bfloat16"
        results = model(np.ones((1, 2, 7, 7, 8), "float32"))
    finally:
        keras.mixed_precision.set_global_policy(old)
    assert all(str(t.dtype) == "<dtype: 'float32'>" for t in rpn_out)
    assert all(str(t.dtype) == "<dtype: 'float32'>" for t in results)


def test_heads_save_and_reload(tmp_path):
    config = make_config(MASK_POOL_SIZE=7, MASK_SHAPE=[14, 14])
    pooled = keras.Input((2, 7, 7, 4))
    outs = list(roi_heads.box_head_graph(pooled, config, False))
    outs.append(roi_heads.mask_head_graph(pooled, config, False))
    model = keras.Model(pooled, outs)
    path = str(tmp_path / "roi_heads.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)  # safe_mode: no Python lambdas inside
    x = np.random.RandomState(7).normal(0, 1, (2, 2, 7, 7, 4)).astype("float32")
    for a, b in zip(model(x), reloaded(x)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-6)
    assert reloaded.get_layer("mrcnn_class_bn1").train_bn is False


# ---------------------------------------------------------------- Matterport wrappers
class _FakeROIAlign(KL.Layer):
    """Stand-in for layers.PyramidROIAlign: [B, N, ph, pw, C] filled with the ROI's y1."""

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(pool_shape)

    def call(self, inputs):
        rois, p2 = inputs[0], inputs[2]
        channels = p2.shape[-1]
        x = rois[:, :, None, None, :1]
        return keras.ops.tile(x, (1, 1) + self.pool_shape + (channels,))


def test_matterport_wrappers_use_roi_align_names(monkeypatch):
    monkeypatch.setattr(compat, "PyramidROIAlign", _FakeROIAlign)
    rois = keras.Input((4, 4))
    meta = keras.Input((15,))
    maps = [keras.Input((s, s, 8)) for s in (16, 8, 4, 2)]
    logits, probs, bbox = compat.fpn_classifier_graph(rois, maps, meta, 7, 3, train_bn=False,
                                                     fc_layers_size=16)
    masks = compat.build_fpn_mask_graph(rois, maps, meta, 14, 3, train_bn=False)
    model = keras.Model([rois, meta] + maps, [logits, probs, bbox, masks])
    names = {layer.name for layer in model.layers}
    assert {"roi_align_classifier", "roi_align_mask", "mrcnn_class_conv2",
            "mrcnn_mask_deconv"} <= names
    assert tuple(bbox.shape) == (None, 4, 3, 4)
    assert tuple(masks.shape) == (None, 4, 28, 28, 3)
