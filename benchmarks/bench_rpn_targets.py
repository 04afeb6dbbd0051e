"""RPN targets in the graph against RPN targets from the input pipeline (issue 19, part 4).

(a) The training step (``trainer.train_on_batch``) of two ResNet-50 models built from the
    same config but for RPN_TARGETS_IN_GRAPH (True: the graph labels the anchors from the
    GT boxes; False: build_rpn_targets' arrays are fed as inputs), on the same synthetic
    batch, timed in alternation in one process: the medians and graph / inputs ratio.
(b) What leaves the input pipeline: build_rpn_targets' CPU time per 1024 px image
    (default anchors, ~262k) for several instance counts.
(c) The graph-side layer alone (RpnTargetsLayer, batch 2, MAX_GT_INSTANCES GT rows) at
    1024 px: its share of the step.

    python benchmarks/bench_rpn_targets.py                       # 512 px, 5 rounds
    python benchmarks/bench_rpn_targets.py --size 1024 --rounds 3
    python benchmarks/bench_rpn_targets.py --tiny                 # seconds: checks the script
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)

import bench_speed  # noqa: E402

# Narrow box / mask heads: the step is the backbone, FPN, RPN and its targets.
SMALL_HEADS = dict(FPN_CLASSIF_FC_LAYERS_SIZE=256, MASK_HEAD_CONV_DIM=64,
                   TRAIN_ROIS_PER_IMAGE=64, POST_NMS_ROIS_TRAINING=500)


def configs(size, batch, tiny):
    """(graph-side config, pipeline-side config), equal but for RPN_TARGETS_IN_GRAPH."""
    overrides = {} if tiny else dict(SMALL_HEADS)
    return [bench_speed.make_config(size, batch=batch, tiny=tiny, num_classes=4,
                                    overrides=dict(overrides, RPN_TARGETS_IN_GRAPH=flag))
            for flag in (True, False)]


def training_batch(config, instances):
    """A batch of synthetic images with ``instances`` objects each, RPN targets included
    (config has RPN_TARGETS_IN_GRAPH = False)."""
    from mrcnn import data
    ds = bench_speed._synthetic_dataset_class()()
    ds.load_synthetic(config.BATCH_SIZE, int(config.IMAGE_SHAPE[0]), config.NUM_CLASSES,
                      instances=min(instances, config.MAX_GT_INSTANCES))
    ds.prepare()
    pipeline = data.build_dataset(ds, config, shuffle=False, seed=0, repeat=False)
    return {k: v.numpy() for k, v in next(iter(pipeline)).items()}


def step_times(size, batch, rounds, instances, tiny):
    """(a): alternated train_on_batch timings of both models on one batch."""
    from mrcnn import data
    from mrcnn.model import MaskRCNN
    cfg_graph, cfg_inputs = configs(size, batch, tiny)
    feed = training_batch(cfg_inputs, instances)
    feeds = {"graph": {k: v for k, v in feed.items() if k not in data.RPN_TARGET_NAMES},
             "inputs": feed}
    trainers = {}
    for name, config in (("graph", cfg_graph), ("inputs", cfg_inputs)):
        trainers[name] = MaskRCNN("training", config, bench_speed._model_dir()).compile(
            config.LEARNING_RATE)
        for _ in range(2):  # trace + one warm step
            trainers[name].train_on_batch(feeds[name])
    wall = {"graph": [], "inputs": []}
    cpu = {"graph": [], "inputs": []}
    for r in range(rounds):
        # Alternate which goes first, so a drift in the machine's load hits both.
        for name in (("graph", "inputs") if r % 2 == 0 else ("inputs", "graph")):
            c, t = time.process_time(), time.perf_counter()
            trainers[name].train_on_batch(feeds[name])
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    out = {}
    for name in wall:
        out["step_{}_s".format(name)] = statistics.median(wall[name])
        out["step_{}_cpu_s".format(name)] = statistics.median(cpu[name])
        out["step_{}_samples".format(name)] = [round(v, 3) for v in wall[name]]
    out["step_graph_over_inputs"] = out["step_graph_s"] / out["step_inputs_s"]
    out["step_graph_over_inputs_cpu"] = out["step_graph_cpu_s"] / out["step_inputs_cpu_s"]
    return out


def gt_boxes_1024(instances, seed=0):
    """Class ids and pixel boxes of a synthetic 1024 px image with ``instances`` objects."""
    from mrcnn import utils
    _, masks, ids = bench_speed.synthetic_example(1024, 4, instances, seed=seed)
    return ids, utils.extract_bboxes(masks)


def numpy_target_times(counts, repeats):
    """(b): median CPU seconds of build_rpn_targets per 1024 px image."""
    from mrcnn import rpn
    from mrcnn.config import Config
    config = Config()
    anchors = rpn.get_anchors(config, config.IMAGE_SHAPE)
    out = {"anchors_1024": int(len(anchors))}
    for n in counts:
        ids, boxes = gt_boxes_1024(n)
        rpn.build_rpn_targets(config.IMAGE_SHAPE, anchors, ids, boxes, config)
        times = []
        for _ in range(repeats):
            c = time.process_time()
            rpn.build_rpn_targets(config.IMAGE_SHAPE, anchors, ids, boxes, config)
            times.append(time.process_time() - c)
        out["numpy_targets_1024_gt{}_cpu_s".format(n)] = statistics.median(times)
    return out


def graph_layer_times(counts, repeats):
    """(c): median wall / CPU seconds of RpnTargetsLayer on a 1024 px batch of 2."""
    import tensorflow as tf
    from mrcnn import rpn
    from mrcnn.config import Config
    config = Config()
    layer = tf.function(rpn.RpnTargetsLayer(config))
    images = tf.zeros([2, 1024, 1024, 3])
    out = {}
    for n in counts:
        ids = np.zeros([2, config.MAX_GT_INSTANCES], np.int32)
        boxes = np.zeros([2, config.MAX_GT_INSTANCES, 4], np.float32)
        for b in range(2):
            i, x = gt_boxes_1024(n, seed=b)
            ids[b, :n], boxes[b, :n] = i, x
        cpu = []
        wall = bench_speed.time_calls(
            lambda: [t.numpy() for t in layer([images, ids, boxes])], repeats, cpu=cpu)
        out["graph_targets_1024_b2_gt{}_s".format(n)] = statistics.median(wall)
        out["graph_targets_1024_b2_gt{}_cpu_s".format(n)] = statistics.median(cpu)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--instances", type=int, default=20, help="objects per training image")
    p.add_argument("--repeats", type=int, default=5, help="timed calls for (b) and (c)")
    p.add_argument("--tiny", action="store_true", help="128 px tiny model, 1 round")
    args = p.parse_args(argv)
    size, rounds = (128, 1) if args.tiny else (args.size, args.rounds)
    counts = (8, 100) if args.tiny else (8, 20, 100)
    res = {"size": size, "batch": args.batch, "instances": args.instances}
    res.update(numpy_target_times(counts, args.repeats))
    res.update(graph_layer_times(counts, 1 if args.tiny else args.repeats))
    res.update(step_times(size, args.batch, rounds, args.instances, args.tiny))
    report(res, counts)
    print(bench_speed.JSON_PREFIX + json.dumps(res), flush=True)
    return 0


def report(res, counts):
    print("(a) training step, {0}x{0}, batch {1}, {2} objects/image (median of {3}):".format(
        res["size"], res["batch"], res["instances"], len(res["step_graph_samples"])))
    print("    graph-side targets {:.3f} s (CPU {:.2f} s), pipeline targets as inputs "
          "{:.3f} s (CPU {:.2f} s): ratio {:.3f} (CPU {:.3f})".format(
              res["step_graph_s"], res["step_graph_cpu_s"], res["step_inputs_s"],
              res["step_inputs_cpu_s"], res["step_graph_over_inputs"],
              res["step_graph_over_inputs_cpu"]))
    print("(b) build_rpn_targets per 1024 px image ({} anchors), CPU s:".format(
        res["anchors_1024"]))
    for n in counts:
        print("    {:3d} GT: {:.4f}".format(n, res["numpy_targets_1024_gt{}_cpu_s".format(n)]))
    print("(c) RpnTargetsLayer, 1024 px, batch 2, wall s (CPU s):")
    for n in counts:
        print("    {:3d} GT/image: {:.4f} ({:.4f})".format(
            n, res["graph_targets_1024_b2_gt{}_s".format(n)],
            res["graph_targets_1024_b2_gt{}_cpu_s".format(n)]))


if __name__ == "__main__":
    sys.exit(main())
