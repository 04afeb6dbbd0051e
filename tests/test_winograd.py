"""Winograd F(4x4, 3x3) convolutions (mrcnn.winograd) against TensorFlow's direct kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import winograd
from mrcnn.winograd import Conv3x3, resolve_winograd, winograd_conv3x3


def _direct(x, k):
    return tf.nn.conv2d(x, k, 1, "SAME")


def _rel_err(a, b):
    return float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))


def test_one_dimensional_transform_is_a_correlation():
    # A^T [(G g) * (B^T d)] = [sum_k d[i + k] g[k] for i < 4], exactly (float64).
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.normal(size=6), rng.normal(size=3)
        y = winograd._AT @ ((winograd._G @ g) * (winograd._BT @ d))
        np.testing.assert_allclose(y, [d[i:i + 3] @ g for i in range(4)], atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 17, 23, 5), (1, 4, 4, 3), (1, 1, 1, 2), (3, 9, 2, 4)])
def test_equals_direct_convolution(shape):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=shape), tf.float32)
    k = tf.constant(rng.normal(size=(3, 3, shape[-1], 7)), tf.float32)
    got = winograd_conv3x3(x, k)
    assert got.shape == shape[:3] + (7,)
    assert _rel_err(got, _direct(x, k)) < 1e-5


def _tiles_by_patches(x):
    """Reference tile transform, another way: extract_patches, then B^T d B of each tile
    as one matmul by the Kronecker product -> [36, T, C]."""
    patches = tf.image.extract_patches(x, [1, 6, 6, 1], [1, 4, 4, 1], [1, 1, 1, 1], "VALID")
    d = tf.reshape(patches, [-1, 36, x.shape[-1]])
    return tf.einsum("ij,tjc->itc", tf.constant(np.kron(winograd._BT, winograd._BT),
                                                tf.float32), d)


def test_tile_transforms_agree_and_gradient_is_the_patches_one():
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(2, 14, 18, 3)), tf.float32)   # padded: 3 x 4 tiles
    by_conv, by_patches = winograd._tiles_by_conv(x), _tiles_by_patches(x)
    assert by_conv.shape == (36, 2 * 3 * 4, 3)
    np.testing.assert_allclose(by_conv.numpy(), by_patches.numpy(), rtol=1e-6, atol=1e-5)
    dv = tf.constant(rng.normal(size=by_conv.shape), tf.float32)
    grads = []
    for fn in (winograd._transformed_tiles, _tiles_by_patches, winograd._tiles_by_conv):
        with tf.GradientTape() as tape:
            tape.watch(x)
            v = fn(x)
        grads.append(tape.gradient(v, x, output_gradients=dv).numpy())
    # _transformed_tiles' own gradient (matmul + overlap-add) against extract_patches'
    # and the conv's gradients: the same sums in other orders.
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grads[0], grads[2], rtol=1e-5, atol=1e-4)


def test_gradients_equal_direct_gradients():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(2, 13, 10, 6)), tf.float32)
    k = tf.constant(rng.normal(size=(3, 3, 6, 4)), tf.float32)
    weights = tf.constant(rng.normal(size=(2, 13, 10, 4)), tf.float32)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            loss = tf.reduce_sum(fn(x, k) * weights)
        return tape.gradient(loss, [x, k])

    for got, want in zip(grads(winograd_conv3x3), grads(_direct)):
        assert _rel_err(got, want) < 1e-5


def _pair(channels=8, filters=6):
    """Two Conv3x3 layers with the same weights: Winograd on and off."""
    on = Conv3x3(filters, winograd=True, activation="relu", name="on")
    off = Conv3x3(filters, winograd=False, activation="relu", name="off")
    for layer in (on, off):
        layer.build((None, None, None, channels))
    off.set_weights(on.get_weights())
    return on, off


@pytest.fixture
def few_channels(monkeypatch):
    """Lets Winograd run on the few channels of these fast tests."""
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS", 8)


def test_layer_uses_winograd_on_large_maps_only(few_channels):
    on, off = _pair()
    rng = np.random.default_rng(3)
    big = tf.constant(rng.normal(size=(1, 64, 70, 8)), tf.float32)       # 4480 pixels
    small = tf.constant(rng.normal(size=(2, 40, 50, 8)), tf.float32)     # 2000 pixels
    got, want = on(big), off(big)
    assert 0 < _rel_err(got, want) < 1e-5          # computed differently, same result
    np.testing.assert_array_equal(on(small).numpy(), off(small).numpy())
    # Dynamic shapes (the inference function's [None, None] signature): tf.cond picks.
    fn = tf.function(on, input_signature=[tf.TensorSpec([None, None, None, 8], tf.float32)])
    assert _rel_err(fn(big), want) < 1e-5
    np.testing.assert_array_equal(fn(small).numpy(), off(small).numpy())


def test_layer_uses_the_direct_kernel_below_the_channel_threshold(few_channels):
    on, off = _pair(channels=7)
    x = tf.constant(np.random.default_rng(3).normal(size=(1, 64, 70, 7)), tf.float32)
    np.testing.assert_array_equal(on(x).numpy(), off(x).numpy())


def test_default_thresholds_are_the_measured_ones():
    # benchmarks/bench_winograd.py: 128 channels on 64x64 faster, 64 channels or 32x32
    # maps slower.
    assert winograd.MIN_WINOGRAD_AREA == 64 * 64 and winograd.MIN_WINOGRAD_CHANNELS == 128
    # bfloat16: 256 channels on 128x128 faster (forward + backward), 64x64 or 128 slower.
    assert winograd.MIN_WINOGRAD_AREA_BF16 == 128 * 128
    assert winograd.MIN_WINOGRAD_CHANNELS_BF16 == 256


def test_resnet_3x3_convs_by_winograd_keep_names_weights_and_outputs(monkeypatch):
    from mrcnn.backbone import resnet_graph
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_AREA", 1)

    def build(flag):
        inp = keras.Input((64, 64, 3))
        return keras.Model(inp, resnet_graph(inp, "resnet50", stage5=True, winograd=flag)[1:])

    keras.utils.set_random_seed(0)
    on, off = build(True), build(False)
    assert [w.path for w in on.weights] == [w.path for w in off.weights]
    off.set_weights(on.get_weights())
    wino = [layer.name for layer in on.layers if getattr(layer, "winograd", False)]
    # Every bottleneck's 3x3 (ResNet strides its 1x1 convs), nothing else.
    assert len(wino) == 16 and all(n.endswith("_branch2b") for n in wino)
    assert isinstance(off.get_layer("res4a_branch2b"), keras.layers.Conv2D)
    x = tf.constant(np.random.default_rng(5).normal(size=(1, 64, 64, 3)), tf.float32)
    got, want = on(x), off(x)
    for g, w in zip(got, want):
        assert 0 < _rel_err(g, w) < 1e-4


def test_layer_is_a_conv2d_for_weights_and_config():
    on, off = _pair()
    assert [w.shape for w in on.weights] == [(3, 3, 8, 6), (6,)]
    clone = Conv3x3.from_config(on.get_config())
    assert clone.winograd is True and clone.padding == "same"
    with pytest.raises(ValueError, match="strides"):
        Conv3x3(4, strides=2, name="bad")


def _bf16_pair(channels=8):
    on = Conv3x3(6, winograd=True, dtype="mixed_bfloat16", name="bf")
    off = Conv3x3(6, winograd=False, dtype="mixed_bfloat16", name="bf_off")
    on.build((None, None, None, channels))
    off.build((None, None, None, channels))
    off.set_weights(on.get_weights())
    return on, off


@pytest.fixture
def count_winograd(monkeypatch):
    """Counts winograd_conv3x3 calls (the layer's choice of algorithm)."""
    calls = []
    real = winograd.winograd_conv3x3

    def counting(x, kernel):
        calls.append((x.dtype, kernel.dtype))
        return real(x, kernel)
    monkeypatch.setattr(winograd, "winograd_conv3x3", counting)
    return calls


def test_bfloat16_compute_below_its_thresholds_takes_the_direct_kernel(count_winograd):
    # 64x64 maps with 8 channels: float32 would take Winograd with 8-channel thresholds,
    # bfloat16 (128x128, 256 channels by default) not.
    on, off = _bf16_pair()
    x = tf.random.stateless_normal((1, 64, 64, 8), seed=(1, 2))
    np.testing.assert_array_equal(on(x).numpy(), off(x).numpy())
    assert count_winograd == []


def test_bfloat16_compute_by_float32_winograd_above_its_thresholds(monkeypatch,
                                                                 count_winograd):
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_AREA_BF16", 64 * 64)
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS_BF16", 8)
    monkeypatch.setattr(winograd, "cpu_has_amx", lambda: False)
    on, off = _bf16_pair()
    x = tf.random.stateless_normal((1, 64, 70, 8), seed=(1, 2))
    got = on(x, training=True)
    assert got.dtype == tf.bfloat16
    assert count_winograd == [(tf.float32, tf.float32)]       # float32 maths inside
    # Reference: float32 direct conv of the bf16-rounded inputs and kernel; both ways
    # differ from it by the bf16 rounding of the output only (2^-8 relative).
    xb = tf.cast(tf.cast(x, tf.bfloat16), tf.float32)
    kb = tf.cast(tf.cast(on.kernel, tf.bfloat16), tf.float32)
    ref = tf.nn.conv2d(xb, kb, 1, "SAME") + tf.cast(tf.cast(on.bias, tf.bfloat16), tf.float32)
    assert _rel_err(tf.cast(got, tf.float32), ref) < 2 ** -7
    assert _rel_err(tf.cast(off(x), tf.float32), ref) < 2 ** -7
    # Smaller maps, fewer channels, or a CPU with AMX: the bf16 kernel.
    small = tf.random.stateless_normal((1, 40, 50, 8), seed=(3, 4))
    np.testing.assert_array_equal(on(small, training=True).numpy(), off(small).numpy())
    assert len(count_winograd) == 1
    monkeypatch.setattr(winograd, "cpu_has_amx", lambda: True)
    np.testing.assert_array_equal(on(x, training=True).numpy(), off(x).numpy())
    assert len(count_winograd) == 1


def test_bfloat16_forward_only_needs_many_filters_too(monkeypatch, count_winograd):
    """Without a gradient (training falsy) bf16 Winograd needs also
    MIN_WINOGRAD_FILTERS_BF16_FORWARD filters; with training=True it does not."""
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_AREA_BF16", 64 * 64)
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS_BF16", 8)
    monkeypatch.setattr(winograd, "cpu_has_amx", lambda: False)
    assert winograd.MIN_WINOGRAD_FILTERS_BF16_FORWARD == 512   # the measured rule
    on, off = _bf16_pair()                                        # 6 filters
    x = tf.random.stateless_normal((1, 64, 70, 8), seed=(1, 2))
    for training in (None, False):
        np.testing.assert_array_equal(on(x, training=training).numpy(), off(x).numpy())
    assert count_winograd == []
    on(x, training=True)
    assert len(count_winograd) == 1
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_FILTERS_BF16_FORWARD", 6)
    got = on(x, training=False)
    assert len(count_winograd) == 2
    assert _rel_err(tf.cast(got, tf.float32), tf.cast(off(x), tf.float32)) < 2 ** -6
    # A Keras model passes training down: inference-mode calls of a model take the rule.
    inp = keras.Input((None, None, 8))
    model = keras.Model(inp, on(inp))
    model(x, training=False)
    model(x, training=True)
    assert len(count_winograd) == 4
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_FILTERS_BF16_FORWARD", 512)
    model(x, training=False)
    assert len(count_winograd) == 4


def test_cpu_has_amx_reads_the_cpuinfo_flags(tmp_path):
    with_amx, without = tmp_path / "amx", tmp_path / "plain"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert winograd.cpu_has_amx(str(with_amx)) is True
    assert winograd.cpu_has_amx(str(without)) is False
    assert winograd.cpu_has_amx(str(tmp_path / "missing")) is False


def test_resolve_setting():
    assert resolve_winograd(True) is True and resolve_winograd(False) is False
    assert resolve_winograd("auto") == (not tf.config.list_logical_devices("GPU"))


def test_model_outputs_match_with_and_without_winograd(tmp_path, monkeypatch):
    from mrcnn import model as modellib
    from tiny_models import tiny_shapes_config_class

    def build(flag):
        class Big(tiny_shapes_config_class()):
            NAME = "wino"
            IMAGE_MIN_DIM = IMAGE_MAX_DIM = 256     # P2 is 64x64: Winograd's range
            IMAGES_PER_GPU = 1
            CONV3X3_WINOGRAD = flag
        keras.utils.set_random_seed(0)
        return modellib.MaskRCNN("inference", Big(), str(tmp_path))

    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS", 1)    # tiny pyramid
    on, off = build(True), build(False)
    off.keras_model.set_weights(on.keras_model.get_weights())
    assert on.keras_model.get_layer("fpn_p2").winograd
    assert on.keras_model.get_layer("rpn_model").get_layer("rpn_conv_shared").winograd
    # Off: the factory builds plain Keras convolutions.
    assert type(off.keras_model.get_layer("fpn_p2")) is keras.layers.Conv2D
    image = np.random.default_rng(4).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    names = ["rpn_class", "rpn_bbox"]
    got, want = on.run_graph([image], [(n, on.keras_model.get_layer(n).output) for n in names]), \
        off.run_graph([image], [(n, off.keras_model.get_layer(n).output) for n in names])
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-4)
    assert not np.array_equal(got["rpn_bbox"], want["rpn_bbox"])   # Winograd really ran


def test_saved_model_export_with_winograd_matches_detect(tmp_path, monkeypatch):
    # The serving export traces the same layers (tf.cond, custom gradient included).
    from mrcnn import model as modellib
    from tiny_models import small_resnet_config_class
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_WINOGRAD_AREA", 1)

    class Wino(small_resnet_config_class()):
        CONV3X3_WINOGRAD = True
        IMAGES_PER_GPU = 1

    keras.utils.set_random_seed(11)
    model = modellib.MaskRCNN("inference", Wino(), str(tmp_path / "logs"))
    assert model.keras_model.get_layer("res3a_branch2b").winograd
    image = np.random.default_rng(8).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    want = model.detect([image])[0]
    assert len(want["class_ids"]) > 0
    path = model.export(str(tmp_path / "serving" / "1"), masks="full")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    got = serve(images=tf.constant(image[None]))
    n = int(got["num_detections"][0])
    assert n == len(want["class_ids"])
    np.testing.assert_array_equal(got["class_ids"][0, :n].numpy(), want["class_ids"])
    np.testing.assert_allclose(got["scores"][0, :n].numpy(), want["scores"], atol=1e-4)
    np.testing.assert_allclose(got["boxes"][0, :n].numpy(), want["rois"], atol=1e-3)
