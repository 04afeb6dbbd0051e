"""Network heads: the RPN, the box head (classifier + regressor, one per cascade stage) and
the mask head, with Matterport's Keras-2 layer names so its ``.h5`` files load by name.

Matterport wraps every head layer in ``TimeDistributed`` over the ROI axis. Here the ROI
axis is folded into the batch once ([B, N, ...] -> [B*N, ...]), plain Conv2D/BatchNorm
layers run on that, and the result is unfolded. A Conv2D named ``mrcnn_class_conv1`` holds
exactly the kernel/bias shapes of Matterport's ``TimeDistributed(Conv2D)`` of that name, so
by-name loading is unaffected, and the graph avoids TimeDistributed's per-step overhead.

Mixed precision: layers compute in the global policy's dtype, except the layers whose
outputs feed losses or box maths (RPN logits/probs/deltas, class logits/probs, box deltas,
mask probabilities), which are float32.
"""

import numbers
from types import SimpleNamespace

import keras
from keras import layers as KL

from mrcnn.backbone import BatchNorm
from mrcnn.winograd import Conv3x3


@keras.saving.register_keras_serializable(package="mrcnn")
class FlattenRois(KL.Layer):
    """Fold the ROI axis into the batch: [B, N, *rest] -> [B*N, *rest].

    ``rest`` must be static. Does not cast (keeps the input dtype).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    def call(self, inputs):
        rest = tuple(inputs.shape[2:])
        if any(d is None for d in rest):
            raise ValueError("{}: trailing dimensions must be static, got shape {}".format(
                self.name, inputs.shape))
        return keras.ops.reshape(inputs, (-1,) + rest)

    def compute_output_shape(self, input_shape):
        b, n = input_shape[0], input_shape[1]
        bn = None if b is None or n is None else b * n
        return (bn,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="mrcnn")
class UnflattenRois(KL.Layer):
    """Undo :class:`FlattenRois`: inputs [x [B*N, *r], reference [B, N, ...]].

    Returns x reshaped to [B, N, *target_shape] (target_shape defaults to x's trailing
    shape ``r``; a different target with the same element count squeezes, e.g.
    [B*N, 1, 1, F] -> [B, N, F]). B and N are read from ``reference`` at run time.
    """

    def __init__(self, target_shape=None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.target_shape = None if target_shape is None else tuple(int(d) for d in
                                                                    target_shape)

    def _trailing(self, x_shape):
        return self.target_shape if self.target_shape is not None else tuple(x_shape[1:])

    def call(self, inputs):
        x, reference = inputs
        n = reference.shape[1]
        if n is None:
            n = keras.ops.shape(reference)[1]
        return keras.ops.reshape(x, (-1, n) + self._trailing(x.shape))

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (ref_shape[0], ref_shape[1]) + self._trailing(x_shape)

    def get_config(self):
        config = super().get_config()
        config["target_shape"] = self.target_shape
        return config


############################################################
#  Region Proposal Network
############################################################

def build_rpn_model(anchor_stride, anchors_per_location, depth, conv_dim=512, init_std=None,
                    winograd=False):
    """Keras model of the RPN, shared by all pyramid levels (Matterport's ``rpn_model``).

    anchor_stride: stride of anchor positions in feature-map cells (RPN_ANCHOR_STRIDE).
    anchors_per_location: anchors per position (len(RPN_ANCHOR_RATIOS)).
    depth: channels of the feature maps (TOP_DOWN_PYRAMID_SIZE).
    conv_dim: channels of the shared 3x3 conv (RPN_CONV_DIM; Matterport's weights: 512).
    init_std: None = Keras' default initialisers; a number = every conv kernel drawn from
        N(0, init_std) and zero biases (RPN_INIT_STD).
    winograd: the shared conv by Winograd on large maps (CONV3X3_WINOGRAD, mrcnn.winograd).

    Input "input_rpn_feature_map" [B, H, W, depth]; call it as ``rpn(P)``. Outputs, with
    A = ceil(H/stride) * ceil(W/stride) * anchors_per_location, anchors ordered (y, x, anchor):
        rpn_class_logits [B, A, 2] (bg, fg) before softmax, float32
        rpn_probs        [B, A, 2] softmax, float32
        rpn_bbox         [B, A, 4] (dy, dx, log(dh), log(dw)) std-scaled deltas, float32
    """
    feature_map = keras.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    outputs = rpn_graph(feature_map, anchors_per_location, anchor_stride, conv_dim=conv_dim,
                        init_std=init_std, winograd=winograd)
    # A single (non-list) input, so the model is called per level as rpn(P) without a
    # Keras input-structure warning.
    return keras.Model(feature_map, outputs, name="rpn_model")


def rpn_graph(feature_map, anchors_per_location, anchor_stride, conv_dim=512, init_std=None,
              winograd=False):
    """The RPN's layers on one feature map (Matterport's function; build_rpn_model wraps
    it in the shared ``rpn_model``). Arguments and outputs as build_rpn_model:
    [rpn_class_logits, rpn_probs, rpn_bbox]."""
    init = {} if init_std is None else dict(
        kernel_initializer=keras.initializers.RandomNormal(stddev=float(init_std)),
        bias_initializer="zeros")
    if anchor_stride == 1:
        shared = Conv3x3(int(conv_dim), activation="relu", winograd=winograd,
                         name="rpn_conv_shared", **init)(feature_map)
    else:
        shared = KL.Conv2D(int(conv_dim), 3, padding="same", activation="relu",
                           strides=anchor_stride, name="rpn_conv_shared", **init)(feature_map)
    x = KL.Conv2D(2 * anchors_per_location, 1, padding="valid", name="rpn_class_raw",
                  **init)(shared)
    rpn_class_logits = KL.Reshape((-1, 2), dtype="float32", name="rpn_class_raw_reshape")(x)
    rpn_probs = KL.Activation("softmax", dtype="float32", name="rpn_class_xxx")(
        rpn_class_logits)
    x = KL.Conv2D(4 * anchors_per_location, 1, padding="valid", name="rpn_bbox_pred",
                  **init)(shared)
    rpn_bbox = KL.Reshape((-1, 4), dtype="float32", name="rpn_bbox_pred_reshape")(x)
    return [rpn_class_logits, rpn_probs, rpn_bbox]


############################################################
#  Box head
############################################################

def _check_pooled(pooled, size, attr, head):
    shape = tuple(pooled.shape)
    if len(shape) != 5 or tuple(shape[2:4]) != (size, size) or shape[4] is None:
        raise ValueError("{}: pooled features must be [batch, rois, {s}, {s}, channels] with "
                         "{}={s}, got shape {}".format(head, attr, shape, s=size))


def box_head_graph(pooled, config, train_bn, stage=0):
    """Box head of one (cascade) stage on ROI-aligned features.

    pooled: [B, N, POOL_SIZE, POOL_SIZE, C] Keras tensor.
    config: uses POOL_SIZE, NUM_CLASSES, BOX_HEAD_NUM_CONVS, BOX_HEAD_CONV_DIM,
        BOX_HEAD_NUM_FCS, FPN_CLASSIF_FC_LAYERS_SIZE, CASCADE (True: class-agnostic boxes).
    train_bn: False keeps the batch-norm statistics fixed.
    stage: 0-based cascade stage; stage k > 0 suffixes every layer name with
        "_stage{k+1}" (mrcnn_class_conv1_stage2, ...), stage 0 uses Matterport's names.

    Layers: BOX_HEAD_NUM_CONVS x (3x3 conv mrcnn_box_conv{i}, mrcnn_box_bn{i}, ReLU), then
    BOX_HEAD_NUM_FCS fully connected layers as convs (mrcnn_class_conv1: POOL_SIZE kernel,
    valid; mrcnn_class_conv{i>1}: 1x1), each with mrcnn_class_bn{i} and ReLU.

    Returns (all float32):
        mrcnn_class_logits [B, N, NUM_CLASSES]
        mrcnn_probs        [B, N, NUM_CLASSES]
        mrcnn_bbox         [B, N, NUM_CLASSES or 1, 4] (dy, dx, log(dh), log(dw)) deltas,
                           std-scaled; one class-agnostic box when config.CASCADE.
    """
    if not isinstance(stage, numbers.Integral) or stage < 0:
        raise ValueError("box_head_graph: stage must be an integer >= 0, got {!r}".format(stage))
    sfx = "" if stage == 0 else "_stage{}".format(stage + 1)
    pool = config.POOL_SIZE
    fc_size = config.FPN_CLASSIF_FC_LAYERS_SIZE
    num_classes = config.NUM_CLASSES
    _check_pooled(pooled, pool, "POOL_SIZE", "box_head_graph")

    x = FlattenRois(name="mrcnn_box_flatten" + sfx)(pooled)
    for i in range(1, config.BOX_HEAD_NUM_CONVS + 1):
        x = KL.Conv2D(config.BOX_HEAD_CONV_DIM, 3, padding="same",
                      name="mrcnn_box_conv{}{}".format(i, sfx))(x)
        x = BatchNorm(train_bn=train_bn, name="mrcnn_box_bn{}{}".format(i, sfx))(x)
        x = KL.Activation("relu", name="mrcnn_box_relu{}{}".format(i, sfx))(x)
    for i in range(1, config.BOX_HEAD_NUM_FCS + 1):
        # The first FC sees the whole pool window; later ones are 1x1 on the 1x1 map.
        kernel = pool if i == 1 else 1
        x = KL.Conv2D(fc_size, kernel, padding="valid",
                      name="mrcnn_class_conv{}{}".format(i, sfx))(x)
        x = BatchNorm(train_bn=train_bn, name="mrcnn_class_bn{}{}".format(i, sfx))(x)
        x = KL.Activation("relu", name="mrcnn_class_relu{}{}".format(i, sfx))(x)
    # [B*N, 1, 1, F] -> [B, N, F]
    shared = UnflattenRois(target_shape=(fc_size,), name="pool_squeeze" + sfx)([x, pooled])

    mrcnn_class_logits = KL.Dense(num_classes, dtype="float32",
                                  name="mrcnn_class_logits" + sfx)(shared)
    mrcnn_probs = KL.Activation("softmax", dtype="float32",
                                name="mrcnn_class" + sfx)(mrcnn_class_logits)

    box_classes = 1 if config.CASCADE else num_classes
    x = KL.Dense(box_classes * 4, dtype="float32", name="mrcnn_bbox_fc" + sfx)(shared)
    mrcnn_bbox = KL.Reshape((-1, box_classes, 4), dtype="float32", name="mrcnn_bbox" + sfx)(x)
    return mrcnn_class_logits, mrcnn_probs, mrcnn_bbox


############################################################
#  Mask head
############################################################

def mask_head_graph(pooled, config, train_bn):
    """Mask head on ROI-aligned features.

    pooled: [B, N, MASK_POOL_SIZE, MASK_POOL_SIZE, C] Keras tensor.
    config: uses MASK_POOL_SIZE, MASK_SHAPE (2x or 4x MASK_POOL_SIZE), NUM_CLASSES.
    train_bn: False keeps the batch-norm statistics fixed.

    Layers: 4 x (3x3 conv mrcnn_mask_conv{i}, MASK_HEAD_CONV_DIM; mrcnn_mask_bn{i}; ReLU), then
    mrcnn_mask_deconv (2x2/2 transposed conv, ReLU), mrcnn_mask_deconv2 when MASK_SHAPE is
    4x MASK_POOL_SIZE, then mrcnn_mask (1x1 conv, NUM_CLASSES, sigmoid).

    Returns per-class mask probabilities [B, N, MASK_SHAPE[0], MASK_SHAPE[1], NUM_CLASSES],
    float32.
    """
    pool = config.MASK_POOL_SIZE
    _check_pooled(pooled, pool, "MASK_POOL_SIZE", "mask_head_graph")
    mask_shape = tuple(int(d) for d in config.MASK_SHAPE)
    if mask_shape == (2 * pool, 2 * pool):
        upsamplings = 1
    elif mask_shape == (4 * pool, 4 * pool):
        upsamplings = 2
    else:
        raise ValueError("MASK_SHAPE = {}: must be MASK_POOL_SIZE ({}) times 2 or 4".format(
            list(config.MASK_SHAPE), pool))

    dim = int(getattr(config, "MASK_HEAD_CONV_DIM", 256))
    x = FlattenRois(name="mrcnn_mask_flatten")(pooled)
    for i in range(1, 5):
        x = KL.Conv2D(dim, 3, padding="same",
                      name="mrcnn_mask_conv{}".format(i))(x)
        x = BatchNorm(train_bn=train_bn, name="mrcnn_mask_bn{}".format(i))(x)
        x = KL.Activation("relu", name="mrcnn_mask_relu{}".format(i))(x)
    for i in range(upsamplings):
        x = KL.Conv2DTranspose(dim, 2, strides=2, activation="relu",
                               name="mrcnn_mask_deconv" + ("" if i == 0 else str(i + 1)))(x)
    x = KL.Conv2D(config.NUM_CLASSES, 1, activation="sigmoid", dtype="float32",
                  name="mrcnn_mask")(x)
    return UnflattenRois(name="mrcnn_mask_unflatten")([x, pooled])


############################################################
#  Matterport-signature wrappers (ROI-align + head)
############################################################

def fpn_classifier_graph(rois, feature_maps, image_meta, pool_size, num_classes,
                         train_bn=True, fc_layers_size=1024):
    """Matterport's box head: PyramidROIAlign "roi_align_classifier" + 2-FC head.

    rois [B, N, 4] normalised; feature_maps [P2, P3, P4, P5]; image_meta [B, META].
    Returns (mrcnn_class_logits [B, N, C], mrcnn_probs [B, N, C], mrcnn_bbox [B, N, C, 4]).
    """
    from mrcnn.layers import PyramidROIAlign  # layers imports heavier TF code; defer it
    pooled = PyramidROIAlign([pool_size, pool_size], name="roi_align_classifier")(
        [rois, image_meta] + list(feature_maps))
    settings = SimpleNamespace(POOL_SIZE=pool_size, NUM_CLASSES=num_classes,
                               FPN_CLASSIF_FC_LAYERS_SIZE=fc_layers_size,
                               BOX_HEAD_NUM_CONVS=0, BOX_HEAD_CONV_DIM=256,
                               BOX_HEAD_NUM_FCS=2, CASCADE=False)
    return box_head_graph(pooled, settings, train_bn)


def build_fpn_mask_graph(rois, feature_maps, image_meta, pool_size, num_classes,
                         train_bn=True):
    """Matterport's mask head: PyramidROIAlign "roi_align_mask" + mask head (2x upsampling).

    Returns masks [B, N, 2*pool_size, 2*pool_size, num_classes].
    """
    from mrcnn.layers import PyramidROIAlign
    pooled = PyramidROIAlign([pool_size, pool_size], name="roi_align_mask")(
        [rois, image_meta] + list(feature_maps))
    settings = SimpleNamespace(MASK_POOL_SIZE=pool_size, MASK_SHAPE=[2 * pool_size] * 2,
                               NUM_CLASSES=num_classes)
    return mask_head_graph(pooled, settings, train_bn)
