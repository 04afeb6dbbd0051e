"""Tests of mrcnn.config: Matterport defaults, derived values, validation, presets."""
import numpy as np
import pytest

from mrcnn.config import CascadeConfig, Config, ConfigError, apply_preset_r50_fpn

# Every uppercase attribute of Config's class body with its expected default. The first
# block is Matterport's Config (values checked against matterport/Mask_RCNN); the second
# lists this project's additions, whose defaults reproduce Matterport's behaviour.
MATTERPORT_DEFAULTS = dict(
    NAME=None, GPU_COUNT=1, IMAGES_PER_GPU=2, STEPS_PER_EPOCH=1000, VALIDATION_STEPS=50,
    BACKBONE="resnet101", COMPUTE_BACKBONE_SHAPE=None, BACKBONE_STRIDES=[4, 8, 16, 32, 64],
    FPN_CLASSIF_FC_LAYERS_SIZE=1024, TOP_DOWN_PYRAMID_SIZE=256, NUM_CLASSES=1,
    RPN_ANCHOR_SCALES=(32, 64, 128, 256, 512), RPN_ANCHOR_RATIOS=[0.5, 1, 2],
    RPN_ANCHOR_STRIDE=1, RPN_NMS_THRESHOLD=0.7, RPN_TRAIN_ANCHORS_PER_IMAGE=256,
    PRE_NMS_LIMIT=6000, POST_NMS_ROIS_TRAINING=2000, POST_NMS_ROIS_INFERENCE=1000,
    USE_MINI_MASK=True, MINI_MASK_SHAPE=(56, 56), IMAGE_RESIZE_MODE="square",
    IMAGE_MIN_DIM=800, IMAGE_MAX_DIM=1024, IMAGE_MIN_SCALE=0, IMAGE_CHANNEL_COUNT=3,
    MEAN_PIXEL=np.array([123.7, 116.8, 103.9]), TRAIN_ROIS_PER_IMAGE=200,
    ROI_POSITIVE_RATIO=0.33, POOL_SIZE=7, MASK_POOL_SIZE=14, MASK_SHAPE=[28, 28],
    MAX_GT_INSTANCES=100, RPN_BBOX_STD_DEV=np.array([0.1, 0.1, 0.2, 0.2]),
    BBOX_STD_DEV=np.array([0.1, 0.1, 0.2, 0.2]), DETECTION_MAX_INSTANCES=100,
    DETECTION_MIN_CONFIDENCE=0.7, DETECTION_NMS_THRESHOLD=0.3, LEARNING_RATE=0.001,
    LEARNING_MOMENTUM=0.9, WEIGHT_DECAY=0.0001,
    LOSS_WEIGHTS={"rpn_class_loss": 1., "rpn_bbox_loss": 1., "mrcnn_class_loss": 1.,
                  "mrcnn_bbox_loss": 1., "mrcnn_mask_loss": 1.},
    USE_RPN_ROIS=True, TRAIN_BN=False, GRADIENT_CLIP_NORM=5.0,
)
EXTENSION_DEFAULTS = dict(
    BACKBONE_FROZEN_STAGES=0, BOX_HEAD_NUM_CONVS=0, BOX_HEAD_CONV_DIM=256, BOX_HEAD_NUM_FCS=2,
    RPN_POSITIVE_IOU=0.7, RPN_NEGATIVE_IOU=0.3,      # hard-coded 0.7 / 0.3 in Matterport
    RPN_TARGETS_IN_GRAPH=True,                       # Matterport's rules, in the graph
    DATA_WORKERS=None,                               # one worker process per core
    PRE_NMS_LIMIT_TRAINING=None, PRE_NMS_LIMIT_INFERENCE=None,
    ROI_POSITIVE_IOU=0.5,                            # hard-coded 0.5 in Matterport
    ROI_SAMPLING_RATIO=1, CASCADE=False, CASCADE_IOUS=(0.5, 0.6, 0.7),
    CASCADE_BBOX_STD_DEVS=((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1),
                           (0.033, 0.033, 0.067, 0.067)),
    CASCADE_STAGE_WEIGHTS=(1.0, 0.5, 0.25), MIXED_PRECISION=None, INIT_WEIGHTS=None,
    MASK_HEAD_CONV_DIM=256, ROI_ADD_GT_AS_PROPOSALS=True, OPTIMIZER="sgd", BN_MOMENTUM=0.99,
    RPN_CONV_DIM=512, CONV3X3_WINOGRAD="auto", RPN_INIT_STD=None, LEARNING_RATE_WARMUP_STEPS=0,
    LEARNING_RATE_WARMUP_FACTOR=0.001, CLASS_LOSS_WEIGHTS=None, REPEAT_FACTOR_THRESHOLD=None,
    IMAGE_BIT_DEPTH="auto",
)
# Set by __init__ from other attributes.
COMPUTED = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE", "PRE_NMS_LIMIT_TRAINING",
            "PRE_NMS_LIMIT_INFERENCE")


def make(base=Config, **attrs):
    """Instance of a throw-away subclass of ``base`` with ``attrs`` overridden."""
    return type("TestConfig", (base,), attrs)()


def assert_value(got, want, name):
    if isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        assert got == want, name
        assert type(got) is type(want), name


# ----------------------------------------------------------------------------- defaults
def test_class_body_lists_exactly_the_known_attributes():
    declared = {k for k, v in vars(Config).items()
                if k.isupper() and not k.startswith("_") and not isinstance(v, property)}
    assert declared == set(MATTERPORT_DEFAULTS) | set(EXTENSION_DEFAULTS)


@pytest.mark.parametrize("name", sorted(set(MATTERPORT_DEFAULTS) | set(EXTENSION_DEFAULTS)
                                        - set(COMPUTED)))
def test_default_value(name):
    want = {**MATTERPORT_DEFAULTS, **EXTENSION_DEFAULTS}[name]
    assert_value(getattr(Config, name), want, name)
    assert_value(getattr(Config(), name), want, name)


def test_default_derived_values():
    c = Config()
    assert c.BATCH_SIZE == 2
    np.testing.assert_array_equal(c.IMAGE_SHAPE, [1024, 1024, 3])
    assert c.IMAGE_META_SIZE == 13
    assert c.PRE_NMS_LIMIT_TRAINING == 6000 and c.PRE_NMS_LIMIT_INFERENCE == 6000
    assert c.NUM_STAGES == 1
    assert c.MEAN_PIXEL.dtype == np.float64 and c.BBOX_STD_DEV.dtype == np.float64


# ----------------------------------------------------------------------------- computed
def test_batch_size_is_images_per_gpu_times_gpu_count():
    assert make(IMAGES_PER_GPU=3, GPU_COUNT=2).BATCH_SIZE == 6
    assert make(IMAGES_PER_GPU=1, GPU_COUNT=1).BATCH_SIZE == 1


def test_image_shape_square_crop_and_channels():
    np.testing.assert_array_equal(
        make(IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=320).IMAGE_SHAPE, [320, 320, 3])
    # crop: IMAGE_MIN_DIM x IMAGE_MIN_DIM (Matterport), whatever IMAGE_MAX_DIM is.
    np.testing.assert_array_equal(
        make(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=512, IMAGE_MAX_DIM=1024).IMAGE_SHAPE,
        [512, 512, 3])
    np.testing.assert_array_equal(
        make(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=256).IMAGE_SHAPE,
        [256, 256, 3])
    rgbd = make(IMAGE_CHANNEL_COUNT=4, MEAN_PIXEL=np.array([1., 2., 3., 4.]),
                IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    np.testing.assert_array_equal(rgbd.IMAGE_SHAPE, [128, 128, 4])


@pytest.mark.parametrize("num_classes, size", [(1, 13), (2, 14), (81, 93)])
def test_image_meta_size(num_classes, size):
    # 1 id + 3 original shape + 3 image shape + 4 window + 1 scale + NUM_CLASSES.
    assert make(NUM_CLASSES=num_classes).IMAGE_META_SIZE == size == 12 + num_classes


def test_pre_nms_limit_sets_both_modes():
    c = make(PRE_NMS_LIMIT=3000)
    assert (c.PRE_NMS_LIMIT_TRAINING, c.PRE_NMS_LIMIT_INFERENCE) == (3000, 3000)


def test_pre_nms_limit_per_mode_overrides():
    c = make(PRE_NMS_LIMIT_INFERENCE=1500)
    assert (c.PRE_NMS_LIMIT_TRAINING, c.PRE_NMS_LIMIT_INFERENCE) == (6000, 1500)
    c = make(PRE_NMS_LIMIT=5000, PRE_NMS_LIMIT_TRAINING=2500)
    assert (c.PRE_NMS_LIMIT_TRAINING, c.PRE_NMS_LIMIT_INFERENCE) == (2500, 5000)
    c = make(PRE_NMS_LIMIT_TRAINING=4000, PRE_NMS_LIMIT_INFERENCE=1000)
    assert (c.PRE_NMS_LIMIT_TRAINING, c.PRE_NMS_LIMIT_INFERENCE) == (4000, 1000)
    # The class attributes stay None: the resolution belongs to the instance.
    assert Config.PRE_NMS_LIMIT_TRAINING is None and Config.PRE_NMS_LIMIT_INFERENCE is None


# ----------------------------------------------------------------------------- validation
BAD = [
    # (overrides, attribute the message must name)
    (dict(IMAGE_MAX_DIM=1000), "IMAGE_MAX_DIM"),
    (dict(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=500), "IMAGE_MIN_DIM"),
    (dict(IMAGE_MIN_DIM=2048), "IMAGE_MIN_DIM"),
    (dict(IMAGE_RESIZE_MODE="stretch"), "IMAGE_RESIZE_MODE"),
    (dict(BACKBONE="resnet18"), "BACKBONE"),
    (dict(BACKBONE=None), "BACKBONE"),
    (dict(LOSS_WEIGHTS={"rpn_class_loss": -1.0}), "LOSS_WEIGHTS"),
    (dict(LOSS_WEIGHTS={"mrcnn_mask_loss": float("nan")}), "LOSS_WEIGHTS"),
    (dict(LOSS_WEIGHTS={"mask_loss": 1.0}), "LOSS_WEIGHTS"),
    (dict(RPN_NEGATIVE_IOU=0.8), "RPN_NEGATIVE_IOU"),
    (dict(RPN_POSITIVE_IOU=1.5), "RPN_POSITIVE_IOU"),
    (dict(TRAIN_ROIS_PER_IMAGE=2500), "TRAIN_ROIS_PER_IMAGE"),
    (dict(POST_NMS_ROIS_TRAINING=7000), "POST_NMS_ROIS_TRAINING"),
    (dict(PRE_NMS_LIMIT_INFERENCE=500), "POST_NMS_ROIS_INFERENCE"),
    (dict(MASK_SHAPE=[32, 32]), "MASK_SHAPE"),
    (dict(MASK_SHAPE=[28, 56]), "MASK_SHAPE"),
    (dict(MASK_SHAPE=[28, 28, 1]), "MASK_SHAPE"),
    (dict(MASK_POOL_SIZE=7, MASK_SHAPE=[56, 56]), "MASK_SHAPE"),
    (dict(MINI_MASK_SHAPE=(0, 56)), "MINI_MASK_SHAPE"),
    (dict(CASCADE_IOUS=(0.5, 0.7, 0.6)), "CASCADE_IOUS"),
    (dict(CASCADE_IOUS=(0.5, 0.5, 0.7)), "CASCADE_IOUS"),
    (dict(CASCADE_IOUS=(0.5, 0.6, 1.0)), "CASCADE_IOUS"),
    (dict(CASCADE_BBOX_STD_DEVS=((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1))),
     "CASCADE_BBOX_STD_DEVS"),
    (dict(CASCADE_BBOX_STD_DEVS=((0.1, 0.1, 0.2),) * 3), "CASCADE_BBOX_STD_DEVS"),
    (dict(CASCADE_STAGE_WEIGHTS=(1.0, -0.5, 0.25)), "CASCADE_STAGE_WEIGHTS"),
    (dict(CASCADE_STAGE_WEIGHTS=(1.0, 0.5)), "CASCADE_STAGE_WEIGHTS"),
    (dict(GPU_COUNT=0), "GPU_COUNT"),
    (dict(IMAGES_PER_GPU=2.0), "IMAGES_PER_GPU"),
    (dict(NUM_CLASSES=True), "NUM_CLASSES"),
    (dict(MEAN_PIXEL=np.array([1.0, 2.0])), "MEAN_PIXEL"),
    (dict(BBOX_STD_DEV=np.array([0.1, 0.1, 0.0, 0.2])), "BBOX_STD_DEV"),
    (dict(BACKBONE_FROZEN_STAGES=6), "BACKBONE_FROZEN_STAGES"),
    (dict(RPN_ANCHOR_SCALES=(32, 64, 128)), "RPN_ANCHOR_SCALES"),
    (dict(GRADIENT_CLIP_NORM=0.0), "GRADIENT_CLIP_NORM"),
    (dict(MIXED_PRECISION="bfloat16"), "MIXED_PRECISION"),
    (dict(RPN_INIT_STD=0.0), "RPN_INIT_STD"),
    (dict(CONV3X3_WINOGRAD="yes"), "CONV3X3_WINOGRAD"),
    (dict(RPN_INIT_STD="0.01"), "RPN_INIT_STD"),
    (dict(LEARNING_RATE_WARMUP_STEPS=-5), "LEARNING_RATE_WARMUP_STEPS"),
    (dict(TRAIN_BN="yes"), "TRAIN_BN"),
]


@pytest.mark.parametrize("attrs, attr", BAD, ids=["{}-{}".format(a, i) for i, (_, a)
                                                  in enumerate(BAD)])
def test_bad_value_raises_config_error_naming_attribute(attrs, attr):
    with pytest.raises(ConfigError) as err:
        make(**attrs)
    msg = str(err.value)
    assert "TestConfig.{} =".format(attr) in msg, msg
    assert isinstance(err.value, ValueError)


def test_train_bn_none_is_matterports_normal_mode():
    assert make(TRAIN_BN=None).TRAIN_BN is True
    assert make(TRAIN_BN=0).TRAIN_BN is False and make().TRAIN_BN is False


def test_loss_weight_messages_name_the_loss():
    with pytest.raises(ConfigError, match="rpn_bbox_loss"):
        make(LOSS_WEIGHTS={"rpn_bbox_loss": -0.1})
    with pytest.raises(ConfigError, match="mask_loss"):
        make(LOSS_WEIGHTS={"mask_loss": 1.0})


def test_cascade_rules_apply_to_cascade_config_too():
    with pytest.raises(ConfigError, match="CASCADE_IOUS"):
        make(CascadeConfig, CASCADE_IOUS=(0.6, 0.5, 0.7))


@pytest.mark.parametrize("attrs", [
    dict(RPN_NEGATIVE_IOU=0.7),                                 # equal is allowed
    dict(USE_RPN_ROIS=False, TRAIN_ROIS_PER_IMAGE=2500),        # rule only with RPN ROIs
    dict(IMAGE_RESIZE_MODE="none", IMAGE_MAX_DIM=1000),         # no /64 rule without resize
    dict(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=512, IMAGE_MAX_DIM=1000),
    dict(MASK_SHAPE=[56, 56]),                                  # 14 * 4
    dict(MASK_SHAPE=(28, 28)),
    dict(LOSS_WEIGHTS={"mrcnn_mask_loss": 0.0}),
    dict(BACKBONE=lambda image, stage5=True, train_bn=False: None,
         COMPUTE_BACKBONE_SHAPE=lambda shape: [[1, 1]] * 5),
    dict(CASCADE_IOUS=(0.5, 0.6), CASCADE_BBOX_STD_DEVS=((0.1, 0.1, 0.2, 0.2),) * 2,
         CASCADE_STAGE_WEIGHTS=(1.0, 0.0)),
    dict(GRADIENT_CLIP_NORM=None),
    dict(NUM_CLASSES=np.int64(3)),
])
def test_valid_edge_values_pass(attrs):
    make(**attrs)


@pytest.mark.parametrize("attrs", [dict(GRADIENT_CLIP_NORM="5"), dict(MASK_SHAPE=28),
                                   dict(CASCADE_IOUS=0.5), dict(LOSS_WEIGHTS=None),
                                   dict(MINI_MASK_SHAPE=56), dict(BACKBONE_STRIDES=4),
                                   dict(RPN_ANCHOR_RATIOS=["a"]), dict(PRE_NMS_LIMIT=None),
                                   dict(LEARNING_RATE=float("nan")),
                                   dict(RPN_ANCHOR_SCALES=(0, 16, 32, 64, 128))])
def test_wrong_types_raise_config_error(attrs):
    with pytest.raises(ConfigError, match=list(attrs)[0]):
        make(**attrs)


# ----------------------------------------------------------------------------- sharing
def test_instances_do_not_share_loss_weights():
    a, b = Config(), Config()
    assert a.LOSS_WEIGHTS is not b.LOSS_WEIGHTS
    assert a.LOSS_WEIGHTS is not Config.LOSS_WEIGHTS
    a.LOSS_WEIGHTS["mrcnn_mask_loss"] = 5.0
    assert b.LOSS_WEIGHTS["mrcnn_mask_loss"] == 1.0
    assert Config.LOSS_WEIGHTS["mrcnn_mask_loss"] == 1.0
    assert Config().LOSS_WEIGHTS["mrcnn_mask_loss"] == 1.0


def test_partial_loss_weights_completed_without_touching_the_class():
    cls = type("Partial", (Config,), {"LOSS_WEIGHTS": {"mrcnn_mask_loss": 2.0}})
    c = cls()
    assert c.LOSS_WEIGHTS == {"rpn_class_loss": 1.0, "rpn_bbox_loss": 1.0,
                              "mrcnn_class_loss": 1.0, "mrcnn_bbox_loss": 1.0,
                              "mrcnn_mask_loss": 2.0}
    assert cls.LOSS_WEIGHTS == {"mrcnn_mask_loss": 2.0}


def test_instances_do_not_share_arrays():
    saved = {k: getattr(Config, k).copy() for k in ("MEAN_PIXEL", "BBOX_STD_DEV",
                                                      "RPN_BBOX_STD_DEV")}
    try:
        c = Config()
        c.MEAN_PIXEL[0] = 0.0
        c.BBOX_STD_DEV[0] = 9.0
        assert Config.MEAN_PIXEL[0] == 123.7 and Config.BBOX_STD_DEV[0] == 0.1
    finally:
        # Undo any leak into the class so later tests see Matterport's defaults.
        for k, v in saved.items():
            getattr(Config, k)[...] = v


# ----------------------------------------------------------------------------- output
def test_display_prints_every_attribute(capsys):
    c = make(NAME="shapes", NUM_CLASSES=4)
    c.display()
    out = capsys.readouterr().out
    assert "Configurations:" in out
    lines = out.splitlines()
    for key, val in c.to_dict().items():
        assert "{:30} {}".format(key, val) in lines, key
    assert "{:30} {}".format("IMAGE_META_SIZE", 16) in lines
    assert "{:30} {}".format("NAME", "shapes") in lines


def test_to_dict_contains_computed_attributes():
    c = make(IMAGES_PER_GPU=4, NUM_CLASSES=3, PRE_NMS_LIMIT_INFERENCE=1200)
    d = c.to_dict()
    assert d["BATCH_SIZE"] == 4 and d["IMAGE_META_SIZE"] == 15
    np.testing.assert_array_equal(d["IMAGE_SHAPE"], [1024, 1024, 3])
    assert d["PRE_NMS_LIMIT_TRAINING"] == 6000 and d["PRE_NMS_LIMIT_INFERENCE"] == 1200
    assert d["NUM_STAGES"] == 1
    assert set(MATTERPORT_DEFAULTS) | set(EXTENSION_DEFAULTS) | set(COMPUTED) <= set(d)
    assert all(k.isupper() and not k.startswith("_") for k in d)
    assert list(d) == sorted(d)


# ----------------------------------------------------------------------------- cascade
def test_cascade_config_stages():
    c = CascadeConfig()
    assert c.CASCADE is True and c.NUM_STAGES == 3
    np.testing.assert_array_equal(c.stage_bbox_std_dev(0), np.float32([0.1, 0.1, 0.2, 0.2]))
    np.testing.assert_array_equal(c.stage_bbox_std_dev(1),
                                  np.float32([0.05, 0.05, 0.1, 0.1]))
    np.testing.assert_array_equal(c.stage_bbox_std_dev(2),
                                  np.float32([0.033, 0.033, 0.067, 0.067]))
    assert c.stage_bbox_std_dev(2).dtype == np.float32
    assert [c.stage_positive_iou(s) for s in range(3)] == [0.5, 0.6, 0.7]
    assert c.to_dict()["NUM_STAGES"] == 3


def test_plain_config_single_stage_uses_bbox_std_dev_and_roi_iou():
    c = make(BBOX_STD_DEV=np.array([0.2, 0.2, 0.4, 0.4]), ROI_POSITIVE_IOU=0.55)
    assert c.NUM_STAGES == 1
    np.testing.assert_array_equal(c.stage_bbox_std_dev(0), np.float32([0.2, 0.2, 0.4, 0.4]))
    assert c.stage_positive_iou(0) == 0.55


def test_two_stage_cascade_subclass():
    c = make(CascadeConfig, CASCADE_IOUS=(0.5, 0.65),
             CASCADE_BBOX_STD_DEVS=((0.1, 0.1, 0.2, 0.2), (0.06, 0.06, 0.12, 0.12)),
             CASCADE_STAGE_WEIGHTS=(1.0, 0.5))
    assert c.NUM_STAGES == 2 and c.stage_positive_iou(1) == 0.65
    np.testing.assert_allclose(c.stage_bbox_std_dev(1), [0.06, 0.06, 0.12, 0.12], rtol=1e-7)


# ----------------------------------------------------------------------------- presets
PRESET = dict(BACKBONE="resnet50", RPN_POSITIVE_IOU=0.7, RPN_NEGATIVE_IOU=0.3,
              BOX_HEAD_NUM_CONVS=4, BOX_HEAD_NUM_FCS=2, PRE_NMS_LIMIT_TRAINING=4000,
              POST_NMS_ROIS_TRAINING=1000, PRE_NMS_LIMIT_INFERENCE=2000,
              POST_NMS_ROIS_INFERENCE=1000, POOL_SIZE=7, MASK_POOL_SIZE=14,
              ROI_SAMPLING_RATIO=2)


def test_apply_preset_r50_fpn_values():
    class Shapes(Config):
        NAME = "shapes"
        NUM_CLASSES = 4
        IMAGE_MIN_DIM = 128
        IMAGE_MAX_DIM = 128

    cls = apply_preset_r50_fpn(Shapes)
    assert cls.__name__ == "ShapesR50FPN" and issubclass(cls, Shapes)
    c = cls()
    for k, v in PRESET.items():
        assert getattr(c, k) == v, k
    # The base settings survive, the base class is untouched.
    assert c.NAME == "shapes" and c.NUM_CLASSES == 4 and c.IMAGE_MAX_DIM == 128
    assert Shapes.BACKBONE == "resnet101" and Shapes().PRE_NMS_LIMIT_TRAINING == 6000
    assert c.TRAIN_ROIS_PER_IMAGE <= c.POST_NMS_ROIS_TRAINING


def test_apply_preset_to_cascade_keeps_cascade():
    c = apply_preset_r50_fpn(CascadeConfig)()
    assert c.CASCADE is True and c.NUM_STAGES == 3
    assert c.BACKBONE == "resnet50" and c.ROI_SAMPLING_RATIO == 2


@pytest.mark.parametrize("text, expected", [
    ("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse amx_tile amx_bf16\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n", False),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),   # Arm
    ("processor\t: 0\nFeatures\t: fp asimd\nmodel name\t: bf16 lookalike\n", False),
])
def test_cpu_supports_bfloat16_reads_the_flags(tmp_path, text, expected):
    from mrcnn.config import cpu_supports_bfloat16
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_supports_bfloat16(str(path)) is expected
    assert cpu_supports_bfloat16(str(tmp_path / "missing")) is False

