"""ONNX and TFLite export (mrcnn.export, mrcnn.export_graph): the export-friendly graph
pieces equal the layers they stand for, and an exported model reloaded in ONNX Runtime /
tf.lite.Interpreter gives detect()'s detections on a fixed-seed tiny model."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import export as E
from mrcnn import export_graph as G
from mrcnn.roi_heads import PyramidROIAlign
from mrcnn.rpn import proposal_nms

from test_preprocess import scene  # noqa: E402
from tiny_models import tiny_shapes_config_class  # noqa: E402


class PortableConfig(tiny_shapes_config_class()):
    NAME = "portable_test"
    NUM_CLASSES = 4
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "square"
    DETECTION_MIN_CONFIDENCE = 0.0
    # Every NMS survivor fits in the output: no cut among near-equal scores.
    DETECTION_MAX_INSTANCES = 30


# ----------------------------------------------------------------------------- pieces
def test_proposal_nms_portable_equals_combined():
    rng = np.random.RandomState(0)
    yx = rng.rand(3, 100, 2) * 0.4
    hw = rng.rand(3, 100, 2) * 0.3 + 0.3
    boxes = np.concatenate([yx, yx + hw], -1).astype(np.float32)
    # Flat boxes (proposals clipped at an image edge): never suppressed in TF's NMS, and
    # TFLite's kernel picks one repeatedly; two identical ones among them.
    boxes[:, 10:16, 2] = boxes[:, 10:16, 0]
    boxes[:, 17] = boxes[:, 16]
    ref = proposal_nms(tf.constant(boxes), 50, 0.5).numpy()
    got = G.proposal_nms_portable(tf.constant(boxes), 50, 0.5).numpy()
    np.testing.assert_array_equal(got, ref)
    kept = (ref != 0).any(-1).sum(1)
    assert (kept > 10).all() and (kept < 50).all()         # suppressed some, zero padded
    # Fewer boxes than proposals: zero padded.
    few = proposal_nms(tf.constant(boxes[:, :8]), 12, 0.5).numpy()
    np.testing.assert_array_equal(
        G.proposal_nms_portable(tf.constant(boxes[:, :8]), 12, 0.5).numpy(), few)


def test_detection_nms_portable_equals_combined():
    rng = np.random.RandomState(1)
    yx = rng.rand(2, 50, 2) * 0.7
    boxes = np.concatenate([yx, yx + rng.rand(2, 50, 2) * 0.3 + 0.05], -1).astype(np.float32)
    boxes[:, 40:45, 3] = boxes[:, 40:45, 1]                   # flat boxes
    class_ids = rng.randint(0, 4, (2, 50)).astype(np.int32)
    scores = (rng.rand(2, 50) * (class_ids > 0)).astype(np.float32)   # distinct, 0 = dropped
    dense = tf.one_hot(class_ids, 4) * scores[..., None]
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], dense, 12, 12, 0.3, 0.0, pad_per_class=False,
        clip_boxes=False)
    ref = np.concatenate([nms.nmsed_boxes, nms.nmsed_classes[..., None],
                          nms.nmsed_scores[..., None]], -1)
    got = G.detection_nms_portable(tf.constant(boxes), tf.constant(class_ids),
                                   tf.constant(scores), 4, 12, 0.3).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-7)
    assert (ref[:, :, 5] > 0).sum() > 12


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_roi_align_portable_equals_crop_and_resize(sampling_ratio):
    rng = np.random.RandomState(2)
    maps = [tf.constant(rng.randn(2, s, s + 3, 5), tf.float32) for s in (32, 16, 8, 4)]
    yx = rng.rand(2, 40, 2) * 0.9
    boxes = np.concatenate([yx, yx + rng.rand(2, 40, 2) * 0.6], -1)
    boxes[:, :5] -= 0.15                   # partly outside the image: extrapolated zeros
    boxes[:, -3:] = 0.0                    # padding rows
    meta = np.zeros([2, 16], np.float32)
    meta[:, 4:7] = [128, 140, 3]           # image_shape: levels 2..5 all used
    layer = PyramidROIAlign([7, 7], sampling_ratio=sampling_ratio)
    inputs = [tf.constant(boxes, tf.float32), tf.constant(meta)] + maps
    ref = layer(inputs).numpy()
    got = G.roi_align_portable(layer, inputs).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    assert np.abs(ref).max() > 1


def test_count_twin_detections_hand_made():
    masks = np.zeros((20, 20, 3), bool)
    masks[2:8, 2:8, 0] = masks[10:18, 10:18, 1] = masks[2:8, 12:18, 2] = True
    ref = {"rois": np.array([[2, 2, 8, 8], [10, 10, 18, 18], [2, 12, 8, 18]]),
           "class_ids": np.array([1, 2, 1]), "scores": np.array([0.9, 0.8, 0.8]),
           "masks": masks}
    assert E.count_twin_detections(ref, ref) == 3
    # Reordered among equal scores: still all twins.
    perm = [0, 2, 1]
    got = {k: (v[..., perm] if k == "masks" else v[perm]) for k, v in ref.items()}
    assert E.count_twin_detections(got, ref) == 3
    # One score off by 2e-3, one class changed, one mask pixel row lost (IoU 5/6 < 0.98).
    bad = {k: v.copy() for k, v in ref.items()}
    bad["scores"][0] += 2e-3
    bad["class_ids"][1] = 1
    bad["masks"][7, 12:18, 2] = False
    assert E.count_twin_detections(bad, ref) == 0
    assert E.count_twin_detections(bad, ref, score_tol=3e-3, min_mask_iou=0.8) == 2
    # One detection cannot twin two: a duplicate reference row finds one partner only.
    dup = {k: (v[..., [0, 0]] if k == "masks" else v[[0, 0]]) for k, v in ref.items()}
    assert E.count_twin_detections(ref, dup) == 1
    none = {"rois": np.zeros((0, 4)), "class_ids": np.zeros(0), "scores": np.zeros(0),
            "masks": np.zeros((20, 20, 0), bool)}
    assert E.count_twin_detections(none, ref) == 0


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def model():
    from mrcnn.model import MaskRCNN
    keras.utils.set_random_seed(21)
    m = MaskRCNN("inference", PortableConfig(), model_dir="/tmp/mrcnn_portable_test_logs")
    # Random weights saturate the softmaxes (many scores round to 1.0): shrink the two
    # classifiers' logits so scores are distinct and the comparisons below are by value.
    for layer in (m.keras_model.get_layer("rpn_model").get_layer("rpn_class_raw"),
                  m.keras_model.get_layer("mrcnn_class_logits")):
        layer.set_weights([w * 0.05 for w in layer.get_weights()])
    return m


def test_portable_layers_swap_only_while_tracing(model):
    layer = model.keras_model.get_layer("mrcnn_detection")
    with G.portable_layers(model.keras_model) as swapped:
        names = {s.name for s in swapped}
        assert {"ROI", "roi_align_classifier", "roi_align_mask",
                "mrcnn_detection"} <= names and "call" in vars(layer)
    assert not any("call" in vars(s) for s in swapped)


IMAGES = [(64, 64, 0), (48, 64, 1), (32, 32, 2)]   # no resize / padding / exact 2x


def images_of(h, w, k):
    return [scene(10 * k, h, w), scene(10 * k + 1, h, w)]


def compare_with_detect(model, exported):
    """Counts per image equal; at least 90% of the detections the same (see
    assert_same_detections). The rest: crop_and_resize puts a sample on the last pixel of
    a box edge at exactly 1.0 inside or outside by float32 rounding, which the runtimes'
    own arithmetic upstream (a last-bit difference in the decoded boxes) can flip.
    Twins: same class, |score diff| <= 1e-3, box IoU >= 0.99, mask IoU >= 0.98."""
    total = same = 0
    for h, w, k in IMAGES:
        images = images_of(h, w, k)
        for got, ref in zip(exported.detect(images), model.detect(images)):
            assert len(got["class_ids"]) == len(ref["class_ids"])
            total += len(ref["class_ids"])
            same += E.count_twin_detections(got, ref)
    assert total >= 10
    assert same >= 0.9 * total, (same, total)
    return same, total


def test_onnx_export_runs_in_onnxruntime_and_matches_detect(model, tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    import onnx
    path = str(tmp_path / "m.onnx")
    assert model.export(path, class_names=["a", "b", "c"]) == path   # format from suffix
    assert os.listdir(tmp_path) == ["m.onnx"]
    proto = onnx.load(path)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) \
        == E.ONNX_OPSET
    ops = {n.op_type for n in proto.graph.node}
    assert "NonMaxSuppression" in ops or any(
        n.op_type == "Loop" for n in proto.graph.node)
    exported = E.ExportedModel(path)
    assert exported.format == "onnx" and exported.class_names == ["a", "b", "c"]
    out = exported.run(np.stack(images_of(64, 64, 0)))
    assert set(out) == set(E.SERVING_KEYS)
    assert out["boxes"].dtype == np.int32 and out["masks"].shape == (2, 30, 14, 14)
    compare_with_detect(model, exported)
    with pytest.raises(E.ExportError, match="already exists") as err:
        model.export(path, format="onnx")
    assert path in str(err.value)


def test_tflite_builtins_export_runs_in_interpreter_and_matches_detect(model, tmp_path):
    path = str(tmp_path / "m.tflite")
    model.export(path)                                    # format from the suffix
    assert sorted(os.listdir(tmp_path)) == ["m.tflite", "m.tflite.json"]
    exported = E.ExportedModel(path)
    assert exported.format == "tflite" and exported.info["config"]["NUM_CLASSES"] == 4
    out = exported.run(np.stack(images_of(64, 64, 0)))
    assert set(out) == set(E.SERVING_KEYS) and out["masks"].shape == (2, 30, 14, 14)
    compare_with_detect(model, exported)
    with pytest.raises(E.ExportError, match="already exists"):
        model.export(path)
    with pytest.raises(E.ExportError, match="masks='full'"):
        model.export(str(tmp_path / "full.tflite"), masks="full")
    assert not (tmp_path / "full.tflite").exists()


def test_tflite_needs_square_frames():
    config = type("C", (PortableConfig,), {"IMAGE_RESIZE_MODE": "pad64"})()
    with pytest.raises(E.ExportError, match="square"):
        E.ServingModule(None, config, graph="tflite")


def test_bad_format_and_missing_model(model, tmp_path):
    with pytest.raises(E.ExportError, match="unknown export format 'pt'") as err:
        model.export(str(tmp_path / "x.pt"), format="pt")
    assert "x.pt" in str(err.value)
    with pytest.raises(E.ExportError, match="not found"):
        E.ExportedModel(str(tmp_path / "none.onnx"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(E.ExportError, match="not an exported model"):
        E.ExportedModel(str(tmp_path / "a.txt"))


def test_missing_onnx_dependency_says_what_to_install(model, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tf2onnx", None)        # import now fails
    with pytest.raises(E.ExportError, match=r"need tf2onnx .*pip install -e \.\[export\]"):
        model.export(str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def onnx_model(model, tmp_path_factory):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    path = str(tmp_path_factory.mktemp("onnx") / "m.onnx")
    model.export(path, class_names=["cat", "dog", "fox"])
    return path


def write_video(path, frames, fps=5):
    import cv2
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def test_detect_command_on_a_folder_and_a_video_with_an_onnx_model(model, onnx_model,
                                                                  tmp_path, capsys):
    import json

    import cv2
    from mrcnn import cli
    from skimage.io import imsave
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        imsave(str(folder / "p{}.png".format(k)), scene(50 + k, 64, 64))
    video = tmp_path / "clip.mp4"
    write_video(video, [scene(60 + k, 64, 64) for k in range(10)])
    out = tmp_path / "out"
    # 10 frames in batches of 4: a short last batch.
    assert cli.main(["detect", str(folder), str(video), "--weights", onnx_model,
                     "--out", str(out), "--batch", "4"]) == 0
    assert "10 video frames" in capsys.readouterr().out
    names = sorted(os.listdir(out))
    assert names == ["clip_detections.mp4", "detections.json", "p0_detections.png",
                     "p1_detections.png", "p2_detections.png"]
    for n in names:
        assert os.path.getsize(out / n) > 1000
    capture = cv2.VideoCapture(str(out / "clip_detections.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    ok, frame = capture.read()
    assert ok and frame.shape == (64, 64, 3)
    capture.release()

    entries = json.load(open(out / "detections.json"))
    frames = [e for e in entries if e["file_name"] == str(video)]
    photos = [e for e in entries if e["file_name"] != str(video)]
    assert sorted({e["frame_index"] for e in frames}) == list(range(10))  # all had some
    assert {e["image_id"] for e in frames} == set(range(3, 13))
    assert {e["image_id"] for e in photos} == {0, 1, 2}
    assert {e["category_name"] for e in entries} <= {"cat", "dog", "fox"}
    # The photos' entries are the exported model's detections of those files.
    exported = E.ExportedModel(onnx_model)
    from skimage.io import imread
    r = exported.detect([imread(str(folder / "p1.png"))])[0]
    mine = sorted(e["score"] for e in photos if e["image_id"] == 1)
    np.testing.assert_allclose(mine, np.sort(r["scores"]), atol=1e-6)
    assert all(len(e["bbox"]) == 4 and "segmentation" in e for e in entries)


def test_detect_and_export_bad_input_name_the_path(onnx_model, tmp_path, capsys):
    from mrcnn import cli
    out = str(tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    cases = [(["detect", str(empty), "--weights", onnx_model, "--out", out], str(empty)),
             (["detect", str(broken), "--weights", onnx_model, "--out", out], str(broken)),
             (["detect", str(tmp_path / "nope.mp4"), "--weights", onnx_model, "--out", out],
              "nope.mp4"),
             (["detect", str(broken), "--weights", str(tmp_path / "x.onnx"), "--out", out],
              "x.onnx"),
             (["export", "--weights", onnx_model, "--config", "mrcnn.config:Config",
               "--out", onnx_model], onnx_model),
             (["export", "--weights", onnx_model, "--config", "mrcnn.config:Config",
               "--out", str(tmp_path / "new"), "--format", "pt"], "new")]
    for argv, named in cases:
        with pytest.raises(SystemExit):
            cli.main(argv)
        err = capsys.readouterr().err
        assert named in err, (argv, err)
    assert "unknown export format 'pt'" in err
