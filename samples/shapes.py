"""Synthetic shapes: train and evaluate Mask R-CNN with no download.

Images of squares, circles and triangles on random backgrounds are generated in memory
from a seed, so every run sees the same data. This is the Quick start's main job:

    python samples/shapes.py train          # train from scratch, evaluate, draw
    python samples/shapes.py evaluate --model=last
    python samples/shapes.py detect --model=last --out=detections.png

Options: --cascade for Cascade Mask R-CNN, --logs, --epochs, --steps, --train-images,
--val-images, --seed. See README.md.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mrcnn import sample_cli, utils  # noqa: E402
from mrcnn.config import Config  # noqa: E402

SHAPES = ("square", "circle", "triangle")
DEFAULT_LOGS_DIR = sample_cli.sample_paths(ROOT).logs
# --model: "last" (the newest checkpoint of the shapes runs), "best" (the newest run's
# best checkpoint, train(keep_best=...)) or a weights file.
MODEL_KEYWORDS = ("last", "best")


class ShapesConfig(Config):
    """Small images and a small model: trains from random weights on a 2-core CPU."""
    NAME = "shapes"
    NUM_CLASSES = 1 + len(SHAPES)
    GPU_COUNT = 1
    IMAGES_PER_GPU = 4
    BACKBONE = "resnet50"
    TRAIN_BN = True  # from scratch, batch norm must learn its statistics
    BN_MOMENTUM = 0.9  # ... and its moving averages must keep up with a short run
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    MASK_HEAD_CONV_DIM = 64
    TRAIN_ROIS_PER_IMAGE = 32
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 200
    POST_NMS_ROIS_INFERENCE = 100
    MAX_GT_INSTANCES = 8
    DETECTION_MAX_INSTANCES = 20
    DETECTION_MIN_CONFIDENCE = 0.7
    MINI_MASK_SHAPE = (28, 28)
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5
    # Adam reaches in ~200 steps the loss SGD reaches in ~600 from random weights.
    OPTIMIZER = "adam"
    LEARNING_RATE = 0.001


class ShapesInferenceConfig(ShapesConfig):
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1


class ShapesEvalConfig(ShapesInferenceConfig):
    """For mAP: AP integrates over the score ranking, so every detection is kept (as
    Matterport's coco.py evaluation does); a lower threshold can only add recall.
    Drawing and ``detect`` use ShapesInferenceConfig's 0.7."""
    DETECTION_MIN_CONFIDENCE = 0.0


class ShapesDataset(utils.Dataset):
    """Generated shapes. load_shapes(count, height, width, seed) adds ``count`` images
    whose content is fully determined by ``seed``."""

    def load_shapes(self, count, height, width, seed=0, max_shapes=4):
        for i, name in enumerate(SHAPES):
            self.add_class("shapes", i + 1, name)
        rng = np.random.default_rng(seed)
        for i in range(count):
            bg_color, shapes = random_image_spec(rng, height, width, max_shapes)
            self.add_image("shapes", image_id=i, path=None, width=width, height=height,
                           bg_color=bg_color, shapes=shapes)

    def load_image(self, image_id):
        info = self.image_info[image_id]
        image = np.empty([info["height"], info["width"], 3], dtype=np.uint8)
        image[:] = info["bg_color"]
        for shape, color, dims in info["shapes"]:
            image[draw_shape_mask(shape, dims, info["height"], info["width"])] = color
        return image

    def load_mask(self, image_id):
        """Masks [H, W, N] bool with occlusion applied (later shapes cover earlier ones)."""
        info = self.image_info[image_id]
        shapes = info["shapes"]
        h, w = info["height"], info["width"]
        mask = np.zeros([h, w, len(shapes)], dtype=bool)
        for i, (shape, _, dims) in enumerate(shapes):
            mask[:, :, i] = draw_shape_mask(shape, dims, h, w)
        # Remove from each mask the pixels covered by the shapes drawn after it.
        covered = np.zeros([h, w], dtype=bool)
        for i in range(len(shapes) - 1, -1, -1):
            mask[:, :, i] &= ~covered
            covered |= mask[:, :, i]
        class_ids = np.array([self.class_names.index(s[0]) for s in shapes], dtype=np.int32)
        keep = mask.reshape(-1, len(shapes)).any(axis=0) if len(shapes) else []
        return mask[:, :, keep], class_ids[keep]

    def image_reference(self, image_id):
        info = self.image_info[image_id]
        return "shapes image {}: {}".format(image_id, [s[0] for s in info["shapes"]])


def draw_shape_mask(shape, dims, height, width):
    """Boolean mask [height, width] of one shape; dims = (cy, cx, size)."""
    from skimage.draw import disk, polygon
    y, x, s = dims
    out = np.zeros([height, width], dtype=bool)
    if shape == "square":
        out[max(y - s, 0):y + s, max(x - s, 0):x + s] = True
    elif shape == "circle":
        rr, cc = disk((y, x), s, shape=(height, width))
        out[rr, cc] = True
    elif shape == "triangle":
        top = (y - s, x)
        left = (y + s / math.sin(math.radians(60)) / 2, x - s)
        right = (y + s / math.sin(math.radians(60)) / 2, x + s)
        rr, cc = polygon([top[0], left[0], right[0]], [top[1], left[1], right[1]],
                         shape=(height, width))
        out[rr, cc] = True
    else:
        raise ValueError("unknown shape {!r}".format(shape))
    return out


def random_image_spec(rng, height, width, max_shapes=4):
    """Background colour and a list of (shape, colour, (cy, cx, size)) that overlap little
    (shapes whose boxes overlap another's by IoU > 0.3 are dropped, as Matterport does)."""
    bg_color = tuple(int(v) for v in rng.integers(0, 256, 3))
    shapes, boxes = [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        # Keep shapes visibly different from the background.
        while np.abs(np.subtract(color, bg_color)).sum() < 120:
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
        buffer = 20
        s = int(rng.integers(buffer // 2, height // 4))
        y = int(rng.integers(buffer, height - buffer - 1))
        x = int(rng.integers(buffer, width - buffer - 1))
        shapes.append((shape, color, (y, x, s)))
        boxes.append([y - s, x - s, y + s, x + s])
    keep = utils.non_max_suppression(np.array(boxes, dtype=np.float32),
                                     np.arange(len(shapes), dtype=np.float32), 0.3)
    return bg_color, [shapes[i] for i in sorted(keep)]


def make_datasets(config, train_images=500, val_images=50, seed=0):
    """Train and validation ShapesDatasets with disjoint seeds."""
    train = ShapesDataset()
    train.load_shapes(train_images, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1], seed=seed)
    train.prepare()
    val = ShapesDataset()
    val.load_shapes(val_images, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1],
                    seed=seed + 10_000)
    val.prepare()
    return train, val


def evaluate_map(model, dataset, config, limit=None, iou_threshold=0.5):
    """Matterport's mAP: compute_ap per image (on masks) averaged over the dataset.

    iou_threshold: one threshold (returns a float) or a sequence (returns a list, one mAP
    per threshold, from a single detection pass).
    """
    thresholds = np.atleast_1d(iou_threshold).tolist()
    image_ids = dataset.image_ids[:limit] if limit else dataset.image_ids
    aps = [[] for _ in thresholds]
    for image_id in image_ids:
        image = dataset.load_image(image_id)
        gt_mask, gt_class_id = dataset.load_mask(image_id)
        gt_bbox = utils.extract_bboxes(gt_mask)
        r = model.detect([image])[0]
        for k, t in enumerate(thresholds):
            ap, _, _, _ = utils.compute_ap(gt_bbox, gt_class_id, gt_mask, r["rois"],
                                           r["class_ids"], r["scores"], r["masks"],
                                           iou_threshold=t)
            aps[k].append(ap)
    maps = [float(np.mean(a)) if a else 0.0 for a in aps]
    return maps if np.ndim(iou_threshold) else maps[0]


def build_parser():
    """The shapes command line: train / evaluate / detect and the run's sizes."""
    parser = argparse.ArgumentParser(description="Mask R-CNN on synthetic shapes.")
    parser.add_argument("command", choices=["train", "evaluate", "detect"])
    parser.add_argument("--logs", default=DEFAULT_LOGS_DIR,
                        help="logs and checkpoints directory (default: logs/)")
    parser.add_argument("--model", default=None, type=sample_cli.weights_type(MODEL_KEYWORDS),
                        help="'last', 'best' or a path to .h5 weights (evaluate/detect; "
                             "train resumes from it)")
    parser.add_argument("--cascade", action="store_true", help="Cascade Mask R-CNN")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch")
    parser.add_argument("--train-images", type=int, default=500)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the generated data, the initial weights and the "
                             "shuffling (default 0)")
    parser.add_argument("--time-budget", type=float, default=13.5,
                        help="stop training after this many minutes of training, so "
                             "train + evaluate stays under 15 min (default 13.5; 0 = none); "
                             "the learning rate drops 10x for its last 20%%")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="evaluate on the first N validation images (default all)")
    parser.add_argument("--out", default=None, help="PNG of detections (default: in the "
                                                    "run's log directory)")
    return parser


def run_configs(cascade=False, steps=None):
    """(training config, evaluation config) of a run. One inference model serves
    evaluation, which keeps every detection, and drawing, which filters at 0.7."""
    overrides = {"CASCADE": True} if cascade else {}
    infer_cfg = type("RunEvalConfig", (ShapesEvalConfig,), dict(overrides))()
    if steps:
        overrides["STEPS_PER_EPOCH"] = steps
    return type("RunConfig", (ShapesConfig,), overrides)(), infer_cfg


def train(args, config, dataset_train, dataset_val):
    """Train from random weights (or resume from ``--model``) for ``--epochs`` (default
    40) within ``--time-budget``; returns the last checkpoint."""
    from mrcnn import model as modellib
    from mrcnn.training import TimeBudget
    import keras
    # --seed fixes the initial weights and the shuffling as well as the data, so a run
    # is one draw of the whole procedure (the benchmark takes the median of seeds 0-2).
    keras.utils.set_random_seed(args.seed)
    t0 = time.time()
    model = modellib.MaskRCNN("training", config, args.logs)
    if args.model:
        model.load_weights(sample_cli.resolve_weights(model, args.model,
                                                      keywords=MODEL_KEYWORDS), by_name=True)
    callbacks = [TimeBudget(args.time_budget)] if args.time_budget else []
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=args.epochs or 40, layers="all", custom_callbacks=callbacks)
    weights = model.find_last()
    print("Training took {:.1f} min; weights: {}".format((time.time() - t0) / 60, weights))
    return weights


def report_map(model, dataset, config, eval_images=None):
    """Print mAP@0.5 and @0.75 (evaluate_map on the first ``eval_images`` images) and the
    inference time per image."""
    t1 = time.time()
    m50, m75 = evaluate_map(model, dataset, config, limit=eval_images,
                            iou_threshold=[0.5, 0.75])
    t_eval = time.time() - t1
    n = eval_images or len(dataset.image_ids)
    print("mAP@0.5 (compute_ap on masks, {} held-out images, all detections): "
          "{:.3f}".format(n, m50))
    print("mAP@0.75: {:.3f}".format(m75))
    print("Inference: {:.3f} s per image (detect, end to end)".format(t_eval / n))


def draw_detections(model, dataset, out):
    """Draw the detections above ShapesInferenceConfig's 0.7 on the first image of
    ``dataset`` into the PNG ``out``."""
    from mrcnn import visualize
    image = dataset.load_image(dataset.image_ids[0])
    r = model.detect([image])[0]
    keep = r["scores"] >= ShapesInferenceConfig.DETECTION_MIN_CONFIDENCE
    r = dict(r, rois=r["rois"][keep], class_ids=r["class_ids"][keep],
             scores=r["scores"][keep], masks=r["masks"][:, :, keep])
    visualize.save_instances_png(out, image, r, dataset.class_names)
    print("Detections drawn to {}".format(out))


def main(argv=None):
    """Run a command of the command line ``argv`` (default sys.argv[1:])."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "train" and not args.model:
        parser.error("evaluate/detect need --model=last or a weights path")
    from mrcnn import model as modellib

    train_cfg, infer_cfg = run_configs(args.cascade, args.steps)
    dataset_train, dataset_val = make_datasets(train_cfg, args.train_images,
                                               args.val_images, args.seed)
    t0 = time.time()
    weights = None
    if args.command == "train":
        weights = train(args, train_cfg, dataset_train, dataset_val)
    infer = modellib.MaskRCNN("inference", infer_cfg, args.logs)
    if weights is None:
        weights = sample_cli.resolve_weights(infer, args.model, keywords=MODEL_KEYWORDS)
    infer.load_weights(weights, by_name=True, verbose=0)

    if args.command in ("train", "evaluate"):
        report_map(infer, dataset_val, infer_cfg, args.eval_images)
    draw_detections(infer, dataset_val,
                    args.out or os.path.join(os.path.dirname(weights), "shapes_detections.png"))
    print("Total time {:.1f} min".format((time.time() - t0) / 60))


if __name__ == "__main__":
    main()
