"""mrcnn.augment: imgaug on numpy 2, masks see geometric augmenters only, any N."""
import numpy as np
import pytest

from mrcnn import augment
from mrcnn.augment import AugmentationError, augment_image_and_masks, iaa


def _scene(h=64, w=64, n=3, seed=0, size=10):
    """n non-overlapping square masks (gap >= 2 px) on random cells of a grid, and an
    image painted 255 on them."""
    rng = np.random.default_rng(seed)
    cell = size + 2
    cells = [(y, x) for y in range(1, h - cell + 1, cell) for x in range(1, w - cell + 1, cell)]
    assert n <= len(cells)
    masks = np.zeros((h, w, n), dtype=bool)
    for k, c in enumerate(rng.permutation(len(cells))[:n]):
        y, x = cells[c]
        masks[y:y + size, x:x + size, k] = True
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[masks.any(axis=2)] = 255
    return image, masks


def _boxes(masks):
    out = []
    for i in range(masks.shape[2]):
        ys, xs = np.nonzero(masks[:, :, i])
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.array(out)


def test_any_mrcnn_import_lets_users_import_imgaug():
    """Matterport's samples import imgaug themselves: after importing any mrcnn module
    (here only mrcnn.config, numpy-only) a fresh interpreter imports imgaug under numpy 2."""
    import subprocess
    import sys
    code = ("import numpy as np; had = hasattr(np, 'sctypes'); import mrcnn.config; "
            "import imgaug.augmenters as iaa; "
            "row = iaa.Fliplr(1.0)(image=np.arange(4, dtype=np.uint8).reshape(1, 4, 1)); "
            "print(had, ''.join(map(str, row.ravel())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    had, flipped = out.stdout.split()
    assert flipped == "3210"
    assert had == str(int(np.__version__.split(".")[0]) < 2)   # numpy 2 lacks it


def test_numpy_aliases_and_iaa_export():
    import imgaug.augmenters
    assert iaa is imgaug.augmenters
    assert np.int32 in np.sctypes["int"] and np.float64 in np.sctypes["float"]
    assert np.complex is complex or np.dtype(np.complex) == np.complex128


def test_none_returns_inputs():
    image, masks = _scene()
    img2, m2 = augment_image_and_masks(image, masks, None)
    assert img2 is image and m2.dtype == bool and np.array_equal(m2, masks)


def test_fliplr_flips_image_and_mirrors_boxes():
    image, masks = _scene(h=48, w=64, n=4, seed=1)
    img2, m2 = augment_image_and_masks(image, masks, iaa.Fliplr(1.0))
    assert np.array_equal(img2, image[:, ::-1])
    assert m2.dtype == bool and np.array_equal(m2, masks[:, ::-1])
    b, b2 = _boxes(masks), _boxes(m2)
    np.testing.assert_array_equal(b2[:, [0, 2]], b[:, [0, 2]])
    np.testing.assert_array_equal(b2[:, 1], 64 - b[:, 3])
    np.testing.assert_array_equal(b2[:, 3], 64 - b[:, 1])


def test_multiply_changes_image_not_masks():
    image, masks = _scene(seed=2)
    image = np.where(masks.any(axis=2)[..., None], 200, 100).astype(np.uint8)
    img2, m2 = augment_image_and_masks(image, masks, iaa.Multiply(0.5))
    np.testing.assert_allclose(img2.astype(float), image * 0.5, atol=1)
    assert np.array_equal(m2, masks)


def test_gaussian_blur_changes_image_not_masks():
    image, masks = _scene(seed=3)
    img2, m2 = augment_image_and_masks(image, masks, iaa.GaussianBlur(sigma=3.0))
    assert img2.astype(float).std() < image.astype(float).std() - 10
    assert np.array_equal(m2, masks)


def test_affine_rotate_90_is_exact_rotation():
    image, masks = _scene(n=3, seed=4)
    img2, m2 = augment_image_and_masks(image, masks, iaa.Affine(rotate=90))
    # imgaug rotates clockwise about the centre: np.rot90 with k=-1.
    assert np.array_equal(m2, np.rot90(masks, -1, axes=(0, 1)))
    assert np.array_equal(img2, np.rot90(image, -1, axes=(0, 1)))


@pytest.mark.parametrize("aug", [
    iaa.Affine(rotate=30),
    iaa.Affine(rotate=(-40, 40), scale=(0.8, 1.2), translate_px=(-5, 5)),
    iaa.ElasticTransformation(alpha=20, sigma=4),  # needs the OpenCV-5 float32 patch
    iaa.PerspectiveTransform(scale=0.1, keep_size=True),
    iaa.PiecewiseAffine(scale=0.03, nb_rows=3, nb_cols=3),
    iaa.CropAndPad(percent=(-0.2, 0.2)),
])
def test_interpolating_augmenters_move_masks_with_image(aug):
    # The image is the union of the masks at 255, so with the same random draw and the
    # same interpolation, image >= 128 must equal the thresholded masks' union.
    image, masks = _scene(n=4, seed=5)
    for seed in range(3):
        img2, m2 = augment_image_and_masks(image, masks, aug, seed=seed)
        assert m2.shape == masks.shape and m2.dtype == bool
        assert np.array_equal(img2[:, :, 0] >= 128, m2.any(axis=2))
        assert m2.any()


def test_one_of_some_of_sometimes_stay_consistent():
    image, masks = _scene(h=48, w=64, n=3, seed=6)
    image[:, :, 1] = np.arange(64, dtype=np.uint8)[None, :]  # asymmetric pattern
    transforms = {
        "id": lambda a: a, "lr": lambda a: a[:, ::-1], "ud": lambda a: a[::-1],
        "both": lambda a: a[::-1, ::-1]}
    augs = [iaa.OneOf([iaa.Fliplr(1.0), iaa.Flipud(1.0)]),
            iaa.SomeOf((0, 3), [iaa.Fliplr(1.0), iaa.Flipud(1.0), iaa.Multiply(0.5)]),
            iaa.Sometimes(0.5, iaa.Fliplr(1.0))]
    for aug in augs:
        seen = set()
        for seed in range(12):
            img2, m2 = augment_image_and_masks(image, masks, aug, seed=seed)
            names = [k for k, t in transforms.items() if np.array_equal(m2, t(masks))]
            assert len(names) == 1
            expected = transforms[names[0]](image).astype(float)
            # The image saw the same flips (maybe darkened by Multiply).
            assert (np.allclose(img2, expected, atol=1) or
                    np.allclose(img2, expected * 0.5, atol=1))
            seen.add(names[0])
        assert len(seen) >= 2  # the random choice really varied


def test_rot90_changes_shape_of_both():
    image, masks = _scene(h=48, w=64, n=2, seed=7)
    img2, m2 = augment_image_and_masks(image, masks, iaa.Rot90(1, keep_size=False))
    assert img2.shape == (64, 48, 3) and m2.shape == (64, 48, 2)
    assert np.array_equal(m2, np.rot90(masks, -1, axes=(0, 1)))
    assert np.array_equal(img2, np.rot90(image, -1, axes=(0, 1)))


@pytest.mark.parametrize("aug, ref", [
    (iaa.Fliplr(1.0), lambda a: a[:, ::-1]),
    (iaa.Flipud(1.0), lambda a: a[::-1]),
])
def test_300_instances_flip(aug, ref):
    # cv2.flip rejects > 128 channels: masks must go through in chunks.
    image, masks = _scene(h=64, w=96, n=300, seed=8, size=2)
    img2, m2 = augment_image_and_masks(image, masks, aug)
    assert m2.shape == (64, 96, 300)
    assert np.array_equal(m2, ref(masks))
    assert np.array_equal(img2, ref(image))


def test_chunks_share_one_random_draw():
    image, masks = _scene(h=64, w=96, n=300, seed=9, size=2)
    aug = iaa.Sequential([iaa.Affine(rotate=(-40, 40)), iaa.CropAndPad(percent=(-.2, .2))])
    _, m_all = augment_image_and_masks(image, masks, aug, seed=11)
    for i in (0, 127, 128, 299):  # first/last of first chunk, next chunk, last one
        _, m_one = augment_image_and_masks(image, masks[:, :, i:i + 1], aug, seed=11)
        assert np.array_equal(m_all[:, :, i], m_one[:, :, 0])
    # Smaller chunks give the same result.
    _, m_small = augment_image_and_masks(image, masks, aug, seed=11, chunk_size=7)
    assert np.array_equal(m_all, m_small)


def test_seed_reproducible():
    image, masks = _scene(seed=10)
    aug = iaa.Affine(rotate=(-45, 45))
    a = augment_image_and_masks(image, masks, aug, seed=3)
    b = augment_image_and_masks(image, masks, aug, seed=3)
    c = augment_image_and_masks(image, masks, aug, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_zero_instances_follow_image_shape():
    image, _ = _scene(h=48, w=64)
    img2, m2 = augment_image_and_masks(image, np.zeros((48, 64, 0), bool),
                                       iaa.Resize({"height": 32, "width": 40}))
    assert img2.shape == (32, 40, 3) and m2.shape == (32, 40, 0)


def test_unlisted_resizing_augmenter_raises():
    image, masks = _scene()
    with pytest.raises(AugmentationError, match="MASK_AUGMENTERS"):
        augment_image_and_masks(image, masks, iaa.Resize({"height": 32, "width": 40}),
                                mask_augmenters=["Sequential"])


def test_affine_subclasses_count_as_affine():
    # iaa.Rotate is an Affine subclass: masks must rotate too.
    image, masks = _scene(seed=12)
    img2, m2 = augment_image_and_masks(image, masks, iaa.Rotate(90))
    assert "Rotate" not in augment.MASK_AUGMENTERS
    assert np.array_equal(m2, np.rot90(masks, -1, axes=(0, 1)))


def test_bad_inputs():
    image, masks = _scene()
    with pytest.raises(ValueError, match="height/width"):
        augment_image_and_masks(image, masks[:32], iaa.Fliplr(1.0))
    with pytest.raises(ValueError, match=r"\[H, W, N\]"):
        augment_image_and_masks(image, masks[:, :, 0], iaa.Fliplr(1.0))
