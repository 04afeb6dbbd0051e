"""mrcnn.data: load_image_gt, build_rpn_targets, the tf.data pipeline."""
import logging

import numpy as np

import pytest

from mrcnn import data, rpn, utils
from mrcnn.augment import iaa
from mrcnn.config import Config
from mrcnn.utils import DatasetError


class TinyConfig(Config):
    NAME = "tiny"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 3
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 32
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 5
    MINI_MASK_SHAPE = (14, 14)


def make_config(**attrs):
    return type("TestConfig", (TinyConfig,), attrs)()


class RectDataset(utils.Dataset):
    """In-memory dataset: 96x128 images with filled rectangles (y1, x1, y2, x2, class).

    Per-image options: h/w (image size), file=True (read ``path`` with the base
    load_image), mask_hw (wrong mask size), extra_id (one class id too many), flat
    (1-D image).
    """

    def __init__(self, images):
        super().__init__()
        self.add_class("rect", 1, "a")
        self.add_class("rect", 2, "b")
        for i, im in enumerate(images):
            im = dict(im)
            path = im.pop("path", "mem://{}".format(i))
            self.add_image("rect", i, path, **im)
        self.prepare()

    def load_image(self, image_id):
        info = self.image_info[image_id]
        if info.get("file"):
            return super().load_image(image_id)
        if info.get("flat"):
            return np.zeros(10, np.uint8)
        img = np.full((info.get("h", 96), info.get("w", 128), 3), 20, np.uint8)
        for k, (y1, x1, y2, x2, _) in enumerate(info["rects"]):
            img[y1:y2, x1:x2] = 40 * (k + 1) % 250
        return img

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        h, w = info.get("mask_hw", (info.get("h", 96), info.get("w", 128)))
        rects = info["rects"]
        mask = np.zeros((h, w, len(rects)), bool)
        for k, (y1, x1, y2, x2, _) in enumerate(rects):
            mask[y1:y2, x1:x2, k] = True
        ids = [r[4] for r in rects] + ([1] if info.get("extra_id") else [])
        return mask, np.array(ids, np.int32)


RECTS = [(10, 20, 50, 60, 1), (60, 80, 90, 120, 2), (30, 100, 46, 126, 1)]


def scaled(rects, scale=0.5, top=8, left=0):
    return np.array([[y1 * scale + top, x1 * scale + left, y2 * scale + top,
                      x2 * scale + left] for y1, x1, y2, x2, _ in rects])


def meta_fields(meta):
    """Split a meta vector by the documented layout (independent of mrcnn.preprocess)."""
    meta = np.asarray(meta)
    return {"image_id": meta[0], "original_image_shape": meta[1:4], "image_shape": meta[4:7],
            "window": meta[7:11], "scale": meta[11], "active_class_ids": meta[12:]}


# ---------------------------------------------------------------- RPN targets

def iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_rpn(anchors, class_ids, boxes, pos, neg, std):
    """Per-anchor loop version of Matterport's matching (no subsampling)."""
    gts = [b for b, c in zip(boxes, class_ids) if c > 0]
    crowds = [b for b, c in zip(boxes, class_ids) if c < 0]
    match = np.zeros(len(anchors), np.int32)
    best = []
    for i, a in enumerate(anchors):
        ious = [iou(a, g) for g in gts]
        j = int(np.argmax(ious))
        best.append((ious[j], j))
        crowd_max = max([iou(a, c) for c in crowds], default=0.0)
        if ious[j] < neg and crowd_max < 0.001:
            match[i] = -1
    for g in gts:
        col = [iou(a, g) for a in anchors]
        if max(col) > 0:
            for i, v in enumerate(col):
                if v == max(col):
                    match[i] = 1
    for i, (v, _) in enumerate(best):
        if v >= pos:
            match[i] = 1
    deltas = []
    for i in np.flatnonzero(match == 1):
        a, g = anchors[i], gts[best[i][1]]
        ah, aw, gh, gw = a[2] - a[0], a[3] - a[1], g[2] - g[0], g[3] - g[1]
        deltas.append([(g[0] + gh / 2 - a[0] - ah / 2) / ah, (g[1] + gw / 2 - a[1] - aw / 2) / aw,
                       np.log(gh / ah), np.log(gw / aw)])
    return match, np.array(deltas).reshape(-1, 4) / std


HAND_ANCHORS = np.array([
    [0, 0, 10, 10],      # IoU 1.0 with GT0 -> positive
    [0, 0, 10, 8],       # 0.8 -> positive
    [0, 0, 10, 6],       # 0.6 -> neutral
    [0, 0, 10, 2],       # 0.2 -> negative
    [50, 50, 60, 60],    # 0 -> negative
    [100, 100, 110, 110],  # 0.25, but GT1's best anchor -> positive
    [200, 200, 210, 210],  # touches the crowd (IoU 0.0027) -> neutral
    [400, 400, 410, 410],  # 0 -> negative
], dtype=np.float64)
HAND_IDS = np.array([1, 2, -1])
HAND_BOXES = np.array([[0, 0, 10, 10], [100, 100, 120, 120], [205, 205, 300, 300]])


def test_rpn_hand_made_match_and_deltas():
    config = TinyConfig()
    match, bbox = data.build_rpn_targets((64, 64, 3), HAND_ANCHORS, HAND_IDS, HAND_BOXES,
                                         config)
    assert match.dtype == np.int32 and bbox.dtype == np.float32
    np.testing.assert_array_equal(match, [1, 1, 0, -1, -1, 1, 0, -1])
    assert bbox.shape == (64, 4)
    # Rows follow the positive anchors in order and decode back to their GT boxes.
    decoded = utils.apply_box_deltas(HAND_ANCHORS[[0, 1, 5]], bbox[:3] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(decoded, HAND_BOXES[[0, 0, 1]], atol=1e-4)
    np.testing.assert_allclose(bbox[1], np.array([0, 0.125, 0, np.log(10 / 8)]) /
                               config.RPN_BBOX_STD_DEV, rtol=1e-5, atol=1e-6)
    assert not bbox[3:].any()


def test_rpn_custom_iou_thresholds_change_match():
    config = make_config(RPN_POSITIVE_IOU=0.5, RPN_NEGATIVE_IOU=0.1)
    match, bbox = data.build_rpn_targets((64, 64, 3), HAND_ANCHORS, HAND_IDS, HAND_BOXES,
                                         config)
    np.testing.assert_array_equal(match, [1, 1, 1, 0, -1, 1, 0, -1])
    decoded = utils.apply_box_deltas(HAND_ANCHORS[[0, 1, 2, 5]],
                                     bbox[:4] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(decoded, HAND_BOXES[[0, 0, 0, 1]], atol=1e-4)


@pytest.mark.parametrize("block", [16, 2])
def test_rpn_matches_loop_reference_on_random_boxes(block, monkeypatch):
    monkeypatch.setattr(rpn, "_GT_BLOCK", block)  # 2: several IoU blocks per image
    rng = np.random.default_rng(0)
    config = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=2048)  # large: no subsampling
    for trial in range(5):
        yx = rng.integers(0, 100, (300, 2))
        anchors = np.concatenate([yx, yx + rng.integers(4, 40, (300, 2))], 1).astype(float)
        gyx = rng.integers(0, 100, (7, 2))
        boxes = np.concatenate([gyx, gyx + rng.integers(4, 40, (7, 2))], 1)
        boxes[6] = boxes[0]  # duplicate GT: ties go to the first, as np.argmax
        ids = np.array([1, 2, 1, 2, 1, -1, 2])
        match, bbox = data.build_rpn_targets((128, 128, 3), anchors, ids, boxes, config)
        ref_match, ref_deltas = reference_rpn(anchors, ids, boxes, 0.7, 0.3,
                                              config.RPN_BBOX_STD_DEV)
        np.testing.assert_array_equal(match, ref_match)
        n = ref_deltas.shape[0]
        assert n > 0
        np.testing.assert_allclose(bbox[:n], ref_deltas, rtol=1e-4, atol=1e-5)
        assert not bbox[n:].any()


def test_rpn_ties_all_positive_and_unreachable_gt_matches_nothing():
    config = TinyConfig()
    anchors = np.array([[0, 0, 10, 20], [0, -10, 10, 10], [300, 300, 310, 310]], float)
    match, _ = data.build_rpn_targets(None, anchors, [1], [[0, 0, 10, 10]], config)
    np.testing.assert_array_equal(match, [1, 1, -1])  # both IoU 0.5, tied best
    # A GT no anchor touches: no anchor becomes positive (Matterport would mark all).
    match, bbox = data.build_rpn_targets(None, anchors, [1], [[500, 500, 510, 510]], config)
    np.testing.assert_array_equal(match, [-1, -1, -1])
    assert not bbox.any()


def test_rpn_subsampling_counts_and_rng():
    config = TinyConfig()  # 64 anchors per image -> at most 32 positives
    near = np.tile([[0, 0, 10, 11]], (100, 1)).astype(float)  # IoU 10/11 with the GT
    far = np.tile([[200, 200, 210, 210]], (100, 1)).astype(float)
    anchors = np.concatenate([near, far])
    gt = [[0, 0, 10, 10]]
    match, bbox = data.build_rpn_targets(None, anchors, [1], gt, config,
                                         rng=np.random.default_rng(1))
    assert (match == 1).sum() == 32 and (match == -1).sum() == 32
    assert np.all(match[100:] != 1) and np.all(match[:100] != -1)
    assert bbox[:32].all(axis=1).sum() == 0 and np.all(bbox[:32, 3] != 0)  # dw = log(10/11)
    assert not bbox[32:].any()
    decoded = utils.apply_box_deltas(anchors[match == 1], bbox[:32] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(decoded, np.tile(gt, (32, 1)), atol=1e-4)
    again, _ = data.build_rpn_targets(None, anchors, [1], gt, config,
                                      rng=np.random.default_rng(1))
    other, _ = data.build_rpn_targets(None, anchors, [1], gt, config,
                                      rng=np.random.default_rng(2))
    np.testing.assert_array_equal(match, again)
    assert not np.array_equal(match, other)


def test_rpn_without_gt_and_crowd_only():
    config = TinyConfig()
    anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [100, 100, 110, 110]], float)
    match, bbox = data.build_rpn_targets(None, anchors, np.zeros([0], int),
                                         np.zeros([0, 4]), config)
    np.testing.assert_array_equal(match, [-1, -1, -1])
    match, _ = data.build_rpn_targets(None, anchors, [-2], [[5, 5, 25, 25]], config)
    np.testing.assert_array_equal(match, [0, 0, -1])
    assert not bbox.any()
    # Many negatives are cut to RPN_TRAIN_ANCHORS_PER_IMAGE.
    many = np.tile(anchors[2:], (500, 1))
    match, _ = data.build_rpn_targets(None, many, [], np.zeros([0, 4]), config)
    assert (match == -1).sum() == 64 and (match == 0).sum() == 436


# ---------------------------------------------------------------- load_image_gt

def test_load_image_gt_square_boxes_meta_and_masks():
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}])
    image, meta, class_ids, bbox, mask = data.load_image_gt(ds, config, 0,
                                                            use_mini_mask=True)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(class_ids, [1, 2, 1])
    assert class_ids.dtype == np.int32
    # scale 64/128 = 0.5, image 48 rows centred in 64 -> 8 rows of padding on top.
    np.testing.assert_allclose(bbox, scaled(RECTS), atol=1)
    m = meta_fields(meta)
    assert m["image_id"] == 0 and m["scale"] == 0.5
    np.testing.assert_array_equal(m["original_image_shape"], [96, 128, 3])
    np.testing.assert_array_equal(m["image_shape"], [64, 64, 3])
    np.testing.assert_array_equal(m["window"], [8, 0, 56, 64])
    np.testing.assert_array_equal(m["active_class_ids"], [1, 1, 1])
    # Rectangles fill their boxes, so the mini masks are all True.
    assert mask.shape == (14, 14, 3) and mask.dtype == bool and mask.all()
    # Matterport's default: full-size masks.
    _, _, _, bbox_full, full = data.load_image_gt(ds, config, 0)
    assert full.shape == (64, 64, 3) and full.dtype == bool
    np.testing.assert_array_equal(utils.extract_bboxes(full), bbox_full)
    np.testing.assert_array_equal(bbox_full, bbox)
    # The image content moved with the masks: rectangle k was painted 40 * (k + 1).
    for k in range(3):
        assert np.all(image[full[:, :, k]] == 40 * (k + 1))


def test_load_image_gt_takes_matterports_positional_arguments():
    """(dataset, config, image_id, augment, augmentation, use_mini_mask) as Matterport."""
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}])
    image, _, ids, bbox, mask = data.load_image_gt(ds, config, 0)
    _, _, _, bbox_mini, mini = data.load_image_gt(ds, config, 0, False, None, True)
    assert mask.shape == (64, 64, 3) and mini.shape == (14, 14, 3)
    np.testing.assert_array_equal(bbox_mini, bbox)
    # augment=True: Matterport's random left-right flip (half the draws).
    flipped = [data.load_image_gt(ds, config, 0, True, None, False,
                                  np.random.default_rng(seed)) for seed in range(8)]
    mirrored = [f for f in flipped if not np.array_equal(f[0], image)]
    assert 0 < len(mirrored) < 8
    for f in mirrored:
        np.testing.assert_array_equal(f[0], image[:, ::-1])
        np.testing.assert_array_equal(f[4], mask[:, ::-1])
    # An augmenter passed 4th (where our earlier signature had `augmentation`).
    _, _, _, _, by_slot = data.load_image_gt(ds, config, 0, iaa.Fliplr(1.0))
    np.testing.assert_array_equal(by_slot, mask[:, ::-1])


def test_instance_moved_out_is_dropped():
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}])
    _, _, ids, bbox, mask = data.load_image_gt(
        ds, config, 0, augmentation=iaa.Affine(translate_px={"x": 20}), use_mini_mask=False)
    # Rect 2 (x 50..63 after scaling) leaves the 64-px image; rect 1 is clipped at 64.
    np.testing.assert_array_equal(ids, [1, 2])
    expected = scaled(RECTS[:2]) + [0, 20, 0, 20]
    expected[:, 3] = np.minimum(expected[:, 3], 64)
    np.testing.assert_allclose(bbox, expected, atol=1)
    assert mask.shape == (64, 64, 2) and mask.any(axis=(0, 1)).all()


def test_crop_mode_drops_cropped_instances():
    import random
    config = make_config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128)
    ds = RectDataset([{"rects": RECTS}])
    counts = set()
    for seed in range(6):
        random.seed(seed)
        image, meta, ids, bbox, mask = data.load_image_gt(ds, config, 0, use_mini_mask=False)
        assert image.shape == (64, 64, 3) and mask.shape[:2] == (64, 64)
        assert len(ids) == len(bbox) == mask.shape[2]
        assert mask.any(axis=(0, 1)).all()
        np.testing.assert_array_equal(utils.extract_bboxes(mask), bbox)
        counts.add(len(ids))
    assert min(counts) < 3  # some crop lost an instance


def test_no_instances_and_crowds():
    config = TinyConfig()
    ds = RectDataset([{"rects": []}, {"rects": [(10, 10, 90, 120, -2), (20, 20, 40, 40, 1)]}])
    image, meta, ids, bbox, mask = data.load_image_gt(ds, config, 0, use_mini_mask=None)
    assert image.shape == (64, 64, 3)       # None: config.USE_MINI_MASK (True here)
    assert ids.shape == (0,) and bbox.shape == (0, 4) and mask.shape == (14, 14, 0)
    _, _, ids, _, _ = data.load_image_gt(ds, config, 1)
    np.testing.assert_array_equal(ids, [-2, 1])


@pytest.mark.parametrize("bad, pattern", [
    ({"mask_hw": (50, 50)}, r"mask height/width \(50, 50\) differ"),
    ({"extra_id": True}, "3 masks but 4 class ids"),
    ({"rects": RECTS[:2] + [(5, 5, 9, 9, 7)]}, r"class ids \[7\] outside \[1, 3\)"),
    ({"flat": True}, r"\[height, width, channels\]"),
])
def test_bad_annotations_raise_naming_image(bad, pattern):
    config = TinyConfig()
    spec = {"rects": RECTS}
    spec.update(bad)
    ds = RectDataset([{"rects": RECTS}, spec])
    with pytest.raises(DatasetError, match=pattern) as err:
        data.load_image_gt(ds, config, 1)
    assert "image 1" in str(err.value) and "mem://1" in str(err.value)


def test_fliplr_mirrors_boxes_and_multiply_keeps_masks():
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}])
    image, _, _, bbox, mask = data.load_image_gt(ds, config, 0, use_mini_mask=False)
    image_f, _, ids_f, bbox_f, mask_f = data.load_image_gt(
        ds, config, 0, augmentation=iaa.Fliplr(1.0), use_mini_mask=False)
    np.testing.assert_array_equal(ids_f, [1, 2, 1])
    np.testing.assert_array_equal(bbox_f[:, [0, 2]], bbox[:, [0, 2]])
    np.testing.assert_array_equal(bbox_f[:, 1], 64 - bbox[:, 3])
    np.testing.assert_array_equal(bbox_f[:, 3], 64 - bbox[:, 1])
    np.testing.assert_array_equal(mask_f, mask[:, ::-1])
    np.testing.assert_array_equal(image_f, image[:, ::-1])
    image_m, _, _, bbox_m, mask_m = data.load_image_gt(
        ds, config, 0, augmentation=iaa.Multiply(0.5), use_mini_mask=False)
    np.testing.assert_array_equal(mask_m, mask)
    np.testing.assert_array_equal(bbox_m, bbox)
    np.testing.assert_allclose(image_m.astype(float), image * 0.5, atol=1)


def test_augmentation_must_keep_image_size():
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}])
    with pytest.raises(DatasetError, match="image 0.*changed the image shape"):
        data.load_image_gt(ds, config, 0, augmentation=iaa.Resize(0.5))


def test_300_instances_through_flips():
    config = make_config(MAX_GT_INSTANCES=300)
    rects = [(2 + 6 * (k // 20), 2 + 6 * (k % 20), 6 + 6 * (k // 20), 6 + 6 * (k % 20), 1)
             for k in range(300)]  # 15 rows x 20 columns of 4x4 squares
    ds = RectDataset([{"rects": rects}])
    _, _, ids, bbox, mask = data.load_image_gt(ds, config, 0, use_mini_mask=False)
    aug = iaa.Sequential([iaa.Fliplr(1.0), iaa.Flipud(1.0)])
    _, _, ids_a, bbox_a, mask_a = data.load_image_gt(ds, config, 0, augmentation=aug,
                                                     use_mini_mask=False)
    assert mask.shape[2] == 300 and mask_a.shape[2] == 300
    np.testing.assert_array_equal(mask_a, mask[::-1, ::-1])
    np.testing.assert_array_equal(bbox_a, 64 - bbox[:, [2, 3, 0, 1]])


# ---------------------------------------------------------------- training examples

def test_training_example_caps_instances():
    config = TinyConfig()  # MAX_GT_INSTANCES = 5
    rects = [(4 + 22 * (k // 4), 4 + 30 * (k % 4), 20 + 22 * (k // 4), 28 + 30 * (k % 4),
              1 + k % 2) for k in range(8)]
    ds = RectDataset([{"rects": rects}])
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    _, _, all_ids, all_boxes, _ = data.load_image_gt(ds, config, 0)
    ex = data.load_training_example(ds, config, 0, anchors, rng=np.random.default_rng(0))
    ids, boxes = ex["input_gt_class_ids"], ex["input_gt_boxes"]
    assert (ids > 0).sum() == 5
    rows = [int(np.flatnonzero((all_boxes == b).all(axis=1))[0]) for b in boxes]
    assert len(set(rows)) == 5  # a subset of distinct true instances
    np.testing.assert_array_equal(ids, all_ids[rows])
    assert ex["input_gt_masks"].shape == (14, 14, 5) and ex["input_gt_masks"].all()


def test_none_mode_pads_to_image_shape():
    config = make_config(IMAGE_RESIZE_MODE="none", IMAGE_MAX_DIM=128, USE_MINI_MASK=False)
    ds = RectDataset([{"rects": RECTS}, {"rects": RECTS, "h": 160}])
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    ex = data.load_training_example(ds, config, 0, anchors)
    assert ex["input_image"].shape == (128, 128, 3)
    np.testing.assert_allclose(ex["input_image"][96:], -np.broadcast_to(
        config.MEAN_PIXEL.astype(np.float32), (32, 128, 3)))
    m = meta_fields(ex["input_image_meta"])
    np.testing.assert_array_equal(m["image_shape"], [128, 128, 3])
    np.testing.assert_array_equal(m["window"], [0, 0, 96, 128])
    np.testing.assert_array_equal(m["original_image_shape"], [96, 128, 3])
    assert ex["input_gt_masks"].shape == (128, 128, 5)
    np.testing.assert_array_equal(ex["input_gt_boxes"][:3], [r[:4] for r in RECTS])
    with pytest.raises(DatasetError, match="image 1.*larger than config.IMAGE_SHAPE"):
        data.load_training_example(ds, config, 1, anchors)


def test_check_dataset_errors():
    config = TinyConfig()
    empty = RectDataset([])
    with pytest.raises(DatasetError, match="train_dataset.*no images"):
        data.check_dataset(empty, "train_dataset")
    no_classes = utils.Dataset()
    no_classes.add_image("x", 0, "a.png")
    no_classes.prepare()
    with pytest.raises(DatasetError, match="no classes"):
        data.build_dataset(no_classes, config)
    with pytest.raises(DatasetError, match="NUM_CLASSES"):
        data.build_dataset(RectDataset([{"rects": RECTS}]), make_config(NUM_CLASSES=4))


# ---------------------------------------------------------------- tf.data pipeline

def _all_batches(tf_ds):
    return [{k: v.numpy() for k, v in b.items()} for b in tf_ds]


@pytest.mark.parametrize("in_graph", [True, False])
def test_build_dataset_shapes_and_content(in_graph):
    config = make_config(RPN_TARGETS_IN_GRAPH=in_graph)
    ds = RectDataset([{"rects": RECTS}, {"rects": []}, {"rects": RECTS[:2]},
                      {"rects": RECTS[1:]}, {"rects": RECTS[:1]}])
    tf_ds = data.build_dataset(ds, config, shuffle=False, repeat=False)
    spec = data.example_spec(config)
    for name, (shape, dtype) in spec.items():
        ts = tf_ds.element_spec[name]
        assert tuple(ts.shape) == (2,) + shape and ts.dtype.as_numpy_dtype == dtype
    batches = _all_batches(tf_ds)
    assert len(batches) == 2  # image 1 has no instance: 4 examples, 2 batches
    assert tf_ds.skip_counter.empty == 1 and tf_ds.skip_counter.errors == 0
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    seen = []
    for b in batches:
        for i in range(2):
            image_id = int(b["input_image_meta"][i, 0])
            seen.append(image_id)
            image, meta, ids, boxes, masks = data.load_image_gt(ds, config, image_id,
                                                                use_mini_mask=None)
            np.testing.assert_allclose(b["input_image_meta"][i], meta)
            # Molded in float64, rounded once to float32 (mold_image, as Matterport).
            np.testing.assert_allclose(b["input_image"][i],
                                       (image - config.MEAN_PIXEL).astype(np.float32))
            n = len(ids)
            np.testing.assert_array_equal(b["input_gt_class_ids"][i, :n], ids)
            assert not b["input_gt_class_ids"][i, n:].any()
            np.testing.assert_array_equal(b["input_gt_boxes"][i, :n], boxes)
            np.testing.assert_array_equal(b["input_gt_masks"][i, :, :, :n], masks)
            # RPN targets only when the graph does not compute them.
            assert ("input_rpn_match" in b) != in_graph
            if in_graph:
                continue
            match = b["input_rpn_match"][i, :, 0]
            pos = np.flatnonzero(match == 1)
            assert 0 < len(pos) <= 32 and len(pos) + (match == -1).sum() <= 64
            decoded = utils.apply_box_deltas(
                anchors[pos], b["input_rpn_bbox"][i, :len(pos)] * config.RPN_BBOX_STD_DEV)
            ious = utils.compute_overlaps(decoded, boxes)
            assert np.all(ious.max(axis=1) > 0.99)  # every target decodes onto a GT box
    assert seen == [0, 2, 3, 4]


def test_build_dataset_seed_reproducible_with_augmentation():
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}, {"rects": RECTS[:2]}, {"rects": RECTS[1:]}])
    aug = iaa.Sequential([iaa.Fliplr(0.5), iaa.Affine(rotate=(-20, 20))])
    a = next(iter(data.build_dataset(ds, config, augmentation=aug, seed=5)))
    b = next(iter(data.build_dataset(ds, config, augmentation=aug, seed=5)))
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())


def test_broken_image_raise_and_skip(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}, {"rects": RECTS, "file": True, "path": str(broken)},
                      {"rects": RECTS[:1]}, {"rects": RECTS[1:]}])
    with pytest.raises(Exception) as err:
        _all_batches(data.build_dataset(ds, config, shuffle=False, repeat=False,
                                        batch_size=1))
    assert "image 1" in str(err.value) and "broken.png" in str(err.value)

    tf_ds = data.build_dataset(ds, config, shuffle=False, repeat=False, batch_size=1,
                               on_error="skip")
    batches = _all_batches(tf_ds)
    assert [int(b["input_image_meta"][0, 0]) for b in batches] == [0, 2, 3]
    counter = tf_ds.skip_counter
    assert counter.errors == 1 and counter.loaded == 3
    assert "broken.png" in counter.messages[-1]


def test_everything_skipped_raises_instead_of_hanging():
    config = TinyConfig()
    ds = RectDataset([{"rects": []}, {"rects": []}])
    with pytest.raises(Exception, match="consecutive images skipped"):
        next(iter(data.build_dataset(ds, config, on_error="skip")))


def test_skip_report_callback(caplog):
    counter = data.SkipCounter()

    class Fake(object):
        skip_counter = counter

    callbacks = data.skip_report_callbacks(Fake(), None)
    assert len(callbacks) == 1
    counter.record_error("image 7 (path 'x.png'): DatasetError: cannot read")
    counter.record_loaded()
    with caplog.at_level(logging.WARNING, logger="mrcnn.data"):
        callbacks[0].on_epoch_end(0)
    assert "1 broken train image(s) skipped" in caplog.text and "x.png" in caplog.text
    assert callbacks[0].history[-1] == (0, "train", {"loaded": 1, "errors": 1, "empty": 0})


def test_data_generator_matterport_layout():
    config = TinyConfig()
    ds = RectDataset([{"rects": RECTS}, {"rects": []}, {"rects": RECTS[:2]}])
    gen = data.data_generator(ds, config, shuffle=False, batch_size=2)
    inputs, outputs = next(gen)
    assert outputs == [] and len(inputs) == 7
    spec = data.example_spec(config, rpn_targets=True)  # Matterport's list, whatever mode
    assert list(spec) == list(data.INPUT_NAMES)
    for arr, (shape, dtype) in zip(inputs, spec.values()):
        assert arr.shape == (2,) + shape and arr.dtype == dtype
    np.testing.assert_array_equal(inputs[1][:, 0], [0, 2])  # the empty image is skipped
    # detection_targets without random_rois: ignored with a warning (Matterport).
    assert len(next(data.data_generator(ds, config, detection_targets=True))[0]) == 7
    # random_rois: an eighth input of ROIs around each image's GT boxes.
    inputs, _ = next(data.data_generator(ds, config, shuffle=False, batch_size=2,
                                         random_rois=10))
    assert len(inputs) == 8 and inputs[7].shape == (2, 10, 4) and inputs[7].dtype == np.int32
    h, w = inputs[0].shape[1:3]
    assert (inputs[7][..., 2] <= h).all() and (inputs[7][..., 3] <= w).all()
    assert (inputs[7][..., 2] > inputs[7][..., 0]).all()


def test_data_generator_detection_targets_follow_the_random_rois():
    """random_rois + detection_targets (Matterport's inspect_data layout): inputs gain the
    sampled rois, outputs are class ids, per-class box and mask targets; each is checked
    against the GT boxes with numpy (IoU, box_refinement)."""
    # The GT boxes join the proposals (the default), so every image has positives and,
    # in proportion (ROI_POSITIVE_RATIO), negatives. Seeded: the random ROIs (numpy) and
    # the ROI sample (TF) otherwise change from run to run.
    import keras
    keras.utils.set_random_seed(0)
    config = make_config(TRAIN_ROIS_PER_IMAGE=16)
    ds = RectDataset([{"rects": RECTS}, {"rects": RECTS[:2]}])
    gen = data.data_generator(ds, config, shuffle=False, batch_size=2, random_rois=40,
                              detection_targets=True)
    inputs, (class_ids, bbox, mask) = next(gen)
    t, n = config.TRAIN_ROIS_PER_IMAGE, config.NUM_CLASSES
    assert len(inputs) == 9
    rois = inputs[8]
    assert rois.shape == (2, t, 4) and rois.dtype == np.int32
    assert class_ids.shape == (2, t, 1) and bbox.shape == (2, t, n, 4)
    assert mask.shape == (2, t) + tuple(config.MASK_SHAPE) + (n,)
    std = np.asarray(config.BBOX_STD_DEV)
    for b in range(2):
        gt_ids, gt_boxes = inputs[4][b], inputs[5][b]
        real = gt_ids > 0
        ids = class_ids[b, :, 0]
        roi_real = np.any(rois[b] != 0, axis=1)
        assert (ids > 0).sum() > 0 and (roi_real & (ids == 0)).sum() > 0
        overlaps = utils.compute_overlaps(rois[b][roi_real].astype(np.float64),
                                          gt_boxes[real].astype(np.float64))
        best = overlaps.argmax(axis=1)
        for k, i in enumerate(np.flatnonzero(roi_real)):
            if ids[i] > 0:        # positives: IoU >= 0.5 (1 px rounding) with a GT of that class
                assert overlaps[k, best[k]] >= 0.45 and gt_ids[real][best[k]] == ids[i]
                # The graph matches in float32 normalised coordinates: between GT boxes
                # of near-equal IoU (overlapping RECTS) it may pick either one.
                near = np.flatnonzero((overlaps[k] >= overlaps[k].max() - 0.02) &
                                      (gt_ids[real] == ids[i]))
                wants = utils.box_refinement(
                    np.repeat(rois[b][i:i + 1].astype(np.float64), len(near), 0),
                    gt_boxes[real][near].astype(np.float64)) / std
                # The rois come back rounded to whole pixels: one pixel moves a delta by
                # about 1 / side, i.e. 10 / side in BBOX_STD_DEV (0.1) units.
                y1, x1, y2, x2 = rois[b][i].astype(np.float64)
                tol = max(0.2, 1.5 / min(y2 - y1, x2 - x1) / std.min())
                assert np.abs(wants - bbox[b, i, ids[i]]).max(axis=1).min() <= tol
                assert mask[b, i, ..., ids[i]].max() == 1.0
            else:
                assert overlaps[k].max() < 0.55
            others = [c for c in range(n) if c != ids[i] or c == 0]
            assert not bbox[b, i, others].any() and not mask[b, i][..., others].any()
        assert not rois[b][~roi_real].any() and not class_ids[b][~roi_real].any()


def test_build_detection_targets_hand_case():
    config = make_config(TRAIN_ROIS_PER_IMAGE=8, ROI_ADD_GT_AS_PROPOSALS=False,
                         USE_MINI_MASK=False)
    gt_masks = np.zeros((64, 64, 1), bool)
    gt_masks[8:32, 8:32, 0] = True
    rpn_rois = np.array([[8, 8, 32, 32], [40, 40, 60, 60]])
    rois, ids, bboxes, masks = data.build_detection_targets(
        rpn_rois, np.array([2]), np.array([[8, 8, 32, 32]]), gt_masks, config)
    np.testing.assert_array_equal(ids, [2, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rois[:2], rpn_rois)
    assert not rois[2:].any() and rois.dtype == np.int32
    # The positive ROI is its GT box: zero refinement, a full mask, in class 2's slot.
    assert bboxes.shape == (8, 3, 4) and not bboxes.any()
    assert masks.shape == (8, 28, 28, 3)
    assert masks[0, ..., 2].min() == 1.0
    assert masks.sum() == masks[0, ..., 2].sum()
