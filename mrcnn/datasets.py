"""Generic dataset loaders built on ``mrcnn.utils.Dataset``.

* ``CocoJsonDataset``: any COCO "instances" JSON + image folder (polygons, RLE, crowds).
* ``ViaDataset``: VGG Image Annotator polygon JSON (VIA 1.x, 2.x and VIA 2 project files).
* ``NucleusDataset``: the DSB2018 layout, one folder per image with ``images/<id>.png``
  and ``masks/*.png`` (one binary PNG per instance).
* ``LabelmeDataset``: labelme JSONs, one per image (polygon, rectangle, circle shapes;
  the image file or the embedded imageData).
* ``load_annotated(path)``: any of these, the format detected from the path
  (``detect_format``), prepared; what ``python -m mrcnn train`` uses.

All follow Matterport's conventions: register classes with ``add_class``, images
with ``add_image``, call ``prepare()``, then ``load_mask(image_id)`` returns
``(masks bool [H, W, N], class_ids int32 [N])`` with internal (contiguous) class ids.
Instances whose mask has no pixel are dropped, as Matterport does; crowd annotations get a
negative class id so training excludes them as targets.

Bad input raises ``DatasetError`` (a ValueError) naming the file and the entry. Loaders
that take ``skip_bad=True`` instead warn once per file and skip only the bad entries; each
skipped entry is recorded in ``dataset.skipped`` as ``(file, entry, reason)``.
"""

import contextlib
import io
import json
import math
import numbers
import os
import warnings

import numpy as np
import skimage.draw
from PIL import Image
from pycocotools import mask as mask_utils

from mrcnn.dataset import _orientation_of
from mrcnn.masks import polygon_mask
from mrcnn.utils import Dataset, DatasetError, extract_bboxes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")

# Points used to turn VIA circles / ellipses into polygons (enough for < 0.5 px error
# on radii up to ~100 px; the mask is rasterised anyway).
_ELLIPSE_POINTS = 64


class MissingFileError(DatasetError, FileNotFoundError):
    """A dataset file or folder does not exist. Is both a DatasetError and FileNotFoundError."""


class DatasetWarning(UserWarning):
    """Entries skipped (skip_bad=True) or unusable regions dropped while loading."""


# ---------------------------------------------------------------------------- helpers

def image_size(path, apply_exif=False):
    """(height, width) of the image file at ``path`` (with ``apply_exif``, as displayed:
    swapped for EXIF orientations that turn the photo by 90 degrees).

    Reads only the file header through PIL when the format allows (no full decode);
    falls back to decoding with scikit-image. Raises DatasetError naming the file.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if apply_exif and _orientation_of(im) in (5, 6, 7, 8):
                width, height = height, width
        return int(height), int(width)
    except FileNotFoundError:
        raise MissingFileError("image file not found: {}".format(path))
    except Exception:  # PIL cannot parse the header: try a full decode
        try:
            import skimage.io
            shape = skimage.io.imread(path).shape
            return int(shape[0]), int(shape[1])
        except Exception as e:
            raise DatasetError("{}: cannot read the image: {}".format(path, e))


def ann_to_rle(segmentation, height, width):
    """COCO segmentation (polygons, uncompressed or compressed RLE) -> one compressed RLE.

    Polygon parts of one object are merged into a single RLE, as pycocotools' annToRLE.
    """
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def ann_to_mask(segmentation, height, width):
    """COCO segmentation -> uint8 mask [H, W] (1 inside the object)."""
    return mask_utils.decode(ann_to_rle(segmentation, height, width))


def split_items(items, val_fraction=0.1, seed=42):
    """Deterministic train/validation split of a list of ids.

    The ids are sorted, permuted with ``np.random.RandomState(seed)`` (a stream numpy
    guarantees stable across versions) and the first ``n_val`` of the permutation form the
    validation set. ``val_fraction``: a float in (0, 1) -> ``n_val = round(n * fraction)``
    (at least 1, at most n - 1); an int -> exactly that many validation ids.
    Returns ``(train_ids, val_ids)``, both sorted.
    """
    items = sorted(items)
    n = len(items)
    if n < 2:
        raise DatasetError("cannot split {} item(s) into train and validation".format(n))
    if isinstance(val_fraction, numbers.Integral) and not isinstance(val_fraction, bool):
        n_val = int(val_fraction)
        if not 1 <= n_val < n:
            raise DatasetError("val_fraction={} validation items: must be in [1, {}]".format(
                n_val, n - 1))
    elif isinstance(val_fraction, numbers.Real) and 0 < val_fraction < 1:
        n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    else:
        raise DatasetError("val_fraction={!r}: must be a float in (0, 1) or an int "
                           "count".format(val_fraction))
    order = np.random.RandomState(seed).permutation(n)
    val_set = set(order[:n_val].tolist())
    train = [it for i, it in enumerate(items) if i not in val_set]
    val = [it for i, it in enumerate(items) if i in val_set]
    return train, val


class _SkipBadMixin(object):
    """Shared raise-or-skip handling of bad entries (see module docstring)."""

    def _init_skipped(self):
        if not hasattr(self, "skipped"):
            self.skipped = []

    def _bad(self, skip_bad, file, entry, reason, error=DatasetError):
        """Raise ``error`` (a DatasetError) for a bad entry, or record it when skip_bad."""
        self._init_skipped()
        if not skip_bad:
            raise error("{}: {}: {} (pass skip_bad=True to skip bad entries)".format(
                file, entry, reason))
        self.skipped.append((file, entry, reason))

    def _drop(self, file, entry, reason):
        """Record an entry dropped whatever skip_bad says (e.g. a VIA point region)."""
        self._init_skipped()
        self.skipped.append((file, entry, reason))

    def _warn_skipped(self, file, start, with_file=False):
        """One warning for the entries skipped since ``start``; ``with_file`` names each
        entry's file too (loaders reading many files, such as labelme folders)."""
        new = self.skipped[start:]
        if not new:
            return
        first = "; ".join(("{0}: {1}: {2}" if with_file else "{1}: {2}").format(
            os.path.basename(f), e, r) for f, e, r in new[:3])
        warnings.warn("{}: skipped {} bad entr{} ({}{}); see dataset.skipped".format(
            file, len(new), "y" if len(new) == 1 else "ies", first,
            "; ..." if len(new) > 3 else ""), DatasetWarning, stacklevel=3)


def _load_json(path):
    """The parsed JSON file at ``path``; DatasetError naming the file when it is not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError("{}: not a valid JSON file: {}".format(path, e))


def _empty_mask(height, width):
    return np.zeros((height, width, 0), dtype=bool), np.zeros((0,), dtype=np.int32)


def _stack_instances(masks, class_ids, height, width):
    """Lists of [H, W] masks and class ids -> (masks bool [H, W, N], class_ids int32 [N]),
    the empty pair when no instance is left."""
    if not masks:
        return _empty_mask(height, width)
    return np.stack(masks, axis=2), np.asarray(class_ids, dtype=np.int32)


# ---------------------------------------------------------------------------- COCO JSON

class CocoJsonDataset(_SkipBadMixin, Dataset):
    """Instance masks from a COCO-format JSON file and its image folder.

    Categories are registered under their own ids with ``add_class(source, category_id,
    name)``; ``prepare()`` then maps them to contiguous internal ids 1..K in ascending
    category-id order (e.g. categories 3 and 7 -> 1 and 2). Several files may be loaded
    into one dataset (e.g. COCO train2014 + valminusminival2014).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = []

    def load_coco_json(self, annotation_path, image_dir, class_ids=None, source="coco",
                       skip_bad=False, include_empty=False, return_coco=False):
        """Register the images and annotations of one COCO JSON file.

        annotation_path: COCO "instances" JSON (keys images, annotations, categories).
        image_dir: folder holding the images named by ``images[*].file_name``.
        class_ids: category ids to load (default: all). Only their annotations are kept.
        source: source name of the classes and images (Matterport's "coco").
        skip_bad: False -> raise DatasetError at the first bad entry; True -> warn, skip
            that entry only and record it in ``self.skipped``.
        include_empty: also register images without any (kept) annotation. False follows
            Matterport, whose load_coco only keeps images with an annotation.
        return_coco: return a pycocotools COCO object holding the loaded images, their
            kept annotations and the categories (e.g. for COCOeval).

        Each image is added with ``id`` = its COCO image id, ``path``, ``width``,
        ``height``, ``annotations`` (its annotation dicts) and ``annotation_file``.
        """
        fname = annotation_path
        data = self._read_coco_file(annotation_path, image_dir)
        n_skipped_before = len(self.skipped)
        categories, wanted = self._coco_categories(data["categories"], fname, class_ids)
        images = self._coco_images(data["images"], image_dir, fname, skip_bad)
        anns_per_image = self._coco_annotations(data["annotations"], images, categories,
                                                wanted, fname, skip_bad)

        for cid in sorted(wanted):
            self.add_class(source, cid, str(categories[cid]["name"]))
        kept_ids = sorted(images) if include_empty else sorted(anns_per_image)
        for img_id in kept_ids:
            img = images[img_id]
            self.add_image(source, image_id=img_id, path=img["path"], width=img["width"],
                           height=img["height"], annotations=anns_per_image.get(img_id, []),
                           annotation_file=annotation_path)
        self._warn_skipped(fname, n_skipped_before)

        if return_coco:
            return self._coco_subset(data, images, categories, kept_ids, anns_per_image)
        return None

    @staticmethod
    def _coco_subset(data, images, categories, kept_ids, anns_per_image):
        """A pycocotools COCO object of the registered images and their kept annotations."""
        from pycocotools.coco import COCO
        coco = COCO()
        coco.dataset = {
            "info": data.get("info", {}), "licenses": data.get("licenses", []),
            "images": [images[i]["entry"] for i in kept_ids],
            "annotations": [a for i in kept_ids for a in anns_per_image.get(i, [])],
            "categories": [categories[c] for c in sorted(categories)],
        }
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints
            coco.createIndex()
        return coco

    # -- validation pieces

    @staticmethod
    def _read_coco_file(annotation_path, image_dir):
        """The parsed JSON, after checking both paths and the three top-level lists.

        These are structural errors, raised whatever skip_bad says.
        """
        if not os.path.isfile(annotation_path):
            raise MissingFileError("COCO annotation file not found: {}".format(annotation_path))
        if not os.path.isdir(image_dir):
            raise MissingFileError("image folder not found: {} (images of {})".format(
                image_dir, annotation_path))
        fname = annotation_path
        data = _load_json(annotation_path)
        if not isinstance(data, dict):
            raise DatasetError("{}: not a COCO annotation file: top level is a {}, expected "
                               "an object with images, annotations, categories".format(
                                   fname, type(data).__name__))
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise DatasetError("{}: not a COCO annotation file: missing key(s) {} (found {})"
                               .format(fname, missing, sorted(data)[:10]))
        for k in ("images", "annotations", "categories"):
            if not isinstance(data[k], list):
                raise DatasetError("{}: not a COCO annotation file: '{}' is a {}, expected "
                                   "a list".format(fname, k, type(data[k]).__name__))
        return data

    @staticmethod
    def _coco_categories(entries, fname, class_ids):
        """(dict category id -> category, set of the ids to load).

        Malformed categories are structural errors, always raised.
        """
        categories = {}
        for i, cat in enumerate(entries):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise DatasetError("{}: categories[{}]: needs 'id' and 'name', got {!r}".format(
                    fname, i, cat))
            if cat["id"] in categories:
                raise DatasetError("{}: categories[{}]: duplicate category id {}".format(
                    fname, i, cat["id"]))
            categories[cat["id"]] = cat
        if class_ids:
            unknown = [c for c in class_ids if c not in categories]
            if unknown:
                raise DatasetError("{}: class_ids {} are not category ids of this file "
                                   "(known: {})".format(fname, unknown, sorted(categories)))
            return categories, set(class_ids)
        return categories, set(categories)

    def _coco_annotations(self, entries, images, categories, wanted, fname, skip_bad):
        """Validate ``annotations``: dict image id -> its annotations of wanted classes."""
        anns_per_image = {}
        for i, ann in enumerate(entries):
            entry = self._ann_entry(i, ann)
            if not isinstance(ann, dict):
                self._bad(skip_bad, fname, entry, "not an object")
                continue
            img_id = ann.get("image_id")
            if img_id not in images:
                if img_id in self._dropped_image_ids:
                    continue  # its image was skipped and reported (with this annotation)
                self._bad(skip_bad, fname, entry,
                          "image_id {!r} is not an id in 'images'".format(img_id))
                continue
            cat_id = ann.get("category_id")
            if cat_id not in categories:
                self._bad(skip_bad, fname, entry,
                          "category_id {!r} is not an id in 'categories' (known: {})".format(
                              cat_id, sorted(categories)))
                continue
            img = images[img_id]
            reason = self._segmentation_problem(ann, img["height"], img["width"])
            if reason:
                self._bad(skip_bad, fname, entry, reason)
                continue
            if cat_id in wanted:
                anns_per_image.setdefault(img_id, []).append(ann)
        return anns_per_image

    @staticmethod
    def _ann_entry(i, ann):
        if isinstance(ann, dict):
            return "annotations[{}] (id {!r}, image_id {!r})".format(
                i, ann.get("id"), ann.get("image_id"))
        return "annotations[{}]".format(i)

    def _coco_images(self, entries, image_dir, fname, skip_bad):
        """Validate ``images``: dict id -> {path, height, width, entry}."""
        try:  # one listing instead of a stat per image (COCO has 118k images)
            present = set(os.listdir(image_dir))
        except OSError:
            present = set()
        self._dropped_image_ids = set()
        images = {}
        for i, img in enumerate(entries):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                self._bad(skip_bad, fname, "images[{}]".format(i),
                          "needs 'id' and 'file_name', got {!r}".format(img))
                continue
            entry = "images[{}] (id {!r}, file_name {!r})".format(i, img["id"], img["file_name"])
            if img["id"] in images:
                self._bad(skip_bad, fname, entry, "duplicate image id")
                continue
            path = os.path.join(image_dir, img["file_name"])
            exists = (img["file_name"] in present if os.sep not in img["file_name"]
                      and "/" not in img["file_name"] else os.path.isfile(path))
            if not exists:
                self._dropped_image_ids.add(img["id"])
                self._bad(skip_bad, fname, entry, "image file not found: {} (its annotations "
                          "are skipped too)".format(path))
                continue
            height, width = img.get("height"), img.get("width")
            if not (isinstance(height, numbers.Integral) and isinstance(width, numbers.Integral)
                    and height > 0 and width > 0):
                height, width = image_size(path, self.apply_exif_orientation)  # header
            images[img["id"]] = dict(path=path, height=int(height), width=int(width),
                                     entry=img)
        return images

    @staticmethod
    def _segmentation_problem(ann, height, width):
        """Why the annotation's segmentation is unusable, or None when it is fine."""
        if "segmentation" not in ann:
            return "no 'segmentation' (a mask is needed)"
        seg = ann["segmentation"]
        if isinstance(seg, list):
            if not seg:
                return "empty segmentation (no polygon)"
            for j, poly in enumerate(seg):
                if not isinstance(poly, (list, tuple)):
                    return "polygon {} is a {}, expected a list of numbers".format(
                        j, type(poly).__name__)
                if len(poly) < 6:
                    return ("polygon {} has {} point(s) ({} numbers); a polygon needs at least "
                            "3 points (6 numbers)".format(j, len(poly) // 2, len(poly)))
                if len(poly) % 2:
                    return "polygon {} has an odd count of numbers ({})".format(j, len(poly))
                # pycocotools crashes the process on NaN/inf or huge coordinates: check here.
                for v in poly:
                    if isinstance(v, bool) or not isinstance(v, numbers.Real) or \
                            not math.isfinite(v) or abs(v) > 1e6:
                        return "polygon {} has an invalid coordinate {!r}".format(j, v)
            return None
        if isinstance(seg, dict):
            if "counts" not in seg or "size" not in seg:
                return "RLE segmentation needs 'counts' and 'size'"
            size = list(seg["size"]) if isinstance(seg["size"], (list, tuple)) else None
            if size is None or len(size) != 2:
                return "RLE 'size' {!r} is not [height, width]".format(seg["size"])
            if size != [height, width] and not ann.get("iscrowd", 0):
                return "RLE size {} differs from the image size [{}, {}]".format(
                    size, height, width)
            counts = seg["counts"]
            if isinstance(counts, list):
                if any(not isinstance(c, numbers.Integral) or c < 0 for c in counts):
                    return "uncompressed RLE counts must be integers >= 0"
                if sum(counts) != size[0] * size[1]:
                    return "uncompressed RLE counts sum to {}, not height*width = {}".format(
                        sum(counts), size[0] * size[1])
            elif not isinstance(counts, (str, bytes)):
                return "RLE counts is a {}, expected a list or a string".format(
                    type(counts).__name__)
            return None
        return "segmentation is a {}, expected polygons (list) or RLE (dict)".format(
            type(seg).__name__)

    # -- masks

    def annToRLE(self, ann, height, width):
        """Matterport/pycocotools name: annotation dict -> compressed RLE."""
        return ann_to_rle(ann["segmentation"], height, width)

    def annToMask(self, ann, height, width):
        """Matterport/pycocotools name: annotation dict -> uint8 mask [H, W]."""
        return ann_to_mask(ann["segmentation"], height, width)

    def image_class_ids(self, image_id):
        """Internal class ids of the image's non-crowd annotations, from the JSON alone
        (annotations too small to cover a pixel, which load_mask drops, are counted)."""
        info = self.image_info[image_id]
        if "annotations" not in info or "annotation_file" not in info:
            return super().image_class_ids(image_id)
        return np.array([self.map_source_class_id("{}.{}".format(info["source"],
                                                                 a["category_id"]))
                         for a in info["annotations"] if not a.get("iscrowd", 0)],
                        dtype=np.int32)

    def load_mask(self, image_id):
        """Instance masks of image ``image_id`` (internal id; call prepare() first).

        Returns masks bool [H, W, N] and class_ids int32 [N] (internal ids; crowd
        annotations negative). Annotations whose mask has no pixel are dropped.
        Images not loaded by load_coco_json go to the parent class.
        """
        info = self.image_info[image_id]
        if "annotations" not in info or "annotation_file" not in info:
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        masks, class_ids = [], []
        for ann in info["annotations"]:
            class_id = self.map_source_class_id("{}.{}".format(info["source"],
                                                               ann["category_id"]))
            try:
                m = self.annToMask(ann, height, width)
            except Exception as e:  # e.g. non-numeric polygon coordinates
                raise DatasetError("{}: annotation id {!r} of image id {!r}: cannot "
                                   "rasterise its segmentation: {}".format(
                                       info["annotation_file"], ann.get("id"), info["id"], e))
            if m.max() < 1:  # rounded away (smaller than a pixel)
                continue
            if ann.get("iscrowd", 0):
                class_id = -class_id
                # A crowd RLE of another size: cover the image, as Matterport does.
                if m.shape != (height, width):
                    m = np.ones((height, width), dtype=bool)
            masks.append(m.astype(bool))
            class_ids.append(class_id)
        return _stack_instances(masks, class_ids, height, width)

    def image_reference(self, image_id):
        """'<annotation file>: image id <id>' for images of this loader."""
        info = self.image_info[image_id]
        if "annotation_file" in info:
            return "{}: image id {} ({})".format(info["annotation_file"], info["id"],
                                                 info["path"])
        return super().image_reference(image_id)


# ---------------------------------------------------------------------------- VIA

def read_via_json(json_path):
    """Entries of a VIA annotation file as a list of dicts {filename, regions (list)}.

    Accepts VIA 1.x exports (regions as a dict keyed "0", "1", ...), VIA 2.x exports
    (regions as a list) and VIA 2 project files (entries under "_via_img_metadata").
    Malformed entries are returned with a "problem" key instead of regions.
    """
    if not os.path.isfile(json_path):
        raise MissingFileError("VIA annotation file not found: {}".format(json_path))
    data = _load_json(json_path)
    if not isinstance(data, dict):
        raise DatasetError("{}: not a VIA annotation file: top level is a {}, expected an "
                           "object keyed by image".format(json_path, type(data).__name__))
    if "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    elif "project" in data and "file" in data and "metadata" in data:
        raise DatasetError("{}: VIA 3 project files are not supported; export the "
                           "annotations in VIA 2 JSON format".format(json_path))
    if not isinstance(data, dict):
        raise DatasetError("{}: '_via_img_metadata' is not an object".format(json_path))
    entries = []
    for key, value in data.items():
        if not isinstance(value, dict) or "filename" not in value:
            entries.append(dict(key=key, filename=None,
                                problem="not a VIA image entry (no 'filename')"))
            continue
        regions = value.get("regions")
        if isinstance(regions, dict):  # VIA 1.x
            regions = list(regions.values())
        elif not isinstance(regions, list):
            entries.append(dict(key=key, filename=value["filename"],
                                problem="'regions' missing or not a list/dict"))
            continue
        entries.append(dict(key=key, filename=value["filename"], regions=regions))
    return entries


def _via_shape_to_polygon(shape):
    """VIA shape_attributes -> (xs, ys, None) or (None, None, reason).

    reason starts with "drop:" when the shape can never be a polygon (e.g. a point), which
    is skipped with a warning whatever skip_bad says.
    """
    if not isinstance(shape, dict):
        return None, None, "shape_attributes is not an object"
    name = shape.get("name")
    try:
        if name in ("polygon", "polyline"):
            xs = [float(v) for v in shape["all_points_x"]]
            ys = [float(v) for v in shape["all_points_y"]]
            if len(xs) != len(ys):
                return None, None, "{} has {} x but {} y values".format(name, len(xs), len(ys))
            if not all(math.isfinite(v) for v in xs + ys):
                return None, None, "{} has a non-finite coordinate".format(name)
            # VIA may repeat the first vertex at the end: not a distinct point.
            n = len(xs) - (1 if len(xs) > 1 and xs[0] == xs[-1] and ys[0] == ys[-1] else 0)
            if n < 3:
                return None, None, "{} with {} point(s); at least 3 are needed".format(name, n)
            return xs, ys, None
        if name == "rect":
            x, y = float(shape["x"]), float(shape["y"])
            w, h = float(shape["width"]), float(shape["height"])
            if w <= 0 or h <= 0:
                return None, None, "drop: rect with zero size ({} x {})".format(w, h)
            return [x, x + w, x + w, x], [y, y, y + h, y + h], None
        if name in ("circle", "ellipse"):
            cx, cy = float(shape["cx"]), float(shape["cy"])
            if name == "circle":
                rx = ry = float(shape["r"])
                theta = 0.0
            else:
                rx, ry = float(shape["rx"]), float(shape["ry"])
                theta = float(shape.get("theta", 0.0))
            if rx <= 0 or ry <= 0:
                return None, None, "drop: {} with zero radius".format(name)
            t = np.linspace(0, 2 * np.pi, _ELLIPSE_POINTS, endpoint=False)
            ex, ey = rx * np.cos(t), ry * np.sin(t)
            xs = cx + ex * math.cos(theta) - ey * math.sin(theta)
            ys = cy + ex * math.sin(theta) + ey * math.cos(theta)
            return xs.tolist(), ys.tolist(), None
    except (KeyError, TypeError, ValueError) as e:
        return None, None, "{} shape with missing/invalid attribute: {!r}".format(name, e)
    return None, None, "drop: {!r} region cannot be converted to a polygon".format(name)


class ViaDataset(_SkipBadMixin, Dataset):
    """Polygon instance masks from a VGG Image Annotator (VIA) JSON file.

    Polygons / polylines are used as drawn; rect, circle and ellipse regions are turned
    into polygons; point regions (and unknown shapes) are dropped with a warning. Points
    are clipped to the image. Coordinates are continuous, as in COCO (pixel j covers
    [j, j + 1)): a pixel is in the mask when its centre is inside the polygon, so mask
    areas match polygon areas. (Matterport's balloon sample drew vertices at pixel
    centres, which adds about half the perimeter to each mask.) Images without any region
    are not registered and are listed in ``self.unannotated`` (together with image files of
    the folder that the JSON does not mention).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = []
        self.unannotated = []

    def load_via(self, dataset_dir, annotation_file="via_region_data.json",
                 class_name="balloon", class_attribute=None, skip_bad=False,
                 class_names=None, source=None, filenames=None):
        """Register the annotated images of ``dataset_dir``.

        annotation_file: VIA JSON, relative to dataset_dir (or an absolute path).
        class_name: the single class when ``class_attribute`` is None.
        class_attribute: region attribute holding each region's class name (VIA 2
            checkbox/radio dicts {name: true} work too). Class ids follow ``class_names``
            when given (regions of other names are bad entries), else sorted names.
        skip_bad: as CocoJsonDataset (bad regions skipped one by one).
        source: source name; default ``class_name`` (Matterport's "balloon") for single
            class files, "via" with ``class_attribute``.
        filenames: only register these image file names (e.g. one side of a split).

        Each image is added with ``id`` = file name, ``path``, ``width``, ``height`` (read
        from the file header), ``polygons`` (dicts name/all_points_x/all_points_y, clipped)
        and ``polygon_class_ids`` (source class ids).
        """
        if not os.path.isdir(dataset_dir):
            raise MissingFileError("dataset folder not found: {}".format(dataset_dir))
        json_path = annotation_file if os.path.isabs(annotation_file) else os.path.join(
            dataset_dir, annotation_file)
        entries = read_via_json(json_path)
        if source is None:
            source = class_name if class_attribute is None else "via"
        n_skipped_before = len(self.skipped)
        wanted = None if filenames is None else set(filenames)
        fixed_names = list(class_names) if class_names is not None else (
            [class_name] if class_attribute is None else None)
        class_spec = (class_name, class_attribute, class_names)

        mentioned = set()
        registered = set()
        parsed = []  # (filename, path, height, width, [(xs, ys, name)])
        for entry_info in entries:
            filename = entry_info["filename"]
            mentioned.add(filename)
            if wanted is not None and filename not in wanted:
                continue
            item = self._via_image(entry_info, dataset_dir, json_path, registered,
                                   class_spec, skip_bad)
            if item is not None:
                registered.add(filename)
                parsed.append(item)

        if wanted is None:  # images of the folder the JSON never mentions
            for f in sorted(os.listdir(dataset_dir)):
                if f.lower().endswith(IMAGE_EXTENSIONS) and f not in mentioned:
                    self.unannotated.append(f)
        first = len(self.image_info)
        self._register_via(parsed, fixed_names, source, json_path)
        self._warn_skipped(json_path, n_skipped_before)
        # Browsers (VIA) show photos turned by their EXIF tag: say which ones have one.
        self.check_exif(range(first, len(self.image_info)))

    def _via_image(self, entry_info, dataset_dir, json_path, registered, class_spec,
                   skip_bad):
        """One VIA entry -> (filename, path, height, width, regions), or None when it is
        bad (reported) or has no usable region (listed in ``self.unannotated``)."""
        filename = entry_info["filename"]
        entry = "entry {!r}".format(entry_info["key"])
        if "problem" in entry_info:
            self._bad(skip_bad, json_path, entry, entry_info["problem"])
            return None
        if not entry_info["regions"]:
            self.unannotated.append(filename)
            return None
        if filename in registered:
            self._bad(skip_bad, json_path, entry,
                      "second entry for image {!r}".format(filename))
            return None
        path = os.path.join(dataset_dir, filename)
        if not os.path.isfile(path):
            self._bad(skip_bad, json_path, entry, "image file not found: {}".format(path))
            return None
        try:
            height, width = image_size(path, self.apply_exif_orientation)
        except DatasetError as e:
            self._bad(skip_bad, json_path, entry, str(e))
            return None
        regions = self._via_regions(entry_info["regions"], "{} ({})".format(entry, filename),
                                    json_path, height, width, class_spec, skip_bad)
        if not regions:
            self.unannotated.append(filename)
            return None
        return filename, path, height, width, regions

    def _via_regions(self, regions, entry, json_path, height, width, class_spec, skip_bad):
        """Usable regions of one image as [(xs, ys, class name)], clipped to the image;
        the others are reported (or dropped, for shapes that are never polygons)."""
        out = []
        for r, region in enumerate(regions):
            rentry = "{} region {}".format(entry, r)
            if not isinstance(region, dict):
                self._bad(skip_bad, json_path, rentry, "region is not an object")
                continue
            xs, ys, reason = _via_shape_to_polygon(region.get("shape_attributes"))
            if reason and reason.startswith("drop:"):
                self._drop(json_path, rentry, reason[6:])
                continue
            if reason:
                self._bad(skip_bad, json_path, rentry, reason)
                continue
            name, reason = self._region_class(region, *class_spec)
            if reason:
                self._bad(skip_bad, json_path, rentry, reason)
                continue
            # Clip to the image (continuous coordinates: it spans [0, W] x [0, H]).
            xs = np.clip(np.asarray(xs, dtype=np.float64), 0, width).tolist()
            ys = np.clip(np.asarray(ys, dtype=np.float64), 0, height).tolist()
            out.append((xs, ys, name))
        return out

    def _register_via(self, parsed, fixed_names, source, json_path):
        """Add the classes (fixed_names, else the sorted names found) and the images."""
        names = fixed_names if fixed_names is not None else sorted(
            {n for p in parsed for _, _, n in p[4]})
        name_to_id = {n: i + 1 for i, n in enumerate(names)}
        for n, cid in name_to_id.items():
            self.add_class(source, cid, n)
        for filename, path, height, width, regions in parsed:
            self.add_image(
                source, image_id=filename, path=path, width=width, height=height,
                polygons=[dict(name="polygon", all_points_x=xs, all_points_y=ys)
                          for xs, ys, _ in regions],
                polygon_class_ids=[name_to_id[n] for _, _, n in regions],
                annotation_file=json_path)

    @staticmethod
    def _region_class(region, class_name, class_attribute, class_names):
        """Class name of a region -> (name, None) or (None, reason)."""
        if class_attribute is None:
            return class_name, None
        attrs = region.get("region_attributes") or {}
        value = attrs.get(class_attribute) if isinstance(attrs, dict) else None
        if isinstance(value, dict):  # VIA 2 checkbox: {"name": true, ...}
            chosen = [k for k, v in value.items() if v]
            value = chosen[0] if len(chosen) == 1 else None
            if value is None:
                return None, "region attribute {!r} must select exactly one class, got {!r}" \
                    .format(class_attribute, attrs.get(class_attribute))
        if not isinstance(value, str) or not value:
            return None, "region attribute {!r} missing or empty (attributes: {!r})".format(
                class_attribute, attrs)
        if class_names is not None and value not in class_names:
            return None, "class {!r} not in class_names {}".format(value, list(class_names))
        return value, None

    def image_class_ids(self, image_id):
        """Internal class ids of the image's regions, from the JSON alone."""
        info = self.image_info[image_id]
        if "polygons" not in info:
            return super().image_class_ids(image_id)
        return np.array([self.map_source_class_id("{}.{}".format(info["source"], src_id))
                         for src_id in info["polygon_class_ids"]], dtype=np.int32)

    def load_mask(self, image_id):
        """Rasterise the polygons of image ``image_id``: masks bool [H, W, N], class_ids
        int32 [N] (internal ids; call prepare() first). Polygons that cover no pixel centre
        are dropped."""
        info = self.image_info[image_id]
        if "polygons" not in info:
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        masks, class_ids = [], []
        for poly, src_id in zip(info["polygons"], info["polygon_class_ids"]):
            # VIA coordinates are continuous (pixel j spans [j, j + 1), centre j + 0.5), as
            # COCO's: set the pixels whose centre is inside, so the mask area matches the
            # polygon area and pycocotools' rasterisation of the same polygon. polygon_mask:
            # skimage.draw.polygon's pixels, vectorised (rasterising was the slowest stage).
            m = polygon_mask(np.asarray(poly["all_points_y"]) - 0.5,
                             np.asarray(poly["all_points_x"]) - 0.5, (height, width))
            if not m.any():
                continue
            masks.append(m)
            class_ids.append(self.map_source_class_id("{}.{}".format(info["source"], src_id)))
        return _stack_instances(masks, class_ids, height, width)

    def image_reference(self, image_id):
        """Path of the image file."""
        info = self.image_info[image_id]
        if "polygons" in info:
            return info["path"]
        return super().image_reference(image_id)


# ---------------------------------------------------------------------------- DSB2018

def list_nucleus_ids(dataset_dir):
    """Sorted image ids of a DSB2018-style folder: subfolders holding images/<id>.png."""
    if not os.path.isdir(dataset_dir):
        raise MissingFileError("nucleus dataset folder not found: {}".format(dataset_dir))
    return sorted(d for d in os.listdir(dataset_dir)
                  if not d.startswith(".")
                  and os.path.isfile(os.path.join(dataset_dir, d, "images", d + ".png")))


def split_ids(dataset_dir, val_fraction=0.1, seed=42):
    """Deterministic train/val split of the image ids of a DSB2018 folder.

    The ids (folder names, sorted) are split by ``split_items(ids, val_fraction, seed)``:
    a permutation from ``np.random.RandomState(seed)``, the first round(n * val_fraction)
    ids (or exactly ``val_fraction`` if it is an int) for validation. With the defaults
    the 600 images of stage1_train give 540 train / 60 val ids.
    Returns ``(train_ids, val_ids)``, both sorted.
    """
    return split_items(list_nucleus_ids(dataset_dir), val_fraction=val_fraction, seed=seed)


def _crop_masks(masks):
    """[H, W, N] bool -> (shape, boxes [N, 4], crops): each mask cut to its bounding box."""
    boxes = extract_bboxes(masks)
    crops = [masks[y1:y2, x1:x2, i].copy() for i, (y1, x1, y2, x2) in enumerate(boxes)]
    return masks.shape, boxes, crops


def _uncrop_masks(shape, boxes, crops):
    """Inverse of _crop_masks: (masks bool [H, W, N], class_ids int32 [N] all ones)."""
    masks = np.zeros(shape, dtype=bool)
    for i, ((y1, x1, y2, x2), crop) in enumerate(zip(boxes, crops)):
        masks[y1:y2, x1:x2, i] = crop
    return masks, np.ones((shape[-1],), dtype=np.int32)


class NucleusDataset(_SkipBadMixin, Dataset):
    """DSB2018 nuclei: ``<dataset_dir>/<id>/images/<id>.png`` and ``<id>/masks/*.png``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = []
        self.cache_masks = False
        self._mask_cache = {}

    def load_nucleus(self, dataset_dir, subset_ids=None, skip_bad=False, source="nucleus",
                     cache_masks=False, class_name="nucleus"):
        """Register the images of ``dataset_dir`` (all, or only ``subset_ids``).

        Each image is added with ``id`` = the folder name, ``path`` = images/<id>.png,
        ``mask_dir`` = <id>/masks (may be absent for test images), ``height``, ``width``.
        A requested id without its image file is a bad entry. class_name: the one class.
        cache_masks: keep each image's masks in memory after the first load_mask, as
        bounding-box crops (a few KB per nucleus): decoding a hundred mask PNGs per image
        at every epoch otherwise costs more CPU than a training step on small crops.
        """
        self.cache_masks = bool(cache_masks)
        if not os.path.isdir(dataset_dir):
            raise MissingFileError("nucleus dataset folder not found: {}".format(dataset_dir))
        n_skipped_before = len(self.skipped)
        if subset_ids is None:
            ids = sorted(d for d in os.listdir(dataset_dir) if not d.startswith(".")
                         and os.path.isdir(os.path.join(dataset_dir, d)))
        else:
            ids = list(subset_ids)
        self.add_class(source, 1, class_name)
        for image_id in ids:
            path = os.path.join(dataset_dir, image_id, "images", image_id + ".png")
            if not os.path.isfile(path):
                self._bad(skip_bad, dataset_dir, "image id {!r}".format(image_id),
                          "image file not found: {}".format(path))
                continue
            height, width = image_size(path)
            self.add_image(source, image_id=image_id, path=path, height=height, width=width,
                           mask_dir=os.path.join(dataset_dir, image_id, "masks"))
        self._warn_skipped(dataset_dir, n_skipped_before)

    def load_mask(self, image_id):
        """Stack the mask PNGs (sorted by file name) of image ``image_id``.

        Returns masks bool [H, W, N] (pixel > 0) and class_ids int32 [N] (all nucleus).
        Empty mask files are dropped with a warning; a mask whose size differs from the
        image raises DatasetError naming the file.
        """
        info = self.image_info[image_id]
        if "mask_dir" not in info:
            return super().load_mask(image_id)
        cached = self._mask_cache.get(image_id)
        if cached is not None:
            return _uncrop_masks(*cached)
        masks, class_ids = self._read_masks(info)
        if getattr(self, "cache_masks", False):
            self._mask_cache[image_id] = _crop_masks(masks)
        return masks, class_ids

    def _read_masks(self, info):
        height, width = info["height"], info["width"]
        mask_dir = info["mask_dir"]
        if not os.path.isdir(mask_dir):
            return _empty_mask(height, width)
        files = sorted(f for f in os.listdir(mask_dir) if f.lower().endswith(".png"))
        masks = np.zeros((height, width, len(files)), dtype=bool)
        keep = np.ones(len(files), dtype=bool)
        for i, f in enumerate(files):
            with Image.open(os.path.join(mask_dir, f)) as im:
                m = np.asarray(im)
            if m.ndim == 3:  # RGB(A) mask file: any non-zero colour channel
                m = m[..., :3].any(axis=-1)
            if m.shape != (height, width):
                raise DatasetError("{}: mask of image id {!r} is {}x{}, the image is {}x{}"
                                   .format(os.path.join(mask_dir, f), info["id"], m.shape[0],
                                           m.shape[1], height, width))
            masks[:, :, i] = m > 0
            keep[i] = masks[:, :, i].any()
        if not keep.all():
            warnings.warn("{}: dropped {} empty mask file(s) of image id {!r}".format(
                mask_dir, int((~keep).sum()), info["id"]), DatasetWarning, stacklevel=3)
            masks = masks[:, :, keep]
        return masks, np.ones((masks.shape[-1],), dtype=np.int32)

    def image_reference(self, image_id):
        """The image id (folder name), as Matterport's nucleus sample."""
        info = self.image_info[image_id]
        if "mask_dir" in info:
            return info["id"]
        return super().image_reference(image_id)


# ---------------------------------------------------------------------------- labelme

# labelme shape types that enclose an area; the others (line, linestrip, point, ...) are
# dropped with a warning.
LABELME_AREA_SHAPES = ("polygon", "rectangle", "circle")


def labelme_json_files(path):
    """The labelme JSON files of ``path``: a folder (its *.json, sorted, not recursive),
    one JSON file, or a list of files. Raises MissingFileError naming a missing path."""
    if isinstance(path, (list, tuple)):
        files = [str(p) for p in path]
    elif os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path))
                 if f.lower().endswith(".json") and not f.startswith(".")]
        if not files:
            raise MissingFileError("labelme folder has no .json file: {}".format(path))
    else:
        files = [str(path)]
    for f in files:
        if not os.path.isfile(f):
            raise MissingFileError("labelme JSON file not found: {}".format(f))
    return files


def _labelme_geometry(kind, points):
    """A labelme shape -> (geometry dict, None) or (None, reason).

    Geometries: polygon {points [[x, y], ...]}, rectangle {box [x1, y1, x2, y2]}, circle
    {center [x, y], radius}. reason starts with "drop:" for shapes that never enclose an
    area (dropped whatever skip_bad says, as VIA point regions).
    """
    if kind not in LABELME_AREA_SHAPES:
        return None, "drop: {} shape is not an area (only {} are used)".format(
            kind, ", ".join(LABELME_AREA_SHAPES))
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        return None, "{} points are not numbers: {!r}".format(kind, points)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
        return None, "{} points must be a list of finite [x, y] pairs, got {!r}".format(
            kind, points)
    if kind == "polygon":
        if len(pts) < 3:
            return None, "polygon with {} point(s); at least 3 are needed".format(len(pts))
        return dict(kind=kind, points=pts.tolist()), None
    if kind == "rectangle":
        if len(pts) < 2:
            return None, "rectangle needs 2 corner points, got {}".format(len(pts))
        (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
        if x2 <= x1 or y2 <= y1:
            return None, "drop: rectangle with zero size"
        return dict(kind=kind, box=[x1, y1, x2, y2]), None
    if len(pts) != 2:
        return None, "circle needs 2 points (centre, a point on the circle), got {}".format(
            len(pts))
    radius = float(np.hypot(*(pts[1] - pts[0])))
    if radius <= 0:
        return None, "drop: circle with zero radius"
    return dict(kind=kind, center=pts[0].tolist(), radius=radius), None


def _rasterise_labelme(geometry, height, width):
    """bool mask [H, W] of one labelme geometry.

    Coordinates are continuous, as VIA's and COCO's (pixel j spans [j, j + 1)): a pixel is
    in the shape when its centre is, hence the -0.5 shifts into skimage's pixel indices.
    """
    if geometry["kind"] == "circle":
        cx, cy = geometry["center"]
        rr, cc = skimage.draw.disk((cy - 0.5, cx - 0.5), geometry["radius"],
                                   shape=(height, width))
        m = np.zeros((height, width), dtype=bool)
        m[rr, cc] = True
        return m
    if geometry["kind"] == "rectangle":
        x1, y1, x2, y2 = geometry["box"]
        xs, ys = np.array([x1, x2, x2, x1]), np.array([y1, y1, y2, y2])
    else:
        xs, ys = np.asarray(geometry["points"], dtype=np.float64).T
    # The pixels of skimage.draw.polygon, vectorised.
    return polygon_mask(ys - 0.5, xs - 0.5, (height, width))


def _decode_image_data(image_data):
    """labelme's base64 imageData -> a PIL image (lazy: only the header is read)."""
    import base64
    return Image.open(io.BytesIO(base64.b64decode(image_data)))


class LabelmeDataset(_SkipBadMixin, Dataset):
    """Instance masks from labelme JSON files (one per image).

    Polygons, rectangles (2 corners) and circles (centre + a point on the circle) become
    masks with the continuous-coordinate rule of ViaDataset; line, linestrip, point and
    other shapes are dropped with a warning naming the file and shape. Shapes with the
    same (label, group_id), group_id not None, form one instance (labelme's convention).
    Images without a usable shape are not registered and are listed in
    ``self.unannotated`` (their JSON paths).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = []
        self.unannotated = []

    def load_labelme(self, path, class_names=None, skip_bad=False, source="labelme",
                     images=None):
        """Register the images of labelme JSON files.

        path: a folder of labelme JSONs, one JSON file or a list of files.
        class_names: class order (ids 1..K); a label outside it is a bad entry. Default:
            the sorted labels found.
        skip_bad: False -> raise DatasetError at the first bad entry (MissingFileError for
            an image found neither at imagePath nor embedded); True -> warn once, skip the
            entry (a shape, or a whole file) and record it in ``self.skipped``.
        images: an extra folder searched for the image's file name.

        The image is ``imagePath`` (relative to the JSON's folder; its bare file name
        there or in ``images`` is tried too) or, when that file is missing, the embedded
        base64 ``imageData``. Height and width come from imageHeight / imageWidth when
        present (load_image checks them). Each image is added with ``id`` = the JSON path,
        ``path`` (the image file, or the JSON for embedded data), ``height``, ``width``,
        ``labelme_json``, ``embedded``, ``instances`` [(source class id, [geometry])].
        """
        files = labelme_json_files(path)
        start = len(self.skipped)
        parsed = [item for item in (self._labelme_file(f, class_names, skip_bad, images)
                                    for f in files) if item is not None]
        names = list(class_names) if class_names is not None else sorted(
            {label for item in parsed for label, _ in item["instances"]})
        name_to_id = {n: i + 1 for i, n in enumerate(names)}
        for n, cid in name_to_id.items():
            self.add_class(source, cid, n)
        first = len(self.image_info)
        for item in parsed:
            item["instances"] = [(name_to_id[label], geoms)
                                 for label, geoms in item["instances"]]
            self.add_image(source, image_id=item.pop("json"), **item)
        self._warn_skipped(path if isinstance(path, str) else "labelme files", start,
                           with_file=True)
        # labelme applies the EXIF orientation before annotating: name such photos.
        self.check_exif(range(first, len(self.image_info)))

    def _labelme_file(self, json_path, class_names, skip_bad, images):
        """One JSON -> the add_image fields with (label, [geometry]) instances, or None
        when the file is bad (reported) or has no usable shape (``unannotated``)."""
        try:
            data = _load_json(json_path)
        except DatasetError as e:
            self._bad(skip_bad, json_path, "file", str(e).split(": ", 1)[-1])
            return None
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            self._bad(skip_bad, json_path, "file", "not a labelme file (no 'shapes' list)")
            return None
        image = self._labelme_image(json_path, data, images, skip_bad)
        if image is None:
            return None
        instances = self._labelme_instances(json_path, data["shapes"], class_names,
                                            skip_bad)
        if not instances:
            self.unannotated.append(json_path)
            return None
        image.update(json=json_path, labelme_json=json_path, instances=instances)
        return image

    def _labelme_image(self, json_path, data, images, skip_bad):
        """{path, embedded, height, width} of the JSON's image, or None (reported)."""
        image_path = data.get("imagePath")
        candidates = []
        if isinstance(image_path, str) and image_path:
            rel = image_path.replace("\\", "/")  # labelme on Windows writes backslashes
            folder = os.path.dirname(json_path)
            base = os.path.basename(rel)
            candidates = [os.path.join(folder, rel), os.path.join(folder, base)]
            if images:
                candidates.append(os.path.join(images, base))
        found = next((c for c in candidates if os.path.isfile(c)), None)
        height, width = data.get("imageHeight"), data.get("imageWidth")
        sized = all(isinstance(v, numbers.Integral) and v > 0 for v in (height, width))
        entry = "imagePath {!r}".format(image_path)
        try:
            if found is not None:
                if not sized:
                    height, width = image_size(found, self.apply_exif_orientation)
                return dict(path=found, embedded=False, height=int(height), width=int(width))
            if isinstance(data.get("imageData"), str) and data["imageData"]:
                if not sized:
                    with _decode_image_data(data["imageData"]) as im:
                        width, height = im.size
                return dict(path=json_path, embedded=True, height=int(height),
                            width=int(width))
        except Exception as e:  # unreadable header or base64
            self._bad(skip_bad, json_path, entry, "cannot read the image: {}".format(e))
            return None
        self._bad(skip_bad, json_path, entry, "image file not found: {} and no embedded "
                  "imageData".format(candidates[0] if candidates else "(no imagePath)"),
                  error=MissingFileError)
        return None

    def _labelme_instances(self, json_path, shapes, class_names, skip_bad):
        """[(label, [geometry])] of the usable shapes, grouped by (label, group_id)."""
        groups = {}  # insertion ordered: instances keep the file's shape order
        for i, shape in enumerate(shapes):
            if not isinstance(shape, dict):
                self._bad(skip_bad, json_path, "shapes[{}]".format(i), "not an object")
                continue
            label, kind = shape.get("label"), shape.get("shape_type") or "polygon"
            entry = "shapes[{}] ({} {!r})".format(i, kind, label)
            geometry, reason = _labelme_geometry(kind, shape.get("points"))
            if reason and reason.startswith("drop:"):
                self._drop(json_path, entry, reason[6:])
                continue
            if not reason and (not isinstance(label, str) or not label):
                reason = "label missing or empty"
            elif not reason and class_names is not None and label not in class_names:
                reason = "label {!r} is not one of the classes {}".format(
                    label, list(class_names))
            if reason:
                self._bad(skip_bad, json_path, entry, reason)
                continue
            group = shape.get("group_id")
            key = (label, group) if group is not None else (None, i)
            groups.setdefault(key, (label, []))[1].append(geometry)
        return list(groups.values())

    def load_image(self, image_id):
        """The image file, or the JSON's embedded imageData, as uint8 RGB [H, W, 3];
        DatasetError naming the JSON when its size differs from imageHeight/imageWidth."""
        info = self.image_info[image_id]
        if "labelme_json" not in info:
            return super().load_image(image_id)
        if info["embedded"]:
            import base64
            from mrcnn.dataset import _image_to_uint8_rgb, _read_with_pil
            try:  # decoded like an image file (palette, 16-bit, grey handled the same)
                data = base64.b64decode(_load_json(info["labelme_json"])["imageData"])
                image = _image_to_uint8_rgb(
                    _read_with_pil(io.BytesIO(data), self.apply_exif_orientation),
                    self.bit_depth_rule(), info["labelme_json"])
            except Exception as e:
                raise DatasetError("{}: cannot decode the embedded imageData: {}".format(
                    info["labelme_json"], e)) from None
        else:
            image = super().load_image(image_id)
        if image.shape[:2] != (info["height"], info["width"]):
            turned = image.shape[:2] == (info["width"], info["height"])
            raise DatasetError("{}: the image {} is {}x{} but the JSON says imageHeight {}, "
                               "imageWidth {}{}".format(
                                   info["labelme_json"], info["path"], image.shape[0],
                                   image.shape[1], info["height"], info["width"],
                                   " (an EXIF orientation labelme applied? set "
                                   "apply_exif_orientation = True)" if turned else ""))
        return image

    def load_mask(self, image_id):
        """masks bool [H, W, N] (an instance is the union of its grouped shapes) and
        class_ids int32 [N]; instances covering no pixel centre are dropped."""
        info = self.image_info[image_id]
        if "instances" not in info:
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        masks, class_ids = [], []
        for src_id, geometries in info["instances"]:
            m = np.zeros((height, width), dtype=bool)
            for g in geometries:
                m |= _rasterise_labelme(g, height, width)
            if m.any():
                masks.append(m)
                class_ids.append(self.map_source_class_id("{}.{}".format(info["source"],
                                                                         src_id)))
        return _stack_instances(masks, class_ids, height, width)

    def image_reference(self, image_id):
        """The labelme JSON path."""
        info = self.image_info[image_id]
        return info.get("labelme_json") or super().image_reference(image_id)


# ---------------------------------------------------------------------------- any format

ANNOTATION_FORMATS = ("coco", "via", "labelme", "masks")

# The one class of VIA files without a class attribute and of mask folders.
DEFAULT_CLASS_NAME = "object"

# Region attributes preferred as the class when several could be (VIA).
_VIA_CLASS_KEYS = ("class", "label", "category", "name", "type")

_FORMATS_LOOKED_FOR = (
    "COCO JSON with 'images' and 'annotations' (e.g. _annotations.coco.json, "
    "annotations/instances_*.json), VIA JSON (via_region_data.json, VIA 1/2 exports or a "
    "VIA 2 project), labelme JSONs (one per image, with 'shapes'), mask folders "
    "(<id>/images/<id>.png + <id>/masks/*.png)")


def _json_kind(data):
    """'coco', 'via', 'labelme' or None for a parsed JSON."""
    if not isinstance(data, dict):
        return None
    if "images" in data and "annotations" in data:
        return "coco"
    if "shapes" in data:
        return "labelme"
    if "_via_img_metadata" in data or {"project", "file", "metadata"} <= set(data):
        return "via"  # VIA 2 project, or VIA 3 (read_via_json says it is unsupported)
    values = list(data.values())
    if values and all(isinstance(v, dict) and "filename" in v and "regions" in v
                      for v in values):
        return "via"
    return None


def _folder_candidates(folder):
    """JSON files of ``folder`` to classify: the names annotation tools export first
    (VIA, Roboflow, CVAT's annotations/), then the other top-level JSONs, sorted."""
    def jsons(d):
        if not os.path.isdir(d):
            return []
        return [os.path.join(d, f) for f in sorted(os.listdir(d))
                if f.lower().endswith(".json") and not f.startswith(".")]
    top = jsons(folder)
    known = [f for f in top if os.path.basename(f) in ("via_region_data.json",
                                                       "_annotations.coco.json")]
    known += jsons(os.path.join(folder, "annotations"))
    return known, [f for f in top if f not in known]


def _detect_folder(folder, wanted=None):
    """(format, annotation path) of a folder (see load_annotated for the rules)."""
    known, others = _folder_candidates(folder)
    found = []  # (kind, file) of the COCO / VIA files
    for i, f in enumerate([] if wanted == "masks" else known + others):
        kind = _json_kind(_load_json(f))
        if kind == "labelme" and i >= len(known) and not found and \
                wanted in (None, "labelme"):
            # A labelme folder (one JSON per image): no need to parse them all here.
            return "labelme", folder
        if kind in ("coco", "via") and wanted in (None, kind):
            found.append((kind, f))
    if len(found) > 1:
        raise DatasetError("{}: several annotation files ({}); pass the one to use".format(
            folder, ", ".join(os.path.relpath(f, folder) for _, f in found)))
    if found:
        return found[0]
    if wanted in (None, "masks") and list_nucleus_ids(folder):
        return "masks", folder
    looked_for = _FORMATS_LOOKED_FOR if wanted is None else "{} annotations".format(wanted)
    raise DatasetError("{}: no annotations in a known format (looked for {})".format(
        folder, looked_for))


def detect_format(path, wanted=None):
    """(format, annotation path) of ``path``: a JSON file or a folder (see load_annotated
    for the rules). ``wanted``: only look for that format. Raises MissingFileError for a
    missing path and DatasetError naming the path and the formats looked for."""
    if isinstance(path, (list, tuple)):
        return "labelme", list(path)
    if not os.path.exists(path):
        raise MissingFileError("annotations not found: {}".format(path))
    if os.path.isdir(path):
        return _detect_folder(path, wanted)
    kind = _json_kind(_load_json(path)) if path.lower().endswith(".json") else None
    if kind is None or (wanted not in (None, kind)):
        raise DatasetError("{}: not {} (looked for {})".format(
            path, "a {} file".format(wanted) if wanted else "an annotation file in a known "
            "format", _FORMATS_LOOKED_FOR))
    return kind, path


def load_annotated(path, format="auto", images=None, class_names=None, skip_bad=False):
    """A prepared Dataset of the annotations at ``path``, in any supported format.

    format: "auto" (detected, see below), "coco", "via", "labelme" or "masks".
    images: image folder (COCO: default next to the JSON, or its "images" / "../images"
        folder as CVAT and Roboflow export it; VIA: default the JSON's folder; labelme:
        searched for the imagePath's file name).
    class_names: the class order to use (the training set's, for a validation set); a
        class of the data outside it raises DatasetError naming it. Default: from the
        data: COCO categories that have annotations (category-id order; Roboflow's unused
        super-category is left out), the VIA region attribute naming the class if the
        regions have one (else one class "object"), labelme labels (sorted), "object"
        for mask folders.
    skip_bad: see the loaders (CocoJsonDataset, ViaDataset, LabelmeDataset,
        NucleusDataset).

    Auto-detection. A JSON file: COCO (a dict with "images" and "annotations"), VIA (VIA 1
    entries with "filename"/"regions", or a VIA 2 project with "_via_img_metadata") or
    labelme ("shapes"). A folder: the one COCO or VIA JSON it holds (via_region_data.json,
    _annotations.coco.json and annotations/*.json are looked at first), labelme when its
    JSONs are labelme files, masks when its subfolders have the DSB2018 layout. The
    dataset gets ``annotation_format`` and ``annotation_path`` attributes.
    """
    if format not in ("auto",) + ANNOTATION_FORMATS:
        raise ValueError("format must be 'auto' or one of {}, got {!r}".format(
            ANNOTATION_FORMATS, format))
    if images is not None and not os.path.isdir(images):
        raise MissingFileError("image folder not found: {}".format(images))
    kind, found = detect_format(path, None if format == "auto" else format)
    loader = {"coco": _load_coco, "via": _load_via, "labelme": _load_labelme,
              "masks": _load_masks}[kind]
    dataset = loader(found, images, class_names, skip_bad)
    dataset.prepare()
    dataset.annotation_format, dataset.annotation_path = kind, found
    return dataset


def _unknown_classes_error(where, unknown, class_names):
    return DatasetError("{}: class(es) {} are not among the training classes {}".format(
        where, sorted(unknown), list(class_names)))


def _coco_image_dir(json_path, data, images):
    """The folder holding the images a COCO JSON names (see load_annotated)."""
    if images:
        return images
    folder = os.path.dirname(os.path.abspath(json_path))
    stem = os.path.splitext(os.path.basename(json_path))[0]
    candidates = [folder, os.path.join(folder, "images"),
                  os.path.join(os.path.dirname(folder), "images")]
    if stem.startswith("instances_"):  # COCO's own annotations/instances_val2017.json
        candidates.append(os.path.join(os.path.dirname(folder), stem[len("instances_"):]))
    names = [img["file_name"] for img in data["images"][:20]
             if isinstance(img, dict) and isinstance(img.get("file_name"), str)]
    for c in candidates:
        if not names or any(os.path.isfile(os.path.join(c, n)) for n in names):
            return c
    raise MissingFileError("{}: its images (e.g. {!r}) are in none of {}; give the image "
                           "folder (images=..., --images DIR)".format(
                               json_path, names[0], candidates))


def _load_coco(json_path, images, class_names, skip_bad):
    data = CocoJsonDataset._read_coco_file(json_path, images or os.path.dirname(
        os.path.abspath(json_path)))
    names = {c["id"]: str(c["name"]) for c in data["categories"]
             if isinstance(c, dict) and "id" in c and "name" in c}
    used = sorted({a.get("category_id") for a in data["annotations"]
                   if isinstance(a, dict) and a.get("category_id") in names})
    dataset = CocoJsonDataset()
    if class_names is None:
        class_ids = used or sorted(names)
    else:
        unknown = {names[i] for i in used} - set(class_names)
        if unknown:
            raise _unknown_classes_error(json_path, unknown, class_names)
        by_name = {names[i]: i for i in used}
        # Registered first, in the training order, so internal ids match training's;
        # a class absent here keeps its slot under a placeholder id.
        for k, n in enumerate(class_names):
            dataset.add_class("coco", by_name.get(n, "absent{}".format(k)), n)
        class_ids = sorted(by_name.values())
    if not class_ids:
        raise DatasetError("{}: no categories to load".format(json_path))
    dataset.load_coco_json(json_path, _coco_image_dir(json_path, data, images),
                           class_ids=class_ids, skip_bad=skip_bad)
    return dataset


def _via_class_attribute(json_path):
    """The region attribute naming each region's class, or None (one class).

    It must hold a non-empty string (or a VIA 2 checkbox dict with one choice) in every
    region; among several such attributes _VIA_CLASS_KEYS are preferred, then the first
    in sorted order.
    """
    regions = [r for e in read_via_json(json_path) for r in e.get("regions") or []
               if isinstance(r, dict)]

    def names_class(value):
        if isinstance(value, dict):
            return sum(bool(v) for v in value.values()) == 1
        return isinstance(value, str) and bool(value)

    keys = None
    for r in regions:
        attrs = r.get("region_attributes")
        attrs = attrs if isinstance(attrs, dict) else {}
        ok = {k for k, v in attrs.items() if names_class(v)}
        keys = ok if keys is None else keys & ok
    if not keys:
        return None
    preferred = [k for k in sorted(keys) if k.lower() in _VIA_CLASS_KEYS]
    return (preferred or sorted(keys))[0]


def _load_via(json_path, images, class_names, skip_bad):
    attribute = _via_class_attribute(json_path)
    if attribute is None and class_names is not None and \
            DEFAULT_CLASS_NAME not in class_names:
        raise _unknown_classes_error(json_path, {DEFAULT_CLASS_NAME}, class_names)
    dataset = ViaDataset()
    dataset.load_via(images or os.path.dirname(os.path.abspath(json_path)),
                     annotation_file=os.path.abspath(json_path),
                     class_name=DEFAULT_CLASS_NAME, class_attribute=attribute,
                     class_names=class_names, source="via", skip_bad=skip_bad)
    dataset.class_attribute = attribute
    return dataset


def _load_labelme(path, images, class_names, skip_bad):
    dataset = LabelmeDataset()
    dataset.load_labelme(path, class_names=class_names, skip_bad=skip_bad, images=images)
    return dataset


def _load_masks(folder, images, class_names, skip_bad):
    if class_names is not None and list(class_names) != [DEFAULT_CLASS_NAME]:
        raise DatasetError("{}: a mask folder has the one class {!r}; the training classes "
                           "are {}".format(folder, DEFAULT_CLASS_NAME, list(class_names)))
    dataset = NucleusDataset()
    # Masks are read again every epoch: keep them in memory as small crops.
    dataset.load_nucleus(folder, skip_bad=skip_bad, source="masks", cache_masks=True,
                         class_name=DEFAULT_CLASS_NAME)
    return dataset
