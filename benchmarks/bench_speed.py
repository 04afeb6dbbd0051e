"""Speed benchmark of mrcnn: inference, training step, input pipeline, memory.

For each image size the model (mrcnn.model.MaskRCNN) is built with random weights and
timed through the code paths users run:

  infer     MaskRCNN.detect() end to end (mold, compiled graph, unmold) and the compiled
            graph alone (MaskRCNN._inference_fn(), the function detect() calls), seconds
            per image, median of --repeats calls after warm-up; time to first detection
            (construction + trace + first call); peak RSS.
  train     MaskRCNN.compile(lr) -> trainer.train_on_batch on a batch built by mrcnn.data
            from a synthetic Dataset (real RPN targets), seconds per batch; first step
            (trace); the forward pass alone; peak RSS.
  backbone  ResNet backbone alone (mrcnn.backbone.resnet_graph, same input size), as a
            tf.function with and without XLA: the floor inference cannot beat.
  pipeline  images per second delivered by mrcnn.data.build_dataset from a real Dataset
            (DSB2018 nuclei in ../shared/data/dsb2018 if present, else generated shapes).
  profile   (--profile) where inference time goes: cumulative sub-models of the inference
            graph (backbone+FPN, RPN, proposals, ROI align, box head, detection, mask ROI
            align, mask head) and detect()'s Python post-processing; plus measured levers
            (XLA on the backbone+FPN, static-shape trace, mixed_bfloat16, PRE_NMS_LIMIT).

Each task runs in its own subprocess (so peak RSS is per task and Keras state never
leaks between cases) unless --in-process (implied by --tiny). Output: a table, and one
JSON line per case prefixed by "BENCH_JSON ".

    python benchmarks/bench_speed.py --sizes 512 1024 --backbone resnet50 --batch 1
    python benchmarks/bench_speed.py --sizes 512 --cascade
    python benchmarks/bench_speed.py --sizes 512 1024 --profile
    python benchmarks/bench_speed.py --tiny          # seconds; used by the test suite
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from mrcnn.config import Config  # noqa: E402  (numpy only: the parent stays TF-free)

RESULT_PREFIX = "BENCH_RESULT "
JSON_PREFIX = "BENCH_JSON "
TASKS = ("infer", "train", "backbone", "pipeline")
DSB2018_DIR = os.environ.get(
    "MRCNN_DSB2018", os.path.join(ROOT, "..", "shared", "data", "dsb2018", "stage1_train"))


############################################################
#  Configurations
############################################################

def make_config(size, backbone="resnet50", batch=1, cascade=False, tiny=False,
                num_classes=91, overrides=None):
    """The benchmark Config: square ``size`` images, ``num_classes`` classes (91 as COCO),
    box head of 0 convs + 2 FCs (Matterport's, as the Model Garden comparison uses), the
    library's defaults otherwise. ``tiny`` shrinks every head for a seconds-long run.
    ``overrides``: {ATTR: value} applied last (for lever measurements)."""
    attrs = dict(
        NAME="bench", GPU_COUNT=1, IMAGES_PER_GPU=int(batch), BACKBONE=backbone,
        NUM_CLASSES=int(num_classes), IMAGE_RESIZE_MODE="square",
        IMAGE_MIN_DIM=int(size), IMAGE_MAX_DIM=int(size),
        BOX_HEAD_NUM_CONVS=0, BOX_HEAD_NUM_FCS=2, CASCADE=bool(cascade),
    )
    if tiny:
        attrs.update(
            BACKBONE=staticmethod(tiny_backbone),
            COMPUTE_BACKBONE_SHAPE=staticmethod(tiny_backbone_shapes),
            NUM_CLASSES=min(int(num_classes), 4), TOP_DOWN_PYRAMID_SIZE=32,
            FPN_CLASSIF_FC_LAYERS_SIZE=64, RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128),
            PRE_NMS_LIMIT=256, POST_NMS_ROIS_TRAINING=64, POST_NMS_ROIS_INFERENCE=32,
            TRAIN_ROIS_PER_IMAGE=16, RPN_TRAIN_ANCHORS_PER_IMAGE=32, MAX_GT_INSTANCES=4,
            DETECTION_MAX_INSTANCES=8, MINI_MASK_SHAPE=(28, 28))
    attrs.update(overrides or {})
    return type("BenchConfig", (Config,), attrs)()


def tiny_backbone(input_image, stage5=True, train_bn=False):
    """A five-conv stand-in for ResNet (strides 4, 4, 8, 16, 32) so that --tiny builds and
    traces in seconds: the test suite checks the script, not the figures."""
    from keras import layers as KL
    c1 = KL.Conv2D(8, 3, strides=4, padding="same", activation="relu",
                   name="tiny_c1")(input_image)
    c2 = KL.Conv2D(16, 3, padding="same", activation="relu", name="tiny_c2")(c1)
    c3 = KL.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="tiny_c3")(c2)
    c4 = KL.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="tiny_c4")(c3)
    c5 = KL.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="tiny_c5")(c4)
    return [c1, c2, c3, c4, c5]


def tiny_backbone_shapes(image_shape):
    """Feature-map sizes of tiny_backbone: ceil(H / stride) for strides 4..64."""
    return np.array([[int(np.ceil(image_shape[0] / s)), int(np.ceil(image_shape[1] / s))]
                     for s in (4, 8, 16, 32, 64)])


############################################################
#  Synthetic data
############################################################

def synthetic_example(size, num_classes, instances=8, seed=0):
    """A random image with ``instances`` filled rectangles/ellipses, fully determined by
    ``seed`` (numpy only: Model Garden's side uses the same objects).

    Returns image uint8 [size, size, 3], masks bool [size, size, instances], class_ids
    int32 [instances] in 1..num_classes-1.
    """
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((size, size, instances), bool)
    class_ids = np.zeros([instances], np.int32)
    for k in range(instances):
        h, w = (int(v) for v in rng.integers(size // 16, size // 3, 2))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        if rng.integers(0, 2):
            cy, cx = y + h / 2.0, x + w / 2.0
            masks[..., k] = ((yy + 0.5 - cy) / (h / 2.0)) ** 2 + \
                ((xx + 0.5 - cx) / (w / 2.0)) ** 2 <= 1.0
        else:
            masks[y:y + h, x:x + w, k] = True
        class_ids[k] = rng.integers(1, num_classes)
    return image, masks, class_ids


def _synthetic_dataset_class():
    from mrcnn import utils

    class SyntheticDataset(utils.Dataset):
        """``count`` images of synthetic_example(size, num_classes, instances, seed=i)."""

        def load_synthetic(self, count, size, num_classes, instances=8):
            for c in range(1, num_classes):
                self.add_class("synthetic", c, "class{}".format(c))
            for i in range(count):
                self.add_image("synthetic", image_id=i, path=None, height=size, width=size,
                               instances=instances, seed=i)
            self._num_classes_total = num_classes

        def _example(self, image_id):
            info = self.image_info[image_id]
            return synthetic_example(info["height"], self._num_classes_total,
                                     info["instances"], info["seed"])

        def load_image(self, image_id):
            return self._example(image_id)[0]

        def load_mask(self, image_id):
            _, masks, class_ids = self._example(image_id)
            return masks, class_ids

    return SyntheticDataset


def synthetic_training_batch(config, seed=0):
    """One training batch (dict of numpy arrays keyed by the training input names) built by
    mrcnn.data.build_dataset from a synthetic Dataset (real GT: the graph's RPN targets)."""
    from mrcnn import data
    ds = _synthetic_dataset_class()()
    ds.load_synthetic(config.BATCH_SIZE, int(config.IMAGE_SHAPE[0]), config.NUM_CLASSES,
                      instances=min(8, config.MAX_GT_INSTANCES))
    ds.prepare()
    pipeline = data.build_dataset(ds, config, shuffle=False, batch_size=config.BATCH_SIZE,
                                  seed=seed, repeat=False)
    batch = next(iter(pipeline))
    return {k: v.numpy() for k, v in batch.items()}


def random_images(config, count, seed=0):
    """``count`` random uint8 images of the configured square size."""
    rng = np.random.default_rng(seed)
    size = int(config.IMAGE_MAX_DIM)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


############################################################
#  Timing helpers
############################################################

def peak_rss_mb():
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(fn, repeats, warmup=1, cpu=None):
    """Call fn() ``warmup`` times, then ``repeats`` times; return the wall seconds of the
    timed calls. ``cpu``: a list that receives each call's process CPU seconds (all
    threads), a load-independent measure of work on a shared machine."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return out


def _summary(samples, per=1):
    """Median and min of samples divided by ``per`` (e.g. the batch size)."""
    return {"median": statistics.median(samples) / per, "min": min(samples) / per,
            "n": len(samples)}


def _model_dir():
    return os.path.join(tempfile.gettempdir(), "mrcnn_bench_logs")


############################################################
#  Tasks (each returns a flat dict of figures)
############################################################

def task_infer(case):
    """Build the inference model, time first detection, detect() and the graph alone."""
    import tensorflow as tf
    from mrcnn.model import MaskRCNN
    config = make_config(**case["config"])
    bs = config.BATCH_SIZE
    images = random_images(config, bs)
    t0 = time.perf_counter()
    model = MaskRCNN("inference", config, _model_dir())
    build_s = time.perf_counter() - t0
    first = model.detect(images)
    first_s = time.perf_counter() - t0

    fn = model._inference_fn()
    molded, metas, _ = model.mold_inputs(images)
    molded, metas = tf.constant(molded), tf.constant(metas)

    def graph_call():
        d, m = fn(molded, metas)
        return d.numpy(), m.numpy()

    # Graph and detect() calls alternate, so load changes hit both alike.
    r = case["repeats"]
    graph_call()
    graph, graph_cpu, detect, detect_cpu = [], [], [], []
    for _ in range(r):
        graph += time_calls(graph_call, 1, warmup=0, cpu=graph_cpu)
        detect += time_calls(lambda: model.detect(images), 1, warmup=0, cpu=detect_cpu)
    return {
        "infer_graph_cpu_s": statistics.median(graph_cpu) / bs,
        "infer_detect_s": _summary(detect, bs)["median"],
        "infer_detect_cpu_s": statistics.median(detect_cpu) / bs,
        "infer_graph_s": _summary(graph, bs)["median"],
        "infer_graph_min_s": _summary(graph, bs)["min"],
        "time_to_first_detection_s": first_s,
        "infer_build_s": build_s,
        "infer_traces": _trace_count(fn),
        # Detections kept (score >= DETECTION_MIN_CONFIDENCE) per image: the mask head
        # runs on the batch's largest count.
        "infer_detections": statistics.mean(len(r["class_ids"]) for r in first),
        "rss_infer_mb": peak_rss_mb(),
        "infer_graph_samples": [s / bs for s in graph],
    }


def _trace_count(fn):
    try:
        return int(fn.experimental_get_tracing_count())
    except Exception:  # pragma: no cover - older TF
        return -1


def task_train(case):
    """Build the training model, compile, time train_on_batch on a synthetic batch."""
    import tensorflow as tf
    from mrcnn.model import MaskRCNN
    config = make_config(**case["config"])
    batch = synthetic_training_batch(config)
    t0 = time.perf_counter()
    model = MaskRCNN("training", config, _model_dir())
    trainer = model.compile(config.LEARNING_RATE)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    first = trainer.train_on_batch(batch, return_dict=True)
    first_step_s = time.perf_counter() - t1
    r = case["repeats"]
    steps_cpu = []
    steps = time_calls(lambda: trainer.train_on_batch(batch, return_dict=True), r, warmup=1,
                       cpu=steps_cpu)

    # Forward pass alone (losses, training=True, no gradient): the rest of the step is the
    # backward pass and the optimizer.
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    forward_fn = tf.function(lambda x: trainer._compute_losses(x, training=True)[0])
    forward = time_calls(lambda: forward_fn(tensors).numpy(), max(2, r // 2), warmup=1)
    return {
        "train_step_s": _summary(steps)["median"],
        "train_step_cpu_s": statistics.median(steps_cpu),
        "train_step_min_s": _summary(steps)["min"],
        "train_forward_s": _summary(forward)["median"],
        "train_first_step_s": first_step_s,
        "train_build_s": build_s,
        "train_loss_finite": bool(np.isfinite(float(first["loss"]))),
        "rss_train_mb": peak_rss_mb(),
        "train_step_samples": steps,
    }


def task_backbone(case):
    """ResNet backbone alone (C2..C5), plain TensorFlow convolutions (the floor the issue
    names), tf.function with and without XLA; and as the library builds it (its 3x3 convs
    by Winograd where CONV3X3_WINOGRAD and the thresholds select them)."""
    import keras
    import tensorflow as tf
    from mrcnn.backbone import resnet_graph
    from mrcnn.winograd import resolve_winograd
    config = make_config(**case["config"])
    size = int(config.IMAGE_MAX_DIM)
    bs = config.BATCH_SIZE

    def build(winograd):
        inp = keras.Input(shape=[size, size, 3])
        if callable(config.BACKBONE):
            _, C2, C3, C4, C5 = config.BACKBONE(inp, stage5=True, train_bn=False)
        else:
            _, C2, C3, C4, C5 = resnet_graph(inp, config.BACKBONE, stage5=True,
                                             train_bn=False, winograd=winograd)
        return keras.Model(inp, [C2, C3, C4, C5])

    plain = build(False)
    library = build(resolve_winograd(config.CONV3X3_WINOGRAD))
    x = tf.constant(np.random.default_rng(0).normal(size=(bs, size, size, 3)).astype(
        np.float32))
    out = {}
    for key, net, jit in (("backbone_s", plain, False), ("backbone_xla_s", plain, True),
                          ("backbone_library_s", library, False)):
        fn = tf.function(lambda t, net=net: net(t, training=False)[-1], jit_compile=jit)
        t = time.perf_counter()
        fn(x).numpy()
        out[key.replace("_s", "_first_s")] = time.perf_counter() - t
        cpu = []
        out[key] = _summary(time_calls(lambda: fn(x).numpy(), case["repeats"], cpu=cpu),
                            bs)["median"]
        out[key.replace("_s", "_cpu_s")] = statistics.median(cpu) / bs
    return out


def pipeline_dataset(config, tiny=False):
    """(name, prepared Dataset, config for it): DSB2018 nuclei if the data is there (and not
    tiny), else generated shapes; the config is ``config`` with the dataset's classes."""
    if not tiny and os.path.isdir(DSB2018_DIR):
        from mrcnn.datasets import NucleusDataset, list_nucleus_ids
        ds = NucleusDataset()
        ds.load_nucleus(DSB2018_DIR, subset_ids=list_nucleus_ids(DSB2018_DIR)[:64])
        name = "dsb2018 nuclei (64 images)"
    else:
        sys.path.insert(0, os.path.join(ROOT, "samples"))
        from shapes import ShapesDataset
        ds = ShapesDataset()
        count = 8 if tiny else 64
        ds.load_shapes(count, int(config.IMAGE_MAX_DIM), int(config.IMAGE_MAX_DIM), seed=0)
        name = "shapes ({} images)".format(count)
    ds.prepare()
    return name, ds


def task_pipeline(case):
    """Images per second from mrcnn.data.build_dataset on a real Dataset."""
    from mrcnn import data
    name, ds = pipeline_dataset(make_config(**case["config"]), tiny=case["config"]["tiny"])
    cfg = dict(case["config"], num_classes=ds.num_classes)
    config = make_config(**cfg)
    pipeline = data.build_dataset(ds, config, shuffle=True, batch_size=config.BATCH_SIZE,
                                  seed=0, on_error="skip")
    it = iter(pipeline)
    next(it)  # start-up (thread pool, first loads) is not throughput
    n_batches = 3 if case["config"]["tiny"] else max(8, 16 // config.BATCH_SIZE)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    dt = time.perf_counter() - t
    return {"pipeline_images_per_s": n_batches * config.BATCH_SIZE / dt,
            "pipeline_dataset": name}


############################################################
#  Profile: where inference time goes, and levers
############################################################

PROFILE_STAGES = (
    # (stage name, output layer names of the cumulative prefix sub-model)
    ("backbone_fpn", ["fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6"]),
    ("rpn_heads", ["rpn_class", "rpn_bbox"]),
    ("proposals", ["ROI"]),
    ("roi_align_box", ["roi_align_classifier"]),
    ("box_head", ["mrcnn_class", "mrcnn_bbox"]),
    ("detection", ["mrcnn_detection"]),
    ("roi_align_mask", ["roi_align_mask"]),
    ("mask_head", ["mrcnn_mask_slots"]),
)


def _interleaved(fns, rounds):
    """Time every callable of ``fns`` ({name: fn}) once per round, round-robin, so that
    load changes on a shared machine hit all of them alike. Each is called once first
    (trace, warm-up). Returns {name: (median wall s, min wall s, median CPU s)}."""
    for fn in fns.values():
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            wall[k] += time_calls(fn, 1, warmup=0, cpu=cpu[k])
    return {k: (statistics.median(wall[k]), min(wall[k]), statistics.median(cpu[k]))
            for k in fns}


def _numpy_all(out):
    if isinstance(out, dict):
        out = list(out.values())
    out = out if isinstance(out, (list, tuple)) else [out]
    return [o.numpy() for o in out]


def _head_fns(config, rounds):
    """Heads alone. Mask head on N ROI-aligned inputs: what running it on fewer ROIs would
    save (inference: all DETECTION_MAX_INSTANCES slots vs the valid detections; training:
    all TRAIN_ROIS_PER_IMAGE ROIs vs the positive ones). Box head on the proposals. The
    RPN's shared conv at 512 (Matterport) vs 256 channels over the pyramid."""
    import keras
    import tensorflow as tf
    from mrcnn.roi_heads import box_head_graph, mask_head_graph
    c = config.TOP_DOWN_PYRAMID_SIZE
    mp, bp = config.MASK_POOL_SIZE, config.POOL_SIZE
    mask_in = keras.Input([None, mp, mp, c])
    mask_net = keras.Model(mask_in, mask_head_graph(mask_in, config, train_bn=False))
    box_in = keras.Input([None, bp, bp, c])
    box_net = keras.Model(box_in, box_head_graph(box_in, config, train_bn=False)[1])
    rng = np.random.default_rng(0)

    def feats(n, pool):
        return tf.constant(rng.normal(size=(1, n, pool, pool, c)).astype(np.float32))

    infer = tf.function(lambda x: mask_net(x, training=False))
    box = tf.function(lambda x: box_net(x, training=False))

    @tf.function
    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(mask_net(x, training=True))
        return tape.gradient(loss, mask_net.trainable_variables)[0]

    d = config.DETECTION_MAX_INSTANCES
    t = config.TRAIN_ROIS_PER_IMAGE
    pos = max(1, int(round(t * config.ROI_POSITIVE_RATIO)))
    few = max(1, d // 5)
    inputs = {"mask_infer_{}".format(d): (infer, feats(d, mp)),
              "mask_infer_{}".format(few): (infer, feats(few, mp)),
              "mask_train_{}".format(t): (train, feats(t, mp)),
              "mask_train_{}".format(pos): (train, feats(pos, mp)),
              "box_infer_{}".format(config.POST_NMS_ROIS_INFERENCE):
                  (box, feats(config.POST_NMS_ROIS_INFERENCE, bp))}
    fns = {k: (lambda f=f, x=x: _numpy_all(f(x))) for k, (f, x) in inputs.items()}

    # The RPN's shared 3x3 conv (Matterport: 512 channels) over P2..P6 against a
    # 256-channel one (Model Garden's), each followed by the 1x1 anchor-score conv.
    size = int(config.IMAGE_MAX_DIM)
    pyramid = [tf.constant(rng.normal(size=(config.BATCH_SIZE, -(-size // s), -(-size // s),
                                            c)).astype(np.float32))
               for s in config.BACKBONE_STRIDES]
    for ch in (512, 256):
        conv = keras.layers.Conv2D(ch, 3, padding="same", activation="relu")
        score = keras.layers.Conv2D(2 * len(config.RPN_ANCHOR_RATIOS), 1)
        f = tf.function(lambda xs, conv=conv, score=score: [score(conv(x)) for x in xs])
        fns["rpn_conv{}".format(ch)] = lambda f=f: _numpy_all(f(pyramid))
    return {"heads_" + k: v for k, v in _interleaved(fns, rounds).items()}


def task_profile(case):
    """Where inference time goes (cumulative sub-models of the inference graph, timed
    round-robin), detect()'s Python post-processing, and graph-level levers."""
    import keras
    import tensorflow as tf
    from mrcnn.preprocess import unmold_detections
    from mrcnn.model import MaskRCNN
    config = make_config(**case["config"])
    if config.CASCADE:
        raise ValueError("profile: run it on the plain head (the cascade reuses layers)")
    rounds = case["repeats"]
    model = MaskRCNN("inference", config, _model_dir())
    km = model.keras_model
    images = random_images(config, config.BATCH_SIZE)
    molded, metas, windows = model.mold_inputs(images)
    x = (tf.constant(molded), tf.constant(metas))

    fns = {}
    for stage, names in PROFILE_STAGES:
        sub = keras.Model(km.inputs, [km.get_layer(n).output for n in names])
        f = tf.function(lambda a, b, sub=sub: sub([a, b], training=False))
        fns[stage] = lambda f=f: _numpy_all(f(*x))
    # The library's compiled function (dynamic H, W signature): the full graph.
    lib = model._inference_fn()
    fns["library_graph"] = lambda: _numpy_all(lib(*x))
    # Lever: the same graph traced for the concrete input shape (static H, W).
    static_fn = tf.function(lambda a, b: [km([a, b], training=False)[k]
                                          for k in ("detections", "mrcnn_mask")])
    fns["static_shape_graph"] = lambda: _numpy_all(static_fn(*x))
    # Lever: XLA on the backbone+FPN sub-call (image in, P2..P6 out).
    bb = keras.Model(km.inputs[0], [km.get_layer(n).output for n in PROFILE_STAGES[0][1]])
    bb_xla = tf.function(lambda a: bb(a, training=False), jit_compile=True)
    fns["backbone_fpn_xla"] = lambda: _numpy_all(bb_xla(x[0]))
    timed = _interleaved(fns, rounds)

    out = {}
    prev_wall = prev_cpu = 0.0
    for stage, _ in PROFILE_STAGES:
        wall, wall_min, cpu = timed[stage]
        out["profile_" + stage + "_s"] = wall - prev_wall
        out["profile_" + stage + "_cpu_s"] = cpu - prev_cpu
        out["profile_cum_" + stage + "_s"] = wall
        out["profile_cum_" + stage + "_cpu_s"] = cpu
        prev_wall, prev_cpu = wall, cpu
    for key in ("library_graph", "static_shape_graph", "backbone_fpn_xla"):
        out["profile_" + key + "_s"] = timed[key][0]
        out["profile_" + key + "_cpu_s"] = timed[key][2]
    for key, (wall, _, cpu) in _head_fns(config, rounds).items():
        out["profile_" + key + "_s"] = wall
        out["profile_" + key + "_cpu_s"] = cpu

    # detect()'s Python post-processing for a full set of detections: unmold_detections on
    # DETECTION_MAX_INSTANCES synthetic boxes (random weights give no detection above
    # DETECTION_MIN_CONFIDENCE, so the end-to-end figure does not show this cost).
    d = config.DETECTION_MAX_INSTANCES
    rng = np.random.default_rng(0)
    y1x1 = rng.uniform(0.0, 0.7, (d, 2))
    hw = rng.uniform(0.05, 0.3, (d, 2))
    dets = np.concatenate([y1x1, y1x1 + hw, rng.integers(1, config.NUM_CLASSES, (d, 1)),
                           rng.uniform(0.7, 1.0, (d, 1))], axis=1).astype(np.float32)
    masks = rng.uniform(size=(d,) + tuple(config.MASK_SHAPE) + (config.NUM_CLASSES,)).astype(
        np.float32)
    out["profile_unmold_full_s"] = statistics.median(time_calls(
        lambda: unmold_detections(dets, masks, images[0].shape, molded[0].shape, windows[0]),
        rounds, warmup=1))
    out["profile_mold_s"] = statistics.median(
        time_calls(lambda: model.mold_inputs(images), rounds, warmup=1))
    return out


TASK_FNS = {"infer": task_infer, "train": task_train, "backbone": task_backbone,
            "pipeline": task_pipeline, "profile": task_profile}


############################################################
#  Running tasks (in process or in a subprocess)
############################################################

def run_task(task, case, in_process=False, timeout=3600):
    """Run one task for one case; return its dict of figures (or {"error": ...})."""
    if in_process:
        return TASK_FNS[task](case)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", task,
           "--case", json.dumps(case)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or "").strip().splitlines()[-15:]
    return {"error": "task {} failed (exit {}): {}".format(task, proc.returncode,
                                                           "\n".join(tail))}


def make_case(size, backbone="resnet50", batch=1, cascade=False, tiny=False, repeats=5,
              overrides=None, num_classes=91):
    """The JSON-able description of one benchmark case."""
    return {"config": {"size": int(size), "backbone": backbone, "batch": int(batch),
                       "cascade": bool(cascade), "tiny": bool(tiny),
                       "num_classes": int(num_classes), "overrides": overrides or {}},
            "repeats": int(repeats)}


def parse_overrides(items):
    """["ATTR=VALUE", ...] (the --set option) -> {ATTR: value}. Values are Python
    literals, or plain strings when they do not parse (MIXED_PRECISION=mixed_bfloat16)."""
    import ast
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isupper():
            raise SystemExit("--set {!r}: expected ATTR=VALUE with an uppercase Config "
                             "attribute".format(item))
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def machine_info():
    """CPU model and core count (lscpu's 'Model name'), Python and library versions."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except Exception:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def run_case(case, tasks, in_process=False):
    """All ``tasks`` of one case, merged into one result dict with derived ratios."""
    res = {"backbone": "tiny" if case["config"]["tiny"] else case["config"]["backbone"],
           "size": case["config"]["size"],
           "batch": case["config"]["batch"], "cascade": case["config"]["cascade"],
           "tiny": case["config"]["tiny"], "repeats": case["repeats"]}
    errors = []
    for task in tasks:
        out = run_task(task, case, in_process=in_process)
        if "error" in out:
            errors.append(out["error"])
        else:
            res.update(out)
    if errors:
        res["errors"] = errors
    if "infer_graph_s" in res and "backbone_xla_s" in res:
        res["infer_over_backbone_xla"] = res["infer_graph_s"] / res["backbone_xla_s"]
    if "pipeline_images_per_s" in res and "train_step_s" in res:
        consumed = res["batch"] / res["train_step_s"]  # images/s the train step takes
        res["pipeline_over_train"] = res["pipeline_images_per_s"] / consumed
    return res


TABLE_COLUMNS = (
    ("size", "size", "{}"), ("batch", "bs", "{}"), ("cascade", "cascade", "{}"),
    ("infer_graph_s", "graph s/img", "{:.3f}"), ("infer_detect_s", "detect s/img", "{:.3f}"),
    ("time_to_first_detection_s", "1st det s", "{:.1f}"),
    ("train_step_s", "train s/batch", "{:.3f}"), ("train_forward_s", "fwd s", "{:.3f}"),
    ("backbone_s", "R50 s", "{:.3f}"), ("backbone_xla_s", "R50 XLA s", "{:.3f}"),
    ("backbone_library_s", "R50 lib s", "{:.3f}"),
    ("pipeline_images_per_s", "pipe img/s", "{:.1f}"),
    ("rss_infer_mb", "RSS inf MB", "{:.0f}"), ("rss_train_mb", "RSS train MB", "{:.0f}"),
)


def format_table(results, columns=TABLE_COLUMNS):
    """Plain-text table of result dicts (missing values shown as '-')."""
    head = [c[1] for c in columns]
    rows = [[(fmt.format(r[k]) if k in r else "-") for k, _, fmt in columns] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--backbone", default="resnet50",
                   choices=["resnet50", "resnet101", "resnext101"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--cascade", action="store_true", help="Cascade Mask R-CNN head")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per figure after warm-up (default 5; 2 with --tiny)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny 128 px config with small heads: runs in seconds (tests)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS),
                   choices=list(TASKS) + ["profile"])
    p.add_argument("--profile", action="store_true", help="add the profile task")
    p.add_argument("--set", nargs="*", default=[], metavar="ATTR=VALUE",
                   help="config overrides (Python literals), e.g. PRE_NMS_LIMIT=2000")
    p.add_argument("--in-process", action="store_true",
                   help="run tasks in this process (default: one subprocess per task)")
    p.add_argument("--json-out", help="also write the results (a JSON list) here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = TASK_FNS[args.worker](json.loads(args.case))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    overrides = parse_overrides(args.set)
    repeats = args.repeats or (2 if args.tiny else 5)
    if repeats < 1:
        p.error("--repeats must be >= 1")
    sizes = [128] if args.tiny and args.sizes == p.get_default("sizes") else args.sizes
    tasks = list(args.tasks) + (["profile"] if args.profile and "profile" not in args.tasks
                                else [])
    in_process = args.in_process or args.tiny
    info = machine_info()
    print("machine: {} ({} cores), python {}".format(info["cpu"], info["cores"],
                                                     info["python"]), flush=True)
    results = []
    for size in sizes:
        case = make_case(size, args.backbone, args.batch, args.cascade, args.tiny, repeats,
                         overrides)
        res = run_case(case, tasks, in_process=in_process)
        res["machine"] = info
        res["overrides"] = overrides
        results.append(res)
        print(JSON_PREFIX + json.dumps(res), flush=True)
    print()
    print(format_table(results))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any("errors" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
