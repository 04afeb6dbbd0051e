"""mrcnn.preprocess: the image-meta schema, resizing, molding and unmolding, numpy and TF.

The graph functions (export's path) are checked bit for bit against the numpy ones
(detect()'s and the input pipeline's path) on the same inputs.
"""
import random

import numpy as np
import pytest
import skimage.transform
import tensorflow as tf

from mrcnn import preprocess as P

from tiny_models import small_resnet_config_class  # noqa: E402


class MoldConfig(small_resnet_config_class()):
    NAME = "mold_test"
    IMAGE_RESIZE_MODE = "square"


def cfg(**overrides):
    return type("C", (MoldConfig,), overrides)()


def scene(seed, h, w):
    """uint8 image: noise plus a few flat rectangles (flat areas test rounding)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, max(h - 8, 1)), rng.integers(0, max(w - 8, 1))
        s = int(rng.integers(4, max(min(h, w) // 2, 5)))
        img[y:y + s, x:x + s] = rng.integers(0, 256, 3)
    return img


# ---------------------------------------------------------------- image meta schema

def test_field_table_drives_offsets_and_size():
    # The offsets follow the table: each field starts where the previous one ends.
    start = 0
    for name, length, _ in P.IMAGE_META_FIELDS:
        sl = P.IMAGE_META_SLICES[name]
        assert sl.start == start, name
        if length is None:
            assert sl.stop is None and name == P.IMAGE_META_FIELDS[-1][0]
        else:
            assert sl.stop == start + length
            start = sl.stop
    assert P.IMAGE_META_FIXED_SIZE == start == 12          # Matterport's layout
    for num_classes in (1, 3, 81):
        assert P.image_meta_size(num_classes) == 12 + num_classes
    assert cfg(NUM_CLASSES=5).IMAGE_META_SIZE == P.image_meta_size(5)
    # Another table gives other offsets: nothing else hard-codes them.
    table = (("a", 2, np.int32), ("b", 1, np.float32), ("rest", None, np.int32))
    assert P._field_slices(table) == {"a": slice(0, 2), "b": slice(2, 3),
                                      "rest": slice(3, None)}
    with pytest.raises(ValueError, match="last field"):
        P._field_slices((("rest", None, np.int32), ("a", 1, np.int32)))


def test_matterport_layout_of_the_meta_vector():
    meta = P.compose_image_meta(7, (480, 640, 3), (1024, 1024, 3), (128, 0, 896, 1024),
                                1.6, np.array([0, 1, 1, 0], np.int32))
    assert meta.dtype == np.float64 and meta.shape == (16,)
    np.testing.assert_array_equal(meta, [7, 480, 640, 3, 1024, 1024, 3, 128, 0, 896, 1024,
                                         1.6, 0, 1, 1, 0])
    # All-integer values keep numpy's integer dtype, as Matterport's np.array(list).
    assert P.compose_image_meta(0, (8, 8, 3), (8, 8, 3), (0, 0, 8, 8), 1,
                                [1, 1]).dtype == np.int64
    with pytest.raises(ValueError, match="window"):
        P.compose_image_meta(0, (8, 8, 3), (8, 8, 3), (0, 0, 8), 1, [1])


def test_numpy_compose_parse_and_tf_parse_agree():
    rng = np.random.default_rng(4)
    metas, values = [], []
    for image_id in range(3):
        v = dict(image_id=image_id * 11, original_image_shape=tuple(rng.integers(1, 900, 3)),
                 image_shape=(256, 320, 3), window=tuple(rng.integers(0, 256, 4)),
                 scale=float(rng.uniform(0.2, 3.0)),
                 active_class_ids=rng.integers(0, 2, 6).astype(np.int32))
        values.append(v)
        metas.append(P.compose_image_meta(**v))
    metas = np.stack(metas).astype(np.float32)
    parsed = P.parse_image_meta(metas)
    graph = {k: t.numpy() for k, t in P.parse_image_meta_graph(tf.constant(metas)).items()}
    assert list(parsed) == list(graph) == [name for name, _, _ in P.IMAGE_META_FIELDS]
    for name, length, dtype in P.IMAGE_META_FIELDS:
        expected = np.array([np.ravel(v[name]) for v in values])
        if length == 1:
            expected = expected[:, 0]
        assert parsed[name].dtype == dtype and graph[name].dtype == np.float32
        assert parsed[name].shape == graph[name].shape == expected.shape, name
        np.testing.assert_array_equal(graph[name], parsed[name].astype(np.float32))
        np.testing.assert_allclose(parsed[name], expected, rtol=1e-6, err_msg=name)
    # The graph's compose gives the numpy compose's vector (as float32).
    for v, meta in zip(values, metas):
        g = P.compose_image_meta_graph(*[tf.constant(np.asarray(v[name]))
                                         for name, _, _ in P.IMAGE_META_FIELDS])
        np.testing.assert_array_equal(g.numpy(), meta)


def test_numpy_half_does_not_import_tensorflow():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; import mrcnn.preprocess, mrcnn.masks, mrcnn.ap, mrcnn.dataset, "
            "mrcnn.utils, mrcnn.config; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- resizing

def test_resize_wrapper_bool_and_range():
    m = np.zeros((4, 4), bool)
    m[:2] = True
    out = P.resize(m, (8, 8))
    assert out.dtype == np.float64
    # Bilinear on 0/1 data: rounding gives back the 2x upsampled half-plane.
    np.testing.assert_array_equal(np.around(out), np.repeat(np.repeat(m, 2, 0), 2, 1))
    np.testing.assert_allclose(out[1:3, 1:7], 1.0)
    np.testing.assert_allclose(out[5:], 0.0)
    assert P.resize(m, (8, 8), order=0).dtype == bool
    img = np.full((4, 4), 200, np.uint8)
    np.testing.assert_allclose(P.resize(img, (2, 2), preserve_range=True), 200)


def test_resize_image_none():
    img = np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)
    out, window, scale, padding, crop = P.resize_image(img, 64, 128, mode="none")
    assert out is img and window == (0, 0, 30, 40) and scale == 1 and crop is None
    assert padding == [(0, 0), (0, 0), (0, 0)]


def test_resize_image_square_downscale_with_padding():
    img = np.full((40, 100, 3), 7, np.uint8)
    out, window, scale, padding, crop = P.resize_image(img, min_dim=64, max_dim=128)
    # min_dim asks 64 / 40 = 1.6, but 100 * 1.6 = 160 > 128 -> scale = 128 / 100.
    assert scale == pytest.approx(1.28)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    # round(40 * 1.28) = 51 rows: 38 above, 39 below.
    assert padding == [(38, 39), (0, 0), (0, 0)]
    assert window == (38, 0, 89, 128) and crop is None
    assert np.all(out[38:89] == 7)
    assert np.all(out[:38] == 0) and np.all(out[89:] == 0)


def test_resize_image_square_upscale_exact_fit():
    img = np.zeros((40, 80, 3), np.uint8)
    out, window, scale, padding, _ = P.resize_image(img, min_dim=64, max_dim=128)
    assert scale == pytest.approx(1.6) and out.shape == (128, 128, 3)
    assert window == (32, 0, 96, 128)
    assert padding == [(32, 32), (0, 0), (0, 0)]


def test_resize_image_square_no_min_dim_keeps_scale_1():
    img = np.ones((50, 30, 3), np.float32)
    out, window, scale, padding, _ = P.resize_image(img, max_dim=64)
    assert scale == 1 and out.dtype == np.float32
    assert window == (7, 17, 57, 47) and padding == [(7, 7), (17, 17), (0, 0)]
    np.testing.assert_array_equal(out[7:57, 17:47], img)


def test_resize_image_pad64():
    img = np.full((70, 100, 3), 5, np.uint8)
    out, window, scale, padding, crop = P.resize_image(img, mode="pad64")
    assert scale == 1 and out.shape == (128, 128, 3)
    assert padding == [(29, 29), (14, 14), (0, 0)] and window == (29, 14, 99, 114)
    np.testing.assert_array_equal(out[29:99, 14:114], img)
    # min_dim scales up first: 128 / 70 -> 128 x 183, width padded to 192.
    out, window, scale, padding, _ = P.resize_image(img, min_dim=128, mode="pad64")
    assert scale == pytest.approx(128 / 70)
    assert out.shape == (128, 192, 3)
    assert padding == [(0, 0), (4, 5), (0, 0)] and window == (0, 4, 128, 187)
    # Already a multiple of 64: nothing to pad.
    out, window, _, padding, _ = P.resize_image(np.zeros((64, 128, 3)), mode="pad64")
    assert out.shape == (64, 128, 3) and window == (0, 0, 64, 128)


def test_resize_image_crop():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    random.seed(3)
    out, window, scale, padding, crop = P.resize_image(img, min_dim=64, mode="crop")
    assert scale == pytest.approx(64 / 60)
    assert out.shape == (64, 64, 3) and window == (0, 0, 64, 64)
    y, x, h, w = crop
    assert (h, w) == (64, 64) and y == 0 and 0 <= x <= 96 - 64
    resized = P.resize(img, (64, 96), preserve_range=True).astype(np.uint8)
    np.testing.assert_array_equal(out, resized[y:y + 64, x:x + 64])
    # The same seed gives the same crop.
    random.seed(3)
    assert P.resize_image(img, min_dim=64, mode="crop")[4] == crop


def test_resize_image_bad_arguments():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="mode"):
        P.resize_image(img, 8, 16, mode="fit")
    with pytest.raises(ValueError, match="max_dim"):
        P.resize_image(img, mode="square")
    with pytest.raises(ValueError, match="min_dim"):
        P.resize_image(img, mode="crop")


# ---------------------------------------------------------------- molding: numpy vs graph

def test_resize_hand_case():
    # 1 x 4 -> 1 x 8: half-pixel sampling, zero beyond the edge, clip to the image's
    # range, truncation: worked by hand from skimage's definition.
    img = np.array([10, 20, 30, 40], np.uint8).reshape(1, 4, 1)
    out = P.resize_images_graph(tf.constant(img[None]), 1, 8).numpy().ravel()
    # sources: -0.25 (7.5 -> clipped to 10), 0.25, 0.75, ..., 3.25 (0.75*40 = 30)
    np.testing.assert_array_equal(out, [10, 12, 17, 22, 27, 32, 37, 30])
    ref = P.resize(img, (1, 8), preserve_range=True).astype(np.uint8).ravel()
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("mode", ["square", "pad64", "none"])
def test_mold_images_graph_matches_mold_inputs(mode):
    # The graph repeats scipy's bilinear arithmetic in the same order, so the molded
    # images are bit-identical, flat areas (where rounding would show) included.
    extra = {"IMAGE_RESIZE_MODE": mode}
    if mode == "pad64":
        extra.update(IMAGE_MIN_DIM=40, IMAGE_MIN_SCALE=1.5)
    config = cfg(**extra)
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 64), (32, 32), (50, 37), (100, 80), (20, 30), (64, 200)]
    sizes += [tuple(int(v) for v in rng.integers(8, 260, 2)) for _ in range(8)]
    if mode == "none":
        # Frames padded bottom/right to a multiple of 64, in the graph as in numpy.
        sizes = [(64, 64), (128, 64), (50, 37), (100, 130)]
    for i, (h, w) in enumerate(sizes):
        img = scene(i, h, w)
        molded, metas, windows = P.mold_inputs([img], config)
        g_molded, g_metas, g_windows = P.mold_images_graph(tf.constant(img[None]), config)
        assert g_molded.shape == molded.shape, (mode, h, w)
        np.testing.assert_array_equal(g_windows.numpy(), windows)
        np.testing.assert_array_equal(g_metas.numpy(), metas)
        np.testing.assert_array_equal(g_molded.numpy(), molded, err_msg=str((mode, h, w)))


@pytest.mark.parametrize("settings", [
    dict(IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=40, IMAGE_MAX_DIM=128),
    dict(IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=0, IMAGE_MAX_DIM=128,
         IMAGE_MIN_SCALE=2.0),
    dict(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=0, IMAGE_MAX_DIM=128),
    dict(IMAGE_RESIZE_MODE="none", IMAGE_MIN_DIM=0),
])
def test_numpy_and_graph_mold_give_the_same_image_meta_and_window(settings):
    # Inference's numpy mold (mold_inputs) and export's graph mold (mold_images_graph) on
    # a batch of two same-size images: the same molded images, the same metas field by
    # field, the same windows.
    config = cfg(**settings)
    for k, (h, w) in enumerate([(30, 50), (64, 64), (77, 41), (20, 100)]):
        images = [scene(20 + k, h, w), scene(40 + k, h, w)]
        molded, metas, windows = P.mold_inputs(images, config)
        g_molded, g_metas, g_windows = P.mold_images_graph(tf.constant(np.stack(images)),
                                                           config)
        where = str((settings, h, w))
        np.testing.assert_array_equal(g_molded.numpy(), molded, err_msg=where)
        np.testing.assert_array_equal(g_windows.numpy(), windows, err_msg=where)
        assert molded.shape[1] % 64 == 0 and molded.shape[2] % 64 == 0, where
        fields, g_fields = P.parse_image_meta(metas), P.parse_image_meta(g_metas.numpy())
        for name, _, _ in P.IMAGE_META_FIELDS:
            np.testing.assert_array_equal(g_fields[name], fields[name], err_msg=name + where)
        np.testing.assert_array_equal(fields["image_shape"], [molded.shape[1:]] * 2)
        np.testing.assert_array_equal(fields["original_image_shape"], [(h, w, 3)] * 2)
        np.testing.assert_array_equal(fields["window"], windows)


def test_graph_mold_refuses_crop_mode():
    with pytest.raises(ValueError, match="crop"):
        P.mold_images_graph(tf.zeros([1, 8, 8, 3], tf.uint8), cfg(IMAGE_RESIZE_MODE="crop"))


# ---------------------------------------------------------------- unmolding

def test_unmold_mask():
    small = np.zeros((4, 4), np.float32)
    small[:, :2] = 0.9
    full = P.unmold_mask(small, (2, 4, 10, 12), (16, 16, 3))
    assert full.shape == (16, 16) and full.dtype == bool
    expected = np.zeros((16, 16), bool)
    expected[2:10, 4:8] = True
    np.testing.assert_array_equal(full, expected)
    # A box partly outside the image is cut off, not an error.
    full = P.unmold_mask(np.ones((4, 4), np.float32), (-2, 12, 6, 20), (16, 16))
    assert full.sum() == 6 * 4 and full[0:6, 12:16].all()
    assert not P.unmold_mask(small, (3, 3, 3, 9), (16, 16)).any()



def _skimage_unmold(mask, bbox, shape):
    """Independent reference: scikit-image's resize of the whole box, then cut and paste."""
    y1, x1, y2, x2 = (int(v) for v in bbox)
    full = np.zeros(shape[:2], bool)
    if y2 <= y1 or x2 <= x1:
        return full
    m = skimage.transform.resize(mask, (y2 - y1, x2 - x1), order=1, mode="constant",
                                 anti_aliasing=False) >= 0.5
    cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, shape[0]), min(x2, shape[1])
    if cy2 > cy1 and cx2 > cx1:
        full[cy1:cy2, cx1:cx2] = m[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
    return full


def test_unmold_masks_matches_skimage_resize():
    # Random soft masks, masks with no value below the threshold (the range clip matters
    # at the border) and binary masks (exact 0.5 ties), boxes partly outside the image.
    rng = np.random.default_rng(1)
    for k in range(300):
        m = rng.random(rng.integers(1, 40, 2)).astype(np.float32)
        if k % 3 == 1:
            m = m * 0.3 + 0.7
        elif k % 3 == 2:
            m = (m > 0.5).astype(np.float32)
        h, w = (int(v) for v in rng.integers(5, 120, 2))
        y1, x1 = int(rng.integers(-20, h)), int(rng.integers(-20, w))
        box = (y1, x1, y1 + int(rng.integers(0, 150)), x1 + int(rng.integers(0, 150)))
        np.testing.assert_array_equal(P.unmold_mask(m, box, (h, w, 3)),
                                      _skimage_unmold(m, box, (h, w)), err_msg=str(box))


def test_unmold_masks_stacks_each_mask_in_its_box():
    rng = np.random.default_rng(2)
    masks = rng.random((5, 28, 28)).astype(np.float32)
    boxes = np.array([[0, 0, 30, 40], [10, 5, 60, 20], [50, 50, 64, 64], [3, 3, 3, 9],
                      [-10, 40, 20, 90]])
    out = P.unmold_masks(masks, boxes, (64, 64, 3))
    assert out.shape == (64, 64, 5) and out.dtype == bool
    for i in range(5):
        np.testing.assert_array_equal(out[:, :, i], _skimage_unmold(masks[i], boxes[i],
                                                                    (64, 64)))
    assert P.unmold_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (8, 9)).shape == (
        8, 9, 0)


def test_paste_masks_graph_matches_unmold_mask():
    rng = np.random.default_rng(3)
    H, W = 50, 70
    boxes = np.array([[5, 7, 40, 60],      # bigger than the mask: upsampling
                      [10, 10, 20, 17],    # smaller: downsampling
                      [0, 0, 1, 1],        # one pixel
                      [-6, 50, 30, 90],    # partly outside the image
                      [30, 2, 49, 69],
                      [12, 12, 40, 40]], np.int32)
    masks = rng.random((len(boxes), 28, 28)).astype(np.float32)
    masks[4] = masks[4] * 0.3 + 0.6        # min > 0.5: skimage's range clip matters
    masks[5] = (np.add.outer(np.arange(28), np.arange(28)) / 54.0).astype(np.float32)
    got = P.paste_masks_graph(tf.constant(masks), tf.constant(boxes), H, W).numpy()
    assert got.shape == (len(boxes), H, W) and got.dtype == bool
    for i in range(len(boxes)):
        ref = P.unmold_mask(masks[i], boxes[i], (H, W, 3))
        np.testing.assert_array_equal(got[i], ref, err_msg=str(i))
    # Nothing outside the (clipped) box.
    assert not got[2][1:, :].any() and not got[2][:, 1:].any()
    assert got[4][30:49, 2:69].all()


def test_unmold_detections_graph_matches_numpy():
    rng = np.random.default_rng(5)
    D, C, frame = 8, 4, (64, 64)
    window = np.array([8, 0, 56, 64])              # a 48 x 64 image padded to 64 x 64
    original = (96, 128)
    det = np.zeros((2, D, 6), np.float32)
    # image 0: 5 valid rows (one of zero area after rounding), then padding
    y1 = rng.uniform(0.15, 0.5, 5)
    x1 = rng.uniform(0.0, 0.5, 5)
    det[0, :5, 0], det[0, :5, 1] = y1, x1
    det[0, :5, 2], det[0, :5, 3] = y1 + rng.uniform(0.05, 0.3, 5), x1 + 0.3
    # Row 2: zero height in original pixels (normalised y2 is inclusive, pixel y2 is not).
    wy1, wh = 8 / 63, 47 / 63
    det[0, 2, 0] = wy1 + 0.2 * wh
    det[0, 2, 2] = det[0, 2, 0] - wh / 95
    det[0, :5, 4] = [1, 2, 3, 1, 2]
    det[0, :5, 5] = [0.9, 0.8, 0.7, 0.6, 0.5]
    # image 1: a class-0 row stops the list early (numpy takes rows before it)
    det[1, :3] = det[0, :3]
    det[1, 1, 4] = 0
    mmask = rng.random((2, D, 28, 28, C)).astype(np.float32)
    # Tag each plane (image b, row i, class c) so the selected planes can be identified.
    tags = (1000 * np.arange(2)[:, None, None] + 10 * np.arange(D)[None, :, None] +
            np.arange(C)[None, None, :])
    mmask[:, :, 0, 0, :] = tags
    boxes, class_ids, scores, masks, num = [t.numpy() for t in P.unmold_detections_graph(
        tf.constant(det), tf.constant(mmask), tf.constant(original, tf.int32),
        tf.constant(frame, tf.int32), tf.constant(window, tf.int32))]
    kept_rows = [[0, 1, 3, 4], [0]]     # row 2 has zero height; image 1 stops at row 1
    for b in range(2):
        ref_boxes, ref_ids, ref_scores, _ = P.unmold_detections(
            det[b], mmask[b], original + (3,), frame + (3,), window)
        n = num[b]
        assert n == len(ref_ids) == len(kept_rows[b])
        np.testing.assert_array_equal(boxes[b, :n], ref_boxes)
        np.testing.assert_array_equal(class_ids[b, :n], ref_ids)
        np.testing.assert_array_equal(scores[b, :n], ref_scores)
        assert not boxes[b, n:].any() and not class_ids[b, n:].any()
        assert not scores[b, n:].any() and not masks[b, n:].any()
        for j, i in enumerate(kept_rows[b]):
            c = int(det[b, i, 4])
            assert masks[b, j, 0, 0] == 1000 * b + 10 * i + c
            np.testing.assert_array_equal(masks[b, j, 1:], mmask[b, i, 1:, :, c])
