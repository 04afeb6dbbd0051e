"""Configuration: every hyperparameter of Mask R-CNN and Cascade Mask R-CNN.

Subclass ``Config`` and override the uppercase class attributes, as with Matterport's
Mask_RCNN. Derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE, per-mode pre-NMS
limits) are computed in ``__init__`` and every value is validated there, so a bad
setting fails at construction with a message naming the attribute.
"""

import math
import numbers

import numpy as np

from mrcnn.preprocess import RESIZE_MODES, check_bit_depth, image_meta_size


class ConfigError(ValueError):
    """Raised when a Config attribute has an invalid value. The message names it."""


class Config(object):
    """Base configuration. Override the attributes in a subclass."""

    # Name of the configuration, used in log-directory and checkpoint names.
    NAME = None

    # Images per device and devices. BATCH_SIZE = IMAGES_PER_GPU * GPU_COUNT.
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2

    # Steps per epoch (training) and validation steps at the end of each epoch.
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50

    # "resnet50", "resnet101", "resnext101", or a callable
    # ``f(input_image, stage5=True, train_bn=False) -> [C1, C2, C3, C4, C5]``.
    BACKBONE = "resnet101"
    # Needed only with a callable BACKBONE: f(image_shape) -> [[h, w] per level].
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]
    # Backbone stages whose weights are frozen (0 = none, 1 = stem, 2 = stem+res2, ... 5 =
    # the whole ResNet). Frozen layers never train and their batch-norm statistics stay fixed.
    BACKBONE_FROZEN_STAGES = 0

    # Width of the fully connected layers of the box head.
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    # Box head: convolutions (3x3, BOX_HEAD_CONV_DIM channels) run before the FC layers,
    # then BOX_HEAD_NUM_FCS fully connected layers (Matterport: 0 convs, 2 FCs).
    BOX_HEAD_NUM_CONVS = 0
    BOX_HEAD_CONV_DIM = 256
    BOX_HEAD_NUM_FCS = 2

    # Channels of the FPN top-down pyramid.
    TOP_DOWN_PYRAMID_SIZE = 256

    # Number of classes including background.
    NUM_CLASSES = 1

    # RPN anchors: side length in pixels per pyramid level, width/height ratios, stride
    # in feature-map cells.
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE = 1
    # Anchor-to-GT IoU at or above which an anchor is positive / below which negative.
    RPN_POSITIVE_IOU = 0.7
    RPN_NEGATIVE_IOU = 0.3
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    # True: the RPN's anchor targets are computed in the training graph (TF ops, batched,
    # on the accelerator) from input_gt_boxes / input_gt_class_ids, and the input pipeline
    # carries no input_rpn_match / input_rpn_bbox. False: build_rpn_targets computes them
    # per image in the input pipeline and the graph takes them as inputs (Matterport).
    RPN_TARGETS_IN_GRAPH = True
    # Forked worker processes that load training images (decode, masks, resize, imgaug)
    # beside TensorFlow, so the input pipeline uses every core (mrcnn.workers). None: one
    # per core this process may use (os.sched_getaffinity), 0 with one core or where fork
    # is unavailable (Windows, macOS); 0: load in-process. Same batches either way.
    DATA_WORKERS = None
    # Channels of the RPN's shared 3x3 conv, run on every pyramid level: 512 as Matterport
    # (its weight files need it); 256 as detectron2 / Model Garden halves the RPN's cost,
    # a fifth of inference time at 1024 px.
    RPN_CONV_DIM = 512
    # Stride-1 3x3 convs (FPN outputs, RPN, ResNet bottlenecks) by Winograd F(4x4, 3x3)
    # (mrcnn.winograd) on maps of at least 64x64 with at least 128 input channels, in
    # float32: same weights and results (to float32 rounding), fewer multiplications. In
    # mixed bfloat16, on CPUs without AMX, from 128x128 maps and 256 channels (computed in
    # float32; in inference only convs with >= 512 filters). True / False / "auto" (on unless TensorFlow sees a GPU, where cuDNN
    # chooses its own algorithm). Measured on the 2-core CPU: see README Performance.
    CONV3X3_WINOGRAD = "auto"
    # Initial weights of the RPN's convs: None = Keras' Glorot-uniform (Matterport); a
    # number = normal with that std and zero biases (detectron2 / Model Garden: 0.01).
    # Only training from random weights sees it: with Glorot the first objectness logits
    # are large and, with Adam, the first updates can switch off every unit of the
    # RPN's ReLU conv for good (measured on DSB2018 nuclei from scratch).
    RPN_INIT_STD = None

    # ROIs kept after top-k (pre-NMS). PRE_NMS_LIMIT sets both modes unless
    # PRE_NMS_LIMIT_TRAINING / PRE_NMS_LIMIT_INFERENCE are set (not None).
    PRE_NMS_LIMIT = 6000
    PRE_NMS_LIMIT_TRAINING = None
    PRE_NMS_LIMIT_INFERENCE = None
    # ROIs kept after NMS.
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    # Instance masks are stored at MINI_MASK_SHAPE inside their box to save memory.
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    # "none", "square", "pad64" or "crop" (see mrcnn.preprocess.resize_image).
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])
    # How images wider than 8 bits (12/14/16-bit microscopy, int32) and floats become
    # uint8, in training and detect() alike (mrcnn.preprocess.image_to_uint8): "auto" =
    # by each image's effective bit depth (8, 10, 12, 14, 16 ...), warning when it
    # guesses; an int N = fixed N-bit data; "range" / "percentile" = per-image stretch.
    IMAGE_BIT_DEPTH = "auto"

    # ROIs sampled per image for the box/mask heads and the fraction that is positive.
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    # An ROI is positive for the heads at IoU >= ROI_POSITIVE_IOU with a GT box.
    ROI_POSITIVE_IOU = 0.5
    # Append the GT boxes to the RPN proposals before sampling head targets (detectron2's
    # PROPOSAL_APPEND_GT). Without it the heads see no positive ROI until the RPN has
    # learned, which stalls training from scratch. False reproduces Matterport.
    ROI_ADD_GT_AS_PROPOSALS = True

    # ROI-align output sizes and bilinear samples per bin side (1 = Matterport's single
    # sample per bin; 2 = average of 2x2 samples, as detectron2/mmdetection).
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    ROI_SAMPLING_RATIO = 1
    # Channels of the mask head's four 3x3 convolutions and its deconvolution (Matterport:
    # 256). Smaller is much faster: this head runs on every positive ROI.
    MASK_HEAD_CONV_DIM = 256
    # Output mask size (28 = MASK_POOL_SIZE * 2; 56 adds a second upsampling).
    MASK_SHAPE = [28, 28]

    MAX_GT_INSTANCES = 100

    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3

    # "sgd" (Matterport: SGD with momentum LEARNING_MOMENTUM) or "adam" (beta_1 =
    # LEARNING_MOMENTUM; converges faster from random weights, use LEARNING_RATE ~1e-3).
    OPTIMIZER = "sgd"
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    # Linear learning-rate warm-up over the first LEARNING_RATE_WARMUP_STEPS steps of each
    # train() call, from LEARNING_RATE_WARMUP_FACTOR x the rate (detectron2's WARMUP_ITERS
    # and WARMUP_FACTOR). 0 = none (Matterport). From random weights with Adam it keeps the
    # first large updates from switching off every unit of the RPN's ReLU conv.
    LEARNING_RATE_WARMUP_STEPS = 0
    LEARNING_RATE_WARMUP_FACTOR = 0.001

    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.,
        "rpn_bbox_loss": 1.,
        "mrcnn_class_loss": 1.,
        "mrcnn_bbox_loss": 1.,
        "mrcnn_mask_loss": 1.,
    }

    # Class imbalance. CLASS_LOSS_WEIGHTS: NUM_CLASSES weights (index 0 = background) of
    # the ROIs' cross-entropies in mrcnn_class_loss, which becomes their weighted mean
    # (sum w * ce / sum w): equal weights give the plain loss, so its scale stays
    # comparable. None: all 1 (Matterport).
    CLASS_LOSS_WEIGHTS = None
    # Repeat-factor sampling of training images (LVIS; detectron2's REPEAT_THRESHOLD): a
    # class present in a fraction f of the training images has r = max(1, sqrt(t / f));
    # an image is repeated, on average, max r of its classes times per pass. None: off.
    REPEAT_FACTOR_THRESHOLD = None

    # Train the heads on RPN proposals (True) or on ROIs given as input (False).
    USE_RPN_ROIS = True
    # Train batch-norm layers (False: frozen, the usual choice with small batches; None,
    # Matterport's "normal mode", is the same as True).
    TRAIN_BN = False
    # Momentum of the batch-norm moving statistics (Keras default 0.99). With TRAIN_BN
    # from random weights and short runs, 0.9 lets inference statistics keep up.
    BN_MOMENTUM = 0.99
    GRADIENT_CLIP_NORM = 5.0

    # Cascade Mask R-CNN. CASCADE=False is the plain model. Each stage has its own box
    # head, trained at its IoU threshold with its box std-devs and loss weight.
    CASCADE = False
    CASCADE_IOUS = (0.5, 0.6, 0.7)
    CASCADE_BBOX_STD_DEVS = ((0.1, 0.1, 0.2, 0.2),
                             (0.05, 0.05, 0.1, 0.1),
                             (0.033, 0.033, 0.067, 0.067))
    CASCADE_STAGE_WEIGHTS = (1.0, 0.5, 0.25)

    # Keras mixed-precision policy: None / "float32", "mixed_bfloat16", "mixed_float16".
    MIXED_PRECISION = None

    # Weights to start from: None (random), "imagenet", "coco", or a path to an .h5 file.
    # Used by the samples' command lines when --model is not given.
    INIT_WEIGHTS = None

    _RESIZE_MODES = RESIZE_MODES
    _BACKBONES = ("resnet50", "resnet101", "resnext101")
    _LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
                   "mrcnn_bbox_loss", "mrcnn_mask_loss")

    def __init__(self):
        """Compute derived attributes and validate every setting."""
        # Copy mutable class-level defaults so one instance never edits another's.
        if not isinstance(self.LOSS_WEIGHTS, dict):
            self._fail("LOSS_WEIGHTS", "must be a dict of loss name -> weight")
        self.LOSS_WEIGHTS = dict(self.LOSS_WEIGHTS)
        for attr in ("MEAN_PIXEL", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV"):
            try:
                value = np.array(getattr(self, attr), dtype=np.float64, copy=True)
            except (TypeError, ValueError):
                self._fail(attr, "must be a list of numbers")
            setattr(self, attr, value)
        if not isinstance(self.PRE_NMS_LIMIT, numbers.Integral) or self.PRE_NMS_LIMIT <= 0:
            self._fail("PRE_NMS_LIMIT", "must be an integer > 0")

        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        if self.TRAIN_BN is None:
            # Matterport: None = batch norm in its normal mode, trained with the model.
            self.TRAIN_BN = True
        if self.TRAIN_BN not in (True, False):     # 0 and 1 pass, as bools
            self._fail("TRAIN_BN", "must be True, False or None (= True, as Matterport)")
        self.TRAIN_BN = bool(self.TRAIN_BN)

        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = np.array([self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM,
                                         self.IMAGE_CHANNEL_COUNT])
        else:
            self.IMAGE_SHAPE = np.array([self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM,
                                         self.IMAGE_CHANNEL_COUNT])

        # The length of the image meta vector (mrcnn.preprocess.IMAGE_META_FIELDS).
        self.IMAGE_META_SIZE = image_meta_size(self.NUM_CLASSES)

        self.PRE_NMS_LIMIT_TRAINING = (self.PRE_NMS_LIMIT if self.PRE_NMS_LIMIT_TRAINING is None
                                       else self.PRE_NMS_LIMIT_TRAINING)
        self.PRE_NMS_LIMIT_INFERENCE = (self.PRE_NMS_LIMIT
                                        if self.PRE_NMS_LIMIT_INFERENCE is None
                                        else self.PRE_NMS_LIMIT_INFERENCE)

        self.validate()

    # ------------------------------------------------------------------ validation
    def _fail(self, attr, rule):
        value = getattr(self, attr, None)
        raise ConfigError("{}.{} = {!r}: {}".format(type(self).__name__, attr, value, rule))

    def _positive_int(self, attr, allow_zero=False):
        v = getattr(self, attr)
        ok = isinstance(v, numbers.Integral) and not isinstance(v, bool) and (
            v >= 0 if allow_zero else v > 0)
        if not ok:
            self._fail(attr, "must be an integer {} 0".format(">=" if allow_zero else ">"))

    def _optional_positive(self, attr):
        """attr must be None or a finite real number > 0 (not a bool)."""
        v = getattr(self, attr)
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or
                              not math.isfinite(v) or not v > 0):
            self._fail(attr, "must be a number > 0 or None")

    def _fraction(self, attr, low=0.0, high=1.0, low_open=False):
        v = getattr(self, attr)
        if not isinstance(v, numbers.Real) or not (low < v if low_open else low <= v) \
                or not v <= high:
            self._fail(attr, "must be a number in {}{}, {}]".format(
                "(" if low_open else "[", low, high))

    def _number_list(self, attr, length=None, positive=True, min_length=1):
        """attr must be a sequence of finite (positive) real numbers."""
        v = getattr(self, attr)
        rule = "must be a list of {}{} numbers".format(
            "{} ".format(length) if length else "", "positive" if positive else "finite")
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
            self._fail(attr, rule)
        if (length and len(v) != length) or len(v) < min_length:
            self._fail(attr, rule)
        for x in v:
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or \
                    not math.isfinite(x) or (positive and x <= 0):
                self._fail(attr, rule)

    def validate(self):
        """Check every attribute; raise ConfigError naming the first bad one."""
        # The order of the checks decides which attribute a config with several faults
        # is reported for; keep it when adding rules.
        self._validate_value_types()
        self._validate_backbone_and_anchors()
        self._validate_rpn_and_roi_limits()
        self._validate_image_sizes()
        self._validate_head_shapes()
        self._validate_loss_weights()
        self._validate_training()
        self._validate_cascade()
        self._validate_runtime()

    def _validate_value_types(self):
        """Number lists, optional positives and integer counts."""
        self._number_list("BACKBONE_STRIDES", length=5)
        self._number_list("RPN_ANCHOR_SCALES")
        self._number_list("RPN_ANCHOR_RATIOS")
        self._number_list("MASK_SHAPE", length=2)
        self._number_list("MINI_MASK_SHAPE", length=2)
        self._number_list("CASCADE_IOUS")
        self._number_list("CASCADE_STAGE_WEIGHTS", positive=False)
        self._number_list("MEAN_PIXEL", positive=False)
        self._optional_positive("GRADIENT_CLIP_NORM")
        self._optional_positive("RPN_INIT_STD")
        for attr in ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH", "NUM_CLASSES",
                     "TOP_DOWN_PYRAMID_SIZE", "FPN_CLASSIF_FC_LAYERS_SIZE",
                     "BOX_HEAD_CONV_DIM", "BOX_HEAD_NUM_FCS", "MASK_HEAD_CONV_DIM",
                     "RPN_ANCHOR_STRIDE", "RPN_CONV_DIM",
                     "RPN_TRAIN_ANCHORS_PER_IMAGE", "PRE_NMS_LIMIT_TRAINING",
                     "PRE_NMS_LIMIT_INFERENCE", "POST_NMS_ROIS_TRAINING",
                     "POST_NMS_ROIS_INFERENCE", "IMAGE_CHANNEL_COUNT",
                     "TRAIN_ROIS_PER_IMAGE", "POOL_SIZE", "MASK_POOL_SIZE",
                     "ROI_SAMPLING_RATIO", "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES"):
            self._positive_int(attr)
        for attr in ("VALIDATION_STEPS", "BOX_HEAD_NUM_CONVS", "IMAGE_MIN_DIM"):
            self._positive_int(attr, allow_zero=True)

    def _validate_backbone_and_anchors(self):
        """Backbone choice and frozen stages, pyramid strides, anchor scales and ratios."""
        if not (isinstance(self.BACKBONE, str) and self.BACKBONE in self._BACKBONES) \
                and not callable(self.BACKBONE):
            self._fail("BACKBONE", "must be one of {} or a callable".format(self._BACKBONES))
        if callable(self.BACKBONE) and self.COMPUTE_BACKBONE_SHAPE is not None \
                and not callable(self.COMPUTE_BACKBONE_SHAPE):
            self._fail("COMPUTE_BACKBONE_SHAPE", "must be a callable or None")
        if not isinstance(self.BACKBONE_FROZEN_STAGES, numbers.Integral) or \
                not 0 <= self.BACKBONE_FROZEN_STAGES <= 5:
            self._fail("BACKBONE_FROZEN_STAGES", "must be an integer from 0 to 5")
        if len(self.BACKBONE_STRIDES) != 5:
            self._fail("BACKBONE_STRIDES", "must list 5 strides (P2..P6)")
        if len(self.RPN_ANCHOR_SCALES) != len(self.BACKBONE_STRIDES):
            self._fail("RPN_ANCHOR_SCALES", "must have one scale per pyramid level "
                       "({} levels)".format(len(self.BACKBONE_STRIDES)))
        if len(self.RPN_ANCHOR_RATIOS) < 1 or any(r <= 0 for r in self.RPN_ANCHOR_RATIOS):
            self._fail("RPN_ANCHOR_RATIOS", "must be a non-empty list of positive ratios")

    def _validate_rpn_and_roi_limits(self):
        """IoU / NMS / confidence fractions and the proposal counts that must nest."""
        self._fraction("RPN_POSITIVE_IOU", low_open=True)
        self._fraction("RPN_NEGATIVE_IOU")
        if self.RPN_NEGATIVE_IOU > self.RPN_POSITIVE_IOU:
            self._fail("RPN_NEGATIVE_IOU", "must not exceed RPN_POSITIVE_IOU ({})".format(
                self.RPN_POSITIVE_IOU))
        self._fraction("RPN_NMS_THRESHOLD", low_open=True)
        self._fraction("ROI_POSITIVE_RATIO", low_open=True)
        self._fraction("ROI_POSITIVE_IOU", low_open=True)
        self._fraction("DETECTION_MIN_CONFIDENCE")
        self._fraction("DETECTION_NMS_THRESHOLD", low_open=True)

        if self.POST_NMS_ROIS_TRAINING > self.PRE_NMS_LIMIT_TRAINING:
            self._fail("POST_NMS_ROIS_TRAINING", "must not exceed PRE_NMS_LIMIT_TRAINING "
                       "({})".format(self.PRE_NMS_LIMIT_TRAINING))
        if self.POST_NMS_ROIS_INFERENCE > self.PRE_NMS_LIMIT_INFERENCE:
            self._fail("POST_NMS_ROIS_INFERENCE", "must not exceed PRE_NMS_LIMIT_INFERENCE "
                       "({})".format(self.PRE_NMS_LIMIT_INFERENCE))
        if self.USE_RPN_ROIS and self.TRAIN_ROIS_PER_IMAGE > self.POST_NMS_ROIS_TRAINING:
            self._fail("TRAIN_ROIS_PER_IMAGE", "must not exceed POST_NMS_ROIS_TRAINING "
                       "({})".format(self.POST_NMS_ROIS_TRAINING))

    def _validate_image_sizes(self):
        """Resize mode, the dimensions it needs, minimum scale and the mean pixel."""
        mode = self.IMAGE_RESIZE_MODE
        if mode not in self._RESIZE_MODES:
            self._fail("IMAGE_RESIZE_MODE", "must be one of {}".format(self._RESIZE_MODES))
        self._positive_int("IMAGE_MAX_DIM")
        if mode == "square" and self.IMAGE_MAX_DIM % 64:
            self._fail("IMAGE_MAX_DIM", "must be divisible by 64 in {!r} mode (five 2x "
                       "downsamplings), e.g. 256, 320, 512, 1024".format(mode))
        if mode == "crop" and self.IMAGE_MIN_DIM % 64:
            self._fail("IMAGE_MIN_DIM", "must be divisible by 64 in 'crop' mode")
        if mode == "square" and self.IMAGE_MIN_DIM and self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM:
            self._fail("IMAGE_MIN_DIM", "must not exceed IMAGE_MAX_DIM ({})".format(
                self.IMAGE_MAX_DIM))
        if not isinstance(self.IMAGE_MIN_SCALE, numbers.Real) or self.IMAGE_MIN_SCALE < 0:
            self._fail("IMAGE_MIN_SCALE", "must be a number >= 0")
        try:
            check_bit_depth(self.IMAGE_BIT_DEPTH)
        except ValueError as e:
            self._fail("IMAGE_BIT_DEPTH", str(e).split(" ", 1)[1])
        if self.MEAN_PIXEL.shape != (self.IMAGE_CHANNEL_COUNT,):
            self._fail("MEAN_PIXEL", "must have IMAGE_CHANNEL_COUNT ({}) values".format(
                self.IMAGE_CHANNEL_COUNT))

    def _validate_head_shapes(self):
        """Box std-devs, mini-mask shape and the mask shape the mask head can produce."""
        for attr in ("RPN_BBOX_STD_DEV", "BBOX_STD_DEV"):
            v = getattr(self, attr)
            if v.shape != (4,) or np.any(v <= 0):
                self._fail(attr, "must be 4 positive numbers")

        ms = tuple(self.MINI_MASK_SHAPE)
        if len(ms) != 2 or min(ms) <= 0:
            self._fail("MINI_MASK_SHAPE", "must be (height, width) > 0")
        mask_shape = tuple(self.MASK_SHAPE)
        allowed = [(self.MASK_POOL_SIZE * 2 ** k,) * 2 for k in (1, 2)]
        if mask_shape not in allowed:
            self._fail("MASK_SHAPE", "must be {} or {} (MASK_POOL_SIZE times 2 or 4)".format(
                list(allowed[0]), list(allowed[1])))

    def _validate_loss_weights(self):
        """Known loss names only; fills in 1.0 for every loss not given."""
        unknown = set(self.LOSS_WEIGHTS) - set(self._LOSS_NAMES)
        if unknown:
            self._fail("LOSS_WEIGHTS", "unknown loss name(s) {}; allowed: {}".format(
                sorted(unknown), list(self._LOSS_NAMES)))
        for name in self._LOSS_NAMES:
            self.LOSS_WEIGHTS.setdefault(name, 1.0)
            w = self.LOSS_WEIGHTS[name]
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or \
                    not math.isfinite(w) or w < 0:
                self._fail("LOSS_WEIGHTS", "weight of {} must be a finite number >= 0".format(
                    name))

    def _validate_training(self):
        """Optimizer, learning rate and its warm-up, weight decay, batch-norm momentum."""
        for attr in ("LEARNING_RATE", "LEARNING_MOMENTUM", "WEIGHT_DECAY"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or \
                    not math.isfinite(v) or v < 0:
                self._fail(attr, "must be a finite number >= 0")
        self._fraction("BN_MOMENTUM")
        self._positive_int("LEARNING_RATE_WARMUP_STEPS", allow_zero=True)
        self._fraction("LEARNING_RATE_WARMUP_FACTOR", low_open=True)
        if str(self.OPTIMIZER).lower() not in ("sgd", "adam"):
            self._fail("OPTIMIZER", "must be 'sgd' or 'adam'")
        if not isinstance(self.RPN_TARGETS_IN_GRAPH, (bool, np.bool_)):
            self._fail("RPN_TARGETS_IN_GRAPH", "must be True or False")
        if self.DATA_WORKERS is not None:
            self._positive_int("DATA_WORKERS", allow_zero=True)
        self._validate_class_balance()

    def _validate_class_balance(self):
        """CLASS_LOSS_WEIGHTS (stored as a tuple of floats) and REPEAT_FACTOR_THRESHOLD."""
        if self.CLASS_LOSS_WEIGHTS is not None:
            try:
                w = np.asarray(self.CLASS_LOSS_WEIGHTS, dtype=np.float64)
            except (TypeError, ValueError):
                w = None
            if w is None or w.shape != (self.NUM_CLASSES,) or \
                    not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
                self._fail("CLASS_LOSS_WEIGHTS", "must be NUM_CLASSES ({}) finite numbers "
                           ">= 0, background first, not all 0".format(self.NUM_CLASSES))
            self.CLASS_LOSS_WEIGHTS = tuple(float(v) for v in w)
        t = self.REPEAT_FACTOR_THRESHOLD
        if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Real) or
                              not 0 < t <= 1):
            self._fail("REPEAT_FACTOR_THRESHOLD", "must be None or a number in (0, 1]")

    def _validate_runtime(self):
        """Switches of how the graph runs: Winograd 3x3 convolutions, mixed precision."""
        if self.CONV3X3_WINOGRAD not in (True, False, "auto"):
            self._fail("CONV3X3_WINOGRAD", "must be True, False or 'auto'")

        if self.MIXED_PRECISION not in (None, "float32", "mixed_bfloat16", "mixed_float16"):
            self._fail("MIXED_PRECISION", "must be None, 'float32', 'mixed_bfloat16' or "
                       "'mixed_float16'")

    def _validate_cascade(self):
        ious = tuple(self.CASCADE_IOUS)
        if len(ious) < 1:
            self._fail("CASCADE_IOUS", "must list at least one IoU threshold")
        if any(not 0 < t < 1 for t in ious):
            self._fail("CASCADE_IOUS", "thresholds must lie in (0, 1)")
        if any(b <= a for a, b in zip(ious, ious[1:])):
            self._fail("CASCADE_IOUS", "thresholds must be strictly increasing")
        stds = np.asarray(self.CASCADE_BBOX_STD_DEVS, dtype=np.float64)
        if stds.ndim != 2 or stds.shape[1] != 4:
            self._fail("CASCADE_BBOX_STD_DEVS", "must be one list of 4 std-devs per stage")
        if stds.shape[0] != len(ious):
            self._fail("CASCADE_BBOX_STD_DEVS", "has {} entries but CASCADE_IOUS has {}".format(
                stds.shape[0], len(ious)))
        if np.any(stds <= 0):
            self._fail("CASCADE_BBOX_STD_DEVS", "std-devs must be > 0")
        weights = tuple(self.CASCADE_STAGE_WEIGHTS)
        if len(weights) != len(ious):
            self._fail("CASCADE_STAGE_WEIGHTS", "has {} entries but CASCADE_IOUS has {}".format(
                len(weights), len(ious)))
        if any((not isinstance(w, numbers.Real)) or w < 0 for w in weights):
            self._fail("CASCADE_STAGE_WEIGHTS", "stage weights must be numbers >= 0")

    # ------------------------------------------------------------------ helpers
    @property
    def NUM_STAGES(self):
        """Box-head stages: len(CASCADE_IOUS) with CASCADE, else 1."""
        return len(self.CASCADE_IOUS) if self.CASCADE else 1

    def stage_bbox_std_dev(self, stage):
        """Box std-devs of box-head stage ``stage`` (0-based) as a float32 array [4]."""
        if not self.CASCADE:
            return np.asarray(self.BBOX_STD_DEV, dtype=np.float32)
        return np.asarray(self.CASCADE_BBOX_STD_DEVS[stage], dtype=np.float32)

    def stage_positive_iou(self, stage):
        """Positive-ROI IoU threshold of box-head stage ``stage`` (0-based)."""
        return float(self.CASCADE_IOUS[stage]) if self.CASCADE else float(self.ROI_POSITIVE_IOU)

    def to_dict(self):
        """All uppercase attributes (class and instance) as a plain dict."""
        return {a: getattr(self, a) for a in sorted(dir(self))
                if a.isupper() and not a.startswith("_")}

    def display(self):
        """Print every attribute, as Matterport's Config.display does."""
        print("\nConfigurations:")
        for key, val in self.to_dict().items():
            print("{:30} {}".format(key, val))
        print("\n")


class CascadeConfig(Config):
    """Cascade Mask R-CNN: three box stages at IoU 0.5 / 0.6 / 0.7 (subclass this)."""
    CASCADE = True


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU feature flags listed in ``cpuinfo`` (Linux: x86 "flags", Arm "Features"
    lines), as a set of strings; empty when the file cannot be read (other systems)."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_supports_bfloat16(cpuinfo="/proc/cpuinfo"):
    """True when the CPU does bfloat16 maths natively, as listed in ``cpuinfo`` (Linux):
    x86 flags avx512_bf16 or amx_bf16, or the Arm feature bf16. False when the file
    cannot be read (other systems): without these, "mixed_bfloat16" is emulated and
    slower than float32 on a CPU."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16", "bf16"})


def apply_preset_r50_fpn(config_cls):
    """Return a subclass of ``config_cls`` with the settings practitioners start from.

    ResNet-50, RPN IoU 0.3/0.7, box head of 4 convs + 2 FCs, pre/post-NMS 4000/1000 in
    training and 2000/1000 at inference, poolers 7/14 with sampling ratio 2.
    """
    attrs = dict(
        BACKBONE="resnet50",
        RPN_POSITIVE_IOU=0.7, RPN_NEGATIVE_IOU=0.3,
        BOX_HEAD_NUM_CONVS=4, BOX_HEAD_NUM_FCS=2,
        PRE_NMS_LIMIT_TRAINING=4000, POST_NMS_ROIS_TRAINING=1000,
        PRE_NMS_LIMIT_INFERENCE=2000, POST_NMS_ROIS_INFERENCE=1000,
        POOL_SIZE=7, MASK_POOL_SIZE=14, ROI_SAMPLING_RATIO=2,
    )
    return type(config_cls.__name__ + "R50FPN", (config_cls,), attrs)


def _to_builtin(value):
    """numpy values -> plain Python (JSON-serialisable)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def config_values(config, names, layer_name):
    """Read ``names`` from a Config instance or a dict; error names the missing one."""
    if config is None:
        raise ValueError("{}: a config (Config instance or dict) is required".format(
            layer_name))
    values = {}
    for name in names:
        if isinstance(config, dict):
            if name not in config:
                raise ValueError("{}: config dict has no key {!r}".format(layer_name, name))
            value = config[name]
        else:
            if not hasattr(config, name):
                raise ValueError("{}: config has no attribute {}".format(layer_name, name))
            value = getattr(config, name)
        values[name] = _to_builtin(value)
    return values
