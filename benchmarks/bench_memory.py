"""Memory over long runs: detect() on hundreds of images of varying sizes, and (with
--train) a multi-epoch training run with validation.

    python benchmarks/bench_memory.py                      # 300 images, ResNet-50, 128 px
    python benchmarks/bench_memory.py --mode pad64         # molded sizes vary too
    python benchmarks/bench_memory.py --images 100 --train

Prints the resident set size (RSS, from /proc) every --every images, the growth after a
warm-up of --warmup images (target: under 10%), how many times the inference function
was traced (target: 1), and with --train the RSS at the end of each epoch. Weights are
random: detections are kept down to score 0 so every call unmolds full-size masks.
"""

import argparse
import gc
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def rss_mb():
    """Resident set size of this process in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_configs(args):
    from samples.shapes import ShapesConfig

    class BenchConfig(ShapesConfig):
        NAME = "bench_memory"
        BACKBONE = args.backbone
        IMAGE_RESIZE_MODE = args.mode
        IMAGE_MIN_DIM = args.dim
        IMAGE_MAX_DIM = args.dim
        STEPS_PER_EPOCH = args.steps
        VALIDATION_STEPS = 2
        IMAGES_PER_GPU = 2

    class BenchInferenceConfig(BenchConfig):
        IMAGES_PER_GPU = 1
        DETECTION_MIN_CONFIDENCE = 0.0

    return BenchConfig(), BenchInferenceConfig()


def bench_detect(args, config, logs):
    import numpy as np
    from mrcnn import model as modellib

    model = modellib.MaskRCNN("inference", config, logs)
    rng = np.random.default_rng(args.seed)
    lo, hi = args.min_size, args.max_size
    print("detect(): {} images of {}..{} px, {} {} px '{}' mode".format(
        args.images, lo, hi, config.BACKBONE, config.IMAGE_MAX_DIM, config.IMAGE_RESIZE_MODE))
    print("{:>7} {:>9} {:>9} {:>11}".format("images", "RSS MB", "ms/image", "detections"))
    warm = None
    detections = 0
    t0 = time.time()
    for i in range(1, args.images + 1):
        h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        r = model.detect([image])[0]
        detections += len(r["rois"])
        if i == args.warmup:
            gc.collect()
            warm = rss_mb()
        if i % args.every == 0 or i == args.images:
            print("{:>7} {:>9.0f} {:>9.0f} {:>11}".format(
                i, rss_mb(), 1000 * (time.time() - t0) / args.every, detections))
            t0 = time.time()
    gc.collect()
    final = rss_mb()
    traces = model._inference_fn().experimental_get_tracing_count()
    growth = 100.0 * (final - warm) / warm
    print("RSS after {} warm-up images {:.0f} MB, after {} images {:.0f} MB: {:+.1f}% "
          "(target < 10%); inference function traced {} time(s) (target 1)".format(
              args.warmup, warm, args.images, final, growth, traces))
    return growth, traces


def bench_train(args, config, logs):
    import keras
    from mrcnn import model as modellib
    from samples.shapes import make_datasets

    train, val = make_datasets(config, train_images=32, val_images=8, seed=args.seed)
    model = modellib.MaskRCNN("training", config, logs)
    epoch_rss = []

    class Meter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            gc.collect()
            epoch_rss.append(rss_mb())
            print("epoch {}: RSS {:.0f} MB".format(epoch + 1, epoch_rss[-1]))

    print("train(): {} epochs of {} steps + {} validation steps, {} {} px, heads".format(
        args.epochs, config.STEPS_PER_EPOCH, config.VALIDATION_STEPS, config.BACKBONE,
        config.IMAGE_MAX_DIM))
    model.train(train, val, learning_rate=config.LEARNING_RATE, epochs=args.epochs,
                layers="heads", custom_callbacks=[Meter()], verbose=0)
    growth = 100.0 * (epoch_rss[-1] - epoch_rss[0]) / epoch_rss[0]
    print("RSS from the end of epoch 1 to the end of epoch {}: {:+.1f}% (target < 10%)"
          .format(args.epochs, growth))
    return growth


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--every", type=int, default=25, help="print every N images")
    parser.add_argument("--min-size", type=int, default=32)
    parser.add_argument("--max-size", type=int, default=400)
    parser.add_argument("--dim", type=int, default=128, help="IMAGE_MIN/MAX_DIM")
    parser.add_argument("--mode", default="square", choices=["square", "pad64"])
    parser.add_argument("--backbone", default="resnet50",
                        choices=["resnet50", "resnet101"])
    parser.add_argument("--train", action="store_true", help="also the training run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="steps per epoch (--train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logs", default=os.path.join(ROOT, "logs", "bench_memory"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    train_config, infer_config = make_configs(args)
    growth, traces = bench_detect(args, infer_config, args.logs)
    ok = growth < 10 and traces == 1
    if args.train:
        ok = bench_train(args, train_config, args.logs) < 10 and ok
    print("OK" if ok else "NOT FLAT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
