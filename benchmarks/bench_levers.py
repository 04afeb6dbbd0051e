"""A/B of one speed lever in one process: the same model traced with the lever off and
on, the two timed round-robin (so load changes on a shared machine hit both alike).

    python benchmarks/bench_levers.py --lever fused_bn --sizes 512 1024 --tasks infer train
    python benchmarks/bench_levers.py --lever bf16_forward_rule --sizes 1024 \\
        --set MIXED_PRECISION=mixed_bfloat16 RPN_CONV_DIM=256

Levers ("off" is the code path before the lever):
  fused_bn           BatchNorm with fixed statistics as one FusedBatchNormV3 (on) or
                     Keras' own BatchNormalization arithmetic (off).
  bf16_forward_rule  bfloat16 Conv3x3 called without training keeps the direct kernel
                     below MIN_WINOGRAD_FILTERS_BF16_FORWARD filters (on), or always uses
                     the forward + backward rule (off).

Prints a table and one JSON line per size and task (BENCH_JSON prefix).
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_speed  # noqa: E402


def _lever_patches():
    """{lever: (object, attribute, off value)}: the attribute replaced while lever is off."""
    import keras
    from mrcnn import backbone, winograd

    def keras_batchnorm_call(self, inputs, training=None, mask=None):
        if not self.train_bn:
            training = False
        return keras.layers.BatchNormalization.call(self, inputs, training=training,
                                                    mask=mask)

    def conv2d_call(self, inputs, training=None):
        return keras.layers.Conv2D.call(self, inputs)  # convolution_op: training rule

    return {"fused_bn": (backbone.BatchNorm, "call", keras_batchnorm_call),
            "bf16_forward_rule": (winograd.Conv3x3, "call", conv2d_call)}


LEVERS = ("fused_bn", "bf16_forward_rule")


@contextlib.contextmanager
def lever_off(lever):
    """Within the block, layers traced take the code path without ``lever``."""
    owner, attr, off = _lever_patches()[lever]
    on = owner.__dict__[attr]
    setattr(owner, attr, off)
    try:
        yield
    finally:
        setattr(owner, attr, on)


def _infer_fn(config, model_dir):
    import tensorflow as tf
    from mrcnn.model import MaskRCNN
    model = MaskRCNN("inference", config, model_dir)
    molded, metas, _ = model.mold_inputs(bench_speed.random_images(config, config.BATCH_SIZE))
    x = (tf.constant(molded), tf.constant(metas))
    km = model.keras_model
    fn = tf.function(lambda a, b: km([a, b], training=False))
    return lambda: bench_speed._numpy_all(fn(*x))


def _train_fn(config, model_dir):
    from mrcnn.model import MaskRCNN
    batch = bench_speed.synthetic_training_batch(config)
    trainer = MaskRCNN("training", config, model_dir).compile(config.LEARNING_RATE)
    return lambda: trainer.train_on_batch(batch, return_dict=True)


def measure(lever, case, task, model_dir):
    """Traces ``task`` ("infer" or "train") with the lever off, then on (each call once
    inside its patch state, which fixes the traced graph), and times them round-robin.
    Returns {"off_s", "on_s", "on_over_off", "off_min_s", "on_min_s", ...}."""
    if lever not in LEVERS:
        raise ValueError("lever {!r}: one of {}".format(lever, LEVERS))
    config = bench_speed.make_config(**case["config"])
    build = {"infer": _infer_fn, "train": _train_fn}[task]
    with lever_off(lever):
        off = build(config, model_dir)
        off()
    on = build(config, model_dir)
    on()
    timed = bench_speed._interleaved({"off": off, "on": on}, case["repeats"])
    out = {"lever": lever, "task": task, "size": case["config"]["size"],
           "overrides": case["config"]["overrides"]}
    for key, (median, minimum, cpu) in timed.items():
        out[key + "_s"], out[key + "_min_s"], out[key + "_cpu_s"] = median, minimum, cpu
    out["on_over_off"] = out["on_s"] / out["off_s"]
    out["on_over_off_cpu"] = out["on_cpu_s"] / out["off_cpu_s"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", choices=LEVERS, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--tasks", nargs="+", choices=("infer", "train"), default=["infer"])
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds (default 6)")
    parser.add_argument("--tiny", action="store_true", help="bench_speed's tiny config")
    parser.add_argument("--set", nargs="*", default=[], metavar="ATTR=VALUE",
                        help="config overrides, as bench_speed.py --set")
    args = parser.parse_args(argv)
    overrides = bench_speed.parse_overrides(args.set)
    print("machine: {}".format(json.dumps(bench_speed.machine_info())))
    rows = []
    with tempfile.TemporaryDirectory() as model_dir:
        for size in args.sizes:
            case = bench_speed.make_case(size, tiny=args.tiny, repeats=args.repeats,
                                         overrides=overrides)
            for task in args.tasks:
                res = measure(args.lever, case, task, model_dir)
                print(bench_speed.JSON_PREFIX + json.dumps(res), flush=True)
                rows.append(res)
    print("\n{:<18} {:>5} {:<6} {:>8} {:>8} {:>7} {:>7}".format(
        "lever", "size", "task", "off s", "on s", "on/off", "CPU"))
    for r in rows:
        print("{:<18} {:>5} {:<6} {:>8.3f} {:>8.3f} {:>7.3f} {:>7.3f}".format(
            r["lever"], r["size"], r["task"], r["off_s"], r["on_s"], r["on_over_off"],
            r["on_over_off_cpu"]))
    return rows


if __name__ == "__main__":
    main()
