"""Tests of mrcnn.export: in-graph molding and unmolding against the numpy code paths
(mold_inputs, unmold_detections, utils.unmold_mask), and a SavedModel reloaded with
tf.saved_model.load that reproduces MaskRCNN.detect()."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import export as E
from mrcnn import utils
from mrcnn.config import Config
from mrcnn.inference import mold_inputs, unmold_detections

from tiny_models import small_resnet_config_class  # noqa: E402


class ExportConfig(small_resnet_config_class()):
    NAME = "export_test"
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "square"


def cfg(**overrides):
    return type("C", (ExportConfig,), overrides)()


def scene(seed, h, w):
    """uint8 image: noise plus a few flat rectangles (flat areas test rounding)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, max(h - 8, 1)), rng.integers(0, max(w - 8, 1))
        s = int(rng.integers(4, max(min(h, w) // 2, 5)))
        img[y:y + s, x:x + s] = rng.integers(0, 256, 3)
    return img


# ----------------------------------------------------------------------------- molding
def test_resize_hand_case():
    # 1 x 4 -> 1 x 8: half-pixel sampling, zero beyond the edge, clip to the image's
    # range, truncation: worked by hand from skimage's definition.
    img = np.array([10, 20, 30, 40], np.uint8).reshape(1, 4, 1)
    out = E.resize_images_graph(tf.constant(img[None]), 1, 8).numpy().ravel()
    # sources: -0.25 (7.5 -> clipped to 10), 0.25, 0.75, ..., 3.25 (0.75*40 = 30)
    np.testing.assert_array_equal(out, [10, 12, 17, 22, 27, 32, 37, 30])
    ref = utils.resize(img, (1, 8), preserve_range=True).astype(np.uint8).ravel()
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("mode", ["square", "pad64", "none"])
def test_mold_images_graph_matches_mold_inputs(mode):
    # The graph repeats scipy's bilinear arithmetic in the same order, so the molded
    # images are bit-identical, flat areas (where rounding would show) included.
    extra = {"IMAGE_RESIZE_MODE": mode}
    if mode == "pad64":
        extra.update(IMAGE_MIN_DIM=40, IMAGE_MIN_SCALE=1.5)
    config = cfg(**extra)
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 64), (32, 32), (50, 37), (100, 80), (20, 30), (64, 200)]
    sizes += [tuple(int(v) for v in rng.integers(8, 260, 2)) for _ in range(8)]
    if mode == "none":
        sizes = [(64, 64), (128, 64)]
    for i, (h, w) in enumerate(sizes):
        img = scene(i, h, w)
        molded, metas, windows = mold_inputs([img], config)
        g_molded, g_metas, g_windows = E.mold_images_graph(tf.constant(img[None]), config)
        assert g_molded.shape == molded.shape, (mode, h, w)
        np.testing.assert_array_equal(g_windows.numpy(), windows)
        np.testing.assert_array_equal(g_metas.numpy(), metas)
        np.testing.assert_array_equal(g_molded.numpy(), molded, err_msg=str((mode, h, w)))


def test_crop_mode_and_bad_mask_mode_refused():
    with pytest.raises(E.ExportError, match="IMAGE_RESIZE_MODE"):
        E.ServingModule(None, cfg(IMAGE_RESIZE_MODE="crop"))
    with pytest.raises(E.ExportError, match="masks"):
        E.ServingModule(None, cfg(), masks="medium")


# ----------------------------------------------------------------------------- unmolding
def test_paste_masks_graph_matches_unmold_mask():
    rng = np.random.default_rng(3)
    H, W = 50, 70
    boxes = np.array([[5, 7, 40, 60],      # bigger than the mask: upsampling
                      [10, 10, 20, 17],    # smaller: downsampling
                      [0, 0, 1, 1],        # one pixel
                      [-6, 50, 30, 90],    # partly outside the image
                      [30, 2, 49, 69],
                      [12, 12, 40, 40]], np.int32)
    masks = rng.random((len(boxes), 28, 28)).astype(np.float32)
    masks[4] = masks[4] * 0.3 + 0.6        # min > 0.5: skimage's range clip matters
    masks[5] = (np.add.outer(np.arange(28), np.arange(28)) / 54.0).astype(np.float32)
    got = E.paste_masks_graph(tf.constant(masks), tf.constant(boxes), H, W).numpy()
    assert got.shape == (len(boxes), H, W) and got.dtype == bool
    for i in range(len(boxes)):
        ref = utils.unmold_mask(masks[i], boxes[i], (H, W, 3))
        np.testing.assert_array_equal(got[i], ref, err_msg=str(i))
    # Nothing outside the (clipped) box.
    assert not got[2][1:, :].any() and not got[2][:, 1:].any()
    assert got[4][30:49, 2:69].all()


def test_unmold_detections_graph_matches_numpy():
    rng = np.random.default_rng(5)
    D, C, frame = 8, 4, (64, 64)
    window = np.array([8, 0, 56, 64])              # a 48 x 64 image padded to 64 x 64
    original = (96, 128)
    det = np.zeros((2, D, 6), np.float32)
    # image 0: 5 valid rows (one of zero area after rounding), then padding
    y1 = rng.uniform(0.15, 0.5, 5)
    x1 = rng.uniform(0.0, 0.5, 5)
    det[0, :5, 0], det[0, :5, 1] = y1, x1
    det[0, :5, 2], det[0, :5, 3] = y1 + rng.uniform(0.05, 0.3, 5), x1 + 0.3
    # Row 2: zero height in original pixels (normalised y2 is inclusive, pixel y2 is not).
    wy1, wh = 8 / 63, 47 / 63
    det[0, 2, 0] = wy1 + 0.2 * wh
    det[0, 2, 2] = det[0, 2, 0] - wh / 95
    det[0, :5, 4] = [1, 2, 3, 1, 2]
    det[0, :5, 5] = [0.9, 0.8, 0.7, 0.6, 0.5]
    # image 1: a class-0 row stops the list early (numpy takes rows before it)
    det[1, :3] = det[0, :3]
    det[1, 1, 4] = 0
    mmask = rng.random((2, D, 28, 28, C)).astype(np.float32)
    # Tag each plane (image b, row i, class c) so the selected planes can be identified.
    tags = (1000 * np.arange(2)[:, None, None] + 10 * np.arange(D)[None, :, None] +
            np.arange(C)[None, None, :])
    mmask[:, :, 0, 0, :] = tags
    boxes, class_ids, scores, masks, num = [t.numpy() for t in E.unmold_detections_graph(
        tf.constant(det), tf.constant(mmask), tf.constant(original, tf.int32),
        tf.constant(frame, tf.int32), tf.constant(window, tf.int32))]
    kept_rows = [[0, 1, 3, 4], [0]]     # row 2 has zero height; image 1 stops at row 1
    for b in range(2):
        ref_boxes, ref_ids, ref_scores, _ = unmold_detections(
            det[b], mmask[b], original + (3,), frame + (3,), window)
        n = num[b]
        assert n == len(ref_ids) == len(kept_rows[b])
        np.testing.assert_array_equal(boxes[b, :n], ref_boxes)
        np.testing.assert_array_equal(class_ids[b, :n], ref_ids)
        np.testing.assert_array_equal(scores[b, :n], ref_scores)
        assert not boxes[b, n:].any() and not class_ids[b, n:].any()
        assert not scores[b, n:].any() and not masks[b, n:].any()
        for j, i in enumerate(kept_rows[b]):
            c = int(det[b, i, 4])
            assert masks[b, j, 0, 0] == 1000 * b + 10 * i + c
            np.testing.assert_array_equal(masks[b, j, 1:], mmask[b, i, 1:, :, c])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def model():
    from mrcnn.model import MaskRCNN
    keras.utils.set_random_seed(11)
    return MaskRCNN("inference", cfg(), model_dir="/tmp/mrcnn_export_test_logs")


# Same-size pairs (a SavedModel call takes one size per batch): no resize, padding
# only, and an exact 2x upscale, so the molded images are bit-identical to detect()'s.
PAIRS = [(64, 64), (48, 64), (32, 32)]


def detect_and_serve(model, call):
    results = []
    for k, (h, w) in enumerate(PAIRS):
        images = [scene(10 * k, h, w), scene(10 * k + 1, h, w)]
        ref = model.detect(images)
        out = {key: v.numpy() for key, v in call(tf.constant(np.stack(images))).items()}
        results.append((images, ref, out))
    return results


def assert_matches_detect(results, full_masks):
    total = 0
    for images, ref, out in results:
        for b, r in enumerate(ref):
            n = int(out["num_detections"][b])
            assert n == len(r["class_ids"])
            total += n
            np.testing.assert_allclose(out["boxes"][b, :n], r["rois"], atol=1e-4, rtol=0)
            np.testing.assert_array_equal(out["class_ids"][b, :n], r["class_ids"])
            np.testing.assert_allclose(out["scores"][b, :n], r["scores"], atol=1e-4, rtol=0)
            if full_masks:
                got = np.transpose(out["masks"][b, :n], (1, 2, 0))
            else:
                got = np.stack([utils.unmold_mask(out["masks"][b, i], out["boxes"][b, i],
                                                  images[b].shape) for i in range(n)],
                               axis=-1) if n else np.zeros(images[b].shape[:2] + (0,), bool)
            assert got.shape == r["masks"].shape
            for i in range(n):
                a, c = got[..., i], r["masks"][..., i]
                union = (a | c).sum()
                iou = (a & c).sum() / union if union else 1.0
                assert iou >= 0.99, (b, i, iou)
    assert total > 0, "no detections to compare"


def test_saved_model_reload_matches_detect(model, tmp_path):
    path = str(tmp_path / "serving" / "1")
    assert model.export(path, masks="full") == path
    assert os.listdir(tmp_path / "serving") == ["1"]         # no temporary left behind
    info = json.load(open(os.path.join(path, "assets.extra", "mrcnn_config.json")))
    assert info["masks"] == "full" and info["config"]["NUM_CLASSES"] == 3

    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    spec = fn.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    assert set(fn.structured_outputs) == set(E.SERVING_KEYS)
    assert_matches_detect(detect_and_serve(model, lambda x: fn(images=x)), full_masks=True)

    # An existing export is never overwritten, whatever the mask mode.
    before = sorted(os.listdir(path))
    with pytest.raises(E.ExportError, match="already exists") as err:
        model.export(path)
    assert path in str(err.value)
    assert sorted(os.listdir(path)) == before


def test_small_masks_module_matches_detect(model):
    module = E.ServingModule(model.keras_model, model.config, masks="small")
    results = detect_and_serve(model, module.serve)
    assert results[0][2]["masks"].shape[2:] == tuple(model.config.MASK_SHAPE)
    assert_matches_detect(results, full_masks=False)


def test_export_refuses_training_mode(tmp_path):
    class Fake:
        mode = "training"
    with pytest.raises(E.ExportError, match="inference"):
        E.export_saved_model(Fake(), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_cli(model, tmp_path, capsys):
    weights = str(tmp_path / "w.h5")
    model.save_weights(weights)
    lines = ["from mrcnn.config import Config", "", "", "class CliConfig(Config):"]
    # The attributes set by ExportConfig and its test bases (everything above Config).
    bases = ExportConfig.__mro__[:ExportConfig.__mro__.index(Config)]
    attrs = {}
    for klass in reversed(bases):
        attrs.update({k: v for k, v in vars(klass).items() if k.isupper()})
    lines += ["    {} = {!r}".format(k, v) for k, v in attrs.items()]
    cfg_file = tmp_path / "cli_config.py"
    cfg_file.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "cli_export")
    argv = ["--weights", weights, "--config", "{}:CliConfig".format(cfg_file), "--out", out]
    assert E.main(argv) == 0
    assert "SavedModel written" in capsys.readouterr().out
    loaded = tf.saved_model.load(out)
    # The exported variables hold the weight file's values, i.e. the fixture's weights.
    exported = [v.numpy() for v in loaded.model_variables]
    ours = [keras.ops.convert_to_numpy(v) for v in model.keras_model.variables]
    assert len(exported) == len(ours)
    for a, b in zip(exported, ours):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit):
        E.main(argv)                       # --out exists now
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ValueError, match="module:ClassName"):
        E.load_config_class("no_colon_here")
