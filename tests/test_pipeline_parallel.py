"""Issue 19 part 5: the faster, multi-process input pipeline gives the same batches.

The reference is the loading path before it (skimage's resize, the whole resized mask
stack, numpy molding, one process), in the pipeline's order and seeds; the new path runs
in-process (workers=0) and in two forked workers (workers=2).
"""

import os
import time

import numpy as np
import pytest

from mrcnn import data, preprocess, utils, workers
from mrcnn.augment import iaa
from mrcnn.config import Config
from mrcnn.datasets import NucleusDataset, list_nucleus_ids
from samples.shapes import ShapesDataset

NUCLEI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dsb2018",
                      "stage1_train")


class ShapesConfig(Config):
    NAME = "parallel"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 4
    IMAGE_MIN_DIM = 96
    IMAGE_MAX_DIM = 128
    MAX_GT_INSTANCES = 6
    MINI_MASK_SHAPE = (14, 14)


def shapes(count=10, cls=ShapesDataset):
    ds = cls()
    ds.load_shapes(count, 80, 112, seed=3)
    ds.prepare()
    return ds


def nuclei():
    if not os.path.isdir(NUCLEI):
        pytest.skip("DSB2018 data not available")
    ds = NucleusDataset()
    ds.load_nucleus(NUCLEI, subset_ids=list_nucleus_ids(NUCLEI)[:6])
    ds.prepare()
    config = type("NucleiConfig", (ShapesConfig,), dict(
        NUM_CLASSES=2, IMAGE_MIN_DIM=320, IMAGE_MAX_DIM=384, MAX_GT_INSTANCES=120,
        MINI_MASK_SHAPE=(28, 28)))()
    return ds, config


def skimage_resize(image, h, w):
    return preprocess.resize(image, (h, w), preserve_range=True).astype(image.dtype)


def reference_batches(ds, config, augmentation, seed, monkeypatch):
    """build_dataset(shuffle=False, repeat=False)'s batches by the path before: one
    load_training_example per image, rng (seed, position), empty images skipped."""
    with monkeypatch.context() as m:
        m.setattr(preprocess, "resize_uint8", skimage_resize)
        m.setattr(data, "DIRECT_MINI_MASKS", False)
        examples = [data.load_training_example(ds, config, int(i), augmentation=augmentation,
                                               rng=np.random.default_rng([seed, k]))
                    for k, i in enumerate(ds.image_ids)]
    examples = [e for e in examples if np.any(e["input_gt_class_ids"] > 0)]
    b = config.BATCH_SIZE
    return [{k: np.stack([e[k] for e in examples[s:s + b]]) for k in examples[0]}
            for s in range(0, len(examples) - b + 1, b)]


def pipeline_batches(ds, config, augmentation, seed, n_workers, shuffle=False,
                     autotune=True):
    pipeline = data.build_dataset(ds, config, shuffle=shuffle, repeat=False, seed=seed,
                                  augmentation=augmentation, workers=n_workers,
                                  autotune=autotune)
    try:
        return [{k: v.numpy() for k, v in b.items()} for b in pipeline]
    finally:
        if pipeline.worker_pool is not None:
            pipeline.worker_pool.close()


def assert_same(expected, got):
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got):
        assert list(a) == list(b)
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


AUGMENTERS = {"none": None,
              "flip_affine": iaa.Sequential([iaa.Fliplr(0.5),
                                             iaa.Affine(rotate=(-20, 20)),
                                             iaa.Multiply((0.8, 1.2))])}


@pytest.mark.parametrize("aug", sorted(AUGMENTERS))
@pytest.mark.parametrize("case", ["shapes", "nuclei"])
def test_same_batches_old_path_in_process_and_workers(case, aug, monkeypatch):
    ds, config = (shapes(), ShapesConfig()) if case == "shapes" else nuclei()
    augmentation = AUGMENTERS[aug]
    expected = reference_batches(ds, config, augmentation, 7, monkeypatch)
    assert_same(expected, pipeline_batches(ds, config, augmentation, 7, 0))
    assert_same(expected, pipeline_batches(ds, config, augmentation, 7, 2))


def test_shuffled_seeded_batches_equal_with_and_without_workers():
    ds, config = shapes(), ShapesConfig()
    augmentation = AUGMENTERS["flip_affine"]
    assert_same(pipeline_batches(ds, config, augmentation, 11, 0, shuffle=True),
                pipeline_batches(ds, config, augmentation, 11, 2, shuffle=True))


def test_batches_equal_without_autotuning():
    # autotune=False (validation pipelines) changes only how tf.data tunes itself.
    ds, config = shapes(), ShapesConfig()
    augmentation = AUGMENTERS["flip_affine"]
    assert_same(pipeline_batches(ds, config, augmentation, 11, 2, shuffle=True),
                pipeline_batches(ds, config, augmentation, 11, 2, shuffle=True,
                                 autotune=False))


def test_resize_uint8_equals_skimage_on_many_sizes():
    rng = np.random.default_rng(0)
    for k in range(400):
        h, w = rng.integers(1, 70, 2)
        oh, ow = rng.integers(1, 140, 2)
        shape = (h, w) if k % 5 == 0 else (h, w, int(rng.choice([1, 3, 4])))
        lo, hi = sorted(rng.integers(0, 256, 2))
        image = rng.integers(lo, hi + 1, shape).astype(np.uint8)
        np.testing.assert_array_equal(preprocess.resize_uint8(image, oh, ow),
                                      skimage_resize(image, oh, ow))


@pytest.mark.parametrize("mode", ["square", "crop", "pad64", "none"])
def test_direct_mini_masks_equal_whole_stack(mode):
    rng = np.random.default_rng(1)
    for trial in range(12):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        mask = np.zeros((h, w, 6), bool)
        for i in range(6):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            mask[y:y + rng.integers(1, 12), x:x + rng.integers(1, 12), i] = True
        mask[:, :, 5] &= rng.random((h, w)) < 0.5       # ragged, maybe empty
        class_ids = np.arange(1, 7, dtype=np.int32)
        image = np.zeros((h, w, 3), np.uint8)
        dims = dict(min_dim=int(rng.integers(16, 64)), max_dim=96, mode=mode)
        _, _, scale, padding, crop = utils.resize_image(image, **dims)
        got = data._direct_mini_gt(mask, class_ids, scale, padding, crop, (7, 9))
        config = type("C", (ShapesConfig,), dict(MINI_MASK_SHAPE=(7, 9)))()
        full = utils.resize_mask(mask, scale, padding, crop)
        expected = data._kept_gt(full, class_ids, True, config)
        for a, b in zip(expected, got):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


class BrokenShapes(ShapesDataset):
    """Defined in a test, so it cannot be pickled for spawn: forked workers need not."""

    def load_image(self, image_id):
        if image_id == 3:
            raise OSError("disk on fire")
        return super().load_image(image_id)


def broken_shapes():
    return shapes(8, BrokenShapes)


def test_worker_errors_raise_naming_the_image_and_skips_are_counted():
    ds, config = broken_shapes(), ShapesConfig()
    import tensorflow as tf
    pipeline = data.build_dataset(ds, config, shuffle=False, repeat=False, workers=2)
    with pytest.raises(tf.errors.OpError) as info:
        list(pipeline)
    original = data.pipeline_error(info.value, pipeline)
    assert isinstance(original, data.ImageError)
    assert "image 3" in str(original) and "disk on fire" in str(original)
    pipeline.worker_pool.close()
    pipeline = data.build_dataset(ds, config, shuffle=False, repeat=False, workers=2,
                                  on_error="skip")
    assert len(list(pipeline)) == 3
    assert pipeline.skip_counter.errors == 1
    assert "disk on fire" in pipeline.skip_counter.messages[-1]
    pipeline.worker_pool.close()


def gone(pids):
    """True once none of pids runs any more (zombies count as gone)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        alive = []
        for pid in pids:
            try:
                with open("/proc/{}/stat".format(pid)) as f:
                    alive.append(f.read().split()[2] != "Z")
            except OSError:
                pass
        if not any(alive):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("exit_by", [None, RuntimeError, KeyboardInterrupt])
def test_train_closes_its_workers_however_it_ends(exit_by):
    """MaskRCNN.train runs in workers.closing_scope: the pools made inside end with it."""
    from mrcnn import model as modellib
    seen = {}

    def fake_train(self, *args):
        pipeline = data.build_dataset(shapes(), ShapesConfig(), workers=2)
        next(iter(pipeline))
        seen["pids"] = pipeline.worker_pool.pids
        assert len(seen["pids"]) == 2
        if exit_by is not None:
            raise exit_by("stop")

    fake = type("FakeModel", (), {"_train": fake_train})()
    if exit_by is None:
        modellib.MaskRCNN.train(fake, None, None, 0.1, 1, "heads")
    else:
        with pytest.raises(exit_by):
            modellib.MaskRCNN.train(fake, None, None, 0.1, 1, "heads")
    assert gone(seen["pids"])


def test_default_workers_follow_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert workers.default_workers() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert workers.default_workers() == 3
    config = type("C", (ShapesConfig,), dict(DATA_WORKERS=0))()
    assert data.build_dataset(shapes(), config).worker_pool is None


def test_closed_pool_refuses_calls_and_dead_worker_fails_its_call():
    pool = workers.WorkerPool(lambda x: os._exit(3) if x < 0 else x * 2, 2)
    assert pool.submit(21).result(timeout=20) == 42
    with pytest.raises(workers.WorkerError, match="died"):
        pool.submit(-1).result(timeout=20)
    assert pool.submit(5).result(timeout=20) == 10       # a fresh set of workers
    pids = pool.pids
    pool.close()
    assert gone(pids)
    with pytest.raises(workers.PoolClosedError):
        pool.submit(1)
