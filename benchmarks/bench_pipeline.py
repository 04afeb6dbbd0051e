"""Input pipeline at 1024²: where a training image's CPU time goes, and images per second
on 1 core and on 2, for this checkout and (optionally) another revision, alternated.

    python benchmarks/bench_pipeline.py                     # profile + throughput
    python benchmarks/bench_pipeline.py --base e67cf8e      # ... also of that revision
    python benchmarks/bench_pipeline.py --skip-profile --images 24 --rounds 3

Data: the balloon photos (JPEG + VIA polygons, with and without a horizontal flip) and the
DSB2018 nuclei (PNG masks), from ../shared/data (or $MRCNN_SHARED_DATA). Config: square
1024² images, mini masks 56², MAX_GT_INSTANCES 100 (balloon) / 400 (nuclei), batch 2.
Each throughput figure is a fresh process pinned to its cores (os.sched_setaffinity),
iterating mrcnn.data.build_dataset (default workers: one process per core) and timing the
second half of the batches, once the buffers filled during warm-up are drained; base and
head alternate. The profile times each stage of one image on one core, by the reference
code (skimage resize, the whole resized mask stack: the pipeline before issue 19 part 5,
RPN targets aside) and by the pipeline's own.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MRCNN_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
CASES = ("balloon", "balloon_flip", "nuclei")


def make_case(name, images):
    """(prepared Dataset, Config, augmentation) of a case, imported from the tree on
    sys.path (this checkout or the base's)."""
    from mrcnn.config import Config
    from mrcnn.datasets import NucleusDataset, ViaDataset, list_nucleus_ids
    if name.startswith("balloon"):
        ds = ViaDataset()
        ds.load_via(os.path.join(SHARED, "balloon", "train"), skip_bad=True)
        gt = 100
    else:
        root = os.path.join(SHARED, "dsb2018", "stage1_train")
        ds = NucleusDataset()
        ds.load_nucleus(root, subset_ids=list_nucleus_ids(root)[:images])
        gt = 400
    ds.prepare()
    config = type("PipelineConfig", (Config,), dict(
        NAME="pipeline", NUM_CLASSES=ds.num_classes, IMAGES_PER_GPU=2,
        IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=800, IMAGE_MAX_DIM=1024,
        MAX_GT_INSTANCES=gt, USE_MINI_MASK=True, MINI_MASK_SHAPE=(56, 56)))()
    augmentation = None
    if name == "balloon_flip":
        from mrcnn.augment import iaa
        augmentation = iaa.Fliplr(0.5)
    return ds, config, augmentation


def throughput(name, images, batches, workers=None):
    """Images per second of build_dataset on this process's cores."""
    from mrcnn import data
    ds, config, augmentation = make_case(name, images)
    kwargs = {} if workers is None else {"workers": workers}   # the base may lack it
    pipeline = data.build_dataset(ds, config, augmentation=augmentation, seed=0,
                                  on_error="skip", **kwargs)
    it = iter(pipeline)
    next(it)
    stamps = []
    for _ in range(batches):
        next(it)
        stamps.append(time.perf_counter())
    half = len(stamps) // 2
    rate = (len(stamps) - 1 - half) * config.BATCH_SIZE / (stamps[-1] - stamps[half])
    if getattr(pipeline, "worker_pool", None) is not None:
        pipeline.worker_pool.close()
    return rate


STAGES = ("decode", "load_mask", "resize", "masks", "augment", "mold")


def profile(name, images, reference):
    """Median seconds per image of each stage, one image at a time on one core, by the
    reference code (reference=True) or the pipeline's."""
    import numpy as np
    from mrcnn import data
    ds, config, augmentation = make_case(name, images)
    times = {k: [] for k in STAGES}
    for image_id in list(ds.image_ids)[:images]:
        for key, dt in _stage_times(ds, config, augmentation, image_id, reference):
            times[key].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


class _Laps(object):
    """Seconds since the previous lap, by stage name."""

    def __init__(self):
        self.times = dict.fromkeys(STAGES, 0.0)
        self._last = time.perf_counter()

    def lap(self, stage):
        now = time.perf_counter()
        self.times[stage] += now - self._last
        self._last = now


def _stage_times(ds, config, augmentation, image_id, reference):
    """[(stage, seconds)] of one image through the stages of STAGES."""
    from mrcnn import data, preprocess, utils
    from mrcnn.augment import augment_image_and_masks
    laps = _Laps()
    image = ds.load_image(image_id)
    laps.lap("decode")
    mask, class_ids = ds.load_mask(image_id)
    laps.lap("load_mask")
    image, window, scale, padding, crop = _resize_image(image, config, reference)
    laps.lap("resize")
    if augmentation is None and not reference:
        data._direct_mini_gt(mask, class_ids, scale, padding, crop, config.MINI_MASK_SHAPE)
        laps.lap("masks")
    else:
        mask = utils.resize_mask(mask, scale, padding, crop)
        laps.lap("masks")
        if augmentation is not None:
            image, mask = augment_image_and_masks(image, mask, augmentation, seed=1)
            laps.lap("augment")
        data._kept_gt(mask, class_ids, True, config)
        laps.lap("masks")
    preprocess.mold_image(image, config)
    laps.lap("mold")
    return laps.times.items()


def _resize_image(image, config, reference):
    """utils.resize_image per config; reference: by skimage's resize, as before."""
    from mrcnn import preprocess, utils
    fast = preprocess.resize_uint8
    if reference:
        preprocess.resize_uint8 = lambda im, h, w: preprocess.resize(
            im, (h, w), preserve_range=True).astype(im.dtype)
    try:
        return utils.resize_image(image, min_dim=config.IMAGE_MIN_DIM,
                                  max_dim=config.IMAGE_MAX_DIM,
                                  mode=config.IMAGE_RESIZE_MODE)
    finally:
        preprocess.resize_uint8 = fast


def run_child(tree, cores, name, images, batches, workers=None):
    """Throughput of ``tree`` pinned to ``cores`` CPUs, in a fresh process."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--out", out,
           "--images", str(images), "--batches", str(batches)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="3")
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    subprocess.run(cmd, env=env, check=True, cwd=tree,
                   preexec_fn=lambda: os.sched_setaffinity(0, cpus),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        value = json.load(f)["images_per_s"]
    os.remove(out)
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision to compare (temporary worktree)")
    parser.add_argument("--images", type=int, default=16, help="nuclei images loaded")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[None],
                        help="build_dataset workers= values to compare (default: its "
                        "default, one per core)")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, os.getcwd())
        with open(args.out, "w") as f:
            json.dump({"images_per_s": throughput(args.child, args.images, args.batches,
                                                  args.workers[0])}, f)
        return
    sys.path.insert(0, ROOT)
    if not args.skip_profile:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
        print("CPU seconds per 1024² training image, by stage (1 core):")
        for name in args.cases:
            for label, reference in (("reference", True), ("pipeline", False)):
                stages = profile(name, args.images, reference)
                total = sum(stages.values())
                print("  {:13} {:9} total {:.3f} s: ".format(name, label, total) + ", ".join(
                    "{} {:.3f} ({:.0%})".format(k, v, v / total) for k, v in stages.items()))
        os.sched_setaffinity(0, range(os.cpu_count()))
    trees = [("head" if w is None else "head w={}".format(w), ROOT, w)
             for w in args.workers]
    worktree = None
    if args.base:
        worktree = tempfile.mkdtemp(prefix="mrcnn_base_")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "-f", "--detach", worktree,
                        args.base], check=True, stdout=subprocess.DEVNULL)
        trees.insert(0, ("base " + args.base, worktree, None))
    try:
        results = {}
        for _ in range(args.rounds):
            for name in args.cases:
                for cores in (1, 2):
                    for label, tree, workers in trees:
                        results.setdefault((name, cores, label), []).append(
                            run_child(tree, cores, name, args.images, args.batches, workers))
        print("images per second at 1024² (median of {} runs):".format(args.rounds))
        for name in args.cases:
            for label, _, _ in trees:
                one = statistics.median(results[(name, 1, label)])
                two = statistics.median(results[(name, 2, label)])
                print("  {:13} {:16} 1 core {:6.2f}   2 cores {:6.2f}   scaling {:.2f}x"
                      .format(name, label, one, two, two / one))
    finally:
        if worktree:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", worktree],
                           check=False)


if __name__ == "__main__":
    main()
