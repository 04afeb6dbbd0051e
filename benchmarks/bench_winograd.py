"""Direct TensorFlow 3x3 convolution against mrcnn.winograd's F(4x4, 3x3), per map size.

For each case (the FPN output convs and the RPN conv at 512 and 1024 px, the mask head
on 100 ROIs, small maps, the ResNet's bottleneck 3x3 convs at 1024 px): median seconds
of the forward pass and of forward + backward (gradients for input and kernel), both
algorithms alternated, and the largest relative difference of their outputs. Prints a
table and one JSON line per case.

--dtype bfloat16 times what mixed bfloat16 chooses between: TensorFlow's bf16 conv
against Winograd computed in float32 from the bf16 inputs (mrcnn.winograd.conv3x3_same,
the path Conv3x3 takes for bf16 on CPUs without AMX); the difference is then measured
against a float32 conv of the bf16-rounded inputs, for both.

    python benchmarks/bench_winograd.py [--repeats 5] [--cases small] [--dtype bfloat16]
"""

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

JSON_PREFIX = "BENCH_JSON "
# (label, input shape [N, H, W, C], filters)
CASES = {
    "full": [
        ("FPN P2 @1024", (1, 256, 256, 256), 256),
        ("RPN P2 @1024, 512 ch", (1, 256, 256, 256), 512),
        ("FPN P2 @512 / P3 @1024", (1, 128, 128, 256), 256),
        ("RPN P2 @512, 512 ch", (1, 128, 128, 256), 512),
        ("FPN P4 @1024", (1, 64, 64, 256), 256),
        ("RPN P5 @1024, 512 ch", (1, 32, 32, 256), 512),
        ("RPN P6 @1024, 512 ch", (1, 16, 16, 256), 512),
        ("mask head, 100 ROIs", (100, 14, 14, 256), 256),
        ("ResNet res3 3x3 @1024", (1, 128, 128, 128), 128),
        ("ResNet res4 3x3 @1024", (1, 64, 64, 256), 256),
        ("ResNet res5 3x3 @1024", (1, 32, 32, 512), 512),
    ],
    "small": [("tiny", (1, 20, 24, 8), 8), ("tiny, 2 images", (2, 9, 13, 4), 6)],
}


def _median_time(fn, repeats):
    # bench_speed's timer (one warm-up call, then ``repeats`` timed calls).
    from bench_speed import time_calls
    return statistics.median(time_calls(fn, repeats))


def run_case(label, shape, filters, repeats, dtype="float32"):
    import numpy as np
    import tensorflow as tf
    from mrcnn.winograd import conv3x3_same

    rng = np.random.default_rng(0)
    x = tf.cast(tf.constant(rng.normal(size=shape), tf.float32), dtype)
    k = tf.cast(tf.constant(rng.normal(size=(3, 3, shape[-1], filters)) * 0.05, tf.float32),
                dtype)

    def direct(a, b):
        return tf.nn.conv2d(a, b, 1, "SAME")

    def winograd(a, b):
        # The library's dispatcher with no size rule: float32 maths, result in x's dtype.
        return conv3x3_same(a, b, direct, min_area=0, min_channels=0)

    def with_grads(conv):
        @tf.function
        def step(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = tf.reduce_sum(tf.square(tf.cast(conv(a, b), tf.float32)))
            return tape.gradient(loss, [a, b])
        return step

    fwd = {"direct": tf.function(direct), "winograd": tf.function(winograd)}
    bwd = {name: with_grads(fn) for name, fn in (("direct", direct), ("winograd", winograd))}
    want = direct(tf.cast(x, tf.float32), tf.cast(k, tf.float32))

    def rel_diff(got):
        got = tf.cast(got, tf.float32)
        return float(tf.reduce_max(tf.abs(got - want)) / tf.reduce_max(tf.abs(want)))
    res = {"case": label, "shape": list(shape), "filters": filters, "dtype": dtype,
           "max_rel_diff": rel_diff(fwd["winograd"](x, k)),
           "max_rel_diff_direct": rel_diff(fwd["direct"](x, k))}
    for name in ("direct", "winograd"):          # alternated per figure
        res["fwd_" + name + "_s"] = _median_time(lambda: fwd[name](x, k).numpy(), repeats)
    for name in ("direct", "winograd"):
        res["fwd_bwd_" + name + "_s"] = _median_time(
            lambda: [g.numpy() for g in bwd[name](x, k)], repeats)
    res["fwd_ratio"] = res["fwd_winograd_s"] / res["fwd_direct_s"]
    res["fwd_bwd_ratio"] = res["fwd_bwd_winograd_s"] / res["fwd_bwd_direct_s"]
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cases", choices=sorted(CASES), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: bf16 direct conv against float32 Winograd from bf16")
    args = p.parse_args(argv)
    print("{:26} {:>9} {:>9} {:>6} {:>10} {:>10} {:>6} {:>9} {:>9}".format(
        "case", "fwd dir", "fwd win", "ratio", "f+b dir", "f+b win", "ratio", "diff dir",
        "diff win"))
    results = []
    for label, shape, filters in CASES[args.cases]:
        r = run_case(label, shape, filters, args.repeats, args.dtype)
        results.append(r)
        print("{:26} {:9.4f} {:9.4f} {:6.2f} {:10.4f} {:10.4f} {:6.2f} {:9.1e} {:9.1e}".format(
            label, r["fwd_direct_s"], r["fwd_winograd_s"], r["fwd_ratio"],
            r["fwd_bwd_direct_s"], r["fwd_bwd_winograd_s"], r["fwd_bwd_ratio"],
            r["max_rel_diff_direct"], r["max_rel_diff"]), flush=True)
        print(JSON_PREFIX + json.dumps(r), flush=True)
    return results


if __name__ == "__main__":
    main()
