"""EXIF orientation: ignored by default (Matterport) with one warning per dataset naming
the images, applied on request."""
import warnings

import numpy as np
import pytest
from PIL import Image

from mrcnn.dataset import Dataset, ExifWarning


def write_jpeg(path, orientation=None, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 50, 3)).astype(np.uint8)
    pixels[:5, :10] = 255               # a bright corner to follow through the rotation
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, quality=95, exif=exif)
    return str(path)


class Photos(Dataset):
    def __init__(self, paths, apply=False):
        super().__init__()
        self.apply_exif_orientation = apply
        self.add_class("p", 1, "thing")
        for i, p in enumerate(paths):
            self.add_image("p", i, p)
        self.prepare()


@pytest.fixture
def photos(tmp_path):
    return [write_jpeg(tmp_path / "plain.jpg"),
            write_jpeg(tmp_path / "phone_6.jpg", orientation=6, seed=1),
            write_jpeg(tmp_path / "phone_3.jpg", orientation=3, seed=2)]


def test_orientation_ignored_with_one_warning_naming_the_image(photos):
    ds = Photos(photos)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.load_image(0).shape == (30, 50, 3)
    with pytest.warns(ExifWarning, match=r"phone_6\.jpg.*orientation 6 \(rotated 90 "
                                         r"clockwise\).*apply_exif_orientation"):
        stored = ds.load_image(1)
    assert stored.shape == (30, 50, 3)                  # the stored pixel grid
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # one warning per dataset
        ds.load_image(2)
    assert ds.exif_oriented == {1: 6, 2: 3}


def test_check_exif_names_every_rotated_image(photos):
    ds = Photos(photos)
    with pytest.warns(ExifWarning, match=r"2 image\(s\).*phone_6\.jpg \(6\).*phone_3\.jpg "
                                         r"\(3\)") as record:
        found = ds.check_exif()
    assert found == {1: 6, 2: 3} and len(record) == 1
    assert "plain.jpg" not in str(record[0].message)


def test_apply_exif_orientation_turns_the_pixels(photos):
    stored = Photos(photos)
    applied = Photos(photos, apply=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExifWarning)
        raw6, raw3 = stored.load_image(1), stored.load_image(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # nothing ignored, nothing to say
        turned6, turned3 = applied.load_image(1), applied.load_image(2)
        assert applied.check_exif() == {1: 6, 2: 3}
    # Orientation 6: the camera was turned clockwise; the displayed photo is the stored
    # one rotated 90 degrees clockwise. Orientation 3: rotated 180 degrees.
    np.testing.assert_array_equal(turned6, np.rot90(raw6, k=-1))
    np.testing.assert_array_equal(turned3, np.rot90(raw3, k=2))
    assert turned6.shape == (50, 30, 3)
    assert turned6[:10, -5:].mean() > 250               # the bright corner moved top-right


def test_via_and_labelme_loaders_name_rotated_photos_and_apply_the_tag(tmp_path):
    import json

    from mrcnn.datasets import LabelmeDataset, ViaDataset
    write_jpeg(tmp_path / "a.jpg")
    write_jpeg(tmp_path / "b.jpg", orientation=6, seed=1)
    region = {"shape_attributes": {"name": "rect", "x": 2, "y": 2, "width": 8,
                                   "height": 8}, "region_attributes": {}}
    via = {name + "1": {"filename": name, "size": 1, "regions": [region]}
           for name in ("a.jpg", "b.jpg")}
    (tmp_path / "via_region_data.json").write_text(json.dumps(via))
    with pytest.warns(ExifWarning, match=r"1 image\(s\).*b\.jpg \(6\)"):
        ViaDataset().load_via(str(tmp_path))
    turned = ViaDataset()
    turned.apply_exif_orientation = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExifWarning)
        turned.load_via(str(tmp_path))
    turned.prepare()
    sizes = {info["id"]: (info["height"], info["width"]) for info in turned.image_info}
    assert sizes == {"a.jpg": (30, 50), "b.jpg": (50, 30)}    # b as displayed
    assert turned.load_image(1).shape == (50, 30, 3)

    # labelme stores the displayed size: without the option the mismatch names EXIF.
    label = tmp_path / "b.json"
    label.write_text(json.dumps({"imagePath": "b.jpg", "imageHeight": 50, "imageWidth": 30,
                                 "imageData": None, "shapes": [{
                                     "label": "thing", "shape_type": "rectangle",
                                     "points": [[2, 2], [10, 10]], "group_id": None}]}))
    plain = LabelmeDataset()
    with pytest.warns(ExifWarning, match=r"b\.jpg \(6\)"):
        plain.load_labelme(str(label))
    plain.prepare()
    with pytest.raises(Exception, match="apply_exif_orientation"):
        plain.load_image(0)
