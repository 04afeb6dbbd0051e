"""Robustness: the bad-input corpus, on_error="skip", the non-finite-loss guard, and
property tests of the numpy utilities that the other test files do not cover.

The corpus is generated in tmp_path by these tests: broken and unusual image files, bad
annotations, malformed COCO / VIA JSON, and non-finite images given to detect(). Every item
must end in one of: an error naming the image (id and path) or the JSON entry, a documented
conversion checked against an independent computation, or (with on_error="skip") a logged
skip that is counted. A module-level tally prints "corpus: N tried, N named, N converted"
at the end (pytest -s shows it).

One training run (tiny callable backbone, 64 px, 3 steps per epoch) covers a dataset with
4 broken images among 8 trained with on_error="skip" (epoch 1 completes, skips counted)
followed by a loss forced to NaN in epoch 2 (NonFiniteLossError naming the loss and the
step; checkpoint 0001 intact; no 0002).
"""

import io
import json
import logging
import os
import subprocess
import sys
import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given, settings, strategies as st
from PIL import Image

from mrcnn import data, utils
from mrcnn import model as modellib
from mrcnn.datasets import CocoJsonDataset, DatasetWarning, ViaDataset
from mrcnn.preprocess import check_images, mold_inputs, unmold_detections
from mrcnn.training import (CheckpointCallback, NonFiniteLossError, NonFiniteLossGuard,
                            TrainingModel)
from mrcnn.weights import read_weight_groups
from samples.shapes import ShapesDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = settings(max_examples=30, deadline=None)

# Corpus tally: item -> "named" (clear error) | "converted" (documented conversion) |
# "skipped" (on_error="skip" / skip_bad=True, counted). Printed at module teardown.
TALLY = {}


def record(item, outcome):
    assert outcome in ("named", "converted", "skipped")
    TALLY.setdefault(item, set()).add(outcome)


@pytest.fixture(scope="module", autouse=True)
def corpus_summary():
    yield
    named = sum("named" in v for v in TALLY.values())
    converted = sum("converted" in v for v in TALLY.values())
    skipped = sum("skipped" in v for v in TALLY.values())
    print("\ncorpus: {} items handled: {} named, {} converted, {} of them also skipped and "
          "counted; known gaps are the xfail tests".format(len(TALLY), named, converted,
                                                           skipped))


# ---------------------------------------------------------------------------- configs
from tiny_models import tiny_shapes_config_class  # noqa: E402


class RobustConfig(tiny_shapes_config_class()):
    NAME = "robust"


class CorpusConfig(RobustConfig):
    """For the one-class corpus datasets."""
    NUM_CLASSES = 2


class RobustInferenceConfig(RobustConfig):
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.0


def assert_names_image(message, image_id, path):
    """The message names the internal image id and the file path."""
    assert "image {}".format(image_id) in message, message
    assert str(path) in message, message


# ---------------------------------------------------------------------------- file corpus
H, W = 48, 40


def base_image():
    """Smooth uint8 RGB [48, 40, 3] (JPEG keeps it within a few levels)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([yy * 5, xx * 6, (yy + xx) * 2], axis=-1).astype(np.uint8)


def jpeg_bytes(array, mode=None):
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_corpus(d):
    """Write the image-file corpus; returns {item: (path, (h, w))}."""
    import cv2
    rgb = base_image()
    gray = rgb[..., 0]
    items = {}

    def put(name, filename, content, hw=(H, W)):
        path = os.path.join(d, filename)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        elif content is not None:
            content.save(path)
        items[name] = (path, hw)

    put("zero_byte", "zero_byte.jpg", b"")
    full = jpeg_bytes(rgb)
    put("truncated_jpeg", "truncated.jpg", full[:len(full) // 2])
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    put("png_named_jpg", "png_inside.jpg", png.getvalue())
    put("grayscale", "gray.png", Image.fromarray(gray))
    put("rgba", "rgba.png", Image.fromarray(np.dstack([rgb, np.full((H, W), 77, np.uint8)])))
    put("gray16", "gray16.png", Image.fromarray(gray.astype(np.uint16) * 257))
    path16 = os.path.join(d, "rgb16.png")
    cv2.imwrite(path16, (rgb[..., ::-1].astype(np.uint16) * 257))  # cv2 writes BGR
    items["rgb16"] = (path16, (H, W))
    put("cmyk_jpeg", "cmyk.jpg", jpeg_bytes(rgb, "CMYK"))
    put("palette_png", "palette.png", Image.fromarray(rgb).convert("P"))
    put("tiny_8x8", "tiny8.png", Image.fromarray(rgb[:8, :8]), hw=(8, 8))
    put("tall_10000x40", "tall.png", Image.fromarray(np.full((10000, 40, 3), 90, np.uint8)),
        hw=(10000, 40))
    put("missing_file", "not_there.jpg", None)
    return items


# Items whose file cannot be used: an error naming the image (or a skip when asked).
BROKEN_FILES = ("zero_byte", "truncated_jpeg", "tall_10000x40", "missing_file")


class FileDataset(utils.Dataset):
    """One image per corpus file, each with one rectangular instance in its middle."""

    def load_mask(self, image_id):
        h, w = self.image_info[image_id]["hw"]
        mask = np.zeros((h, w, 1), bool)
        mask[h // 4:3 * h // 4, w // 4:3 * w // 4, 0] = True
        return mask, np.array([1], np.int32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    items = write_corpus(str(d))
    ds = FileDataset()
    ds.add_class("files", 1, "thing")
    for name, (path, hw) in items.items():
        ds.add_image("files", image_id=name, path=path, hw=hw)
    ds.prepare()
    ids = {info["id"]: i for i, info in enumerate(ds.image_info)}
    return dict(dir=str(d), items=items, dataset=ds, ids=ids)


@pytest.mark.parametrize("item", BROKEN_FILES)
def test_broken_file_is_named(corpus, item):
    """load_image and load_image_gt raise DatasetError naming the image id and path."""
    ds, image_id = corpus["dataset"], corpus["ids"][item]
    path = corpus["items"][item][0]
    config = CorpusConfig()
    if item == "tall_10000x40":
        # Readable, but at IMAGE_MAX_DIM 64 its width shrinks to 0 pixels.
        assert ds.load_image(image_id).shape == (10000, 40, 3)
    else:
        with pytest.raises(utils.DatasetError) as e:
            ds.load_image(image_id)
        assert_names_image(str(e.value), image_id, path)
    with pytest.raises(utils.DatasetError) as e:
        data.load_image_gt(ds, config, image_id)
    assert_names_image(str(e.value), image_id, path)
    if item == "tall_10000x40":
        assert "too thin" in str(e.value) and "(10000, 40, 3)" in str(e.value)
    if item == "missing_file":
        assert "FileNotFoundError" in str(e.value)
    record(item, "named")


def expected_pixels(item, corpus):
    """The uint8 RGB array load_image must return, computed without mrcnn."""
    rgb = base_image()
    gray3 = np.repeat(rgb[..., :1], 3, axis=-1)
    path = corpus["items"][item][0]
    return {
        "png_named_jpg": rgb,
        "grayscale": gray3,
        "rgba": rgb,                    # alpha dropped, not composited
        "gray16": gray3,                # v * 257 / 257
        "rgb16": rgb,
        "palette_png": np.asarray(Image.open(path).convert("RGB")),
        "tiny_8x8": rgb[:8, :8],
    }.get(item)


@pytest.mark.parametrize("item", ["png_named_jpg", "grayscale", "rgba", "gray16", "rgb16",
                                  "cmyk_jpeg", "palette_png", "tiny_8x8"])
def test_unusual_file_is_converted(corpus, item):
    """Documented conversions of Dataset.load_image: uint8 RGB [H, W, 3] whatever the
    stored format; the format comes from the content, not the extension."""
    ds, image_id = corpus["dataset"], corpus["ids"][item]
    image = ds.load_image(image_id)
    h, w = corpus["items"][item][1]
    assert image.dtype == np.uint8 and image.shape == (h, w, 3)
    expected = expected_pixels(item, corpus)
    if item == "cmyk_jpeg":
        assert Image.open(corpus["items"][item][0]).mode == "CMYK"
        # Lossy JPEG + CMYK->RGB: close to the source image, not equal.
        err = np.abs(image.astype(int) - base_image().astype(int))
        assert err.mean() < 6, err.mean()
    else:
        np.testing.assert_array_equal(image, expected)
    # Training sees it at 64 x 64 with its instance where it was, scaled.
    image, meta, class_ids, boxes, masks = data.load_image_gt(
        ds, CorpusConfig(), image_id, use_mini_mask=False)
    assert image.shape == (64, 64, 3)
    parsed = modellib.parse_image_meta(meta[None])
    scale = float(parsed["scale"][0])
    y0, x0 = parsed["window"][0][:2]
    np.testing.assert_allclose(scale, 64 / max(h, w))
    expected_box = np.array([h // 4 * scale + y0, w // 4 * scale + x0,
                             3 * h // 4 * scale + y0, 3 * w // 4 * scale + x0])
    np.testing.assert_array_equal(class_ids, [1])
    # Nearest-neighbour zoom moves edges by up to half a source pixel (scale / 2).
    assert np.abs(boxes[0] - expected_box).max() <= 1 + scale / 2, (boxes, expected_box)
    record(item, "converted")


def test_file_corpus_through_pipeline_skip_counts(corpus, caplog):
    """build_dataset(on_error="skip") over every corpus file: each broken one is logged
    (naming it) and counted; every other one yields a training example."""
    ds = corpus["dataset"]
    pipe = data.build_dataset(ds, CorpusConfig(), shuffle=False, repeat=False,
                              batch_size=1, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="mrcnn.data"):
        n = sum(1 for _ in pipe)
    counts = pipe.skip_counter.as_dict()
    assert counts == {"loaded": len(ds.image_ids) - len(BROKEN_FILES),
                      "errors": len(BROKEN_FILES), "empty": 0}, counts
    assert n == counts["loaded"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for item in BROKEN_FILES:
        assert_names_image(logged, corpus["ids"][item], corpus["items"][item][0])
        record(item, "skipped")


def test_pipeline_raise_names_image_and_unwraps(corpus):
    """on_error="raise" (the default): iterating stops with TF's InvalidArgumentError
    whose message still names the image id and path; data.pipeline_error recovers the
    original DatasetError whose message starts with it."""
    path = corpus["items"]["truncated_jpeg"][0]

    class OnlyTruncated(FileDataset):
        pass

    one = OnlyTruncated()
    one.add_class("files", 1, "thing")
    one.add_image("files", image_id="truncated_jpeg", path=path, hw=(H, W))
    one.prepare()
    pipe = data.build_dataset(one, CorpusConfig(), shuffle=False, batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        next(iter(pipe))
    wrapped = str(e.value)
    assert_names_image(wrapped, 0, path)
    original = data.pipeline_error(e.value, pipe)
    assert isinstance(original, utils.DatasetError)
    assert str(original).startswith("OnlyTruncated: cannot read image 0 (id "
                                     "'truncated_jpeg', path {!r})".format(path))
    # An unrelated TF error is not mistaken for a pipeline error.
    assert data.pipeline_error(tf.errors.InvalidArgumentError(None, None, "x"), pipe) is None


# ---------------------------------------------------------------------------- annotations
class AnnotationDataset(utils.Dataset):
    """In-memory images (uint8 or float) with per-image annotation faults."""

    def load_image(self, image_id):
        info = self.image_info[image_id]
        if info["id"] == "nan_float_image":
            image = np.full((H, W, 3), 120.0, np.float32)
            image[3, 4, 1] = np.nan
            return image
        if info["id"] == "inf_float_image":
            image = np.full((H, W, 3), 120.0, np.float32)
            image[5, 5, 0] = np.inf
            return image
        return np.full((H, W, 3), 120, np.uint8)

    def load_mask(self, image_id):
        kind = self.image_info[image_id]["id"]
        good = np.zeros((H, W, 1), bool)
        good[10:30, 8:28] = True
        ones = np.array([1], np.int32)
        if kind == "mask_size_differs":
            return np.zeros((H + 2, W, 1), bool), ones
        if kind == "mask_count_differs":
            return good, np.array([1, 1], np.int32)
        if kind == "zero_instance_mask":
            return np.concatenate([good, np.zeros((H, W, 1), bool)], -1), np.array([1, 1])
        if kind == "only_zero_masks":
            return np.zeros((H, W, 2), bool), np.array([1, 1], np.int32)
        if kind == "class_id_outside":
            return good, np.array([7], np.int32)
        if kind == "class_id_zero":
            return good, np.array([0], np.int32)
        if kind == "too_many_instances":
            masks = np.zeros((H, W, 10), bool)
            for j in range(10):
                masks[j * 4:j * 4 + 3, 2 + j:30 + j, j] = True
            return masks, np.ones([10], np.int32)
        if kind == "load_mask_raises":
            raise KeyError("polygons")
        return good, ones


ANNOTATION_ERRORS = {
    "mask_size_differs": "mask height/width (50, 40) differ from the image's (48, 40)",
    "mask_count_differs": "1 masks but 2 class ids",
    "class_id_outside": "class ids [7] outside [1, 2)",
    "class_id_zero": "class ids [0] outside [1, 2)",
    "load_mask_raises": "load_mask failed: KeyError",
    "nan_float_image": "NaN or infinite",
    "inf_float_image": "NaN or infinite",
}
ANNOTATION_ITEMS = list(ANNOTATION_ERRORS) + ["zero_instance_mask", "only_zero_masks",
                                              "too_many_instances", "good"]


@pytest.fixture(scope="module")
def annotations():
    ds = AnnotationDataset()
    ds.add_class("mem", 1, "thing")
    for kind in ANNOTATION_ITEMS:
        ds.add_image("mem", image_id=kind, path="/data/{}.png".format(kind))
    ds.prepare()
    return ds, {k: i for i, k in enumerate(ANNOTATION_ITEMS)}


@pytest.mark.parametrize("item", sorted(ANNOTATION_ERRORS))
def test_bad_annotation_is_named(annotations, item):
    ds, ids = annotations
    config = CorpusConfig()
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    with pytest.raises(data.ImageError) as e:
        data.load_training_example(ds, config, ids[item], anchors)
    assert_names_image(str(e.value), ids[item], "/data/{}.png".format(item))
    assert ANNOTATION_ERRORS[item] in str(e.value)
    record(item, "named")


def test_empty_instance_masks_are_dropped(annotations):
    """An all-zero instance mask is dropped (documented); the other instance stays."""
    ds, ids = annotations
    config = CorpusConfig()
    _, _, class_ids, boxes, masks = data.load_image_gt(ds, config, ids["zero_instance_mask"],
                                                       use_mini_mask=False)
    _, _, good_ids, good_boxes, good_masks = data.load_image_gt(ds, config, ids["good"],
                                                                use_mini_mask=False)
    np.testing.assert_array_equal(class_ids, good_ids)
    np.testing.assert_array_equal(boxes, good_boxes)
    np.testing.assert_array_equal(masks, good_masks)
    # Square mode: 48x40 -> 64x53 (scale 4/3), x offset (64 - 53) // 2 = 5; the mask
    # [10:30, 8:28] lands within a pixel of its scaled box.
    s = 64 / 48
    assert np.abs(boxes[0] - [10 * s, 8 * s + 5, 30 * s, 28 * s + 5]).max() <= 1, boxes
    record("zero_instance_mask", "converted")
    _, _, class_ids, boxes, masks = data.load_image_gt(ds, config, ids["only_zero_masks"])
    assert class_ids.shape == (0,) and boxes.shape == (0, 4) and masks.shape[-1] == 0
    record("only_zero_masks", "converted")


def test_more_instances_than_max_gt(annotations):
    """10 instances, MAX_GT_INSTANCES 4: a random subset of 4 is kept (documented), each
    exactly one of the original instances."""
    ds, ids = annotations
    config = CorpusConfig()
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    _, _, all_ids, all_boxes, _ = data.load_image_gt(ds, config, ids["too_many_instances"])
    assert len(all_ids) == 10
    ex = data.load_training_example(ds, config, ids["too_many_instances"], anchors,
                                    rng=np.random.default_rng(3))
    np.testing.assert_array_equal(ex["input_gt_class_ids"], [1, 1, 1, 1])
    rows = [tuple(b) for b in all_boxes.astype(np.float32)]
    kept = [tuple(b) for b in ex["input_gt_boxes"]]
    assert len(set(kept)) == 4 and set(kept) <= set(rows)
    record("too_many_instances", "converted")


def test_annotation_corpus_through_pipeline(annotations, caplog):
    """With on_error="skip" every bad annotation is logged by name and counted; images
    left without instances are counted separately; the rest are trained on."""
    ds, ids = annotations
    pipe = data.build_dataset(ds, CorpusConfig(), shuffle=False, repeat=False,
                              batch_size=1, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="mrcnn.data"):
        n = sum(1 for _ in pipe)
    counts = pipe.skip_counter.as_dict()
    assert counts == {"loaded": 3, "errors": len(ANNOTATION_ERRORS), "empty": 1}, counts
    assert n == 3
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for item in ANNOTATION_ERRORS:
        assert_names_image(logged, ids[item], "/data/{}.png".format(item))
        record(item, "skipped")


# ---------------------------------------------------------------------------- COCO / VIA
def coco_base(image_dir):
    Image.fromarray(base_image()).save(os.path.join(image_dir, "a.png"))
    Image.fromarray(base_image()).save(os.path.join(image_dir, "b.png"))
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "b.png", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0,
             "segmentation": [[4, 4, 30, 4, 30, 20, 4, 20]]},
            {"id": 11, "image_id": 2, "category_id": 3, "iscrowd": 0,
             "segmentation": [[6, 6, 20, 6, 20, 30, 6, 30]]}],
        "categories": [{"id": 3, "name": "cat"}],
    }


def _coco_two_points(c):
    c["annotations"][1]["segmentation"] = [[6, 6, 20, 6]]


def _coco_odd(c):
    c["annotations"][1]["segmentation"] = [[6, 6, 20, 6, 20, 30, 6]]


def _coco_unknown_category(c):
    c["annotations"][1]["category_id"] = 99


def _coco_unknown_image(c):
    c["annotations"][1]["image_id"] = 42


def _coco_no_segmentation(c):
    del c["annotations"][1]["segmentation"]


def _coco_missing_image_file(c):
    c["images"][1]["file_name"] = "gone.png"


def _coco_image_no_file_name(c):
    del c["images"][1]["file_name"]


def _coco_bad_rle(c):
    c["annotations"][1]["segmentation"] = {"counts": [5, 5], "size": [H, W]}


# (mutation, entry the error must name, reason text); all skippable with skip_bad=True.
COCO_ENTRY_FAULTS = {
    "two_point_polygon": (_coco_two_points, "annotations[1] (id 11, image_id 2)",
                          "polygon 0 has 2 point(s)"),
    "odd_polygon": (_coco_odd, "annotations[1] (id 11, image_id 2)", "odd count"),
    "unknown_category": (_coco_unknown_category, "annotations[1] (id 11, image_id 2)",
                         "category_id 99 is not an id in 'categories'"),
    "unknown_image_id": (_coco_unknown_image, "annotations[1] (id 11, image_id 42)",
                         "image_id 42 is not an id in 'images'"),
    "no_segmentation": (_coco_no_segmentation, "annotations[1] (id 11, image_id 2)",
                        "no 'segmentation'"),
    "rle_counts_wrong_sum": (_coco_bad_rle, "annotations[1] (id 11, image_id 2)",
                             "sum to 10"),
    "missing_image_file": (_coco_missing_image_file, "images[1] (id 2, file_name 'gone.png')",
                           "image file not found"),
    "image_without_file_name": (_coco_image_no_file_name, "images[1]",
                                "needs 'id' and 'file_name'"),
}
# Skipped entries per fault with skip_bad=True (default 1): an image entry without a
# file name also orphans its annotation, which is reported as a second bad entry.
COCO_SKIPPED = {"image_without_file_name": 2}


@pytest.mark.parametrize("item", sorted(COCO_ENTRY_FAULTS))
def test_coco_entry_fault_named_or_skipped(tmp_path, item):
    mutate, entry, reason = COCO_ENTRY_FAULTS[item]
    content = coco_base(str(tmp_path))
    mutate(content)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(content))
    with pytest.raises(utils.DatasetError) as e:
        CocoJsonDataset().load_coco_json(str(ann), str(tmp_path))
    message = str(e.value)
    assert str(ann) in message and entry in message and reason in message, message
    record("coco_" + item, "named")
    # skip_bad=True: a warning, the bad entry recorded, the good image still loads.
    ds = CocoJsonDataset()
    n_skipped = COCO_SKIPPED.get(item, 1)
    with pytest.warns(DatasetWarning, match="skipped {} bad entr".format(n_skipped)):
        ds.load_coco_json(str(ann), str(tmp_path), skip_bad=True)
    ds.prepare()
    assert len(ds.skipped) == n_skipped and entry in ds.skipped[0][1]
    assert [info["id"] for info in ds.image_info] == [1]
    mask, class_ids = ds.load_mask(0)
    assert mask.shape == (H, W, 1) and class_ids.tolist() == [1]
    assert abs(int(mask.sum()) - 26 * 16) <= 30   # the 26 x 16 polygon of annotation 10
    record("coco_" + item, "skipped")


@pytest.mark.parametrize("item,text,expected", [
    ("missing_key", lambda c: json.dumps({k: v for k, v in c.items() if k != "annotations"}),
     "missing key(s) ['annotations']"),
    ("not_json", lambda c: json.dumps(c)[:40], "not a valid JSON file"),
    ("top_level_list", lambda c: json.dumps([c]), "top level is a list"),
    ("category_without_name", lambda c: json.dumps(dict(c, categories=[{"id": 3}])),
     "categories[0]: needs 'id' and 'name'"),
])
def test_coco_structural_fault_named(tmp_path, item, text, expected):
    ann = tmp_path / "instances.json"
    ann.write_text(text(coco_base(str(tmp_path))))
    with pytest.raises(utils.DatasetError) as e:
        CocoJsonDataset().load_coco_json(str(ann), str(tmp_path), skip_bad=True)
    assert str(ann) in str(e.value) and expected in str(e.value), str(e.value)
    record("coco_" + item, "named")


def test_coco_non_numeric_polygon_named_at_load(tmp_path):
    """Strings as coordinates are caught when the JSON is read, naming file and entry."""
    content = coco_base(str(tmp_path))
    content["annotations"][1]["segmentation"] = [["a", "b", "c", "d", "e", "f"]]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(content))
    with pytest.raises(utils.DatasetError) as e:
        CocoJsonDataset().load_coco_json(str(ann), str(tmp_path))
    assert str(ann) in str(e.value) and "annotations[1] (id 11, image_id 2)" in str(e.value)
    assert "invalid coordinate 'a'" in str(e.value)
    record("coco_non_numeric_polygon", "named")


COCO_CRASH_SCRIPT = """
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
sys.path.insert(0, {root!r})
from mrcnn.datasets import CocoJsonDataset
from mrcnn.utils import DatasetError
ds = CocoJsonDataset()
try:
    ds.load_coco_json({ann!r}, {image_dir!r})
    ds.prepare()
    for i in ds.image_ids:
        ds.load_mask(i)
except DatasetError as e:
    print("NAMED:", e)
    sys.exit(0)
print("NOT NAMED: loaded", [ds.load_mask(i)[0].sum() for i in ds.image_ids])
sys.exit(3)
"""


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e9"])
def test_coco_non_finite_polygon_does_not_crash(tmp_path, value):
    """Python's json accepts NaN / Infinity, and 1e9 is plain JSON: loading such a
    polygon must give a named DatasetError, not kill the process (run in a subprocess
    because today it segfaults inside pycocotools)."""
    content = json.dumps(coco_base(str(tmp_path))).replace("[[6, 6, 20, 6,",
                                                           "[[{}, 6, 20, 6,".format(value))
    ann = tmp_path / "instances.json"
    ann.write_text(content)
    script = COCO_CRASH_SCRIPT.format(root=ROOT, ann=str(ann), image_dir=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, "exit {}: {}{}".format(proc.returncode, proc.stdout,
                                                       proc.stderr[-500:])
    assert "annotations[1] (id 11, image_id 2)" in proc.stdout
    record("coco_polygon_" + value, "named")


def via_region(xs, ys, **attrs):
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": attrs}


GOOD_REGION = via_region([4, 30, 30, 4], [4, 4, 20, 20], kind="cat")
VIA_FAULTS = {
    # item: (entries for b.png or a whole replacement, entry the error names, reason)
    "two_point_polygon": ({"regions": [via_region([1, 20], [1, 1], kind="cat")]},
                          "region 0", "polygon with 2 point(s)"),
    "missing_all_points_y": (
        {"regions": [{"shape_attributes": {"name": "polygon", "all_points_x": [1, 2, 3]},
                      "region_attributes": {"kind": "cat"}}]},
        "region 0", "KeyError('all_points_y')"),
    "unknown_class": ({"regions": [via_region([4, 30, 30], [4, 4, 20], kind="dog")]},
                      "region 0", "class 'dog' not in class_names ['cat']"),
    "no_class_attribute": ({"regions": [via_region([4, 30, 30], [4, 4, 20])]},
                           "region 0", "region attribute 'kind' missing"),
    "regions_not_a_list": ({"regions": "oops"}, "entry 'b.png1'",
                           "'regions' missing or not a list/dict"),
    "missing_image_file": ({"filename": "gone.png"}, "entry 'b.png1'",
                           "image file not found"),
    "no_filename": ({"filename": None}, "entry 'b.png1'", "no 'filename'"),
}


def via_content(image_dir, fault):
    Image.fromarray(base_image()).save(os.path.join(image_dir, "a.png"))
    Image.fromarray(base_image()).save(os.path.join(image_dir, "b.png"))
    b = {"filename": "b.png", "size": 1, "regions": [GOOD_REGION]}
    b.update(fault)
    if b.get("filename") is None:
        del b["filename"]
    return {"a.png1": {"filename": "a.png", "size": 1, "regions": [GOOD_REGION]},
            "b.png1": b}


@pytest.mark.parametrize("item", sorted(VIA_FAULTS))
def test_via_fault_named_or_skipped(tmp_path, item):
    fault, entry, reason = VIA_FAULTS[item]
    (tmp_path / "via.json").write_text(json.dumps(via_content(str(tmp_path), fault)))
    kw = dict(class_attribute="kind", class_names=["cat"])
    with pytest.raises(utils.DatasetError) as e:
        ViaDataset().load_via(str(tmp_path), "via.json", **kw)
    message = str(e.value)
    assert "via.json" in message and entry in message and reason in message, message
    record("via_" + item, "named")
    ds = ViaDataset()
    with pytest.warns(DatasetWarning, match="skipped 1 bad entry"):
        ds.load_via(str(tmp_path), "via.json", skip_bad=True, **kw)
    ds.prepare()
    assert len(ds.skipped) == 1 and entry in ds.skipped[0][1]
    assert [info["id"] for info in ds.image_info] == ["a.png"]
    mask, class_ids = ds.load_mask(0)
    assert mask.shape == (H, W, 1) and class_ids.tolist() == [1]
    assert int(mask.sum()) == 26 * 16   # pixel centres inside the [4, 30] x [4, 20] box
    record("via_" + item, "skipped")


def test_via_top_level_list_named(tmp_path):
    (tmp_path / "via.json").write_text("[1, 2]")
    with pytest.raises(utils.DatasetError, match="top level is a list"):
        ViaDataset().load_via(str(tmp_path), "via.json", skip_bad=True)
    record("via_top_level_list", "named")


def test_via_nan_coordinate_named(tmp_path):
    fault = {"regions": [via_region([4, 30, float("nan")], [4, 4, 20], kind="cat")]}
    (tmp_path / "via.json").write_text(json.dumps(via_content(str(tmp_path), fault)))
    with pytest.raises(utils.DatasetError, match="region 0"):
        ViaDataset().load_via(str(tmp_path), "via.json", class_attribute="kind",
                              class_names=["cat"])
    record("via_nan_coordinate", "named")


# ---------------------------------------------------------------------------- detect()
@pytest.fixture(scope="module")
def infer_model(tmp_path_factory):
    return modellib.MaskRCNN("inference", RobustInferenceConfig(),
                             str(tmp_path_factory.mktemp("infer_logs")))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_detect_rejects_non_finite_float_image(infer_model, bad):
    good = np.full((32, 32, 3), 0.5, np.float32)
    broken = good.copy()
    broken[7, 3, 2] = bad
    with pytest.raises(ValueError, match=r"image 1 contains NaN or infinite values"):
        infer_model.detect([good, broken])
    # Rejected before any TensorFlow work: nothing was traced.
    assert infer_model._detect_fn is None
    record("detect_float_{}".format(bad), "named")


def test_detect_input_conversions():
    """check_images (detect's first step): documented conversions to uint8 RGB."""
    rgb = base_image()
    gray = rgb[..., 0]
    out = check_images([gray, gray[..., None], np.dstack([rgb, rgb[..., :1]]),
                        rgb.astype(np.uint16) * 257, rgb.astype(np.float32) / 255.0,
                        rgb.astype(np.float64)])
    expected = [np.repeat(gray[..., None], 3, -1)] * 2 + [rgb] * 4
    for got, want in zip(out, expected):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="image 0 has 2 channels"):
        check_images([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(ValueError, match="image 0 is too small"):
        check_images([np.zeros((1, 8, 3), np.uint8)])
    record("detect_conversions", "converted")


def test_detect_too_thin_image_named(infer_model):
    with pytest.raises(ValueError, match=r"image 0 of shape \(10000, 40, 3\) is too thin"):
        infer_model.detect([np.zeros((10000, 40, 3), np.uint8)])
    record("detect_10000x40", "named")


# ---------------------------------------------------------------------------- callbacks
class _Holder(object):
    stop_training = False


def test_guard_names_loss_and_global_step():
    guard = NonFiniteLossGuard(["rpn_class_loss", "mrcnn_mask_loss"])
    guard.set_model(_Holder())
    guard.set_params({"epochs": 10, "steps": 100, "verbose": 0})
    guard.on_epoch_begin(3)
    guard.on_train_batch_end(5, {"loss": 1.0, "rpn_class_loss": 0.3, "mrcnn_mask_loss": 0.2})
    assert guard.error is None and not guard.model.stop_training
    guard.on_train_batch_end(6, {"loss": float("nan"), "rpn_class_loss": 0.3,
                                 "mrcnn_mask_loss": float("inf")})
    message = str(guard.error)
    assert isinstance(guard.error, NonFiniteLossError) and guard.model.stop_training
    # Epoch 4 (1-based), batch 7, global step 3 * 100 + 7 (counted from epoch 0).
    assert "epoch 4, batch 7 (global step 307): mrcnn_mask_loss=inf" in message, message
    assert "rpn_class_loss" not in message


def test_checkpoint_callback_never_writes_non_finite(tmp_path):
    """Writes on a finite epoch; refuses when the epoch's loss is non-finite (even with
    finite weights, e.g. a skipped step) and when a weight is non-finite."""
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense_a")])
    pattern = str(tmp_path / "mask_rcnn_x_{epoch:04d}.h5")
    cb = CheckpointCallback(net, pattern)
    cb.on_epoch_end(0, {"loss": 1.5, "val_loss": float("nan")})   # val is not training
    first = tmp_path / "mask_rcnn_x_0001.h5"
    assert first.is_file()
    saved = read_weight_groups(str(first))["dense_a"]
    with pytest.warns(UserWarning, match="non-finite training loss"):
        cb.on_epoch_end(1, {"loss": float("nan"), "rpn_class_loss": 0.2})
    kernel = net.get_layer("dense_a").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    with pytest.warns(UserWarning, match="not finite"):
        cb.on_epoch_end(2, {"loss": 1.0})
    assert sorted(os.listdir(tmp_path)) == ["mask_rcnn_x_0001.h5"]
    assert cb.last_saved == str(first)
    again = read_weight_groups(str(first))["dense_a"]
    for (n1, a), (n2, b) in zip(saved, again):
        assert n1 == n2
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- training
class BrokenShapes(ShapesDataset):
    """Shapes images, some of which are broken files or have a wrong-size mask."""

    def load_image(self, image_id):
        if self.image_info[image_id].get("file"):
            return utils.Dataset.load_image(self, image_id)
        return super().load_image(image_id)

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        if info.get("file"):
            m = np.zeros((H, W, 1), bool)
            m[10:30, 10:30] = True
            return m, np.array([1], np.int32)
        mask, class_ids = super().load_mask(image_id)
        if info.get("bad_mask"):
            mask = np.zeros((mask.shape[0] + 5,) + mask.shape[1:], bool)
        return mask, class_ids


def leaf_layers(keras_model):
    """{name: layer} of every weight-bearing layer, nested models expanded."""
    out = {}
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            out.update(leaf_layers(layer))
        elif layer.weights:
            out[layer.name] = layer
    return out


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory, corpus):
    """One train() call: epoch 1 on 4 good + 4 broken images with on_error="skip";
    in epoch 2 mrcnn_mask_loss is forced to NaN (monkeypatched loss computation)."""
    logs = str(tmp_path_factory.mktemp("train_logs"))
    train = BrokenShapes()
    train.load_shapes(5, 64, 64, seed=4)   # ids 0-3 good, 4 gets a wrong-size mask
    for item in ("zero_byte", "truncated_jpeg", "missing_file"):
        train.add_image("shapes", image_id=item, path=corpus["items"][item][0], file=True)
    train.image_info[4]["bad_mask"] = True
    train.prepare()
    broken = {i: info for i, info in enumerate(train.image_info) if i >= 4}
    val = ShapesDataset()
    val.load_shapes(2, 64, 64, seed=5)
    val.prepare()

    model = modellib.MaskRCNN("training", RobustConfig(), logs)
    poison = tf.Variable(0.0, trainable=False, name="poison")
    original = TrainingModel._compute_losses

    def poisoned(self, inputs, training):
        total, named = original(self, inputs, training)
        i = self.loss_names.index("mrcnn_mask_loss")
        factor = 1.0 + tf.where(poison > 0, float("nan"), 0.0)
        bad = named[i] * factor
        return total + (bad - named[i]), named[:i] + [bad] + named[i + 1:]

    snapshots = {}

    class Steer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                poison.assign(1.0)

        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = {name: [np.array(w) for w in layer.get_weights()]
                                for name, layer in leaf_layers(model.keras_model).items()}

    handler = _ListHandler()
    logger = logging.getLogger("mrcnn.data")
    logger.addHandler(handler)
    error = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(TrainingModel, "_compute_losses", poisoned)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model.train(train, val, learning_rate=0.01, epochs=2, layers="all",
                                on_error="skip", custom_callbacks=[Steer()], verbose=0)
                except NonFiniteLossError as e:
                    error = e
    finally:
        logger.removeHandler(handler)
    return dict(model=model, error=error, log_dir=model.log_dir, messages=handler.messages,
                warnings=[str(w.message) for w in caught], broken=broken,
                snapshots=snapshots, dataset=train)


def test_training_skips_broken_images_and_counts_them(guarded_run):
    """Epoch 1 completes although half the images are broken; each is logged by name
    and the epoch-end report counts them (>= 4: the first pass loads all 8)."""
    messages = guarded_run["messages"]
    ds = guarded_run["dataset"]
    for image_id, info in guarded_run["broken"].items():
        text = "\n".join(m for m in messages if m.startswith("Skipping broken image"))
        assert "image {} (path {!r}".format(image_id, info["path"]) in text, text
    reports = [m for m in messages if m.startswith("Epoch 1: ")]
    assert len(reports) == 1, messages
    count = int(reports[0].split()[2])
    assert count >= 4 and "broken train image(s) skipped ({} in total)".format(count) \
        in reports[0], reports[0]
    assert len(ds.image_info) == 8
    assert os.path.isfile(os.path.join(guarded_run["log_dir"], "mask_rcnn_robust_0001.h5"))


def test_nan_loss_stops_training_naming_loss_and_step(guarded_run):
    error = guarded_run["error"]
    assert isinstance(error, NonFiniteLossError), guarded_run["warnings"]
    message = str(error)
    # 3 steps per epoch: the first batch of epoch 2 is global step 4.
    assert "epoch 2, batch 1 (global step 4): mrcnn_mask_loss=nan" in message, message
    for other in ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss"):
        assert other not in message
    assert guarded_run["model"].epoch == 0   # train() raised before counting epoch 2


def test_nan_run_keeps_last_good_checkpoint(guarded_run):
    log_dir = guarded_run["log_dir"]
    files = sorted(f for f in os.listdir(log_dir) if f.endswith((".h5", ".tmp")))
    assert files == ["mask_rcnn_robust_0001.h5"], files
    assert any("checkpoint not written" in w for w in guarded_run["warnings"])
    # The checkpoint holds the finite weights of the end of epoch 1, and the model's
    # weights after the NaN step are not finite (the step applied NaN gradients).
    groups = read_weight_groups(os.path.join(log_dir, "mask_rcnn_robust_0001.h5"))
    epoch1 = guarded_run["snapshots"][0]
    assert set(epoch1) <= set(groups)
    for name, arrays in epoch1.items():
        for (_, stored), live in zip(groups[name], arrays):
            assert np.all(np.isfinite(stored))
            np.testing.assert_array_equal(stored, live)
    now = guarded_run["model"].keras_model.get_layer("mrcnn_mask").get_weights()[0]
    assert not np.all(np.isfinite(now))


def test_find_last_after_nan_is_the_good_checkpoint(guarded_run):
    model = guarded_run["model"]
    assert model.find_last() == os.path.join(guarded_run["log_dir"],
                                             "mask_rcnn_robust_0001.h5")
    with h5py.File(model.find_last(), "r") as f:
        assert "mrcnn_mask" in f and "tiny_c1" in f


# ---------------------------------------------------------------------------- properties
@st.composite
def gt_boxes_64(draw):
    """1-4 GT boxes of at least 6 x 6 pixels inside a 64 x 64 image."""
    n = draw(st.integers(1, 4))
    boxes = []
    for _ in range(n):
        y1 = draw(st.integers(0, 52))
        x1 = draw(st.integers(0, 52))
        boxes.append([y1, x1, draw(st.integers(y1 + 6, 64)), draw(st.integers(x1 + 6, 64))])
    return np.array(boxes, np.float64)


@FAST
@given(gt_boxes_64(), st.integers(0, 10 ** 6))
def test_rpn_targets_decode_to_their_gt(boxes, seed):
    """Box encoding as training uses it: every positive anchor's std-scaled delta,
    unscaled and applied to the anchor, gives back the GT box it overlaps most."""
    config = RobustConfig()
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    class_ids = np.ones(len(boxes), np.int32)
    match, deltas = data.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes,
                                           config, rng=np.random.default_rng(seed))
    positive = np.flatnonzero(match == 1)
    assert 1 <= len(positive) <= config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    assert np.count_nonzero(match) <= config.RPN_TRAIN_ANCHORS_PER_IMAGE
    decoded = utils.apply_box_deltas(anchors[positive],
                                     deltas[:len(positive)] * config.RPN_BBOX_STD_DEV)
    assigned = boxes[np.argmax(utils.compute_overlaps(anchors[positive], boxes), axis=1)]
    np.testing.assert_allclose(decoded, assigned, atol=1e-3)
    assert not np.any(deltas[len(positive):])


@FAST
@given(st.integers(8, 300), st.integers(8, 300), st.floats(0.05, 0.45),
       st.floats(0.05, 0.45), st.floats(0.2, 0.5), st.floats(0.2, 0.5))
def test_unmold_detections_round_trip(h, w, fy, fx, fh, fw):
    """A box in original pixels, taken to the molded (square 64) frame and normalised as
    the network outputs it, comes back from unmold_detections within the resize
    rounding, with a full-box mask."""
    config = RobustInferenceConfig()
    image = np.zeros((h, w, 3), np.uint8)
    _, window, scale, _, _ = utils.resize_image(image, min_dim=config.IMAGE_MIN_DIM,
                                                max_dim=config.IMAGE_MAX_DIM, mode="square")
    assume(window[2] - window[0] >= 2 and window[3] - window[1] >= 2)
    box = np.array([fy * h, fx * w, (fy + fh) * h, (fx + fw) * w])
    # Boxes under a molded pixel may round to nothing and are dropped (documented).
    assume(min(fh * h, fw * w) * scale >= 2)
    molded = box * scale + np.array([window[0], window[1]] * 2)
    det = np.zeros((3, 6), np.float32)
    det[0, :4] = utils.norm_boxes(molded, (64, 64))
    det[0, 4:] = [1, 0.9]
    masks = np.zeros((3, 14, 14, 2), np.float32)
    masks[0, :, :, 1] = 1.0
    rois, class_ids, scores, full = unmold_detections(det, masks, (h, w, 3), (64, 64, 3),
                                                      np.array(window))
    assert class_ids.tolist() == [1] and np.allclose(scores, [0.9])
    # Window edges are whole pixels of the molded frame: 1 px there, plus rounding.
    tol = 1.0 / scale + 1.0
    assert np.abs(rois[0] - box).max() <= tol, (rois, box, scale)
    y1, x1, y2, x2 = rois[0]
    assert full.shape == (h, w, 1)
    assert full[y1:y2, x1:x2, 0].all() and full[..., 0].sum() == (y2 - y1) * (x2 - x1)


@FAST
@given(st.integers(2, 12), st.integers(2, 12), st.integers(0, 10 ** 6))
def test_minimize_expand_exact_at_box_size(bh, bw, seed):
    """Any mask shape (not only rectangles) survives minimize -> expand exactly when the
    mini mask has its box's size."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((20, 20, 1), bool)
    blob = rng.random((bh, bw)) > 0.5
    # One pixel on each side of the bh x bw box, so the box is exactly the blob's.
    blob[0, rng.integers(bw)] = blob[-1, rng.integers(bw)] = True
    blob[rng.integers(bh), 0] = blob[rng.integers(bh), -1] = True
    mask[3:3 + bh, 5:5 + bw, 0] = blob
    box = utils.extract_bboxes(mask)
    np.testing.assert_array_equal(box, [[3, 5, 3 + bh, 5 + bw]])
    mini = utils.minimize_mask(box, mask, (bh, bw))
    np.testing.assert_array_equal(mini[..., 0], blob)
    np.testing.assert_array_equal(utils.expand_mask(box, mini, (20, 20)), mask)


@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 10 ** 6))
def test_mask_iou_bounds(n1, n2, seed):
    """Mask IoU: in [0, 1], symmetric, 1 on the diagonal of non-empty masks, 0 (not
    NaN) for empty masks, and equal to a direct pixel count."""
    rng = np.random.default_rng(seed)
    m1 = rng.random((12, 12, n1)) > 0.6
    m2 = rng.random((12, 12, n2)) > 0.6
    m1[..., 0] = False   # one empty mask
    ov = utils.compute_overlaps_masks(m1, m2)
    assert ov.shape == (n1, n2) and np.all(np.isfinite(ov))
    assert np.all(ov >= 0) and np.all(ov <= 1)
    np.testing.assert_allclose(ov, utils.compute_overlaps_masks(m2, m1).T, rtol=1e-6)
    for i in range(n1):
        for j in range(n2):
            union = np.logical_or(m1[..., i], m2[..., j]).sum()
            inter = np.logical_and(m1[..., i], m2[..., j]).sum()
            assert ov[i, j] == pytest.approx(inter / union if union else 0.0, rel=1e-6)
    diag = np.diag(utils.compute_overlaps_masks(m1, m1))
    np.testing.assert_allclose(diag, [0.0] + [1.0 if m1[..., i].any() else 0.0
                                             for i in range(1, n1)])


@FAST
@given(st.integers(1, 3000), st.integers(1, 3000))
def test_square_resize_window_and_padding(h, w):
    """"square" at 64 for any aspect ratio: either a window of at least 2 pixels holding
    the resized image with zero padding around it, or (too thin) load_image_gt's and
    detect()'s named errors; never a silent empty or 1-pixel image."""
    image = np.full((h, w, 3), 200, np.uint8)
    if round(min(h, w) * 64 / max(h, w)) >= 2:
        out, window, scale, padding, _ = utils.resize_image(image, min_dim=64, max_dim=64,
                                                            mode="square")
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        wh, ww = window[2] - window[0], window[3] - window[1]
        assert (wh, ww) == (round(h * scale), round(w * scale)) and min(wh, ww) >= 1
        inside = np.zeros((64, 64), bool)
        inside[window[0]:window[2], window[1]:window[3]] = True
        assert np.all(out[~inside] == 0)
        # Bilinear on a constant image, truncated by astype: 200 or a hair below.
        assert np.all(out[inside] >= 199)
        return
    ds = AnnotationDataset()
    ds.add_class("mem", 1, "thing")
    ds.add_image("mem", image_id="thin", path="/data/thin.png")
    ds.prepare()
    ds.load_image = lambda i: image
    ds.load_mask = lambda i: (np.zeros((h, w, 0), bool), np.zeros([0], np.int32))
    with pytest.raises(data.ImageError, match="too thin"):
        data.load_image_gt(ds, CorpusConfig(), 0)
    with pytest.raises(ValueError, match="image 0 of shape .* is too thin"):
        mold_inputs([image], RobustInferenceConfig())
