"""The one-command workflow of ``python -m mrcnn``, run in-process through mrcnn.cli.main:
a small COCO-JSON dataset written by the test (64-px images, 2 classes) trained from random
weights to a finite loss, then evaluated (pycocotools table, results JSON that loadRes
accepts) and run on a folder of images (PNGs, detections JSON). Also the command-line
errors, which stop before TensorFlow is used.
"""

import json
import os
import re
import sys

import numpy as np
import pytest
import skimage.draw
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, TESTS):
    if p not in sys.path:
        sys.path.insert(0, p)

from mrcnn import cli  # noqa: E402
from tiny_models import tiny_shapes_config_class  # noqa: E402

CLASSES = ("square", "disk")
SIZE = 64


class CliTinyConfig(tiny_shapes_config_class()):
    """The tiny backbone and heads; NUM_CLASSES and NAME come from the command."""
    IMAGES_PER_GPU = 2
    VALIDATION_STEPS = 0


CONFIG_CLASS = "{}:CliTinyConfig".format(os.path.abspath(__file__))


def write_coco_split(folder, n_images, seed):
    """n_images 64-px PNGs, each with a square (category 1) and a disk (category 2) at
    random places, and their _annotations.coco.json (polygons) in ``folder``."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder)
    images, anns = [], []
    for i in range(n_images):
        image = np.full((SIZE, SIZE, 3), 30, np.uint8)
        x, y, s = rng.randint(4, 24), rng.randint(4, 40), rng.randint(12, 20)
        image[y:y + s, x:x + s] = (220, 60, 60)
        cx, cy, r = rng.randint(44, 54), rng.randint(12, 52), rng.randint(7, 10)
        rr, cc = skimage.draw.disk((cy, cx), r, shape=(SIZE, SIZE))
        image[rr, cc] = (60, 220, 60)
        name = "img{}.png".format(i)
        Image.fromarray(image).save(os.path.join(folder, name))
        images.append({"id": i + 1, "file_name": name, "height": SIZE, "width": SIZE})
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        disk = np.stack([cx + 0.5 + r * np.cos(t), cy + 0.5 + r * np.sin(t)], 1).ravel()
        for cid, seg in ((1, [x, y, x + s, y, x + s, y + s, x, y + s]), (2, disk.tolist())):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cid,
                         "iscrowd": 0, "segmentation": [[float(v) for v in seg]]})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}
    with open(os.path.join(folder, "_annotations.coco.json"), "w") as f:
        json.dump(doc, f)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train one epoch of 2 steps from random weights, with evaluation and the best
    checkpoint kept; returns (tmp folder, logs folder, captured stdout)."""
    import io
    from contextlib import redirect_stdout

    import keras
    # Two steps from random weights: the seed fixes which classes win (detections exist).
    keras.utils.set_random_seed(0)
    tmp = tmp_path_factory.mktemp("cli")
    train = write_coco_split(str(tmp / "train"), 4, seed=1)
    val = write_coco_split(str(tmp / "valid"), 2, seed=2)
    logs = str(tmp / "logs")
    out = io.StringIO()
    with redirect_stdout(out):
        status = cli.main(["train", "--train", train, "--val", val, "--weights", "none",
                           "--epochs", "1", "--config-class", CONFIG_CLASS,
                           "--config", "STEPS_PER_EPOCH=2", "LEARNING_RATE=0.005",
                           "--logs", logs, "--name", "clitest",
                           "--evaluate-every", "1", "--keep-best", "val_segm_AP"])
    assert status == 0
    return tmp, logs, out.getvalue()


def test_train_reaches_a_finite_loss_and_describes_the_run(trained):
    tmp, logs, text = trained
    loss = float(re.search(r"Final loss: ([-+0-9.eE]+|nan|inf) \(epoch 1\)", text).group(1))
    assert np.isfinite(loss) and loss > 0
    runs = [d for d in os.listdir(logs) if d.startswith("clitest")]
    assert len(runs) == 1
    files = sorted(os.listdir(os.path.join(logs, runs[0])))
    assert "mask_rcnn_clitest_0001.h5" in files and "mask_rcnn_clitest_best.h5" in files
    with open(os.path.join(logs, runs[0], cli.RUN_FILE)) as f:
        desc = json.load(f)
    assert desc["class_names"] == list(CLASSES) and desc["format"] == "coco"
    assert desc["config"] == ["STEPS_PER_EPOCH=2", "LEARNING_RATE=0.005"]
    assert desc["config_class"] == CONFIG_CLASS and desc["cascade"] is False


def test_evaluate_prints_metrics_and_writes_loadable_results(trained, capsys):
    from mrcnn.datasets import load_annotated
    from mrcnn.evaluate import build_coco_gt
    tmp, logs, _ = trained
    results = str(tmp / "eval.json")
    assert cli.main(["evaluate", "--val", str(tmp / "valid"), "--weights", "best",
                     "--logs", logs, "--name", "clitest", "--results", results]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^segm\s+(\d\.\d{3}|  n/a)", text, re.M)
    assert re.search(r"^square\s", text, re.M) and re.search(r"^disk\s", text, re.M)
    with open(results) as f:
        dets = json.load(f)
    assert dets and {d["category_id"] for d in dets} <= {1, 2}
    gt = build_coco_gt(load_annotated(str(tmp / "valid")))
    loaded = gt.loadRes(results)
    assert len(loaded.anns) == len(dets)


def test_detect_writes_pngs_and_json(trained, capsys):
    tmp, logs, _ = trained
    folder = tmp / "photos"
    os.makedirs(folder)
    for name in ("img0.png", "img1.png", "img2.png"):
        Image.open(tmp / "train" / name).save(folder / name.replace(".png", ".jpg"))
    out = str(tmp / "detected")
    assert cli.main(["detect", str(folder), "--weights", "last", "--logs", logs,
                     "--name", "clitest", "--out", out, "--min-confidence", "0"]) == 0
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert pngs == ["img0_detections.png", "img1_detections.png", "img2_detections.png"]
    for f in pngs:
        with Image.open(os.path.join(out, f)) as im:
            assert im.size[0] > 100 and np.asarray(im).std() > 0
    with open(os.path.join(out, "detections.json")) as f:
        dets = json.load(f)
    assert dets, "min-confidence 0 keeps every detection of the random-ish model"
    names = {os.path.basename(d["file_name"]) for d in dets}
    assert names <= {"img0.jpg", "img1.jpg", "img2.jpg"}
    for d in dets:
        assert d["category_name"] == CLASSES[d["category_id"] - 1]
        assert len(d["bbox"]) == 4 and 0 <= d["score"] <= 1
        assert mask_utils.decode(d["segmentation"]).shape == (SIZE, SIZE)
    assert "detections in 3 images" in capsys.readouterr().out


def test_detect_on_a_video_with_h5_weights(trained, capsys):
    import cv2
    tmp, logs, _ = trained
    video = str(tmp / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (SIZE, SIZE))
    for k in range(5):        # 5 frames, batches of IMAGES_PER_GPU = 2: a short last one
        frame = np.asarray(Image.open(tmp / "train" / "img{}.png".format(k % 4)))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    out = str(tmp / "video_out")
    assert cli.main(["detect", video, "--weights", "last", "--logs", logs, "--name",
                     "clitest", "--out", out, "--min-confidence", "0"]) == 0
    assert "5 video frames" in capsys.readouterr().out
    capture = cv2.VideoCapture(os.path.join(out, "clip_detections.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()
    with open(os.path.join(out, "detections.json")) as f:
        dets = json.load(f)
    # min-confidence 0: every frame of these pictures has detections.
    assert {d["frame_index"] for d in dets} == set(range(5))
    assert all(d["image_id"] == d["frame_index"] and d["file_name"] == video for d in dets)
    assert all(d["category_name"] in CLASSES for d in dets)


# ----------------------------------------------------------------------------- errors

def usage_error(argv, capsys):
    """Run the command, expect a usage error (exit 2); return its message."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_unknown_config_key_and_bad_paths(tmp_path, capsys):
    train = write_coco_split(str(tmp_path / "t"), 1, seed=0)
    base = ["train", "--train", train, "--val", train, "--weights", "none"]
    err = usage_error(base + ["--config", "IMAGE_MAX_DIMS=64"], capsys)
    assert "unknown setting 'IMAGE_MAX_DIMS'" in err
    err = usage_error(base + ["--config", "NUM_CLASSES=3"], capsys)
    assert "NUM_CLASSES comes from the data" in err
    err = usage_error(base + ["--epochs", "2", "--time-budget", "5"], capsys)
    assert "--time-budget" in err and "--epochs" in err
    os.makedirs(tmp_path / "empty")
    err = usage_error(["train", "--train", str(tmp_path / "empty"), "--val", train,
                       "--weights", "none"], capsys)
    assert str(tmp_path / "empty") in err and "no annotations in a known format" in err
    err = usage_error(["detect", str(tmp_path / "empty"), "--weights", "last",
                       "--out", str(tmp_path / "o")], capsys)
    assert str(tmp_path / "empty") in err and "no image files" in err
    err = usage_error(["detect", train, "--weights", "last", "--tile", "100",
                       "--out", str(tmp_path / "o")], capsys)
    assert "--tile must be a multiple of 64, got 100" in err
    err = usage_error(["evaluate", "--val", train, "--weights", "last",
                       "--logs", str(tmp_path / "nologs"), "--name", "mine"], capsys)
    assert "--weights last" in err and "'mine'" in err


def test_config_overrides_parse_python_literals():
    parsed = cli.parse_config_overrides(["IMAGE_MAX_DIM=512", "LEARNING_RATE=1e-3",
                                         "RPN_ANCHOR_SCALES=(16, 32)", "USE_MINI_MASK=False",
                                         "BACKBONE=resnet101", "MEAN_PIXEL=[1, 2, 3]"])
    assert parsed == {"IMAGE_MAX_DIM": 512, "LEARNING_RATE": 0.001,
                      "RPN_ANCHOR_SCALES": (16, 32), "USE_MINI_MASK": False,
                      "BACKBONE": "resnet101", "MEAN_PIXEL": [1, 2, 3]}
    with pytest.raises(ValueError, match="expects KEY=VALUE, got 'photo.png'"):
        cli.parse_config_overrides(["photo.png"])
