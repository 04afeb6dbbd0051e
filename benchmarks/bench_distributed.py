"""Correctness figure of the distributed training path.

One SGD step of the Mask R-CNN training model, from the same weights on the same global
batch, (a) on one device and (b) under tf.distribute.MirroredStrategy on two logical CPU
devices (IMAGES_PER_GPU = 1 image per replica, global batch 2). Prints the losses of both,
the largest difference of the updated weights, absolute and relative to the largest
update, and whether gradient clipping was active.

    python benchmarks/bench_distributed.py                 # the figure
    python benchmarks/bench_distributed.py --keras-clipping  # also: Keras's own clipnorm
    python benchmarks/bench_distributed.py --json          # one JSON line (tests use it)

Why the two runs can agree exactly: the batch is built so that every loss has the same
normaliser on both images (same number of positive anchors, of positive and negative
ROIs), so the mean of the per-replica means equals the batch mean; ROIs are given
(USE_RPN_ROIS = False) and there are few enough that DetectionTargetLayer keeps all of
them, so its random sampling only permutes them, which no loss depends on; batch norm is
frozen (TRAIN_BN = False). Logical devices must be set before TensorFlow starts, so run
this in a fresh process.
"""

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_logical_cpus(n):
    """Split the CPU into n logical devices; must run before any TensorFlow op."""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def tiny_backbone(input_image, stage5=True, train_bn=False):
    """Five stride-2 convolutions standing in for ResNet (C1..C5 at strides 2..32):
    the same training graph around it, built and traced in seconds."""
    import keras
    x, out = input_image, []
    for i, ch in enumerate((8, 8, 16, 16, 16)):
        x = keras.layers.Conv2D(ch, 3, strides=2, padding="same", activation="relu",
                                name="tiny_c{}".format(i + 1))(x)
        out.append(x)
    return out


def tiny_backbone_shapes(image_shape):
    import math
    return [[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
            for s in (4, 8, 16, 32, 64)]


def make_config(clip=0.05, learning_rate=1.0, backbone="resnet50"):
    """The test/benchmark config. learning_rate is large so that the update dwarfs the
    float32 spacing of the weights and "difference / update" measures the update."""
    from mrcnn.config import Config

    extra = {}
    if backbone == "tiny":
        extra = dict(BACKBONE=staticmethod(tiny_backbone),
                     COMPUTE_BACKBONE_SHAPE=staticmethod(tiny_backbone_shapes))

    class DistConfig(Config):
        NAME = "dist"
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1
        NUM_CLASSES = 3
        BACKBONE = "resnet50"
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        TOP_DOWN_PYRAMID_SIZE = 16
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        PRE_NMS_LIMIT = 200
        POST_NMS_ROIS_TRAINING = 32
        POST_NMS_ROIS_INFERENCE = 32
        RPN_TRAIN_ANCHORS_PER_IMAGE = 32
        TRAIN_ROIS_PER_IMAGE = 8
        ROI_POSITIVE_RATIO = 0.5
        USE_RPN_ROIS = False
        # The batch's numpy RPN targets as inputs: the graph-side ones draw a different
        # random sample in each run, and the two runs must see the same anchors.
        RPN_TARGETS_IN_GRAPH = False
        USE_MINI_MASK = False
        MAX_GT_INSTANCES = 2
        TRAIN_BN = False
        LEARNING_RATE = learning_rate
        GRADIENT_CLIP_NORM = clip

    for k, v in extra.items():
        setattr(DistConfig, k, v)
    return DistConfig()


def make_batch(config, images=2, seed=0):
    """A global batch of ``images`` synthetic images with balanced loss normalisers.

    Image k has one square object of side 20 at x = 8 + 32 k (a shift by a multiple of
    every anchor stride up to 32), 3 positive and 3 negative given ROIs. Returns (dict of
    numpy arrays keyed by the training model's input names, dict of per-image counts).
    """
    import numpy as np
    from mrcnn import data, utils
    from mrcnn.preprocess import compose_image_meta, mold_image

    rng = np.random.default_rng(seed)
    h = w = int(config.IMAGE_SHAPE[0])
    anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
    g = config.MAX_GT_INSTANCES
    out = {k: [] for k in ("input_image", "input_image_meta", "input_rpn_match",
                           "input_rpn_bbox", "input_gt_class_ids", "input_gt_boxes",
                           "input_gt_masks", "input_roi")}
    counts = {"positive_anchors": [], "used_anchors": [], "positive_rois": [],
              "negative_rois": []}
    for k in range(images):
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        y0, x0, s = 16, 8 + 32 * (k % 2), 20
        image[y0:y0 + s, x0:x0 + s] = rng.integers(0, 256, 3)
        box = np.array([y0, x0, y0 + s, x0 + s], np.float32)
        mask = np.zeros((h, w, g), bool)
        yy, xx = np.mgrid[:h, :w]
        mask[..., 0] = (yy - (y0 + s / 2)) ** 2 + (xx - (x0 + s / 2)) ** 2 <= (s / 2) ** 2
        class_ids = np.zeros([g], np.int32)
        class_ids[0] = 1 + k % (config.NUM_CLASSES - 1)
        boxes = np.zeros([g, 4], np.float32)
        boxes[0] = box
        rpn_match, rpn_bbox = data.build_rpn_targets(
            image.shape, anchors, class_ids[:1], boxes[:1], config,
            rng=np.random.default_rng(seed + 100 + k))
        # 3 ROIs jittered around the object (IoU >= 0.5), 3 away from it (IoU < 0.5).
        rois = np.array([box + [-2, -2, 2, 2], box + [2, 1, 1, 3], box + [-1, 3, 0, 2],
                         [0, 0, 12, 12], [44, 44, 60, 62], [2, 40, 14, 60]], np.float32)
        iou = utils.compute_overlaps(rois, box[None])[:, 0]
        counts["positive_anchors"].append(int((rpn_match == 1).sum()))
        counts["used_anchors"].append(int((rpn_match != 0).sum()))
        counts["positive_rois"].append(int((iou >= config.ROI_POSITIVE_IOU).sum()))
        counts["negative_rois"].append(int((iou < config.ROI_POSITIVE_IOU).sum()))
        meta = compose_image_meta(k, image.shape, image.shape, (0, 0, h, w), 1.0,
                                  np.ones([config.NUM_CLASSES], np.int32))
        out["input_image"].append(mold_image(image, config))
        out["input_image_meta"].append(meta.astype(np.float32))
        out["input_rpn_match"].append(rpn_match[:, None].astype(np.int32))
        out["input_rpn_bbox"].append(rpn_bbox.astype(np.float32))
        out["input_gt_class_ids"].append(class_ids)
        out["input_gt_boxes"].append(boxes)
        out["input_gt_masks"].append(mask)
        out["input_roi"].append(rois)
    return {k: np.stack(v) for k, v in out.items()}, counts


def one_step(strategy, config, batch, initial_weights=None, keras_clipping=False,
             per_worker=False):
    """Build under ``strategy``, set ``initial_weights`` (None: keep the random init), run
    one fit() step on ``batch`` (the global batch).

    per_worker: feed through strategy.distribute_datasets_from_function, input pipeline i
    taking images [i * n, (i + 1) * n) (multi-worker runs, as MaskRCNN.train does);
    otherwise experimental_distribute_dataset splits the global batch.
    Returns (losses dict, initial weights, weights after the step), numpy arrays.
    """
    import keras
    import tensorflow as tf
    from mrcnn.model import MaskRCNN
    from mrcnn.training import TrainingModel

    model = MaskRCNN("training", config, model_dir=os.path.join(ROOT, "logs"),
                     strategy=strategy)
    if initial_weights is not None:
        model.keras_model.set_weights(initial_weights)
    initial = [keras.ops.convert_to_numpy(w) for w in model.keras_model.weights]
    if keras_clipping:
        # Keras's own global_clipnorm: clips each replica's part before the sum.
        with strategy.scope():
            trainer = TrainingModel(model.keras_model, config)
            trainer.compile(optimizer=keras.optimizers.SGD(
                learning_rate=config.LEARNING_RATE, momentum=config.LEARNING_MOMENTUM,
                global_clipnorm=config.GRADIENT_CLIP_NORM), jit_compile=False)
    else:
        trainer = model.compile(config.LEARNING_RATE)
    if per_worker:
        per_replica = config.IMAGES_PER_GPU

        def fn(context):
            # This pipeline feeds its worker's local replicas, one batch each.
            n = per_replica * strategy.num_replicas_in_sync // context.num_input_pipelines
            lo = context.input_pipeline_id * n
            part = {k: v[lo:lo + n] for k, v in batch.items()}
            return tf.data.Dataset.from_tensors(part).unbatch().batch(per_replica).repeat()

        dataset = strategy.distribute_datasets_from_function(fn)
    else:
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        if strategy.num_replicas_in_sync > 1:
            # As MaskRCNN.train does: the global batch is split across the replicas.
            dataset = strategy.experimental_distribute_dataset(dataset)
    history = trainer.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    losses = {k: float(v[-1]) for k, v in history.history.items()}
    return losses, initial, [keras.ops.convert_to_numpy(w) for w in model.keras_model.weights]


def figures(config, initial, single, other, single_losses, other_losses):
    """Differences between two runs of the step, as a dict of numbers."""
    import numpy as np
    max_diff = max(float(np.max(np.abs(a - b), initial=0)) for a, b in zip(single, other))
    max_update = max(float(np.max(np.abs(b - a), initial=0))
                     for a, b in zip(initial, single))
    max_weight = max(float(np.max(np.abs(a), initial=0)) for a in single)
    update_norm = float(np.sqrt(sum(np.sum((b - a).astype(np.float64) ** 2)
                                    for a, b in zip(initial, single))))
    r = {
        "losses_single": single_losses,
        "losses_distributed": other_losses,
        "max_loss_rel_diff": max(
            abs(single_losses[k] - other_losses[k]) / max(abs(single_losses[k]), 1e-12)
            for k in single_losses),
        "max_abs_weight_diff": max_diff,
        "max_abs_update": max_update,
        "diff_rel_to_update": max_diff / max(max_update, 1e-30),
        "diff_rel_to_weights": max_diff / max(max_weight, 1e-30),
        "clip_norm": float(config.GRADIENT_CLIP_NORM),
        "update_norm_over_lr": update_norm / config.LEARNING_RATE,
    }
    # With momentum SGD the first update is -lr * clipped gradient: its norm / lr equals
    # the clip norm exactly when clipping was active.
    r["clipping_active"] = abs(r["update_norm_over_lr"] - r["clip_norm"]) < 1e-3 * r["clip_norm"]
    return r


def compare(keras_clipping=False, seed=0, backbone="resnet50"):
    """Single-device step vs two-replica MirroredStrategy step (this process)."""
    devices = configure_logical_cpus(2)
    import keras
    import tensorflow as tf

    t0 = time.time()
    config = make_config(backbone=backbone)
    batch, counts = make_batch(config, images=2 * config.IMAGES_PER_GPU, seed=seed)
    keras.utils.set_random_seed(seed)
    single_losses, initial, single = one_step(tf.distribute.get_strategy(), config, batch)
    mirrored = tf.distribute.MirroredStrategy(devices[:2])
    multi_losses, _, multi = one_step(mirrored, config, batch, initial_weights=initial)
    result = {"mode": "mirrored", "backbone": backbone, "devices": devices[:2],
              "replicas": mirrored.num_replicas_in_sync,
              "global_batch": int(batch["input_image"].shape[0]),
              "counts_per_image": counts,
              "balanced": all(len(set(v)) == 1 for v in counts.values())}
    result.update(figures(config, initial, single, multi, single_losses, multi_losses))
    if keras_clipping:
        _, _, kc = one_step(mirrored, config, batch, initial_weights=initial,
                            keras_clipping=True)
        kd = figures(config, initial, single, kc, single_losses, single_losses)
        result["keras_clipping_max_abs_weight_diff"] = kd["max_abs_weight_diff"]
        result["keras_clipping_diff_rel_to_update"] = kd["diff_rel_to_update"]
    result["seconds"] = time.time() - t0
    return result


# ----------------------------------------------------------------------------- multi-worker
def _free_ports(n):
    import socket
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def multiworker_worker(workdir, backbone, seed):
    """One worker of the two-process run: TF_CONFIG is set by the parent, so MaskRCNN's
    default strategy is MultiWorkerMirroredStrategy. The chief saves its weights."""
    import numpy as np
    from mrcnn.distribute import default_strategy, is_chief

    config = make_config(backbone=backbone)
    strategy = default_strategy(config)
    batch, _ = make_batch(config, images=2 * config.IMAGES_PER_GPU, seed=seed)
    with np.load(os.path.join(workdir, "initial.npz")) as f:
        initial = [f["w{}".format(i)] for i in range(len(f.files))]
    losses, _, after = one_step(strategy, config, batch, initial_weights=initial,
                                per_worker=True)
    if is_chief(strategy):
        np.savez(os.path.join(workdir, "chief.npz"), *after)
        with open(os.path.join(workdir, "chief.json"), "w") as f:
            json.dump({"losses": losses, "strategy": type(strategy).__name__,
                       "replicas": strategy.num_replicas_in_sync}, f)
    return 0


def compare_multiworker(seed=0, backbone="resnet50", timeout=1800):
    """Single-device step here vs two worker processes on 127.0.0.1 under
    MultiWorkerMirroredStrategy (TF_CONFIG), one image per worker."""
    import tempfile
    import keras
    import tensorflow as tf

    t0 = time.time()
    config = make_config(backbone=backbone)
    batch, counts = make_batch(config, images=2 * config.IMAGES_PER_GPU, seed=seed)
    keras.utils.set_random_seed(seed)
    single_losses, initial, single = one_step(tf.distribute.get_strategy(), config, batch)
    workdir = tempfile.mkdtemp(prefix="mrcnn_mw_")
    try:
        return _run_workers(workdir, config, batch, counts, initial, single,
                            single_losses, backbone, seed, timeout, t0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_workers(workdir, config, batch, counts, initial, single, single_losses, backbone,
                 seed, timeout, t0):
    """Start the two workers (TF_CONFIG on free 127.0.0.1 ports) and compare the chief's
    weights with the single-device step's."""
    import subprocess
    import tempfile
    import numpy as np
    np.savez(os.path.join(workdir, "initial.npz"),
             **{"w{}".format(i): w for i, w in enumerate(initial)})
    ports = _free_ports(2)
    cluster = {"worker": ["127.0.0.1:{}".format(p) for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                       "task": {"type": "worker", "index": index}})
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
        cmd = [sys.executable, os.path.abspath(__file__), "--mw-worker", workdir,
               "--backbone", backbone, "--seed", str(seed)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        logs.append(out)
        if p.returncode != 0:
            log = os.path.join(tempfile.gettempdir(), "mrcnn_mw_worker_failure.log")
            with open(log, "w") as f:
                f.write(out)
            raise RuntimeError("worker failed ({}), full log in {}:\n{}".format(
                p.returncode, log, out[-2000:]))
    with np.load(os.path.join(workdir, "chief.npz")) as f:
        after = [f["arr_{}".format(i)] for i in range(len(f.files))]
    with open(os.path.join(workdir, "chief.json")) as f:
        info = json.load(f)
    result = {"mode": "multiworker", "backbone": backbone, "cluster": cluster,
              "strategy": info["strategy"], "replicas": info["replicas"],
              "global_batch": int(batch["input_image"].shape[0]),
              "counts_per_image": counts,
              "balanced": all(len(set(v)) == 1 for v in counts.values())}
    result.update(figures(config, initial, single, after, single_losses, info["losses"]))
    result["seconds"] = time.time() - t0
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--keras-clipping", action="store_true",
                        help="also run two replicas with Keras's own global_clipnorm")
    parser.add_argument("--multiworker", action="store_true",
                        help="two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy "
                             "via TF_CONFIG) instead of two logical CPUs")
    parser.add_argument("--mw-worker", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", choices=["resnet50", "tiny"], default="resnet50",
                        help="tiny: five convolutions instead of ResNet-50 (fast; tests)")
    args = parser.parse_args(argv)
    if args.mw_worker:
        return multiworker_worker(args.mw_worker, args.backbone, args.seed)
    if args.multiworker:
        r = compare_multiworker(seed=args.seed, backbone=args.backbone)
    else:
        r = compare(keras_clipping=args.keras_clipping, seed=args.seed, backbone=args.backbone)
    if args.json:
        print(json.dumps(r))
        return 0
    where = ("2 logical CPU devices, MirroredStrategy" if r["mode"] == "mirrored" else
             "2 worker processes on 127.0.0.1, {}".format(r["strategy"]))
    print("One training step ({} backbone) on {} vs one device".format(r["backbone"], where))
    print("  global batch {} ({} per replica), same initial weights".format(
        r["global_batch"], r["global_batch"] // r["replicas"]))
    print("  per-image loss normalisers equal: {} {}".format(r["balanced"],
                                                           r["counts_per_image"]))
    for k in r["losses_single"]:
        print("  {:18s} one device {:.7f}   distributed {:.7f}".format(
            k, r["losses_single"][k], r["losses_distributed"][k]))
    print("  largest relative loss difference      {:.2e}".format(r["max_loss_rel_diff"]))
    print("  largest |w_dist - w_1dev|             {:.3e}".format(r["max_abs_weight_diff"]))
    print("  largest update |w_1dev - w_0|         {:.3e}".format(r["max_abs_update"]))
    print("  difference / largest update           {:.3e}   (target <= 1e-4)".format(
        r["diff_rel_to_update"]))
    print("  difference / largest weight           {:.3e}".format(r["diff_rel_to_weights"]))
    print("  gradient clipping active: {} (||update|| / lr = {:.5f}, clip {})".format(
        r["clipping_active"], r["update_norm_over_lr"], r["clip_norm"]))
    if "keras_clipping_diff_rel_to_update" in r:
        print("  with Keras's per-replica clipnorm: difference / largest update {:.3e}".format(
            r["keras_clipping_diff_rel_to_update"]))
    print("  time {:.1f} s".format(r["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
