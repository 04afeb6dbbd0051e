"""Tests of mrcnn.datasets.load_annotated / detect_format: each format detected from a file
and from a folder laid out as annotation tools export it (all written by the tests), the
validation set's classes aligned with the training set's, and the errors."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mrcnn.datasets import (MissingFileError, detect_format,  # noqa: E402
                            load_annotated)
from mrcnn.utils import DatasetError  # noqa: E402

H, W = 32, 40


def write_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(path)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def coco_doc(categories=((1, "cat"), (2, "dog")), boxes=((1, (2, 2, 10, 10)),
                                                         (2, (20, 5, 10, 8)))):
    """One image a.png with a square polygon per (category id, (x, y, w, h))."""
    anns = [{"id": k + 1, "image_id": 7, "category_id": cid, "iscrowd": 0,
             "bbox": list(b), "area": b[2] * b[3],
             "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3],
                               b[0], b[1] + b[3]]]}
            for k, (cid, b) in enumerate(boxes)]
    return {"images": [{"id": 7, "file_name": "a.png", "height": H, "width": W}],
            "annotations": anns,
            "categories": [{"id": i, "name": n} for i, n in categories]}


def via_doc(attribute=None):
    regions = []
    for k, (x, name) in enumerate(((2, "cat"), (20, "dog"))):
        regions.append({"shape_attributes": {"name": "rect", "x": x, "y": 2, "width": 8,
                                             "height": 8},
                        "region_attributes": {attribute: name} if attribute else {}})
    return {"a.png1234": {"filename": "a.png", "size": 1234, "regions": regions,
                          "file_attributes": {}}}


def labelme_doc(label="cat"):
    return {"version": "5.4.1", "shapes": [{"label": label, "shape_type": "rectangle",
                                            "points": [[2, 2], [10, 10]], "group_id": None}],
            "imagePath": "a.png", "imageData": None, "imageHeight": H, "imageWidth": W}


def write_masks_folder(root, ids=("s1", "s2")):
    for i in ids:
        write_image(os.path.join(root, i, "images", i + ".png"))
        m = np.zeros((H, W), np.uint8)
        m[4:12, 4:12] = 255
        os.makedirs(os.path.join(root, i, "masks"))
        Image.fromarray(m).save(os.path.join(root, i, "masks", "m0.png"))


# ----------------------------------------------------------------------------- COCO

def test_coco_file_and_roboflow_folder(tmp_path):
    # Roboflow: _annotations.coco.json next to the images, with an unused super-category 0.
    doc = coco_doc(categories=((0, "animals"), (1, "cat"), (2, "dog")))
    path = write_json(tmp_path / "train" / "_annotations.coco.json", doc)
    write_image(str(tmp_path / "train" / "a.png"))
    for where in (path, str(tmp_path / "train")):
        assert detect_format(where) == ("coco", path)
        ds = load_annotated(where)
        assert ds.annotation_format == "coco"
        assert ds.class_names == ["BG", "cat", "dog"]  # the unused category left out
        masks, ids = ds.load_mask(0)
        assert ids.tolist() == [1, 2] and masks[..., 0].sum() == 100


def test_coco_cvat_layout_and_images_argument(tmp_path):
    # CVAT: annotations/instances_default.json and images/.
    path = write_json(tmp_path / "annotations" / "instances_default.json", coco_doc())
    write_image(str(tmp_path / "images" / "a.png"))
    ds = load_annotated(str(tmp_path))
    assert ds.annotation_path == path
    assert ds.image_info[0]["path"] == os.path.join(str(tmp_path / "images"), "a.png")
    # Elsewhere: the images argument, else an error naming the JSON and the folders tried.
    other = write_json(tmp_path / "x" / "elsewhere" / "coco.json", coco_doc())
    assert load_annotated(other, images=str(tmp_path / "images")).num_images == 1
    with pytest.raises(MissingFileError, match=r"coco\.json: its images \(e\.g\. 'a\.png'\)"):
        load_annotated(other)


def test_coco_val_classes_follow_training_order(tmp_path):
    write_image(str(tmp_path / "a.png"))
    # The same names under other category ids, in another order, one class absent.
    val = write_json(tmp_path / "val.json", coco_doc(categories=((5, "dog"), (9, "cat")),
                                                     boxes=((5, (2, 2, 10, 10)),)))
    ds = load_annotated(val, class_names=["cat", "dog", "bird"])
    assert ds.class_names == ["BG", "cat", "dog", "bird"]
    assert ds.load_mask(0)[1].tolist() == [2]  # a dog is training's class 2
    with pytest.raises(DatasetError, match=r"val\.json: class\(es\) \['dog'\] are not "
                                           r"among the training classes \['cat'\]"):
        load_annotated(val, class_names=["cat"])


# ----------------------------------------------------------------------------- VIA

def test_via_file_folder_and_project(tmp_path):
    write_image(str(tmp_path / "a.png"))
    path = write_json(tmp_path / "via_region_data.json", via_doc())
    assert detect_format(str(tmp_path)) == ("via", path)
    ds = load_annotated(path)
    assert ds.annotation_format == "via" and ds.class_names == ["BG", "object"]
    assert ds.load_mask(0)[0].shape[-1] == 2
    project = write_json(tmp_path / "proj" / "project.json",
                         {"_via_settings": {}, "_via_img_metadata": via_doc("species")})
    write_image(str(tmp_path / "proj" / "a.png"))
    ds = load_annotated(str(tmp_path / "proj"))
    assert ds.annotation_path == project
    assert ds.class_names == ["BG", "cat", "dog"]  # from the region attribute
    assert ds.load_mask(0)[1].tolist() == [1, 2]


# ----------------------------------------------------------------------------- labelme, masks

def test_labelme_file_and_folder(tmp_path):
    write_image(str(tmp_path / "a.png"))
    path = write_json(tmp_path / "a.json", labelme_doc("cat"))
    write_json(tmp_path / "b.json", labelme_doc("dog"))
    assert detect_format(path) == ("labelme", path)
    assert detect_format(str(tmp_path)) == ("labelme", str(tmp_path))
    ds = load_annotated(str(tmp_path))
    assert ds.class_names == ["BG", "cat", "dog"] and ds.num_images == 2


def test_masks_folder(tmp_path):
    write_masks_folder(str(tmp_path))
    assert detect_format(str(tmp_path)) == ("masks", str(tmp_path))
    ds = load_annotated(str(tmp_path))
    assert ds.class_names == ["BG", "object"] and ds.num_images == 2
    masks, ids = ds.load_mask(1)
    assert ids.tolist() == [1] and masks.sum() == 64
    with pytest.raises(DatasetError, match="one class 'object'"):
        load_annotated(str(tmp_path), class_names=["cat"])


# ----------------------------------------------------------------------------- errors

def test_unknown_paths_name_the_path_and_the_formats(tmp_path):
    os.makedirs(tmp_path / "junk")
    write_json(tmp_path / "junk" / "settings.json", {"lr": 0.1})
    with pytest.raises(DatasetError) as e:
        load_annotated(str(tmp_path / "junk"))
    text = str(e.value)
    assert str(tmp_path / "junk") in text
    for word in ("COCO", "VIA", "labelme", "masks"):
        assert word in text
    with pytest.raises(DatasetError, match=r"settings\.json: not an annotation file"):
        load_annotated(str(tmp_path / "junk" / "settings.json"))
    with pytest.raises(MissingFileError, match="annotations not found: .*nothing"):
        load_annotated(str(tmp_path / "nothing"))
    via3 = write_json(tmp_path / "v3" / "p.json", {"project": {}, "file": {}, "metadata": {}})
    with pytest.raises(DatasetError, match=r"p\.json: VIA 3 project files are not supported"):
        load_annotated(via3)


def test_explicit_format_and_ambiguous_folder(tmp_path):
    write_image(str(tmp_path / "a.png"))
    write_json(tmp_path / "one.json", coco_doc())
    write_json(tmp_path / "two.json", coco_doc())
    with pytest.raises(DatasetError, match=r"several annotation files \(one\.json, "
                                           r"two\.json\)"):
        load_annotated(str(tmp_path))
    assert load_annotated(str(tmp_path / "one.json"), format="coco").num_images == 1
    with pytest.raises(DatasetError, match=r"one\.json: not a via file"):
        load_annotated(str(tmp_path / "one.json"), format="via")
    with pytest.raises(ValueError, match="format must be"):
        load_annotated(str(tmp_path), format="yolo")
