"""The Dataset base class (Matterport's API) and the image reading behind load_image.

Subclass ``Dataset``, register classes with ``add_class`` and images with ``add_image``,
override ``load_mask``, then call ``prepare()``; mrcnn.datasets has ready-made loaders
(COCO JSON, VIA, DSB2018 folders). ``load_image`` decodes any format Pillow (or
scikit-image) reads into uint8 RGB; errors name the image id and path (DatasetError).
"""

import importlib.util
import logging
import sys

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


class DatasetError(ValueError):
    """A dataset cannot be used: unreadable image, no classes, no images, bad ids.

    The message names the image id and path (or the missing part) so the bad entry can be
    found.
    """


def _image_to_uint8_rgb(image):
    """Turn a decoded image array into uint8 RGB [H, W, 3].

    Grayscale -> 3 equal channels; an alpha channel is dropped (not composited, as
    Matterport); 16-bit integer data is scaled by 255/65535; floats in [0, 1] are scaled
    by 255, other floats are clipped to [0, 255].
    """
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
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype.kind in "ui":
        if image.dtype.itemsize == 1:  # int8
            return np.clip(image, 0, 255).astype(np.uint8)
        # 16-bit (or wider) integer data: map the full 16-bit range onto 8 bits.
        image = np.clip(image.astype(np.float64), 0, 65535) / 257.0
        return np.round(image).astype(np.uint8)
    if image.dtype.kind == "f":
        image = image.astype(np.float64)
        if np.nanmax(image, initial=0) <= 1.0:
            image = image * 255.0
        return np.round(np.clip(np.nan_to_num(image), 0, 255)).astype(np.uint8)
    raise ValueError("unsupported image dtype {}".format(image.dtype))


def _read_with_pil(path):
    from PIL import Image
    with Image.open(path) as img:
        img.seek(0)  # first frame of multi-frame files
        img.load()  # decode now so truncated files fail here
        mode = img.mode
        if mode in ("P", "PA"):
            img = img.convert("RGBA")  # palette (with or without transparency) -> colours
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        return np.array(img)


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

        Grayscale becomes 3 equal channels, alpha is dropped, 16-bit data is scaled to
        8 bits, palette / CMYK images are converted to RGB. The format is detected from
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
        try:
            image = _read_with_pil(path)
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
            return _image_to_uint8_rgb(image)
        except ValueError as e:
            raise DatasetError("{}: image {} (id {!r}, path {!r}): {}".format(
                type(self).__name__, image_id, info.get("id"), path, e)) from None

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
