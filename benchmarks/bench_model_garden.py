"""Side-by-side speed of mrcnn and TensorFlow Model Garden's Mask R-CNN.

Model Garden (tf-models-official) runs in its own virtual environment,
benchmarks/.venv-tfm, created on first use with ``python -m venv`` and ``pip install
tf-models-official==TFM_VERSION`` (from PyPI; its TensorFlow comes along). Both sides do
the same cases: ResNet-50-FPN, random weights, float32, no XLA, box head of 0 convs + 2
FCs, 91 classes, batch 1, square images. Model Garden runs experiment
``maskrcnn_resnetfpn_coco`` (official.core.exp_factory.get_exp_config) with those changes;
mrcnn runs benchmarks/bench_speed.py's cases. The two are alternated case by case
(ours, theirs, ours, theirs ...) in one run so both see the same machine load, and the
ratio ours/theirs is printed per figure:

  infer  seconds per image in the compiled graph: ours MaskRCNN._inference_fn() (the
         function detect() calls), theirs the model's call(training=False) in a
         tf.function, as their export module runs it; plus ours detect() end to end and
         theirs DetectionModule.serve (their export path, uint8 image in).
  train  seconds per training step, batch 1: ours trainer.train_on_batch
         (MaskRCNN.compile), theirs MaskRCNNTask.train_step in a tf.function with the
         task's optimizer; synthetic ground truth (the same 8 objects per image on both
         sides) passed through each library's own target code.

    python benchmarks/bench_model_garden.py --sizes 512 1024 --rounds 2
    python benchmarks/bench_model_garden.py --setup-only      # create the venv

Machine load changes quickly on a shared machine: compare ratios, not absolute seconds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.environ.get("MRCNN_TFM_VENV", os.path.join(HERE, ".venv-tfm"))
# The newest tf-models-official; it pins tensorflow~=2.20.0 (and tensorflow-text 2.20),
# which installs on Python 3.11 here next to the main environment's TensorFlow 2.21.
TFM_VERSION = "2.20.0"
RESULT_PREFIX = "BENCH_RESULT "
JSON_PREFIX = "BENCH_JSON "


############################################################
#  The virtual environment
############################################################

def venv_python(venv=VENV):
    return os.path.join(venv, "bin", "python")


def venv_ready(venv=VENV):
    """True when the venv exists and imports official.vision."""
    py = venv_python(venv)
    if not os.path.exists(py):
        return False
    check = subprocess.run([py, "-c", "import official.vision, tensorflow"],
                           capture_output=True, text=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return check.returncode == 0


def ensure_venv(venv=VENV, version=TFM_VERSION, quiet=False):
    """Create the Model Garden venv (python -m venv + pip install) unless it is ready."""
    if venv_ready(venv):
        return venv_python(venv)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    log("creating {} with tf-models-official=={} (several minutes) ...".format(venv, version))
    if not os.path.exists(venv_python(venv)):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [venv_python(venv), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["tf-models-official=={}".format(version)], check=True)
    if not venv_ready(venv):
        raise RuntimeError("{}: tf-models-official installed but 'import official.vision' "
                           "fails; run {} -c 'import official.vision' to see why".format(
                               venv, venv_python(venv)))
    return venv_python(venv)


############################################################
#  Model Garden side (runs inside the venv)
############################################################

def tfm_experiment(size, batch=1, num_classes=91):
    """maskrcnn_resnetfpn_coco set to the benchmark's work: random init, float32, no XLA,
    box head 0 convs + 2 FCs, ``num_classes``, square ``size`` input, no augmentation."""
    from official.core import exp_factory
    import official.vision  # noqa: F401  (registers the experiments)
    cfg = exp_factory.get_exp_config("maskrcnn_resnetfpn_coco")
    cfg.task.init_checkpoint = None
    cfg.task.model.input_size = [size, size, 3]
    cfg.task.model.num_classes = num_classes
    cfg.task.model.detection_head.num_convs = 0
    cfg.task.model.detection_head.num_fcs = 2
    # One replica on CPU: plain batch norm (sync BN needs a cross-replica context).
    cfg.task.model.norm_activation.use_sync_bn = False
    cfg.runtime.mixed_precision_dtype = "float32"
    cfg.runtime.enable_xla = False
    cfg.runtime.distribution_strategy = "one_device"
    cfg.task.train_data.global_batch_size = batch
    cfg.task.train_data.parser.aug_rand_hflip = False
    cfg.task.train_data.parser.aug_scale_min = 1.0
    cfg.task.train_data.parser.aug_scale_max = 1.0
    return cfg


def _tfm_task_and_model(cfg):
    import tf_keras
    from official.core import task_factory
    tf_keras.mixed_precision.set_global_policy("float32")
    task = task_factory.get_task(cfg.task)
    model = task.build_model()
    return task, model


def _tfm_anchors(cfg, size):
    from official.vision.ops import anchor
    m = cfg.task.model
    gen = anchor.build_anchor_generator(
        min_level=m.min_level, max_level=m.max_level, num_scales=m.anchor.num_scales,
        aspect_ratios=m.anchor.aspect_ratios, anchor_size=m.anchor.anchor_size)
    return gen(image_size=(size, size))


def tfm_infer(case):
    import numpy as np
    import tensorflow as tf
    from official.vision.serving import detection
    sys.path.insert(0, HERE)
    from bench_speed import peak_rss_mb, time_calls

    size, bs = case["config"]["size"], case["config"]["batch"]
    t0 = time.perf_counter()
    cfg = tfm_experiment(size, bs, case["config"]["num_classes"])
    task, model = _tfm_task_and_model(cfg)
    build_s = time.perf_counter() - t0
    anchors = {k: tf.expand_dims(v, 0) for k, v in _tfm_anchors(cfg, size).items()}
    anchors = {k: tf.tile(v, [bs, 1, 1, 1]) for k, v in anchors.items()}
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
    # Their preprocessing: (image - mean) / std per channel, as the parser does.
    images = tf.constant((raw.astype(np.float32) / 255.0 - [0.485, 0.456, 0.406]) /
                         [0.229, 0.224, 0.225], tf.float32)
    image_shape = tf.constant([[size, size]] * bs, tf.float32)

    @tf.function
    def graph(images, image_shape, anchors):
        out = model(images, image_shape=image_shape, anchor_boxes=anchors, training=False)
        return out["detection_boxes"], out["detection_masks"]

    def graph_call():
        return [t.numpy() for t in graph(images, image_shape, anchors)]

    graph_call()
    first_s = time.perf_counter() - t0
    r = case["repeats"]
    graph_cpu = []
    graph_samples = time_calls(graph_call, r, warmup=1, cpu=graph_cpu)

    final = model(images, image_shape=image_shape, anchor_boxes=anchors, training=False)
    # Detections above their score threshold; the mask head ran on all
    # max_num_detections slots whatever this count.
    out = {"infer_detections": float(np.mean(final["num_detections"].numpy()))}
    if case.get("serve", True):
        # Their export path: DetectionModule.serve on uint8 images (preprocess + model).
        module = detection.DetectionModule(params=cfg, batch_size=bs,
                                           input_image_size=[size, size], model=model)
        serve = tf.function(module.serve)
        raw_t = tf.constant(raw)
        serve_samples = time_calls(lambda: [v.numpy() for v in serve(raw_t).values()],
                                   r, warmup=1)
        out["infer_serve_s"] = statistics.median(serve_samples) / bs
    out.update({
        "infer_graph_s": statistics.median(graph_samples) / bs,
        "infer_graph_cpu_s": statistics.median(graph_cpu) / bs,
        "infer_graph_min_s": min(graph_samples) / bs,
        "time_to_first_detection_s": first_s,
        "infer_build_s": build_s,
        "rss_infer_mb": peak_rss_mb(),
        "infer_graph_samples": [s / bs for s in graph_samples],
    })
    return out


def _tfm_training_batch(cfg, size, bs):
    """One batch through Model Garden's own Parser (anchor targets, mask crops), from
    the same synthetic objects as bench_speed's SyntheticDataset."""
    import numpy as np
    import tensorflow as tf
    from official.vision.dataloaders import maskrcnn_input
    sys.path.insert(0, HERE)
    from bench_speed import synthetic_example

    m, p = cfg.task.model, cfg.task.train_data.parser
    parser = maskrcnn_input.Parser(
        output_size=m.input_size[:2], min_level=m.min_level, max_level=m.max_level,
        num_scales=m.anchor.num_scales, aspect_ratios=m.anchor.aspect_ratios,
        anchor_size=m.anchor.anchor_size, rpn_match_threshold=p.rpn_match_threshold,
        rpn_unmatched_threshold=p.rpn_unmatched_threshold,
        rpn_batch_size_per_im=p.rpn_batch_size_per_im, rpn_fg_fraction=p.rpn_fg_fraction,
        aug_rand_hflip=False, aug_scale_min=1.0, aug_scale_max=1.0,
        skip_crowd_during_training=True, max_num_instances=p.max_num_instances,
        include_mask=True, mask_crop_size=p.mask_crop_size)
    parse = parser.parse_fn(is_training=True)
    examples = []
    for i in range(bs):
        image, masks, class_ids = synthetic_example(size, m.num_classes, seed=i)
        ys, xs = np.any(masks, axis=1), np.any(masks, axis=0)
        boxes = []
        for k in range(masks.shape[-1]):
            y = np.where(ys[:, k])[0]
            x = np.where(xs[:, k])[0]
            boxes.append([y[0], x[0], y[-1] + 1, x[-1] + 1])
        boxes = np.asarray(boxes, np.float32) / size
        n = len(class_ids)
        examples.append(parse({
            "image": tf.constant(image),
            "source_id": tf.constant(str(i)),
            "height": tf.constant(size), "width": tf.constant(size),
            "groundtruth_classes": tf.constant(class_ids, tf.int64),
            "groundtruth_is_crowd": tf.zeros([n], tf.bool),
            "groundtruth_area": tf.constant(masks.sum(axis=(0, 1)), tf.float32),
            "groundtruth_boxes": tf.constant(boxes),
            "groundtruth_instance_masks": tf.constant(
                np.transpose(masks, (2, 0, 1)).astype(np.float32)),
        }))
    images = tf.stack([e[0] for e in examples])
    labels = tf.nest.map_structure(lambda *t: tf.stack(t), *[e[1] for e in examples])
    return images, labels


def tfm_train(case):
    import tensorflow as tf
    sys.path.insert(0, HERE)
    from bench_speed import peak_rss_mb, time_calls

    size, bs = case["config"]["size"], case["config"]["batch"]
    cfg = tfm_experiment(size, bs, case["config"]["num_classes"])
    inputs = _tfm_training_batch(cfg, size, bs)
    t0 = time.perf_counter()
    task, model = _tfm_task_and_model(cfg)
    optimizer = task.create_optimizer(cfg.trainer.optimizer_config, cfg.runtime)
    build_s = time.perf_counter() - t0
    step = tf.function(lambda x: task.train_step(x, model, optimizer))
    t1 = time.perf_counter()
    logs = step(inputs)
    first_step_s = time.perf_counter() - t1
    loss = float(list(logs.values())[0])
    r = case["repeats"]
    cpu = []
    samples = time_calls(lambda: [v.numpy() for v in step(inputs).values()], r, warmup=1,
                         cpu=cpu)
    return {
        "train_step_s": statistics.median(samples),
        "train_step_cpu_s": statistics.median(cpu),
        "train_step_min_s": min(samples),
        "train_first_step_s": first_step_s,
        "train_build_s": build_s,
        "train_loss_finite": bool(loss == loss and abs(loss) != float("inf")),
        "rss_train_mb": peak_rss_mb(),
        "train_step_samples": samples,
    }


TFM_TASKS = {"infer": tfm_infer, "train": tfm_train}


def run_tfm_task(task, case, timeout=3600):
    """Run a Model Garden task in the venv; return its dict (or {"error": ...})."""
    cmd = [venv_python(), os.path.abspath(__file__), "--tfm-worker", task,
           "--case", json.dumps(case)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or "").strip().splitlines()[-15:]
    return {"error": "Model Garden task {} failed (exit {}): {}".format(
        task, proc.returncode, "\n".join(tail))}


############################################################
#  Side by side
############################################################

FIGURES = (("infer", "infer_graph_s"), ("infer", "infer_graph_cpu_s"),
           ("train", "train_step_s"), ("train", "train_step_cpu_s"))


def compare(sizes, rounds=1, repeats=5, batch=1, tasks=("infer", "train"), log=print,
            serve=True, overrides=None):
    """Alternate ours and theirs for every (size, task), ``rounds`` times. Returns one
    result dict per size with both sides' figures (median over rounds) and ratios.
    ``overrides``: {Config attribute: value} for our side only."""
    sys.path.insert(0, HERE)
    import bench_speed
    results = []
    for size in sizes:
        case = bench_speed.make_case(size, "resnet50", batch, False, False, repeats,
                                     overrides=overrides)
        case["serve"] = bool(serve)
        ours_runs, theirs_runs = {t: [] for t in tasks}, {t: [] for t in tasks}
        for rnd in range(rounds):
            for task in tasks:
                for side, runs, fn in (("ours", ours_runs, bench_speed.run_task),
                                       ("theirs", theirs_runs, run_tfm_task)):
                    t = time.perf_counter()
                    out = fn(task, case)
                    runs[task].append(out)
                    log("size {} round {} {:5} {:6} {:6.0f} s wall: {}".format(
                        size, rnd + 1, task, side, time.perf_counter() - t,
                        out.get("error") or _brief(out)))
        results.append(_merge(size, batch, ours_runs, theirs_runs))
    return results


def _brief(out):
    keys = ("infer_graph_s", "infer_graph_cpu_s", "infer_detect_s", "infer_serve_s",
            "train_step_s", "train_step_cpu_s")
    return ", ".join("{}={:.3f}".format(k, out[k]) for k in keys if k in out)


def _merge(size, batch, ours_runs, theirs_runs):
    res = {"size": size, "batch": batch, "ours": {}, "theirs": {}, "ratio": {}}
    for side, runs in (("ours", ours_runs), ("theirs", theirs_runs)):
        for task, outs in runs.items():
            good = [o for o in outs if "error" not in o]
            errors = [o["error"] for o in outs if "error" in o]
            if errors:
                res[side].setdefault("errors", []).extend(errors)
            keys = sorted({k for o in good for k, v in o.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
            for k in keys:
                vals = [o[k] for o in good if k in o]
                res[side][k] = statistics.median(vals)
                if len(vals) > 1:
                    res[side][k + "_rounds"] = vals
    for _, key in FIGURES:
        if key in res["ours"] and key in res["theirs"]:
            res["ratio"][key] = res["ours"][key] / res["theirs"][key]
    if "infer_detect_s" in res["ours"] and "infer_serve_s" in res["theirs"]:
        res["ratio"]["detect_over_serve"] = (res["ours"]["infer_detect_s"] /
                                             res["theirs"]["infer_serve_s"])
    return res


def format_table(results):
    rows = [("size", "figure", "ours s", "Model Garden s", "ours/theirs")]
    for r in results:
        pairs = [("inference graph s/img", r["ours"].get("infer_graph_s"),
                  r["theirs"].get("infer_graph_s")),
                 ("inference graph CPU s/img", r["ours"].get("infer_graph_cpu_s"),
                  r["theirs"].get("infer_graph_cpu_s")),
                 ("inference end-to-end s/img", r["ours"].get("infer_detect_s"),
                  r["theirs"].get("infer_serve_s")),
                 ("training step s/batch", r["ours"].get("train_step_s"),
                  r["theirs"].get("train_step_s")),
                 ("training step CPU s/batch", r["ours"].get("train_step_cpu_s"),
                  r["theirs"].get("train_step_cpu_s")),
                 ("detections kept per image", r["ours"].get("infer_detections"),
                  r["theirs"].get("infer_detections")),
                 ("time to first detection s", r["ours"].get("time_to_first_detection_s"),
                  r["theirs"].get("time_to_first_detection_s")),
                 ("peak RSS inference MB", r["ours"].get("rss_infer_mb"),
                  r["theirs"].get("rss_infer_mb")),
                 ("peak RSS training MB", r["ours"].get("rss_train_mb"),
                  r["theirs"].get("rss_train_mb"))]
        for name, a, b in pairs:
            if a is None and b is None:
                continue
            fa = "-" if a is None else "{:.3f}".format(a)
            fb = "-" if b is None else "{:.3f}".format(b)
            # (Model Garden may keep no detection above its threshold: no ratio then.)
            ratio = "-" if a is None or not b else "{:.2f}".format(a / b)
            rows.append((str(r["size"]), name, fa, fb, ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(v.rjust(w) if i != 1 else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths)))
                     for row in rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1,
                   help="alternations of ours/theirs per case (medians over rounds)")
    p.add_argument("--tasks", nargs="+", default=["infer", "train"],
                   choices=["infer", "train"])
    p.add_argument("--no-serve", action="store_true",
                   help="skip Model Garden's DetectionModule.serve figure (saves a trace)")
    p.add_argument("--set", nargs="*", default=[], metavar="ATTR=VALUE",
                   help="our side's Config overrides (as bench_speed.py --set), e.g. "
                        "RPN_CONV_DIM=256 DETECTION_MIN_CONFIDENCE=0.05")
    p.add_argument("--setup-only", action="store_true", help="create the venv and exit")
    p.add_argument("--json-out")
    p.add_argument("--tfm-worker", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.tfm_worker:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        result = TFM_TASKS[args.tfm_worker](json.loads(args.case))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    ensure_venv()
    if args.setup_only:
        print("ready:", venv_python())
        return 0
    sys.path.insert(0, HERE)
    import bench_speed
    info = bench_speed.machine_info()
    print("machine: {} ({} cores), python {}".format(info["cpu"], info["cores"],
                                                     info["python"]), flush=True)
    overrides = bench_speed.parse_overrides(args.set)
    if overrides:
        print("our config overrides:", overrides, flush=True)
    results = compare(args.sizes, args.rounds, args.repeats, args.batch, args.tasks,
                      serve=not args.no_serve, overrides=overrides)
    for r in results:
        r["machine"] = info
        print(JSON_PREFIX + json.dumps(r), flush=True)
    print()
    print(format_table(results))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any("errors" in r["ours"] or "errors" in r["theirs"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
