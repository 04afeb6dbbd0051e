"""Tests of mrcnn.datasets.LabelmeDataset on labelme JSON files written by the tests.

Expected masks come from skimage.draw with the continuous-coordinate rule (pixel j spans
[j, j + 1): a pixel is in when its centre is), drawn here shape by shape.
"""

import base64
import io
import json
import os
import sys

import numpy as np
import pytest
import skimage.draw
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mrcnn.datasets import (DatasetWarning, LabelmeDataset, MissingFileError,  # noqa: E402
                            load_annotated)
from mrcnn.utils import DatasetError  # noqa: E402

H, W = 48, 64


def write_image(path, height=H, width=W, seed=0):
    rgb = np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def shape(label, kind, points, group_id=None):
    return {"label": label, "points": points, "group_id": group_id, "shape_type": kind,
            "flags": {}}


def write_labelme(path, shapes, image_path="img.png", image_data=None, size=(H, W)):
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
           "imageData": image_data}
    if size is not None:
        doc["imageHeight"], doc["imageWidth"] = size
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


def polygon_mask(xs, ys):
    m = np.zeros((H, W), dtype=bool)
    rr, cc = skimage.draw.polygon(np.asarray(ys) - 0.5, np.asarray(xs) - 0.5, shape=(H, W))
    m[rr, cc] = True
    return m


def load(path, **kwargs):
    ds = LabelmeDataset()
    ds.load_labelme(str(path), **kwargs)
    ds.prepare()
    return ds


def test_polygon_rectangle_circle_masks_pixelwise(tmp_path):
    rgb = write_image(tmp_path / "img.png")
    poly_x, poly_y = [5.0, 30.0, 20.0], [4.0, 10.0, 40.0]
    write_labelme(tmp_path / "a.json", [
        shape("cat", "polygon", [[x, y] for x, y in zip(poly_x, poly_y)]),
        # Corners given bottom-right first: the loader takes min / max.
        shape("dog", "rectangle", [[50, 30], [40, 12]]),
        shape("cat", "circle", [[20, 24], [26, 32]]),  # radius 10
    ])
    ds = load(tmp_path)
    assert ds.class_names == ["BG", "cat", "dog"]
    assert ds.num_images == 1
    np.testing.assert_array_equal(ds.load_image(0), rgb)
    masks, class_ids = ds.load_mask(0)
    assert masks.shape == (H, W, 3) and masks.dtype == bool
    assert class_ids.tolist() == [1, 2, 1]

    np.testing.assert_array_equal(masks[..., 0], polygon_mask(poly_x, poly_y))
    rect = np.zeros((H, W), dtype=bool)
    rr, cc = skimage.draw.rectangle(start=(12, 40), end=(29, 49))  # centres in [12, 30)
    rect[rr, cc] = True
    np.testing.assert_array_equal(masks[..., 1], rect)
    assert masks[..., 1].sum() == 18 * 10
    disk = np.zeros((H, W), dtype=bool)
    rr, cc = skimage.draw.disk((23.5, 19.5), 10.0, shape=(H, W))
    disk[rr, cc] = True
    np.testing.assert_array_equal(masks[..., 2], disk)
    assert abs(int(masks[..., 2].sum()) - np.pi * 100) < 0.1 * np.pi * 100


def test_group_id_merges_shapes_of_one_label(tmp_path):
    write_image(tmp_path / "img.png")
    left = [[2, 2], [10, 2], [10, 10], [2, 10]]
    right = [[30, 2], [40, 2], [40, 10], [30, 10]]
    write_labelme(tmp_path / "a.json", [
        shape("car", "polygon", left, group_id=1),
        shape("car", "polygon", right, group_id=1),  # same instance, occluded in two parts
        shape("car", "rectangle", [[2, 20], [10, 30]], group_id=2),
        shape("tree", "rectangle", [[30, 20], [40, 30]], group_id=1),  # other label
        shape("car", "rectangle", [[50, 20], [60, 30]]),  # no group: its own instance
    ])
    masks, class_ids = load(tmp_path).load_mask(0)
    assert masks.shape[-1] == 4
    assert class_ids.tolist() == [1, 1, 2, 1]
    assert masks[..., 0].sum() == 8 * 8 + 10 * 8
    assert masks[5, 5, 0] and masks[5, 35, 0] and not masks[5, 20, 0]
    assert [int(masks[..., k].sum()) for k in (1, 2, 3)] == [80, 100, 100]


def test_embedded_image_data_when_the_file_is_missing(tmp_path):
    rgb = np.random.RandomState(3).randint(0, 255, (H, W, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    path = write_labelme(tmp_path / "a.json", [shape("x", "rectangle", [[1, 1], [9, 9]])],
                         image_path="gone.png", image_data=data, size=None)
    ds = load(path)
    info = ds.image_info[0]
    assert info["embedded"] and (info["height"], info["width"]) == (H, W)
    np.testing.assert_array_equal(ds.load_image(0), rgb)
    assert ds.load_mask(0)[0].sum() == 64


def test_windows_image_path_and_folder_fallback(tmp_path):
    os.makedirs(tmp_path / "imgs")
    rgb = write_image(tmp_path / "imgs" / "p.png")
    write_labelme(tmp_path / "a.json", [shape("x", "rectangle", [[1, 1], [9, 9]])],
                  image_path="imgs\\p.png")
    np.testing.assert_array_equal(load(tmp_path).load_image(0), rgb)


def test_missing_image_raises_naming_json_and_path(tmp_path):
    path = write_labelme(tmp_path / "a.json", [shape("x", "rectangle", [[1, 1], [9, 9]])],
                         image_path="nowhere.png")
    with pytest.raises(MissingFileError) as e:
        load(path)
    assert isinstance(e.value, DatasetError)
    assert "a.json" in str(e.value) and "nowhere.png" in str(e.value)
    assert "imageData" in str(e.value)


def test_skip_bad_skips_the_file_and_counts(tmp_path):
    write_image(tmp_path / "img.png")
    write_labelme(tmp_path / "a.json", [shape("x", "rectangle", [[1, 1], [9, 9]])])
    write_labelme(tmp_path / "b.json", [shape("x", "rectangle", [[1, 1], [9, 9]])],
                  image_path="nowhere.png")
    write_labelme(tmp_path / "c.json", [
        shape("x", "polygon", [[1, 1], [5, 5]]),  # 2 points: bad
        shape("x", "rectangle", [[1, 1], [5, 5]])])
    with pytest.warns(DatasetWarning, match="skipped 2 bad entries"):
        ds = load(tmp_path, skip_bad=True)
    assert ds.num_images == 2
    assert [os.path.basename(f) for f, _, _ in ds.skipped] == ["b.json", "c.json"]
    assert "shapes[0] (polygon 'x')" in ds.skipped[1][1]
    with pytest.raises(DatasetError, match=r"c\.json.*shapes\[0\].*at least 3"):
        load(tmp_path / "c.json")


def test_unsupported_shapes_dropped_with_warning(tmp_path):
    write_image(tmp_path / "img.png")
    write_labelme(tmp_path / "a.json", [
        shape("x", "line", [[1, 1], [9, 9]]),
        shape("x", "point", [[3, 3]]),
        shape("x", "linestrip", [[1, 1], [9, 9], [9, 20]]),
        shape("x", "polygon", [[1, 1], [9, 1], [9, 9]])])
    with pytest.warns(DatasetWarning) as w:
        ds = load(tmp_path)  # skip_bad=False: dropping is not an error
    text = str(w[0].message)
    assert "a.json" in text and "shapes[0] (line 'x')" in text and "point" in text
    assert len(ds.skipped) == 3
    assert ds.load_mask(0)[0].shape[-1] == 1


def test_class_names_order_and_unknown_label(tmp_path):
    write_image(tmp_path / "img.png")
    write_labelme(tmp_path / "a.json", [shape("b", "rectangle", [[1, 1], [9, 9]]),
                                        shape("a", "rectangle", [[20, 1], [29, 9]])])
    ds = load(tmp_path, class_names=["b", "a", "c"])
    assert ds.class_names == ["BG", "b", "a", "c"]
    assert ds.load_mask(0)[1].tolist() == [1, 2]
    with pytest.raises(DatasetError, match="label 'a' is not one of the classes"):
        load(tmp_path, class_names=["b"])


def test_image_size_checked_against_the_json(tmp_path):
    write_image(tmp_path / "img.png", height=40)
    write_labelme(tmp_path / "a.json", [shape("x", "rectangle", [[1, 1], [9, 9]])])
    ds = load(tmp_path)
    with pytest.raises(DatasetError, match=r"a\.json.*40x64.*imageHeight 48"):
        ds.load_image(0)


def test_load_annotated_labelme_list_of_files(tmp_path):
    write_image(tmp_path / "img.png")
    files = [write_labelme(tmp_path / "{}.json".format(n), [shape(n, "rectangle",
                                                                  [[1, 1], [9, 9]])])
             for n in ("p", "q")]
    ds = load_annotated(files)
    assert ds.annotation_format == "labelme" and ds.class_names == ["BG", "p", "q"]
    assert ds.num_images == 2
