"""Exported models against detect(): same detections, and time per image side by side.

    python benchmarks/bench_deploy.py                       # 512 and 1024, 3 balloon photos
    python benchmarks/bench_deploy.py --sizes 512 --rounds 3
    python benchmarks/bench_deploy.py --weights logs/.../mask_rcnn_shapes_0013.h5 \
        --config samples/shapes.py:ShapesInferenceConfig --sizes 0 --images shapes_pngs/

Model: Matterport's defaults (ResNet-50 FPN, "square" resizing to --size, float32),
--classes (6) classes, random weights from a fixed seed, DETECTION_MIN_CONFIDENCE 0 (every
detection kept, up to D = 100). No checkpoint is trained. Random weights make a chaotic
detector: the box-head class logits are scaled by 0.05 (else scores saturate at 1.0 and
the order among them is a coin toss) and the RPN and box-head deltas by 0.05 (else a
last-bit difference in a feature moves a box by pixels). Even so, 100 detections of
near-equal scores per image leave the last places to chance: the SavedModel, which runs
detect()'s own graph, is listed as the floor any runtime can reach.

Photos: the first --photos JPEGs (sorted) of ../shared/data/balloon/train, or of --images.
A trained checkpoint instead: --weights W.h5 --config file.py:Class (its classes; --sizes
sets IMAGE_MIN_DIM = IMAGE_MAX_DIM, 0 keeps the config's), e.g. a shapes run on shapes
images written to a folder.

For each size the model is exported as a SavedModel, an ONNX model (opset
mrcnn.export.ONNX_OPSET) and a TFLite model of builtin ops only, each reloaded (mrcnn.export.ExportedModel) and compared
with detect() on every photo: detections per image, and how many of detect()'s detections
have a twin (same class, |score diff| <= 1e-3, box IoU >= 0.99, mask IoU >= 0.98).
Timing: --rounds rounds, each calling detect() then the SavedModel, ONNX Runtime and
TFLite once per photo (alternated, so load changes hit all alike); median seconds per
image. The machine has 2 cores shared with other work: the figures are noisy; compare
the runtimes within one run. One BENCH_JSON line per size.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

# Grappler's cost model logs a warning per CropAndResize while graphs are converted.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PHOTOS = os.path.join(ROOT, "..", "shared", "data", "balloon", "train")
RUNTIMES = ("detect", "saved_model", "onnx", "tflite")


def photos(count, folder=PHOTOS):
    from mrcnn.dataset import Dataset
    names = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))[:count]
    reader = Dataset()
    for n in names:
        reader.add_image("p", image_id=n, path=os.path.join(folder, n))
    reader.prepare()
    return names, [reader.load_image(i) for i in reader.image_ids]


def trained_model(weights, config_spec, size):
    """A trained checkpoint: --config's class with every detection kept, resized to
    ``size`` (0: the config's own IMAGE_MAX_DIM), weights loaded by name."""
    from mrcnn.cli import load_config_class
    from mrcnn.model import MaskRCNN
    base = load_config_class(config_spec)
    overrides = {"IMAGES_PER_GPU": 1, "GPU_COUNT": 1, "DETECTION_MIN_CONFIDENCE": 0.0}
    if size:
        overrides.update(IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size)
    config = type("BenchConfig", (base,), overrides)()
    model = MaskRCNN("inference", config, model_dir=tempfile.gettempdir())
    model.load_weights(weights, by_name=True, verbose=0)
    return model


def build_model(size, seed, num_classes=2):
    import keras

    from mrcnn.config import Config
    from mrcnn.model import MaskRCNN

    class BenchConfig(Config):
        NAME = "deploy_bench"
        NUM_CLASSES = num_classes
        IMAGES_PER_GPU = 1
        IMAGE_MIN_DIM = size
        IMAGE_MAX_DIM = size
        DETECTION_MIN_CONFIDENCE = 0.0

    keras.utils.set_random_seed(seed)
    model = MaskRCNN("inference", BenchConfig(), model_dir=tempfile.gettempdir())
    keras_model = model.keras_model
    rpn = keras_model.get_layer("rpn_model")
    # Random weights: damp the box deltas (else a last-bit change of a feature moves a
    # box by pixels) and the classifier logits (else scores saturate at 1.0).
    for layer in (rpn.get_layer("rpn_bbox_pred"), keras_model.get_layer("mrcnn_bbox_fc"),
                  keras_model.get_layer("mrcnn_class_logits")):
        layer.set_weights([w * 0.05 for w in layer.get_weights()])
    return model


def run_size(size, args, images):
    from mrcnn import export as E
    model = (trained_model(args.weights, args.config, size) if args.weights
             else build_model(size, args.seed, args.classes))
    work = tempfile.mkdtemp(prefix="bench_deploy_")
    runners, info = {}, {"size": model.config.IMAGE_MAX_DIM}
    try:
        paths = {"saved_model": os.path.join(work, "sm"),
                 "onnx": os.path.join(work, "m.onnx"),
                 "tflite": os.path.join(work, "m.tflite")}
        for name, path in paths.items():
            t = time.perf_counter()
            model.export(path)                 # format from the path
            info[name + "_export_s"] = round(time.perf_counter() - t, 1)
            size_bytes = (os.path.getsize(path) if os.path.isfile(path) else sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                for f in fs))
            info[name + "_mb"] = round(size_bytes / 2 ** 20, 1)
            runners[name] = E.ExportedModel(path, threads=args.threads)

        refs = [model.detect([im])[0] for im in images]
        for name, runner in runners.items():
            got = [runner.detect([im])[0] for im in images]
            info[name + "_counts"] = [len(g["class_ids"]) for g in got]
            info[name + "_twins"] = sum(E.count_twin_detections(g, r)
                                        for g, r in zip(got, refs))
        info["detect_counts"] = [len(r["class_ids"]) for r in refs]

        times = {k: [] for k in RUNTIMES}
        for _ in range(args.rounds):
            for im in images:
                for name in RUNTIMES:
                    t = time.perf_counter()
                    if name == "detect":
                        model.detect([im])
                    else:
                        runners[name].run(im[None])
                    times[name].append(time.perf_counter() - t)
        for name in RUNTIMES:
            info[name + "_s"] = round(float(np.median(times[name])), 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--classes", type=int, default=6, help="NUM_CLASSES")
    parser.add_argument("--weights", default=None,
                        help="a trained .h5 instead of random weights (with --config)")
    parser.add_argument("--config", default=None,
                        help="its Config class, file.py:Class or module:Class")
    parser.add_argument("--images", default=PHOTOS,
                        help="folder of the images (default: the balloon photos)")
    parser.add_argument("--threads", type=int, default=2,
                        help="ONNX Runtime / TFLite threads (TensorFlow uses its default)")
    args = parser.parse_args(argv)
    if bool(args.weights) != bool(args.config):
        parser.error("--weights and --config go together")
    names, images = photos(args.photos, args.images)
    print("photos:", ", ".join("{} {}x{}".format(n, im.shape[1], im.shape[0])
                               for n, im in zip(names, images)))
    rows = []
    for size in args.sizes:
        info = run_size(size, args, images)
        print("BENCH_JSON " + json.dumps(info))
        rows.append(info)
    print("\nseconds per image (median), float32, 2 shared cores (noisy):")
    print("{:>6} {:>9} {:>12} {:>9} {:>9}".format("size", *RUNTIMES))
    for r in rows:
        print("{:>6} {:>9} {:>12} {:>9} {:>9}".format(r["size"], *[r[k + "_s"] for k in RUNTIMES]))
    print("\nsame detections as detect() (twins / detect()'s count), export size:")
    for r in rows:
        total = sum(r["detect_counts"])
        print("{:>6} ".format(r["size"]) + "  ".join(
            "{}: {}/{} ({} MB, exported in {} s)".format(
                k, r[k + "_twins"], total, r[k + "_mb"], r[k + "_export_s"])
            for k in RUNTIMES[1:]))
    return rows


if __name__ == "__main__":
    main()
