"""Backbones (ResNet-50/101, ResNeXt-101 32x4d) and the Feature Pyramid Network.

Layer names follow Matterport's Keras-2 Mask_RCNN (``conv1``, ``bn_conv1``,
``res2a_branch2a``, ``bn2a_branch2a``, ``res2a_branch1``, ..., ``fpn_c5p5``, ``fpn_p6``), so
its ``.h5`` weight files load by name. Every layer gets an explicit, deterministic name:
layers without weights use names derived from the block they sit in (``res2a_branch2a_relu``,
``res2a_add``, ``res2a_out``), which also lets :func:`backbone_layer_stage` map any backbone
layer to its ResNet stage.

Stages: 1 is the stem (``conv1`` .. ``pool1``), 2..5 are ``res2``..``res5``. The backbone
returns ``[C1, C2, C3, C4, C5]`` at strides 4, 4, 8, 16, 32 (C1 is taken after the stem
max-pool, as in Matterport); the FPN returns ``[P2, P3, P4, P5, P6]`` at strides
4, 8, 16, 32, 64.
"""

import numbers
import re

import keras
import tensorflow as tf
from keras import layers as KL

from mrcnn.winograd import conv2d, resolve_winograd

_RESNET_STAGE4_BLOCKS = {"resnet50": 5, "resnet101": 22, "resnext101": 22}
_ARCHITECTURES = tuple(_RESNET_STAGE4_BLOCKS)

# ResNeXt-101 32x4d (Xie et al. 2017, Table 1): cardinality 32, bottleneck width 4 per group
# in res2, doubling each stage; (bottleneck width, output width, blocks) per stage.
_RESNEXT_CARDINALITY = 32
_RESNEXT_STAGES = {2: (128, 256, 3), 3: (256, 512, 4), 4: (512, 1024, 23), 5: (1024, 2048, 3)}
_RESNET_STAGES = {2: (64, 256, 3), 3: (128, 512, 4), 4: (256, 1024, None), 5: (512, 2048, 3)}

_STEM_NAMES = ("conv1_pad", "conv1", "bn_conv1", "conv1_relu", "pool1")
_STAGE_NAME_RE = re.compile(r"^(?:res|bn)([2-5])[a-z]+_")


@keras.saving.register_keras_serializable(package="mrcnn")
class BatchNorm(KL.BatchNormalization):
    """Batch normalisation with a fixed-statistics switch (Matterport's ``BatchNorm``).

    ``train_bn=False``: ``call`` always normalises with the moving mean/variance and never
    updates them, whatever ``training`` says; gamma/beta remain trainable unless the layer
    itself is frozen (``trainable=False``). Small detection batches give noisy batch
    statistics, so this is the usual setting. ``train_bn=True``: the ordinary Keras
    behaviour (batch statistics when ``training`` is true).
    """

    def __init__(self, *args, train_bn=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_bn = bool(train_bn)

    def call(self, inputs, training=None, mask=None):
        if not self.train_bn:
            training = False
        if not (training and self.trainable) and self._fusable(inputs):
            return self._fixed_statistics(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fusable(self, inputs):
        axis = self.axis if isinstance(self.axis, int) else None
        return (len(inputs.shape) == 4 and axis in (-1, 3)
                and keras.backend.standardize_dtype(inputs.dtype)
                in ("float32", "bfloat16", "float16"))

    def _fixed_statistics(self, inputs):
        # One FusedBatchNormV3 op instead of Keras' mul/add chain (and, under mixed
        # precision, its casts to float32 and back): Grappler folds it, with the ReLU,
        # into the preceding Conv2D on oneDNN. Same arithmetic in float32 (statistics,
        # scale and offset stay float32 inside the op); differentiable in x, gamma, beta.
        stats = tf.cast(self.moving_mean, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones_like(stats)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros_like(stats)
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, mean=stats,
            variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon, is_training=False)
        return outputs

    def get_config(self):
        config = super().get_config()
        config["train_bn"] = self.train_bn
        return config


def backbone_layer_stage(layer_name):
    """ResNet stage (1 = stem, 2..5 = res2..res5) of a backbone layer name, else None.

    Works for the names this module gives (``conv1``, ``bn_conv1``, ``res4w_branch2c``,
    ``bn3a_branch1``, ``res2a_add``, ``res5c_out`` ...). FPN and head layers return None.
    Use it to keep frozen stages frozen when changing ``trainable`` by layer-name regex.
    """
    if layer_name in _STEM_NAMES:
        return 1
    m = _STAGE_NAME_RE.match(layer_name)
    return int(m.group(1)) if m else None


class _Builder(object):
    """Creates backbone layers, applying the freeze policy of their stage."""

    def __init__(self, train_bn, frozen_stages, winograd=False):
        self.train_bn = train_bn
        self.frozen_stages = frozen_stages
        self.winograd = winograd

    def _frozen(self, stage):
        return stage <= self.frozen_stages

    def apply(self, layer, stage, x):
        if self._frozen(stage):
            layer.trainable = False
        return layer(x)

    def conv(self, x, stage, filters, kernel, name, strides=1, padding="valid", groups=1,
             use_bias=True):
        layer = conv2d(filters, kernel, winograd=self.winograd, strides=strides,
                       padding=padding, groups=groups, use_bias=use_bias, name=name)
        return self.apply(layer, stage, x)

    def bn(self, x, stage, name):
        # Frozen stages: fixed statistics, on top of trainable=False.
        layer = BatchNorm(train_bn=self.train_bn and not self._frozen(stage), name=name)
        return self.apply(layer, stage, x)

    def relu(self, x, stage, name):
        return self.apply(KL.Activation("relu", name=name), stage, x)


def _bottleneck(b, x, stage, block, filters, strides, shortcut_conv, groups, stride_on_3x3,
                kernel_size=3, use_bias=True):
    """One bottleneck residual block with Matterport's names.

    filters = (1x1 width, kxk width, output width). ResNet (Matterport/Caffe) strides the
    first 1x1 conv; ResNeXt strides the grouped kxk conv (as in the ResNeXt paper).
    """
    f1, f2, out = filters
    conv = "res{}{}_branch".format(stage, block)
    bn = "bn{}{}_branch".format(stage, block)
    s1, s3 = (1, strides) if stride_on_3x3 else (strides, 1)

    y = b.conv(x, stage, f1, 1, conv + "2a", strides=s1, use_bias=use_bias)
    y = b.bn(y, stage, bn + "2a")
    y = b.relu(y, stage, conv + "2a_relu")
    y = b.conv(y, stage, f2, kernel_size, conv + "2b", strides=s3, padding="same",
               groups=groups, use_bias=use_bias)
    y = b.bn(y, stage, bn + "2b")
    y = b.relu(y, stage, conv + "2b_relu")
    y = b.conv(y, stage, out, 1, conv + "2c", use_bias=use_bias)
    y = b.bn(y, stage, bn + "2c")

    if shortcut_conv:
        shortcut = b.conv(x, stage, out, 1, conv + "1", strides=strides, use_bias=use_bias)
        shortcut = b.bn(shortcut, stage, bn + "1")
    else:
        shortcut = x
    y = b.apply(KL.Add(name="res{}{}_add".format(stage, block)), stage, [y, shortcut])
    return b.relu(y, stage, "res{}{}_out".format(stage, block))


def identity_block(input_tensor, kernel_size, filters, stage, block, use_bias=True,
                   train_bn=True):
    """Matterport's identity block: a bottleneck whose shortcut is the input itself.

    input_tensor: Keras tensor with filters[2] channels. kernel_size: the middle conv's.
    filters: (1x1, kxk, 1x1 output) widths. stage (int), block ('a', 'b', ...): make the
    layer names (res{stage}{block}_branch2a, bn{stage}{block}_branch2a, ...).
    """
    return _bottleneck(_Builder(bool(train_bn), 0), input_tensor, stage, block,
                       tuple(filters), 1, shortcut_conv=False, groups=1,
                       stride_on_3x3=False, kernel_size=kernel_size, use_bias=use_bias)


def conv_block(input_tensor, kernel_size, filters, stage, block, strides=(2, 2),
               use_bias=True, train_bn=True):
    """Matterport's conv block: a bottleneck with a strided 1x1 conv on the shortcut (and
    on its first conv). Arguments as identity_block; strides: int or (s, s)."""
    if not isinstance(strides, numbers.Integral):
        sy, sx = strides
        if sy != sx:
            raise ValueError("conv_block {}{}: strides must be square, got {!r}".format(
                stage, block, strides))
        strides = sy
    return _bottleneck(_Builder(bool(train_bn), 0), input_tensor, stage, block,
                       tuple(filters), int(strides), shortcut_conv=True, groups=1,
                       stride_on_3x3=False, kernel_size=kernel_size, use_bias=use_bias)


def _block_letters(count):
    """Block labels a, b, c, ... (Matterport's chr(97 + i)); res4 of R101 ends at 'w'."""
    return [chr(ord("a") + i) for i in range(count)]


def resnet_graph(input_image, architecture, stage5=False, train_bn=True, frozen_stages=0,
                 winograd=False):
    """Build a ResNet-50/101 or ResNeXt-101 (32x4d) backbone on a Keras tensor.

    input_image: Keras tensor [B, H, W, channels] (H, W divisible by 64 for the FPN).
    architecture: "resnet50", "resnet101" or "resnext101".
    stage5: build res5 (C5 is None otherwise; False by default, as Matterport's).
    train_bn: False keeps every batch-norm layer on its moving statistics.
    frozen_stages: 0..5; layers of stages 1 (stem) .. frozen_stages get trainable=False and
        their batch norm always runs in inference mode.
    winograd: the stride-1 3x3 convs by Winograd where it pays (mrcnn.winograd: at least
        128 channels on maps of at least 64x64: res3 from 512 px, res4 from 1024 px).

    Returns [C1, C2, C3, C4, C5], strides 4, 4, 8, 16, 32 (C1 after the stem max-pool).
    """
    if architecture not in _ARCHITECTURES:
        raise ValueError("resnet_graph: architecture {!r} is not one of {}".format(
            architecture, _ARCHITECTURES))
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, numbers.Integral) \
            or not 0 <= frozen_stages <= 5:
        raise ValueError("resnet_graph: frozen_stages must be an integer from 0 to 5, got "
                         "{!r}".format(frozen_stages))
    b = _Builder(bool(train_bn), int(frozen_stages), bool(winograd))

    # Stem: 7x7/2 conv on a 3-pixel zero pad, then 3x3/2 max-pool (Matterport's layout).
    x = b.apply(KL.ZeroPadding2D((3, 3), name="conv1_pad"), 1, input_image)
    x = b.conv(x, 1, 64, 7, "conv1", strides=2)
    x = b.bn(x, 1, "bn_conv1")
    x = b.relu(x, 1, "conv1_relu")
    C1 = x = b.apply(KL.MaxPooling2D((3, 3), strides=2, padding="same", name="pool1"), 1, x)

    if architecture == "resnext101":
        plan, groups, stride_on_3x3 = _RESNEXT_STAGES, _RESNEXT_CARDINALITY, True
    else:
        plan = dict(_RESNET_STAGES)
        plan[4] = (256, 1024, 1 + _RESNET_STAGE4_BLOCKS[architecture])
        groups, stride_on_3x3 = 1, False

    outputs = [C1]
    for stage in (2, 3, 4, 5):
        if stage == 5 and not stage5:
            outputs.append(None)
            break
        mid, out, count = plan[stage]
        for i, block in enumerate(_block_letters(count)):
            first = i == 0
            # res2 keeps the stem's resolution; later stages halve it in their first block.
            strides = (1 if stage == 2 else 2) if first else 1
            x = _bottleneck(b, x, stage, block, (mid, mid, out), strides, shortcut_conv=first,
                            groups=groups, stride_on_3x3=stride_on_3x3)
        outputs.append(x)
    return outputs


def build_fpn(C2, C3, C4, C5, pyramid_size, winograd=False):
    """Top-down Feature Pyramid Network with Matterport's layer names.

    C2..C5: backbone maps at strides 4, 8, 16, 32 (each level exactly 2x the next).
    pyramid_size: channels of every pyramid level (TOP_DOWN_PYRAMID_SIZE).
    winograd: compute the 3x3 output convs by Winograd on large maps (mrcnn.winograd).

    Returns [P2, P3, P4, P5, P6], each [B, h, w, pyramid_size], strides 4..64. P6 is a
    stride-2 subsampling of P5 (1x1 max-pool), used only by the RPN.
    """
    P5 = KL.Conv2D(pyramid_size, 1, name="fpn_c5p5")(C5)
    P4 = KL.Add(name="fpn_p4add")([
        KL.UpSampling2D(size=2, name="fpn_p5upsampled")(P5),
        KL.Conv2D(pyramid_size, 1, name="fpn_c4p4")(C4)])
    P3 = KL.Add(name="fpn_p3add")([
        KL.UpSampling2D(size=2, name="fpn_p4upsampled")(P4),
        KL.Conv2D(pyramid_size, 1, name="fpn_c3p3")(C3)])
    P2 = KL.Add(name="fpn_p2add")([
        KL.UpSampling2D(size=2, name="fpn_p3upsampled")(P3),
        KL.Conv2D(pyramid_size, 1, name="fpn_c2p2")(C2)])
    # 3x3 convs smooth the upsampling artefacts of the merged maps.
    P2 = conv2d(pyramid_size, 3, winograd, padding="same", name="fpn_p2")(P2)
    P3 = conv2d(pyramid_size, 3, winograd, padding="same", name="fpn_p3")(P3)
    P4 = conv2d(pyramid_size, 3, winograd, padding="same", name="fpn_p4")(P4)
    P5 = conv2d(pyramid_size, 3, winograd, padding="same", name="fpn_p5")(P5)
    P6 = KL.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(P5)
    return [P2, P3, P4, P5, P6]


def build_backbone(input_image, config):
    """Backbone + FPN for ``config``: returns [P2, P3, P4, P5, P6].

    config.BACKBONE: "resnet50", "resnet101", "resnext101", or a callable
    ``f(input_image, stage5=True, train_bn=...) -> [C1, C2, C3, C4, C5]``.
    Uses config.TRAIN_BN, config.BACKBONE_FROZEN_STAGES (built-in backbones only),
    config.TOP_DOWN_PYRAMID_SIZE and config.CONV3X3_WINOGRAD.
    """
    backbone = config.BACKBONE
    frozen = getattr(config, "BACKBONE_FROZEN_STAGES", 0)
    winograd = resolve_winograd(getattr(config, "CONV3X3_WINOGRAD", False))
    if callable(backbone):
        if frozen:
            raise ValueError(
                "BACKBONE_FROZEN_STAGES = {} is only supported for the built-in backbones "
                "{}; with a callable BACKBONE freeze layers inside the callable".format(
                    frozen, _ARCHITECTURES))
        features = backbone(input_image, stage5=True, train_bn=config.TRAIN_BN)
        if not isinstance(features, (list, tuple)) or len(features) != 5:
            raise ValueError("BACKBONE callable {!r} must return [C1, C2, C3, C4, C5], got "
                             "{!r}".format(backbone, features))
    elif isinstance(backbone, str) and backbone in _ARCHITECTURES:
        features = resnet_graph(input_image, backbone, stage5=True,
                                train_bn=config.TRAIN_BN, frozen_stages=frozen,
                                winograd=winograd)
    else:
        raise ValueError("BACKBONE = {!r}: must be one of {} or a callable f(input_image, "
                         "stage5=True, train_bn=...) returning [C1..C5]".format(
                             backbone, _ARCHITECTURES))
    _, C2, C3, C4, C5 = features
    return build_fpn(C2, C3, C4, C5, config.TOP_DOWN_PYRAMID_SIZE, winograd=winograd)
