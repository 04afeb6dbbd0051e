"""The Dataset base class (Matterport's API) and the image reading behind load_image.

Subclass ``Dataset``, register classes with ``add_class`` and images with ``add_image``,
override ``load_mask``, then call ``prepare()``; mrcnn.datasets has ready-made loaders
(COCO JSON, VIA, DSB2018 folders). ``load_image`` decodes any format Pillow (or
scikit-image) reads into uint8 RGB; errors name the image id and path (DatasetError).
"""

import importlib.util
import logging
import os
import sys
import warnings

import numpy as np
import skimage.io


def _fail_absent_optional_imports_fast(names=("pillow_heif",)):
    """Mark absent optional modules that image decoding tries to import on every read.

    imageio's Pillow plugin runs ``from pillow_heif import ...`` on each imread; when the
    package is absent, every attempt searches sys.path under Python's import locks, from
    all of tf.data's loader threads at once. Racing with a first import in the main
    thread, that hung the test suite (about one run in four of test_robustness.py). A None
    entry in sys.modules makes such an import fail at once, without locks or file system.
    """
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None


_fail_absent_optional_imports_fast()

logger = logging.getLogger(__name__)


class ExifWarning(UserWarning):
    """An image carries an EXIF orientation that is not applied."""


_ORIENTATION_NAMES = {1: "normal", 2: "mirrored", 3: "rotated 180", 4: "flipped",
                      5: "mirrored, rotated 90 counter-clockwise", 6: "rotated 90 clockwise",
                      7: "mirrored, rotated 90 clockwise",
                      8: "rotated 90 counter-clockwise"}


class DatasetError(ValueError):
    """A dataset cannot be used: unreadable image, no classes, no images, bad ids.

    The message names the image id and path (or the missing part) so the bad entry can be
    found.
    """


def _image_to_uint8_rgb(image, bit_depth="auto", name="image"):
    """Turn a decoded image array into uint8 RGB [H, W, 3].

    Grayscale -> 3 equal channels; an alpha channel is dropped (not composited, as
    Matterport); pixels wider than 8 bits and floats become uint8 by
    mrcnn.preprocess.image_to_uint8's rule ``bit_depth``.
    """
    from mrcnn.preprocess import image_to_uint8

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (2, 3, 4):
        raise ValueError("unsupported image shape {}".format(image.shape))
    if image.shape[-1] == 2:  # gray + alpha
        image = np.stack([image[..., 0]] * 3, axis=-1)
    image = image[..., :3]
    if image.dtype.kind == "i" and image.dtype.itemsize == 1:   # int8: no 8-bit rescale
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image_to_uint8(image, bit_depth, name))


def _read_with_pil(path, apply_exif=False):
    """Decode an image file with Pillow -> numpy array (see _read_oriented)."""
    return _read_oriented(path, apply_exif)[0]


def _read_oriented(path, apply_exif=False):
    """Decode an image file with Pillow: (array, EXIF orientation 1..8 or 1 if absent).
    With ``apply_exif`` the pixels are turned as the orientation tag says."""
    from PIL import Image, ImageOps
    with Image.open(path) as img:
        img.seek(0)  # first frame of multi-frame files
        img.load()  # decode now so truncated files fail here
        orientation = _orientation_of(img)
        if apply_exif and orientation != 1:
            img = ImageOps.exif_transpose(img)
        mode = img.mode
        if mode in ("P", "PA"):
            img = img.convert("RGBA")  # palette (with or without transparency) -> colours
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        return np.array(img), orientation


_EXIF_ORIENTATION = 0x0112


def _orientation_of(img):
    """The EXIF orientation tag of an open PIL image (1 = normal, also when absent)."""
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:   # a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if 1 <= value <= 8 else 1


def exif_orientation(path):
    """EXIF orientation (1..8; 1 = normal or no tag) of an image file, from its header."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return _orientation_of(img)
    except Exception:
        return 1


class Dataset(object):
    """Base class of datasets (Matterport API).

    Subclass it, register classes with ``add_class`` and images with ``add_image``, override
    ``load_mask`` (and ``image_reference``), then call ``prepare()``. Internal class ids are
    0 (BG), 1, 2, ... in order of ``add_class``; internal image ids are 0..num_images-1.

    ``prepare()`` accepts an empty dataset, as Matterport does (useful to list classes for
    inference); ``check_ready()`` is the gate before training or evaluation: it raises
    DatasetError when the dataset is not prepared, has no classes besides BG, or has no
    images.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        # Background is always class 0.
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}
        self._prepared = False

    def add_class(self, source, class_id, class_name):
        """Register class ``class_id`` of dataset ``source``; repeats are ignored."""
        if "." in source:
            raise DatasetError("add_class: source name {!r} must not contain a dot "
                               "(source class keys are 'source.id')".format(source))
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        """Register an image; extra keyword arguments are stored in its info dict."""
        image_info = {"id": image_id, "source": source, "path": path}
        image_info.update(kwargs)
        self.image_info.append(image_info)

    def image_reference(self, image_id):
        """A link or description of the image for debugging. Override; default ''."""
        return ""

    def prepare(self, class_map=None):
        """Build the lookup tables after all classes and images were added.

        Sets num_classes, class_ids, class_names (text before the first comma),
        num_images, _image_ids, class_from_source_map / image_from_source_map
        ("source.id" -> internal id), sources (every class source, including "" of BG,
        sorted) and source_class_ids (source -> internal class ids, BG included).
        ``class_map`` is accepted and ignored, as in Matterport. An empty dataset is
        allowed here; call ``check_ready()`` before training.
        """
        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [",".join(c["name"].split(",")[:1]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)

        self.class_from_source_map = {"{}.{}".format(info["source"], info["id"]): i
                                      for info, i in zip(self.class_info, self.class_ids)}
        self.image_from_source_map = {"{}.{}".format(info["source"], info["id"]): i
                                      for info, i in zip(self.image_info, self.image_ids)}

        # Sorted so the order does not depend on string hashing.
        self.sources = sorted(set(info["source"] for info in self.class_info))
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info)
                if i == 0 or info["source"] == source]
        self._prepared = True

    def check_ready(self):
        """Raise DatasetError unless the dataset can be trained / evaluated on.

        Checks: prepare() was called (after the last add_*), there is at least one class
        besides BG and at least one image, and every image's source has classes.
        """
        name = type(self).__name__
        if not getattr(self, "_prepared", False) or \
                getattr(self, "num_images", None) != len(self.image_info) or \
                getattr(self, "num_classes", None) != len(self.class_info):
            raise DatasetError("{}: call prepare() after adding classes and images and "
                               "before training".format(name))
        if self.num_classes <= 1:
            raise DatasetError("{}: no classes besides BG; call add_class(source, id, "
                               "name) before prepare()".format(name))
        if self.num_images == 0:
            raise DatasetError("{}: no images; call add_image(source, image_id, path) "
                               "before prepare()".format(name))
        for image_id, info in enumerate(self.image_info):
            if info["source"] not in self.source_class_ids:
                raise DatasetError(
                    "{}: image {} (id {!r}, path {!r}) has source {!r} with no classes; "
                    "known sources: {}".format(name, image_id, info["id"], info["path"],
                                               info["source"], self.sources))

    def map_source_class_id(self, source_class_id):
        """Internal class id of "source.class_id", e.g. map_source_class_id("coco.12")."""
        try:
            return self.class_from_source_map[source_class_id]
        except KeyError:
            raise KeyError("unknown source class {!r}; known: {}".format(
                source_class_id, sorted(self.class_from_source_map))) from None

    def get_source_class_id(self, class_id, source):
        """Class id in dataset ``source`` of internal class ``class_id``."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise DatasetError("class {} belongs to source {!r}, not {!r}".format(
                class_id, info["source"], source))
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        """Path or URL of the image. Override to return a URL."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """Read an image as uint8 RGB [H, W, 3].

        Grayscale becomes 3 equal channels, alpha is dropped, data wider than 8 bits and
        floats become 8 bits by ``bit_depth_rule()`` (mrcnn.preprocess.image_to_uint8),
        palette / CMYK images are converted to RGB. The format is detected from
        the file's content, not its extension; EXIF orientation is not applied
        (annotations refer to the stored pixel grid). Raises DatasetError naming the image
        id and path when the file is missing, empty, truncated or not an image.
        """
        try:
            info = self.image_info[image_id]
        except (IndexError, TypeError):
            raise DatasetError("{}: no image with id {!r} ({} images)".format(
                type(self).__name__, image_id, len(self.image_info))) from None
        path = info["path"]
        what = "{} image {} (id {!r}, path {!r})".format(type(self).__name__, image_id,
                                                       info.get("id"), path)
        try:
            image, orientation = _read_oriented(path, self.apply_exif_orientation)
            if orientation != 1 and not self.apply_exif_orientation:
                self._note_exif(image_id, orientation, what)
        except Exception as pil_error:
            # PIL cannot read everything skimage can (URLs, some TIFFs): try it too.
            try:
                image = skimage.io.imread(path)
            except Exception:
                raise DatasetError("{}: cannot read image {} (id {!r}, path {!r}): "
                                   "{}: {}".format(type(self).__name__, image_id,
                                                   info.get("id"), path,
                                                   type(pil_error).__name__,
                                                   pil_error)) from pil_error
        try:
            return _image_to_uint8_rgb(image, self.bit_depth_rule(), what)
        except ValueError as e:
            message = str(e) if str(e).startswith(what) else "{}: {}".format(what, e)
            raise DatasetError(message) from None

    # EXIF orientation (phone photos): False keeps the stored pixel grid, as Matterport
    # (annotations made on it stay right); True turns the pixels as the tag says, for
    # annotations made on the displayed photo. Either way images whose tag is not
    # "normal" are collected in exif_oriented and named in one warning per dataset.
    apply_exif_orientation = False

    def _note_exif(self, image_id, orientation, what):
        """Record an image whose EXIF orientation is ignored; warn the first time."""
        if not hasattr(self, "exif_oriented"):
            self.exif_oriented = {}
        first = not self.exif_oriented
        self.exif_oriented[image_id] = orientation
        if first:
            warnings.warn(ExifWarning(
                "{} has EXIF orientation {} ({}), which is ignored: its pixels are read "
                "as stored. If it was annotated as displayed (rotated), set "
                "apply_exif_orientation = True on the dataset. Further such images are "
                "listed in dataset.exif_oriented, or all at once by "
                "dataset.check_exif().".format(what, orientation,
                                               _ORIENTATION_NAMES[orientation])))

    def check_exif(self, image_ids=None):
        """Read the EXIF orientation of the images' files (headers only) and warn once,
        naming every image whose orientation is not "normal" (when it is not applied).
        Returns {image_id: orientation} of those images."""
        found = {}
        for image_id in (self.image_ids if image_ids is None else image_ids):
            path = self.image_info[image_id].get("path")
            if isinstance(path, str) and os.path.isfile(path):
                orientation = exif_orientation(path)
                if orientation != 1:
                    found[int(image_id)] = orientation
        if found and not self.apply_exif_orientation:
            self.exif_oriented = dict(getattr(self, "exif_oriented", {}))
            self.exif_oriented.update(found)
            names = ["{} ({})".format(self.image_info[i]["path"], o)
                     for i, o in sorted(found.items())]
            warnings.warn(ExifWarning(
                "{}: {} image(s) have an EXIF orientation other than normal, which is "
                "ignored (pixels read as stored; set apply_exif_orientation = True if "
                "they were annotated as displayed): {}".format(
                    type(self).__name__, len(found), ", ".join(names[:20]) +
                    (", ..." if len(names) > 20 else ""))))
        return found

    # How load_image maps pixels wider than 8 bits (and floats) to uint8, a rule of
    # mrcnn.preprocess.image_to_uint8. None: the IMAGE_BIT_DEPTH of the config a model
    # trains or evaluates this dataset with ("auto" before that).
    image_bit_depth = None

    def bit_depth_rule(self):
        """The image_to_uint8 rule load_image applies (see image_bit_depth)."""
        if self.image_bit_depth is not None:
            return self.image_bit_depth
        return getattr(self, "_config_bit_depth", None) or "auto"

    def image_class_ids(self, image_id):
        """Internal class ids of the image's non-crowd instances, int32 [N] (repeat-factor
        sampling counts them). This default loads the masks; datasets that hold their
        annotations in image_info override it to skip the pixels."""
        class_ids = np.asarray(self.load_mask(image_id)[1], dtype=np.int32)
        return class_ids[class_ids > 0]

    def load_mask(self, image_id):
        """Instance masks of an image: (bool [H, W, N], int32 class_ids [N]).

        Override for your dataset. This default logs a warning and returns empty arrays
        (mask shape [0, 0, 0], as Matterport).
        """
        logger.warning("You are using the default load_mask() of %s, which returns no "
                       "instances; override it for your dataset.", type(self).__name__)
        mask = np.empty([0, 0, 0], dtype=bool)
        class_ids = np.empty([0], np.int32)
        return mask, class_ids
