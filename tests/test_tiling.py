"""Tiled detection of large images (mrcnn.tiling, MaskRCNN.detect(tile=...)).

The merging logic is driven by a deterministic stand-in detector that segments bright
blobs inside each window (clipped to the window, as a network sees them), so the
expected output is known exactly; a tiny random-weight model checks the real path.
"""

import numpy as np
import pytest
import scipy.ndimage
from pycocotools import mask as mask_util

from mrcnn import tiling
from mrcnn.boxes import compute_overlaps, extract_bboxes, non_max_suppression
from mrcnn.config import Config
from mrcnn.preprocess import mold_inputs, parse_image_meta, unmold_image
from tiny_models import tiny_shapes_config_class


class BlobConfig(Config):
    NAME = "blobs"
    NUM_CLASSES = 3
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGES_PER_GPU = 3


class BlobDetector(object):
    """Stands in for MaskRCNN: each connected bright region of a window is a detection
    (class 1 where red > blue, else 2; score from the region's size)."""

    def __init__(self, config=None, twin=False):
        self.config = config or BlobConfig()
        self.batches = []
        self.twin = twin   # also report each blob as class 3 (a per-class NMS twin)

    def detect_molded(self, molded, metas, to_original=True):
        assert to_original
        self.batches.append(len(molded))
        meta = parse_image_meta(metas)
        assert np.all(meta["scale"] == 1)
        return [self._one(unmold_image(m, self.config), shape)
                for m, shape in zip(molded, meta["original_image_shape"])]

    def _one(self, image, shape):
        image = image[:shape[0], :shape[1]]
        labels, n = scipy.ndimage.label(image.max(axis=2) > 128)
        masks = labels[:, :, None] == np.arange(1, n + 1)
        red = np.array([image[m][:, 0].mean() > image[m][:, 2].mean()
                        for m in np.moveaxis(masks, 2, 0)], bool)
        r = {"rois": extract_bboxes(masks), "class_ids": np.where(red, 1, 2),
             "scores": 0.5 + 0.4 * masks.sum(axis=(0, 1)) / masks[..., :1].size,
             "masks": masks}
        if self.twin:
            r = {"rois": np.concatenate([r["rois"], r["rois"]]),
                 "class_ids": np.concatenate([r["class_ids"], np.full(n, 3)]),
                 "scores": np.concatenate([r["scores"], r["scores"] - 0.3]),
                 "masks": np.concatenate([masks, masks], axis=2)}
        return r


def blob_image(height=200, width=300):
    """Three objects on black, windows of 128 with overlap 32 start at x 0, 86, 172 and
    y 0, 72: a bar that no window holds whole (x 60..180, crossing two inner borders),
    a disk inside the overlap of the first two columns (whole in both), a square inside
    one window. Returns the image and the true masks [H, W, 3]."""
    image = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    truth = np.stack([(yy >= 20) & (yy < 50) & (xx >= 60) & (xx < 180),
                      (yy - 100) ** 2 + (xx - 107) ** 2 < 9 ** 2,
                      (yy >= 150) & (yy < 170) & (xx >= 230) & (xx < 260)], axis=2)
    image[truth[:, :, 0]] = (250, 30, 30)
    image[truth[:, :, 1]] = (30, 30, 250)
    image[truth[:, :, 2]] = (250, 30, 30)
    return image, truth


# ------------------------------------------------------------------ layout
@pytest.mark.parametrize("height,width,tile,overlap", [
    (200, 300, 128, 32), (4000, 6000, 256, 64), (130, 129, 128, 0), (64, 700, 128, 100),
    (128, 128, 128, 32), (1000, 257, 192, 191)])
def test_layout_covers_image_with_overlap_inside_it(height, width, tile, overlap):
    windows = tiling.window_layout(height, width, tile, overlap)
    covered = np.zeros((height, width), np.int32)
    for y1, x1, y2, x2 in windows:
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert np.all(windows[:, :2] >= 0)
    assert np.all(windows[:, 2] <= height) and np.all(windows[:, 3] <= width)
    sides = windows[:, 2:] - windows[:, :2]
    assert np.all(sides == np.minimum(tile, [height, width]))
    for length, axis in ((height, 0), (width, 1)):
        starts = np.unique(windows[:, axis])
        if length > tile:
            assert np.all(tile - np.diff(starts) >= overlap)   # neighbours share >= overlap
            assert starts[-1] + tile == length


@pytest.mark.parametrize("tile,overlap,name", [
    (100, None, "tile"), (0, None, "tile"), (-64, None, "tile"), (64.0, None, "tile"),
    ("128", None, "tile"), (128, 128, "overlap"), (128, -1, "overlap")])
def test_bad_tile_or_overlap_is_named(tile, overlap, name):
    with pytest.raises(ValueError, match=name):
        tiling.detect_tiled(BlobDetector(), blob_image()[0], tile=tile, overlap=overlap)


def test_bad_mask_format_is_named():
    with pytest.raises(ValueError, match="masks"):
        tiling.detect_tiled(BlobDetector(), blob_image()[0], tile=128, masks="png")


# ------------------------------------------------------------------ merging
def test_cut_objects_merged_duplicates_removed_masks_exact():
    image, truth = blob_image()
    detector = BlobDetector()
    r = tiling.detect_tiled(detector, image, tile=128, overlap=32)
    # 6 windows in batches of BATCH_SIZE (3).
    assert detector.batches == [3, 3]
    assert len(r["rois"]) == 3, r["rois"]
    iou = compute_overlaps(extract_bboxes(truth), r["rois"])
    match = iou.argmax(axis=1)
    assert sorted(match) == [0, 1, 2] and np.all(iou.max(axis=1) == 1.0)
    # Full-resolution masks equal the objects exactly, pieces included.
    assert np.array_equal(r["masks"][:, :, match], truth)
    assert list(r["class_ids"][match]) == [1, 2, 1]
    assert np.all(np.diff(r["scores"]) <= 0)


def test_merge_rule_on_window_detections():
    image, truth = blob_image()
    windows = tiling.window_layout(200, 300, 128, 32)
    dets = tiling.detect_windows(BlobDetector(), image, windows, 128, 3)
    dets["cut"] = tiling.cut_flags(dets["rois"], windows[dets["window"]], image.shape)
    bar = dets["rois"][:, 0] == 20
    disk = dets["class_ids"] == 2
    # The bar: one piece in each of the 3 windows of the top row, all cut.
    assert bar.sum() == 3 and dets["cut"][bar].all()
    # The disk: seen whole by 4 windows (2 rows x 2 columns overlap there).
    assert disk.sum() == 4 and not dets["cut"][disk].any()
    labels = tiling.view_groups(dets, windows)
    assert len(set(labels[bar])) == 1 and len(set(labels[disk])) == 1
    assert len(set(labels)) == 3
    merged = tiling.merge_views(dets, windows)
    assert len(merged["crops"]) == 3
    whole = merged["rois"][:, 0] == 20
    assert np.array_equal(merged["rois"][whole][0], extract_bboxes(truth)[0])


def test_whole_view_preferred_over_cut_pieces():
    # A 40-px square at x 90..130: cut at x 128 in window 0, whole in window 1.
    image = np.zeros((128, 300, 3), np.uint8)
    image[40:80, 90:130] = 255
    windows = tiling.window_layout(128, 300, 128, 42)
    dets = tiling.detect_windows(BlobDetector(), image, windows, 128, 1)
    dets["cut"] = tiling.cut_flags(dets["rois"], windows[dets["window"]], image.shape)
    assert list(dets["cut"]) == [True, False]
    # Make the cut piece score higher: the whole view still wins.
    dets["scores"] = np.array([0.99, 0.6], np.float32)
    merged = tiling.merge_views(dets, windows)
    assert len(merged["crops"]) == 1
    assert merged["scores"][0] == np.float32(0.6)
    assert list(merged["rois"][0]) == [40, 90, 80, 130]


def test_coarse_cut_piece_inside_whole_view_is_linked():
    image = np.zeros((128, 300, 3), np.uint8)
    image[40:80, 90:130] = 255
    windows = tiling.window_layout(128, 300, 128, 42)
    dets = tiling.detect_windows(BlobDetector(), image, windows, 128, 1)
    dets["cut"] = tiling.cut_flags(dets["rois"], windows[dets["window"]], image.shape)
    # The cut piece's mask keeps only its top 12 of 40 rows: IoU 0.3 with the whole
    # view where both windows look, but all of it lies inside the whole view.
    dets["crops"][0] = dets["crops"][0].copy()
    dets["crops"][0][12:] = False
    assert tiling.shared_mask_overlap(dets, windows, 0, 1) == 1.0
    dets["cut"][0] = False   # as if whole: plain IoU
    assert tiling.shared_mask_overlap(dets, windows, 0, 1) == pytest.approx(0.3)
    dets["cut"][0] = True
    merged = tiling.merge_views(dets, windows)
    assert len(merged["crops"]) == 1 and list(merged["rois"][0]) == [40, 90, 80, 130]


def test_separate_objects_in_overlap_stay_separate():
    # Two touching-free squares both inside the overlap band: 2 objects, not 1.
    image = np.zeros((128, 250, 3), np.uint8)
    image[10:30, 125:140] = 255
    image[34:60, 125:140] = 255
    r = tiling.detect_tiled(BlobDetector(), image, tile=128, overlap=32)
    assert len(r["rois"]) == 2


def test_class_agnostic_drops_second_class_of_one_object():
    # A square whole in one window only, reported as classes 1 and 3 there.
    image = np.zeros((128, 300, 3), np.uint8)
    image[40:80, 10:50] = (250, 30, 30)
    per_class = tiling.detect_tiled(BlobDetector(twin=True), image, tile=128)
    assert sorted(per_class["class_ids"]) == [1, 3]
    agnostic = tiling.detect_tiled(BlobDetector(twin=True), image, tile=128,
                                   class_agnostic=True)
    assert list(agnostic["class_ids"]) == [1]
    assert list(agnostic["rois"][0]) == [40, 10, 80, 50]


def test_class_nms_equals_per_class_greedy_nms():
    rng = np.random.default_rng(3)
    yx = rng.integers(0, 200, (300, 2))
    boxes = np.concatenate([yx, yx + rng.integers(5, 40, (300, 2))], axis=1)
    scores = rng.random(300)
    classes = rng.integers(1, 3, 300)
    keep = tiling.class_nms(boxes, scores, classes, 0.3)
    expected = np.concatenate([np.flatnonzero(classes == c)[
        non_max_suppression(boxes[classes == c], scores[classes == c], 0.3)]
        for c in (1, 2)])
    assert sorted(keep) == sorted(expected)
    assert np.all(np.diff(scores[keep]) <= 0)


def test_box_pairs_equal_brute_force():
    rng = np.random.default_rng(4)
    yx = rng.integers(0, 500, (400, 2))
    boxes = np.concatenate([yx, yx + rng.integers(1, 60, (400, 2))], axis=1)
    pairs = tiling.box_pairs(boxes)
    overlap = compute_overlaps(boxes, boxes) > 0
    expected = np.argwhere(np.triu(overlap, 1))
    assert sorted(map(tuple, pairs)) == sorted(map(tuple, expected))
    assert tiling.box_pairs(np.zeros([0, 4])).shape == (0, 2)


# ------------------------------------------------------------------ mask formats
def test_crops_and_rle_equal_full_masks():
    image, _ = blob_image()
    results = {fmt: tiling.detect_tiled(BlobDetector(), image, tile=128, masks=fmt)
               for fmt in tiling.MASK_FORMATS}
    full = results["full"]["masks"]
    for fmt in ("crops", "rle"):
        assert np.array_equal(results[fmt]["rois"], results["full"]["rois"])
    rois = results["crops"]["rois"]
    assert [c.shape for c in results["crops"]["masks"]] == \
        [(y2 - y1, x2 - x1) for y1, x1, y2, x2 in rois]
    assert np.array_equal(tiling.crops_to_full(rois, results["crops"]["masks"],
                                               image.shape), full)
    decoded = mask_util.decode(results["rle"]["masks"]).astype(bool)
    assert np.array_equal(decoded, full)


def test_crop_to_rle_equals_pycocotools_encode():
    rng = np.random.default_rng(5)
    h, w = 37, 23
    # Boxes touching every image border, so runs cross column ends.
    for roi in ([0, 0, 37, 23], [30, 5, 37, 20], [0, 10, 9, 23], [4, 4, 5, 5]):
        crop = rng.random((roi[2] - roi[0], roi[3] - roi[1])) < 0.6
        full = np.zeros((h, w), bool)
        full[roi[0]:roi[2], roi[1]:roi[3]] = crop
        rle = tiling.crop_to_rle(roi, crop, (h, w))
        assert rle == mask_util.encode(np.asfortranarray(full.astype(np.uint8)))
    empty = tiling.crop_to_rle([3, 3, 6, 6], np.zeros((3, 3), bool), (h, w))
    assert mask_util.area(empty) == 0


# ------------------------------------------------------------------ real model
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from mrcnn import model as modellib

    class TinyTileConfig(tiny_shapes_config_class()):
        IMAGES_PER_GPU = 2
        DETECTION_MIN_CONFIDENCE = 0.0   # random weights: keep rows to check

    return modellib.MaskRCNN("inference", TinyTileConfig(),
                             str(tmp_path_factory.mktemp("tiling")))


def test_windows_molded_at_scale_one_like_mold_inputs(tiny_model):
    config = tiny_model.config   # "square", IMAGE_MAX_DIM 64 = tile
    image = np.random.default_rng(6).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    windows = tiling.window_layout(192, 256, 64, 16)
    molded, metas = tiling.mold_windows(image, windows[:2], 64, config)
    expected, expected_metas, _ = mold_inputs([image[0:64, 0:64], image[0:64, 48:112]],
                                              config)
    assert np.array_equal(molded, expected)
    assert np.array_equal(metas, expected_metas)
    assert np.all(parse_image_meta(metas)["scale"] == 1)


def test_tiny_model_end_to_end(tiny_model):
    image = np.random.default_rng(7).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    plain = tiny_model.detect([image])[0]
    r = tiny_model.detect([image], tile=64, overlap=16)[0]
    assert set(r) == set(plain)
    n = len(r["rois"])
    assert n > 0
    assert r["rois"].dtype == np.int32 and r["rois"].shape == (n, 4)
    assert r["class_ids"].shape == r["scores"].shape == (n,)
    assert r["masks"].shape == (192, 256, n) and r["masks"].dtype == bool
    assert np.all(r["rois"][:, :2] >= 0) and np.all(r["rois"][:, 2] <= 192)
    assert np.all(r["rois"][:, 3] <= 256)
    assert np.all(r["rois"][:, 2:] > r["rois"][:, :2])
    # Every mask lies inside its box.
    inside = tiling.crops_to_full(r["rois"], [np.ones((y2 - y1, x2 - x1), bool)
                                              for y1, x1, y2, x2 in r["rois"]], image.shape)
    assert not np.any(r["masks"] & ~inside)
    crops = tiny_model.detect([image], tile=64, overlap=16, masks="crops")[0]
    assert np.array_equal(crops["rois"], r["rois"])


def test_model_detect_names_bad_tile(tiny_model):
    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="tile"):
        tiny_model.detect([image], tile=100)
    with pytest.raises(ValueError, match="tile"):
        tiny_model.detect([image], masks="rle")
