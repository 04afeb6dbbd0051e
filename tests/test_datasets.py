"""Tests of mrcnn.datasets (COCO JSON, VIA, DSB2018 loaders) and the dataset parts of the
samples coco.py, balloon.py and nucleus.py.

Synthetic files are written into tmp_path by the tests; real files come from
../shared/data (or $MRCNN_SHARED_DATA) and those tests are skipped when it is absent.
Expected areas are computed independently (shoelace formula, hand-made rectangles).
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mrcnn.datasets import (CocoJsonDataset, DatasetWarning, MissingFileError,  # noqa: E402
                            NucleusDataset, ViaDataset, split_ids, split_items)
from mrcnn.utils import DatasetError  # noqa: E402

SHARED_DATA = os.environ.get("MRCNN_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
BALLOON_TRAIN = os.path.join(SHARED_DATA, "balloon", "train")
DSB_TRAIN = os.path.join(SHARED_DATA, "dsb2018", "stage1_train")


# ----------------------------------------------------------------------------- helpers

def shoelace(xs, ys):
    """Polygon area, written out independently of the library."""
    n = len(xs)
    s = 0.0
    for i in range(n):
        j = (i + 1) % n
        s += xs[i] * ys[j] - xs[j] * ys[i]
    return abs(s) / 2.0


def perimeter(xs, ys):
    n = len(xs)
    return sum(math.hypot(xs[(i + 1) % n] - xs[i], ys[(i + 1) % n] - ys[i]) for i in range(n))


def assert_area_close(mask, xs, ys):
    """A rasterised polygon differs from its exact area by at most the boundary pixels it
    cuts: half the perimeter (+1 for vertices) is a safe bound."""
    area = int(mask.sum())
    expected = shoelace(xs, ys)
    assert abs(area - expected) <= 0.5 * perimeter(xs, ys) + 1, (area, expected)
    return area, expected


def write_image(path, height, width, mode="RGB", seed=0):
    rng = np.random.RandomState(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.randint(0, 256, size=(height, width, channels)).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)


def uncompressed_rle(mask):
    """COCO uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def load_module(name, relpath):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- COCO JSON

TRIANGLE = [10, 10, 50, 12, 20, 45]
SQUARE_A = [55, 5, 70, 5, 70, 20, 55, 20]
SQUARE_B = [55, 30, 70, 30, 70, 40, 55, 40]
RECT_B = [5, 5, 30, 5, 30, 40, 5, 40]
TINY = [10, 10, 10.3, 10, 10, 10.3]  # less than a pixel: rasterises to nothing


def disk(height, width, cy, cx, r):
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r


def crowd_rect():
    m = np.zeros((60, 80), dtype=bool)
    m[40:55, 5:30] = True
    return m


@pytest.fixture
def coco_files(tmp_path):
    """Two images (60x80 PNG id 11, 50x40 JPEG id 22), categories 7 'dog' and 3 'cat'
    (listed out of order), polygons, a two-part polygon, compressed RLE, an uncompressed
    crowd RLE and a sub-pixel polygon."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    write_image(image_dir / "a.png", 60, 80)
    write_image(image_dir / "b.jpg", 50, 40, seed=1)
    rle = mask_utils.encode(np.asfortranarray(disk(60, 80, 30, 60, 8).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    data = {
        "images": [{"id": 11, "file_name": "a.png", "height": 60, "width": 80},
                   {"id": 22, "file_name": "b.jpg"}],  # size read from the header
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 101, "image_id": 11, "category_id": 3, "segmentation": [TRIANGLE],
             "iscrowd": 0},
            {"id": 102, "image_id": 11, "category_id": 7,
             "segmentation": [SQUARE_A, SQUARE_B], "iscrowd": 0},
            {"id": 103, "image_id": 11, "category_id": 3, "segmentation": rle, "iscrowd": 0},
            {"id": 104, "image_id": 11, "category_id": 7,
             "segmentation": uncompressed_rle(crowd_rect()), "iscrowd": 1},
            {"id": 201, "image_id": 22, "category_id": 7, "segmentation": [RECT_B],
             "iscrowd": 0},
            {"id": 202, "image_id": 22, "category_id": 3, "segmentation": [TINY],
             "iscrowd": 0},
        ],
    }
    ann_path = tmp_path / "instances.json"
    ann_path.write_text(json.dumps(data))
    return str(ann_path), str(image_dir), data


def test_coco_json_classes_masks_rle_crowd(coco_files):
    ann_path, image_dir, _ = coco_files
    ds = CocoJsonDataset()
    coco = ds.load_coco_json(ann_path, image_dir, return_coco=True)
    ds.prepare()

    assert ds.num_images == 2 and ds.skipped == []
    # Non-contiguous category ids 3, 7 -> internal 1, 2 (ascending category id).
    assert ds.class_names == ["BG", "cat", "dog"]
    assert ds.map_source_class_id("coco.3") == 1 and ds.map_source_class_id("coco.7") == 2
    assert ds.get_source_class_id(2, "coco") == 7
    assert [info["id"] for info in ds.image_info] == [11, 22]
    assert (ds.image_info[1]["height"], ds.image_info[1]["width"]) == (50, 40)
    assert len(coco.getAnnIds()) == 6 and sorted(coco.getImgIds()) == [11, 22]

    masks, class_ids = ds.load_mask(0)
    assert masks.dtype == bool and masks.shape == (60, 80, 4)
    assert class_ids.dtype == np.int32
    # Crowd annotation (iscrowd=1, dog) gets the negative class id.
    assert class_ids.tolist() == [1, 2, 1, -2]
    # Repeat-factor sampling's classes come from the JSON alone, crowds left out.
    assert ds.image_class_ids(0).tolist() == [1, 2, 1]
    assert_area_close(masks[..., 0], TRIANGLE[0::2], TRIANGLE[1::2])
    # Two polygon parts of one object merge into one mask: 15x15 + 15x10 pixels.
    assert masks[..., 1].sum() == 225 + 150
    assert masks[5:20, 55:70, 1].all() and masks[30:40, 55:70, 1].all()
    # RLE masks come back exactly.
    np.testing.assert_array_equal(masks[..., 2], disk(60, 80, 30, 60, 8))
    np.testing.assert_array_equal(masks[..., 3], crowd_rect())

    masks, class_ids = ds.load_mask(1)
    # The sub-pixel polygon is dropped; the rectangle remains (25 x 35 pixels).
    assert masks.shape == (50, 40, 1) and class_ids.tolist() == [2]
    assert masks[..., 0].sum() == 25 * 35
    assert ds.image_reference(0).startswith(ann_path)


def test_coco_json_class_filter_and_empty_images(coco_files, tmp_path):
    ann_path, image_dir, data = coco_files
    ds = CocoJsonDataset()
    ds.load_coco_json(ann_path, image_dir, class_ids=[7])
    ds.prepare()
    assert ds.class_names == ["BG", "dog"] and ds.num_images == 2
    assert ds.load_mask(0)[1].tolist() == [1, -1]

    # An image without annotations is left out (Matterport) unless include_empty.
    write_image(os.path.join(image_dir, "c.png"), 20, 20)
    data = dict(data, images=data["images"] + [{"id": 33, "file_name": "c.png",
                                                "height": 20, "width": 20}])
    path = tmp_path / "with_empty.json"
    path.write_text(json.dumps(data))
    ds = CocoJsonDataset()
    ds.load_coco_json(str(path), image_dir)
    assert len(ds.image_info) == 2
    ds = CocoJsonDataset()
    ds.load_coco_json(str(path), image_dir, include_empty=True)
    ds.prepare()
    masks, class_ids = ds.load_mask(2)
    assert masks.shape == (20, 20, 0) and class_ids.shape == (0,)

    with pytest.raises(DatasetError, match="class_ids"):
        CocoJsonDataset().load_coco_json(ann_path, image_dir, class_ids=[5])


def _add_ann(data, **ann):
    data["annotations"].append(ann)


def _bad_unknown_image(data, image_dir):
    _add_ann(data, id=301, image_id=999, category_id=3, segmentation=[TRIANGLE])
    return "annotations[6] (id 301, image_id 999)", "image_id 999", 6


def _bad_missing_file(data, image_dir):
    data["images"].append({"id": 33, "file_name": "missing.png", "height": 10, "width": 10})
    _add_ann(data, id=331, image_id=33, category_id=3, segmentation=[TRIANGLE])
    return "images[2] (id 33, file_name 'missing.png')", "image file not found", 6


def _bad_short_polygon(data, image_dir):
    data["annotations"][4]["segmentation"] = [[5, 5, 30, 5]]
    return "annotations[4] (id 201, image_id 22)", "2 point(s)", 5


def _bad_category(data, image_dir):
    data["annotations"][4]["category_id"] = 99
    return "annotations[4] (id 201, image_id 22)", "category_id 99", 5


def _bad_rle_size(data, image_dir):
    data["annotations"][2]["segmentation"]["size"] = [10, 10]
    return "annotations[2] (id 103, image_id 11)", "RLE size [10, 10]", 5


def _bad_rle_counts(data, image_dir):
    data["annotations"][3]["segmentation"]["counts"][0] += 5
    return "annotations[3] (id 104, image_id 11)", "sum to", 5


@pytest.mark.parametrize("make_bad", [_bad_unknown_image, _bad_missing_file,
                                      _bad_short_polygon, _bad_category, _bad_rle_size,
                                      _bad_rle_counts])
def test_coco_json_bad_entries(coco_files, tmp_path, make_bad):
    _, image_dir, data = coco_files
    data = json.loads(json.dumps(data))
    entry, reason, kept_annotations = make_bad(data, image_dir)
    path = str(tmp_path / "bad.json")
    with open(path, "w") as f:
        json.dump(data, f)

    with pytest.raises(DatasetError) as err:
        CocoJsonDataset().load_coco_json(path, image_dir)
    message = str(err.value)
    assert path in message and entry in message and reason in message

    ds = CocoJsonDataset()
    with pytest.warns(DatasetWarning, match="skipped 1 bad entry"):
        ds.load_coco_json(path, image_dir, skip_bad=True)
    ds.prepare()
    assert len(ds.skipped) == 1
    file, skipped_entry, skipped_reason = ds.skipped[0]
    assert file == path and skipped_entry == entry and reason in skipped_reason
    # Only the bad entry is gone: both good images and the other annotations remain.
    assert [info["id"] for info in ds.image_info] == [11, 22]
    assert sum(len(info["annotations"]) for info in ds.image_info) == kept_annotations


def test_coco_json_file_level_errors(coco_files, tmp_path):
    ann_path, image_dir, _ = coco_files
    missing = str(tmp_path / "nope.json")
    with pytest.raises(MissingFileError, match="nope.json") as err:
        CocoJsonDataset().load_coco_json(missing, image_dir, skip_bad=True)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetError, match="image folder not found: .*no_images"):
        CocoJsonDataset().load_coco_json(ann_path, str(tmp_path / "no_images"))

    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text(json.dumps({"images": [], "licenses": []}))
    with pytest.raises(DatasetError, match=r"not_coco.json: not a COCO annotation file: "
                                           r"missing key\(s\) \['annotations', 'categories'\]"):
        CocoJsonDataset().load_coco_json(str(not_coco), image_dir, skip_bad=True)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DatasetError, match="garbage.json: not a valid JSON file"):
        CocoJsonDataset().load_coco_json(str(garbage), image_dir)


# ----------------------------------------------------------------------------- VIA

def _via_regions():
    """Regions per file: (shape_attributes list, expected masks per file)."""
    return {
        "p.png": [
            {"name": "polygon", "all_points_x": [5, 30, 20], "all_points_y": [5, 8, 30]},
            {"name": "rect", "x": 35, "y": 5, "width": 20, "height": 10},
            {"name": "circle", "cx": 45, "cy": 28, "r": 8},
            {"name": "point", "cx": 3, "cy": 3},  # cannot be a mask: dropped, warned
        ],
        "q.jpg": [
            {"name": "ellipse", "cx": 25, "cy": 25, "rx": 15, "ry": 8, "theta": 0.5},
            {"name": "polyline", "all_points_x": [2, 20, 2], "all_points_y": [2, 2, 20]},
            # Partly outside the 50x50 image: clipped to x <= 50.
            {"name": "polygon", "all_points_x": [30, 70, 70, 30],
             "all_points_y": [30, 30, 45, 45]},
        ],
        "empty.png": [],
    }


def write_via(folder, fmt, regions=None, attributes=None):
    """Write images p.png (40x60), q.jpg (50x50), empty.png, unlisted.png and a VIA file
    in format fmt: "via1" (regions dict), "via2" (regions list) or "via2project"."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    write_image(os.path.join(folder, "p.png"), 40, 60)
    write_image(os.path.join(folder, "q.jpg"), 50, 50, seed=1)
    write_image(os.path.join(folder, "empty.png"), 30, 30, seed=2)
    write_image(os.path.join(folder, "unlisted.png"), 30, 30, seed=3)
    regions = regions or _via_regions()
    entries = {}
    for filename, shapes in regions.items():
        rs = []
        for k, shape in enumerate(shapes):
            attrs = (attributes or {}).get((filename, k), {})
            rs.append({"shape_attributes": shape, "region_attributes": attrs})
        if fmt == "via1":
            rs = {str(k): r for k, r in enumerate(rs)}
        image_path = os.path.join(folder, filename)
        size = os.path.getsize(image_path) if os.path.exists(image_path) else 0
        entries[filename + str(size)] = {"filename": filename, "size": size, "regions": rs,
                                         "file_attributes": {}}
    data = entries if fmt != "via2project" else {
        "_via_settings": {}, "_via_img_metadata": entries, "_via_attributes": {}}
    path = os.path.join(folder, "via_region_data.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


@pytest.mark.parametrize("fmt", ["via1", "via2", "via2project"])
def test_via_formats_shapes_and_areas(tmp_path, fmt):
    json_path = write_via(tmp_path, fmt)
    ds = ViaDataset()
    with pytest.warns(DatasetWarning, match="point"):
        ds.load_via(str(tmp_path))
    ds.prepare()
    assert ds.num_images == 2 and ds.class_names == ["BG", "balloon"]
    assert [info["id"] for info in ds.image_info] == ["p.png", "q.jpg"]
    assert ds.unannotated == ["empty.png", "unlisted.png"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == json_path
    assert "region 3" in ds.skipped[0][1] and "point" in ds.skipped[0][2]
    assert (ds.image_info[0]["height"], ds.image_info[0]["width"]) == (40, 60)

    masks, class_ids = ds.load_mask(0)
    assert masks.shape == (40, 60, 3) and masks.dtype == bool
    assert class_ids.tolist() == [1, 1, 1] and class_ids.dtype == np.int32
    assert ds.image_class_ids(0).tolist() == [1, 1, 1]
    assert_area_close(masks[..., 0], [5, 30, 20], [5, 8, 30])
    assert masks[..., 1].sum() == 20 * 10  # rect: exactly its pixels
    assert masks[5:15, 35:55, 1].all()
    circle = masks[..., 2].sum()
    assert abs(circle - math.pi * 64) <= 0.5 * 2 * math.pi * 8 + 1

    masks, class_ids = ds.load_mask(1)
    assert masks.shape == (50, 50, 3)
    assert abs(masks[..., 0].sum() - math.pi * 15 * 8) <= 0.5 * 2 * math.pi * 15 + 1
    # The ellipse is rotated by theta = 0.5 rad: its long axis leaves the x axis.
    ys, xs = np.nonzero(masks[..., 0])
    assert np.corrcoef(xs, ys)[0, 1] > 0.3
    assert_area_close(masks[..., 1], [2, 20, 2], [2, 2, 20])
    # Clipped polygon: x 30..50, y 30..45 -> 20 x 15 pixels.
    assert masks[..., 2].sum() == 20 * 15
    assert max(max(p["all_points_x"]) for p in ds.image_info[1]["polygons"]) == 50


def test_via_matches_coco_rasterisation(tmp_path):
    """The same polygon through the VIA and COCO loaders gives the same mask."""
    xs, ys = [5.5, 40.2, 33.0, 8.0], [4.0, 9.5, 35.7, 28.3]
    write_via(tmp_path, "via2", regions={"p.png": [
        {"name": "polygon", "all_points_x": xs, "all_points_y": ys}]})
    via = ViaDataset()
    via.load_via(str(tmp_path))
    via.prepare()
    coco_mask = mask_utils.decode(mask_utils.frPyObjects(
        [[v for xy in zip(xs, ys) for v in xy]], 40, 60))[..., 0].astype(bool)
    via_mask = via.load_mask(0)[0][..., 0]
    area, expected = assert_area_close(via_mask, xs, ys)
    assert abs(area - expected) <= 0.03 * expected  # unbiased: no half-perimeter excess
    assert np.logical_xor(via_mask, coco_mask).sum() <= 0.02 * coco_mask.sum()


def test_via_class_attribute(tmp_path):
    attrs = {("p.png", 0): {"type": "cat"}, ("p.png", 1): {"type": {"dog": True}},
             ("p.png", 2): {"type": "cat"}, ("q.jpg", 0): {"type": "dog"},
             ("q.jpg", 1): {"type": "dog"}, ("q.jpg", 2): {"type": "cat"}}
    regions = _via_regions()
    regions["p.png"] = regions["p.png"][:3]
    write_via(tmp_path, "via2", regions=regions, attributes=attrs)
    ds = ViaDataset()
    ds.load_via(str(tmp_path), class_attribute="type")
    ds.prepare()
    assert ds.class_names == ["BG", "cat", "dog"]
    assert ds.load_mask(0)[1].tolist() == [1, 2, 1]
    ds = ViaDataset()
    ds.load_via(str(tmp_path), class_attribute="type", class_names=["dog", "cat"])
    ds.prepare()
    assert ds.class_names == ["BG", "dog", "cat"]
    assert ds.load_mask(1)[1].tolist() == [1, 1, 2]

    attrs[("q.jpg", 1)] = {}
    write_via(tmp_path, "via2", regions=regions, attributes=attrs)
    with pytest.raises(DatasetError, match=r"\(q.jpg\) region 1: region attribute 'type'"):
        ViaDataset().load_via(str(tmp_path), class_attribute="type")


def test_via_bad_entries(tmp_path):
    regions = _via_regions()
    regions["p.png"] = regions["p.png"][:3]
    regions["q.jpg"][1] = {"name": "polygon", "all_points_x": [2, 20], "all_points_y": [2, 2]}
    regions["gone.png"] = [regions["p.png"][0]]
    json_path = write_via(tmp_path, "via1", regions=regions)

    with pytest.raises(DatasetError) as err:
        ViaDataset().load_via(str(tmp_path))
    message = str(err.value)
    assert json_path in message and "(q.jpg) region 1" in message and "2 point(s)" in message

    ds = ViaDataset()
    with pytest.warns(DatasetWarning, match="skipped 2 bad entries"):
        ds.load_via(str(tmp_path), skip_bad=True)
    ds.prepare()
    assert [e for _, e, _ in ds.skipped] == [
        "entry 'q.jpg{}' (q.jpg) region 1".format(os.path.getsize(tmp_path / "q.jpg")),
        "entry 'gone.png0'"]
    assert "image file not found" in ds.skipped[1][2] and "gone.png" in ds.skipped[1][2]
    assert all(f == json_path for f, _, _ in ds.skipped)
    # The rest is kept: 3 regions of p.png, 2 of q.jpg.
    assert ds.num_images == 2
    assert [ds.load_mask(i)[0].shape[-1] for i in ds.image_ids] == [3, 2]

    with pytest.raises(MissingFileError, match="other.json"):
        ViaDataset().load_via(str(tmp_path), annotation_file="other.json")
    (tmp_path / "v3.json").write_text(json.dumps({"project": {}, "file": {}, "metadata": {}}))
    with pytest.raises(DatasetError, match="v3.json: VIA 3"):
        ViaDataset().load_via(str(tmp_path), annotation_file="v3.json")


# ----------------------------------------------------------------------------- DSB2018

def write_nucleus(root, image_id, height, width, rects):
    """One DSB-style image folder with one mask PNG (0/255) per rectangle."""
    os.makedirs(os.path.join(root, image_id, "images"))
    os.makedirs(os.path.join(root, image_id, "masks"))
    write_image(os.path.join(root, image_id, "images", image_id + ".png"), height, width,
                mode="RGBA")
    for k, (y1, x1, y2, x2) in enumerate(rects):
        m = np.zeros((height, width), dtype=np.uint8)
        m[y1:y2, x1:x2] = 255
        Image.fromarray(m).save(os.path.join(root, image_id, "masks", "m{}.png".format(k)))


def test_nucleus_synthetic(tmp_path):
    root = str(tmp_path)
    rects_a = [(0, 0, 5, 5), (10, 10, 20, 30), (25, 0, 32, 40)]
    write_nucleus(root, "img_b", 32, 40, [(1, 1, 3, 4), (20, 20, 30, 35)])
    write_nucleus(root, "img_a", 32, 40, rects_a)
    ds = NucleusDataset()
    ds.load_nucleus(root)
    ds.prepare()
    assert [info["id"] for info in ds.image_info] == ["img_a", "img_b"]
    assert ds.class_names == ["BG", "nucleus"]
    masks, class_ids = ds.load_mask(0)
    assert masks.shape == (32, 40, 3) and class_ids.tolist() == [1, 1, 1]
    assert [int(masks[..., k].sum()) for k in range(3)] == [
        (y2 - y1) * (x2 - x1) for y1, x1, y2, x2 in rects_a]
    assert ds.load_mask(1)[0].shape == (32, 40, 2)
    assert ds.load_image(0).shape == (32, 40, 3)  # RGBA -> RGB
    assert ds.image_reference(1) == "img_b"

    ds = NucleusDataset()
    ds.load_nucleus(root, subset_ids=["img_b"])
    assert len(ds.image_info) == 1
    with pytest.raises(DatasetError, match="image id 'img_z': image file not found"):
        NucleusDataset().load_nucleus(root, subset_ids=["img_a", "img_z"])
    ds = NucleusDataset()
    with pytest.warns(DatasetWarning):
        ds.load_nucleus(root, subset_ids=["img_a", "img_z"], skip_bad=True)
    assert [info["id"] for info in ds.image_info] == ["img_a"] and len(ds.skipped) == 1

    # A mask of the wrong size is reported with its file.
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        os.path.join(root, "img_b", "masks", "wrong.png"))
    ds = NucleusDataset()
    ds.load_nucleus(root)
    ds.prepare()
    with pytest.raises(DatasetError, match=r"wrong.png: mask of image id 'img_b' is 8x8"):
        ds.load_mask(1)


def test_nucleus_mask_cache(tmp_path):
    root = str(tmp_path)
    rects = [(0, 0, 5, 5), (10, 10, 20, 30), (25, 0, 32, 40), (3, 3, 4, 4)]
    write_nucleus(root, "img_a", 32, 40, rects)
    # A non-rectangular mask too: its crop must keep the hole.
    ring = np.zeros((32, 40), np.uint8)
    ring[12:22, 2:9] = 255
    ring[15:18, 4:6] = 0
    Image.fromarray(ring).save(os.path.join(root, "img_a", "masks", "m9.png"))
    plain = NucleusDataset()
    plain.load_nucleus(root)
    plain.prepare()
    cached = NucleusDataset()
    cached.load_nucleus(root, cache_masks=True)
    cached.prepare()
    expected, expected_ids = plain.load_mask(0)
    for _ in range(2):
        masks, class_ids = cached.load_mask(0)
        np.testing.assert_array_equal(masks, expected)
        np.testing.assert_array_equal(class_ids, expected_ids)
    # The second load came from memory: the files are no longer needed ...
    shutil.rmtree(os.path.join(root, "img_a", "masks"))
    np.testing.assert_array_equal(cached.load_mask(0)[0], expected)
    # ... while an uncached dataset reads them every time.
    assert plain.load_mask(0)[0].shape == (32, 40, 0)


def test_split_ids(tmp_path):
    ids = ["id{:02d}".format(i) for i in range(10)]
    for i in ids:
        os.makedirs(os.path.join(tmp_path, i, "images"))
        open(os.path.join(tmp_path, i, "images", i + ".png"), "wb").close()
    os.makedirs(os.path.join(tmp_path, "not_an_image"))
    train, val = split_ids(str(tmp_path), val_fraction=0.3, seed=7)
    assert len(val) == 3 and len(train) == 7
    assert sorted(train + val) == ids and train == sorted(train) and val == sorted(val)
    assert split_ids(str(tmp_path), val_fraction=0.3, seed=7) == (train, val)
    assert split_items(list(reversed(ids)), 0.3, seed=7) == (train, val)  # order-free
    # The documented recipe: permutation of the sorted ids by RandomState(seed).
    order = np.random.RandomState(7).permutation(10)[:3]
    assert val == sorted(ids[i] for i in order)
    assert len(split_ids(str(tmp_path), val_fraction=4)[1]) == 4
    assert split_ids(str(tmp_path), val_fraction=0.3, seed=8) != (train, val)
    for bad in (0, 0.0, 1.0, 10, -1, "a"):
        with pytest.raises(DatasetError, match="val_fraction"):
            split_items(ids, bad)


@pytest.mark.skipif(not os.path.isdir(DSB_TRAIN), reason="shared DSB2018 data absent")
def test_nucleus_real_images():
    train, val = split_ids(DSB_TRAIN)
    assert len(train) + len(val) == 600 and len(val) == 60
    ds = NucleusDataset()
    ds.load_nucleus(DSB_TRAIN, subset_ids=val[:2])
    ds.prepare()
    for image_id in ds.image_ids:
        info = ds.image_info[image_id]
        files = [f for f in os.listdir(os.path.join(DSB_TRAIN, info["id"], "masks"))
                 if f.endswith(".png")]
        masks, class_ids = ds.load_mask(image_id)
        image = ds.load_image(image_id)
        assert masks.shape == image.shape[:2] + (len(files),)
        assert (class_ids == 1).all()
        assert masks.sum(axis=-1).max() == 1  # the fixed set has no overlaps
        first = sorted(files)[0]
        ref = np.asarray(Image.open(os.path.join(DSB_TRAIN, info["id"], "masks", first)))
        assert masks[..., 0].sum() == (ref > 0).sum()


# ----------------------------------------------------------------------------- real balloons

@pytest.mark.skipif(not os.path.isdir(BALLOON_TRAIN), reason="shared balloon data absent")
def test_balloon_real():
    ds = ViaDataset()
    ds.load_via(BALLOON_TRAIN)
    ds.prepare()
    assert ds.num_images == 53 and len(ds.unannotated) == 8 and ds.skipped == []
    assert sum(len(info["polygons"]) for info in ds.image_info) == 129
    with open(os.path.join(BALLOON_TRAIN, "via_region_data.json")) as f:
        raw = json.load(f)
    raw_by_name = {v["filename"]: v for v in raw.values()}
    # Two images: mask areas against the raw (unclipped, in-image) polygons.
    for image_id in (0, 1):
        info = ds.image_info[image_id]
        masks, class_ids = ds.load_mask(image_id)
        regions = list(raw_by_name[info["id"]]["regions"].values())
        assert masks.shape == (info["height"], info["width"], len(regions))
        assert (class_ids == 1).all()
        for k, region in enumerate(regions):
            shape = region["shape_attributes"]
            assert_area_close(masks[..., k], shape["all_points_x"], shape["all_points_y"])
    assert ds.load_image(0).shape[:2] == (ds.image_info[0]["height"],
                                          ds.image_info[0]["width"])


# ----------------------------------------------------------------------------- samples

@pytest.fixture(scope="module")
def samples():
    return {name: load_module("sample_" + name, os.path.join("samples", name + ".py"))
            for name in ("coco", "balloon", "nucleus")}


@pytest.mark.parametrize("name", ["coco", "balloon", "nucleus"])
def test_sample_help(samples, name, capsys):
    module = samples[name]
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--cascade" in out and ("--weights" in out or "--model" in out)


def test_sample_help_subprocess_and_light_import():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "samples", "nucleus.py"),
                             "--help"], capture_output=True, text=True, cwd="/",
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "evaluate" in result.stdout
    # Importing a sample runs nothing and does not even load TensorFlow.
    code = ("import importlib.util, sys\n"
            "for name in ('coco', 'balloon', 'nucleus'):\n"
            "    spec = importlib.util.spec_from_file_location(\n"
            "        'sample_' + name, {!r} + '/samples/' + name + '.py')\n"
            "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print('tensorflow' in sys.modules)\n").format(ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_sample_configs(samples):
    coco = samples["coco"].CocoConfig()
    assert (coco.NAME, coco.IMAGES_PER_GPU, coco.NUM_CLASSES) == ("coco", 2, 81)
    balloon = samples["balloon"].BalloonConfig()
    assert (balloon.NUM_CLASSES, balloon.STEPS_PER_EPOCH, balloon.IMAGES_PER_GPU,
            balloon.DETECTION_MIN_CONFIDENCE) == (2, 100, 2, 0.9)
    nucleus = samples["nucleus"]
    train_cfg, infer_cfg = nucleus.NucleusConfig(), nucleus.NucleusInferenceConfig()
    assert train_cfg.IMAGE_RESIZE_MODE == "crop" and list(train_cfg.IMAGE_SHAPE) == [256, 256, 3]
    assert infer_cfg.IMAGE_RESIZE_MODE == "pad64" and infer_cfg.BATCH_SIZE == 1
    # The scratch model: its inference config builds the same network as its training one.
    scratch, scratch_infer = nucleus.NucleusScratchConfig(), \
        nucleus.NucleusScratchInferenceConfig()
    for attr in ("NAME", "TOP_DOWN_PYRAMID_SIZE", "RPN_CONV_DIM", "MASK_HEAD_CONV_DIM",
                 "FPN_CLASSIF_FC_LAYERS_SIZE", "BACKBONE", "TRAIN_BN"):
        assert getattr(scratch_infer, attr) == getattr(scratch, attr), attr
    assert scratch.OPTIMIZER == "adam" and scratch.RPN_CONV_DIM == 128
    # Trains in bfloat16 only where the CPU does it natively; evaluates in float32.
    from mrcnn.config import cpu_supports_bfloat16
    assert scratch.MIXED_PRECISION == ("mixed_bfloat16" if cpu_supports_bfloat16() else None)
    assert scratch_infer.MIXED_PRECISION is None
    assert scratch_infer.IMAGE_RESIZE_MODE == "pad64" and scratch_infer.BATCH_SIZE == 1
    with pytest.raises(SystemExit):
        nucleus.main(["evaluate", "--weights=none"])
    cascade = samples["coco"].make_config(samples["coco"].CocoConfig, cascade=True)
    assert cascade.CASCADE and cascade.NUM_STAGES == 3 and cascade.NAME == "cascade_coco"


def test_coco_sample_layout_and_results(samples, coco_files, tmp_path):
    coco = samples["coco"]
    ann_path, image_dir, data = coco_files
    root = tmp_path / "coco"
    os.makedirs(root / "annotations")
    os.rename(image_dir, root / "val2014")  # minival images live in val2014
    os.rename(ann_path, root / "annotations" / "instances_minival2014.json")
    ds = coco.CocoDataset()
    api = ds.load_coco(str(root), "minival", year="2014", return_coco=True)
    ds.prepare()
    assert ds.num_images == 2 and len(api.getAnnIds()) == 6
    assert ds.image_reference(1) == "http://cocodataset.org/#explore?id=22"
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [1, 2, 1, -2]

    rois = np.array([[5, 55, 40, 70], [10, 10, 45, 50]], dtype=np.int32)
    results = coco.build_coco_results(ds, [11], rois, np.array([2, 1]),
                                      np.array([0.9, 0.4]), masks[..., :2].astype(np.uint8))
    assert [r["category_id"] for r in results] == [7, 3]
    assert results[0]["bbox"] == [55.0, 5.0, 15.0, 35.0] and results[0]["image_id"] == 11
    np.testing.assert_array_equal(mask_utils.decode(results[1]["segmentation"]),
                                  masks[..., 1])
    json.dumps(results)  # JSON-ready
    with pytest.raises(MissingFileError, match="instances_train2014.json"):
        coco.CocoDataset().load_coco(str(root), "train", year="2014")


@pytest.mark.skipif(not os.path.isdir(BALLOON_TRAIN), reason="shared balloon data absent")
def test_balloon_sample_split(samples):
    balloon = samples["balloon"]
    dataset_dir = os.path.dirname(BALLOON_TRAIN)
    subsets = {}
    for subset in ("train", "val"):
        ds = balloon.BalloonDataset()
        ds.load_balloon(dataset_dir, subset)
        ds.prepare()
        subsets[subset] = [info["id"] for info in ds.image_info]
        assert ds.class_names == ["BG", "balloon"] and ds.image_info[0]["source"] == "balloon"
    assert (len(subsets["train"]), len(subsets["val"])) == (42, 11)
    assert not set(subsets["train"]) & set(subsets["val"])
    assert balloon.BalloonDataset.split(BALLOON_TRAIN) == (sorted(subsets["train"]),
                                                           sorted(subsets["val"]))


def test_balloon_color_splash(samples):
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    image[..., 0] = 200  # pure red
    mask = np.zeros((4, 5, 2), dtype=bool)
    mask[0, 0, 0] = mask[3, 4, 1] = True
    splash = samples["balloon"].color_splash(image, mask)
    assert splash.dtype == np.uint8 and splash.shape == image.shape
    assert splash[0, 0].tolist() == [200, 0, 0] and splash[3, 4].tolist() == [200, 0, 0]
    gray = round(0.2125 * 200)  # skimage's luminance weight of red
    assert splash[1, 1].tolist() == [gray] * 3
    assert (samples["balloon"].color_splash(image, mask[..., :0]) == gray).all()


@pytest.mark.skipif(not os.path.isdir(DSB_TRAIN), reason="shared DSB2018 data absent")
def test_nucleus_sample_subsets(samples):
    nucleus = samples["nucleus"]
    dataset_dir = os.path.dirname(DSB_TRAIN)
    ds = nucleus.NucleusDataset()
    ds.load_nucleus(dataset_dir, "val")
    assert [info["id"] for info in ds.image_info] == split_ids(DSB_TRAIN, 0.1, 42)[1]


def test_nucleus_rle(samples):
    nucleus = samples["nucleus"]
    m = np.zeros((4, 3), dtype=bool)
    m[1:3, 0] = True
    m[0, 1] = m[3, 1] = m[0, 2] = True
    # Column-major pixel numbers (1-based): column 0 -> 1..4, column 1 -> 5..8, ...
    assert nucleus.rle_encode(m) == "2 2 5 1 8 2"
    np.testing.assert_array_equal(nucleus.rle_decode("2 2 5 1 8 2", (4, 3)), m)
    masks = np.zeros((4, 3, 2), dtype=bool)
    masks[:2, :, 0] = True
    masks[1:, :, 1] = True  # overlaps row 1 of the first
    lines = nucleus.mask_to_rle("x", masks, np.array([0.2, 0.9])).split("\n")
    # The better instance (second) keeps the overlap.
    assert lines[0] == "x, " + nucleus.rle_encode(masks[..., 1])
    only_first = masks[..., 0] & ~masks[..., 1]
    assert lines[1] == "x, " + nucleus.rle_encode(only_first)
    assert nucleus.mask_to_rle("y", masks[..., :0], np.zeros(0)) == "y,"


def test_coco_sample_extract_atomic(samples, tmp_path):
    """auto_download's unzip step (offline): new folders appear whole, existing ones get
    only their missing files, and no temporary folder is left behind."""
    import zipfile
    zip_path = tmp_path / "a.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr("val2014/x.jpg", b"x")
        z.writestr("annotations/instances_val2014.json", b"{}")
        z.writestr("annotations/keep.json", b"new")
    dest = tmp_path / "coco"
    os.makedirs(dest / "annotations")
    (dest / "annotations" / "keep.json").write_text("old")
    samples["coco"]._extract_atomic(str(zip_path), str(dest))
    assert (dest / "val2014" / "x.jpg").read_bytes() == b"x"
    assert (dest / "annotations" / "instances_val2014.json").read_bytes() == b"{}"
    assert (dest / "annotations" / "keep.json").read_text() == "old"
    assert sorted(os.listdir(dest)) == ["annotations", "val2014"]
