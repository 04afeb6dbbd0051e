"""Proposal layer time: per-image NMS with Matterport's tie order (this tree) against the
batched combined NMS it replaced, alternated in one process.

    python benchmarks/bench_proposals.py [--size 1024] [--rounds 7]

Inputs at IMAGE_MAX_DIM = size with the default anchors (261,888 at 1024²): RPN scores from
random logits ("spread") and with two thirds saturated at exactly 1.0 ("saturated", as a
trained RPN gives), PRE_NMS_LIMIT 6000, 2000 proposals (training) and 1000 (inference),
batches of 1 and 2. Prints the median seconds of each and new / old.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mrcnn.config import Config  # noqa: E402
from mrcnn.rpn import ProposalLayer, get_anchors  # noqa: E402


def combined_nms_layer(layer):
    """The previous proposal NMS: same top_k and decoding, batched combined NMS."""
    def call(probs, deltas, anchors):
        scores = probs[:, :, 1]
        top = tf.math.top_k(scores, min(layer.pre_nms_limit, scores.shape[1]))
        boxes = layer.box_coder.decode_graph(tf.gather(anchors, top.indices, batch_dims=1),
                                             tf.gather(deltas, top.indices, batch_dims=1))
        boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        return tf.image.combined_non_max_suppression(
            boxes[:, :, None, :], top.values[:, :, None], layer.proposal_count,
            layer.proposal_count, layer.nms_threshold, float("-inf"),
            clip_boxes=False).nmsed_boxes
    return tf.function(call)


def inputs(config, batch, kind, rng):
    anchors = get_anchors(config, config.IMAGE_SHAPE).astype(np.float32)
    n = len(anchors)
    logits = rng.normal(0, 3, (batch, n)).astype(np.float32)
    if kind == "saturated":
        logits[rng.random((batch, n)) < 2 / 3] = 40.0     # sigmoid == 1.0 in float32
    fg = 1 / (1 + np.exp(-logits))
    probs = np.stack([1 - fg, fg], -1).astype(np.float32)
    deltas = rng.normal(0, 0.5, (batch, n, 4)).astype(np.float32)
    return [tf.constant(probs), tf.constant(deltas),
            tf.constant(np.broadcast_to(anchors, (batch,) + anchors.shape))]


def timed(fn, args, repeats=3):
    fn(*args)                                          # trace / warm up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    out.numpy()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    config = type("C", (Config,), {"NAME": "bench", "IMAGE_MIN_DIM": args.size,
                                   "IMAGE_MAX_DIM": args.size})()
    rng = np.random.default_rng(0)
    print("proposal layer, {}² ({} anchors), PRE_NMS_LIMIT {}".format(
        args.size, len(get_anchors(config, config.IMAGE_SHAPE)), config.PRE_NMS_LIMIT))
    print("{:10} {:>5} {:>6} {:>10} {:>10} {:>8}".format(
        "scores", "batch", "kept", "old s", "new s", "new/old"))
    for kind in ("spread", "saturated"):
        for count in (2000, 1000):
            for batch in (1, 2):
                layer = ProposalLayer(count, config.RPN_NMS_THRESHOLD, config)
                new = tf.function(lambda p, d, a, layer=layer: layer([p, d, a]))
                old = combined_nms_layer(layer)
                x = inputs(config, batch, kind, rng)
                times = {"old": [], "new": []}
                for _ in range(args.rounds):
                    times["old"].append(timed(old, x))
                    times["new"].append(timed(new, x))
                o, n = statistics.median(times["old"]), statistics.median(times["new"])
                print("{:10} {:>5} {:>6} {:>10.4f} {:>10.4f} {:>8.2f}".format(
                    kind, batch, count, o, n, n / o))


if __name__ == "__main__":
    main()
