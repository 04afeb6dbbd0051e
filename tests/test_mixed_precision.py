"""Mixed precision (Config.MIXED_PRECISION): bfloat16 inference with float32 weights gives
detections that overlap the float32 model's; boxes, anchors, proposals, detection
targets and losses stay float32. Keras's policy is global: every test here leaves it at
float32."""
import keras
import numpy as np
import pytest

from mrcnn import utils

from tiny_models import small_resnet_config_class  # noqa: E402


class MPConfig(small_resnet_config_class()):
    NAME = "mp_test"
    IMAGES_PER_GPU = 1


def cfg(**overrides):
    return type("C", (MPConfig,), overrides)()


@pytest.fixture(autouse=True)
def float32_after():
    yield
    keras.mixed_precision.set_global_policy("float32")


def scene(seed, size=64):
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, size - 12, 2)
        s = int(rng.integers(8, 24))
        img[y:y + s, x:x + s] = rng.integers(0, 256, 3)
    return img


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(float32 model, bfloat16 model with the same weights)."""
    from mrcnn.model import MaskRCNN
    path = str(tmp_path_factory.mktemp("mp") / "w.h5")
    try:
        keras.utils.set_random_seed(1)
        m32 = MaskRCNN("inference", cfg(), model_dir=str(tmp_path_factory.mktemp("logs")))
        m32.save_weights(path)
        mbf = MaskRCNN("inference", cfg(MIXED_PRECISION="mixed_bfloat16"),
                       model_dir=str(tmp_path_factory.mktemp("logs")))
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        report = mbf.load_weights(path, verbose=0)
        assert not report.skipped_shape_mismatch and len(report.loaded) > 50
    finally:
        # Layers keep the policy they were built with; later models get float32.
        keras.mixed_precision.set_global_policy("float32")
    return m32, mbf


def test_policy_set_per_model_and_reset():
    from mrcnn.distribute import set_precision_policy
    set_precision_policy(cfg(MIXED_PRECISION="mixed_bfloat16"))
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    set_precision_policy(cfg())                        # None -> float32 again
    assert keras.mixed_precision.global_policy().name == "float32"
    set_precision_policy(cfg(MIXED_PRECISION="float32"))
    assert keras.mixed_precision.global_policy().name == "float32"


def test_mixed_float16_gets_loss_scaling():
    from mrcnn.training import make_optimizer
    opt = make_optimizer(cfg(MIXED_PRECISION="mixed_float16"), 0.01)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    opt = make_optimizer(cfg(MIXED_PRECISION="mixed_bfloat16"), 0.01)
    assert not isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert opt.global_clipnorm == MPConfig.GRADIENT_CLIP_NORM


def test_layer_dtypes(models):
    m32, mbf = models
    conv = mbf.keras_model.get_layer("res2a_branch2a")
    assert conv.dtype_policy.name == "mixed_bfloat16"
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert m32.keras_model.get_layer("res2a_branch2a").compute_dtype == "float32"
    # Weights stay float32 (what the .h5 file holds).
    assert {w.dtype for w in mbf.keras_model.weights} == {"float32"}

    names = [("anchors", "anchors"), ("rois", "ROI"), ("det", "mrcnn_detection"),
             ("p2", "fpn_p2"), ("pooled", "roi_align_classifier"),
             ("rpn_bbox", "rpn_bbox"), ("rpn_class", "rpn_class")]
    out = mbf.run_graph([scene(0)], names)
    for key in ("anchors", "rois", "det", "rpn_bbox", "rpn_class"):
        assert out[key].dtype == np.float32, key
    assert out["p2"].dtype.name == "bfloat16"          # the heavy maths is bf16
    assert out["pooled"].dtype.name == "bfloat16"
    # Anchors are exactly the float32 model's (and utils') anchors.
    ref = m32.get_anchors((64, 64, 3))
    np.testing.assert_array_equal(out["anchors"][0], ref)


def test_bfloat16_detections_overlap_float32(models):
    m32, mbf = models
    images = [scene(i) for i in range(4)]
    # Features: bf16 keeps ~3 significant digits; the error stays small after ResNet+FPN.
    f32 = m32.run_graph(images[:1], [("p2", "fpn_p2")])["p2"]
    fbf = mbf.run_graph(images[:1], [("p2", "fpn_p2")])["p2"].astype(np.float32)
    rel = np.linalg.norm(fbf - f32) / np.linalg.norm(f32)
    assert rel < 0.03, rel

    r32, rbf = m32.detect(images), mbf.detect(images)
    best = []
    for a, b in zip(r32, rbf):
        assert a["rois"].shape[1] == 4 and b["rois"].dtype == a["rois"].dtype
        if len(a["rois"]) == 0:
            continue
        if len(b["rois"]) == 0:
            best += [0.0] * len(a["rois"])
            continue
        iou = utils.compute_overlaps(a["rois"].astype(np.float64),
                                     b["rois"].astype(np.float64))
        same = a["class_ids"][:, None] == b["class_ids"][None, :]
        best += list((iou * same).max(axis=1))
    best = np.array(best)
    assert len(best) >= 10, "too few float32 detections to compare"
    # Near-ties in score can swap which of two overlapping boxes survives NMS, so not
    # every box has an exact twin; most do.
    assert np.median(best) >= 0.9, best
    assert (best >= 0.5).mean() >= 0.75, best


def test_training_graph_box_and_loss_tensors_float32():
    from mrcnn.graph import build_graph
    from mrcnn.roi_heads import loss_output_names
    config = cfg(MIXED_PRECISION="mixed_bfloat16")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_graph("training", config)
    keras.mixed_precision.set_global_policy("float32")
    for name in loss_output_names(config):
        assert model.get_layer(name).output.dtype == "float32", name
    rois, class_ids, bbox, masks = model.get_layer("proposal_targets").output
    assert (rois.dtype, class_ids.dtype, bbox.dtype, masks.dtype) == (
        "float32", "int32", "float32", "float32")
    assert model.get_layer("ROI").output.dtype == "float32"
    assert model.get_layer("anchors").output.dtype == "float32"
    assert model.get_layer("res2a_branch2a").compute_dtype == "bfloat16"
