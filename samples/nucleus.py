"""Mask R-CNN on the DSB2018 nuclei: train, evaluate and detect (Kaggle submission).

Same names and command line as Matterport's samples/nucleus/nucleus.py, sized for a small
CPU machine (see NucleusConfig). The dataset folder holds ``stage1_train/`` (and optionally
``stage1_test/`` ...), one folder per image id with ``images/<id>.png`` and ``masks/*.png``.

Train / val split: ``stage1_train`` has no official split, so "train" and "val" come from
``mrcnn.datasets.split_ids(stage1_train, VAL_FRACTION, SPLIT_SEED)``: the image ids,
sorted, permuted by ``np.random.RandomState(42)``; the first 10% (60 of the 600 shared
images) are "val", the other 540 "train". The split is fixed for a given set of ids.

Usage::

    python samples/nucleus.py train --weights=imagenet            # or coco / last / .h5
    python samples/nucleus.py train --scratch --weights=none --time-budget=30
                                          # from random weights on a CPU; evaluate with
                                          # evaluate --scratch --weights=last
    python samples/nucleus.py evaluate --weights=last             # COCO AP on "val"
    python samples/nucleus.py detect --weights=last --subset=val  # RLE submission + PNGs

``--dataset`` defaults to ``$MRCNN_SHARED_DATA/dsb2018`` (``../shared/data/dsb2018``).
Importing this module runs nothing; the model code is imported only by the commands.
"""

import datetime
import os
import sys

import numpy as np

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT_DIR not in sys.path:
    sys.path.insert(0, ROOT_DIR)

from mrcnn import datasets, sample_cli  # noqa: E402
from mrcnn.config import Config, cpu_supports_bfloat16  # noqa: E402

COCO_WEIGHTS_PATH, DEFAULT_LOGS_DIR, SHARED_DATA = sample_cli.sample_paths(ROOT_DIR)
RESULTS_DIR = os.path.join(ROOT_DIR, "results", "nucleus")
DEFAULT_DATASET = os.path.join(SHARED_DATA, "dsb2018")

VAL_FRACTION = 0.1
SPLIT_SEED = 42

COCO_HEAD_LAYERS = sample_cli.COCO_HEAD_LAYERS
# --weights: Matterport's keywords, and "none" (random initialisation, train only).
WEIGHT_KEYWORDS = sample_cli.WEIGHT_KEYWORDS + (sample_cli.NO_WEIGHTS,)


############################################################
#  Configurations
############################################################

class NucleusConfig(Config):
    """Training on DSB2018 nuclei, sized for a 2-core CPU.

    Differences from Matterport's GPU settings, and why:
    * random 256x256 crops (Matterport: 512, after a 2x upscale). IMAGE_MIN_SCALE = 0:
      images keep their native scale, so inference needs no 2x upscale of 1388x1040
      images either; the small anchors below cover nuclei of 8-40 px at native scale.
    * 2 images per batch, 100 steps per epoch (about a third of the 540 training images
      per epoch; more frequent checkpoints on a slow machine), 10 validation steps.
    * PRE_NMS_LIMIT 3000 instead of 6000 (a 256x256 crop has 16,368 anchors).
    Kept from Matterport: ResNet-50, anchors 8..128, RPN NMS 0.9 in training, 64 RPN
    anchors and 128 ROIs per image, 200 GT / 400 detections, the dataset's mean pixel.
    """
    NAME = "nucleus"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 1  # background + nucleus
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 10
    # Two classes: the box head's softmax already picks nucleus vs BG, keep everything.
    DETECTION_MIN_CONFIDENCE = 0
    BACKBONE = "resnet50"
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 256
    IMAGE_MAX_DIM = 256
    IMAGE_MIN_SCALE = 0
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    PRE_NMS_LIMIT = 3000
    POST_NMS_ROIS_TRAINING = 1000
    POST_NMS_ROIS_INFERENCE = 2000
    RPN_NMS_THRESHOLD = 0.9
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MEAN_PIXEL = np.array([43.53, 39.56, 48.22])
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)
    TRAIN_ROIS_PER_IMAGE = 128
    MAX_GT_INSTANCES = 200
    DETECTION_MAX_INSTANCES = 400


class _WholeImageInference(object):
    """Whole images, one at a time, padded to multiples of 64 (no resizing).

    IMAGE_MIN_DIM 256 only upscales images smaller than 256 px; IMAGE_MAX_DIM is not used
    by "pad64" (1408 = the largest DSB side, 1388, rounded up to 64).
    """
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 256
    IMAGE_MAX_DIM = 1408
    RPN_NMS_THRESHOLD = 0.7


class NucleusInferenceConfig(_WholeImageInference, NucleusConfig):
    """NucleusConfig for detection on whole images."""


class NucleusScratchConfig(NucleusConfig):
    """From random weights on a CPU in about half an hour (``train --scratch``).

    Batch norm is trained (from scratch there are no statistics to keep) with momentum 0.9
    so its moving averages follow a short run, and Adam replaces SGD: from random weights
    it reaches a given loss in a fraction of SGD's steps. The heads are narrower than
    Matterport's (pyramid and RPN conv 128 channels, 256-wide box FCs, 64-channel mask
    head), which makes a training step about 3x cheaper; nuclei are one class of simple
    blobs and do not need the width COCO's 80 classes do.

    The RPN needs care from scratch (measured by the share of its ReLU conv's units still
    active on a fixed batch): with Keras' default initialisation and Adam at 1e-3, every
    unit was off within 30-50 steps, with or without warm-up or weight decay, and the RPN
    stayed at its prior (rpn_class_loss ~0.65) for the rest of the run. Normal(0.01)
    initialisation (detectron2's), a 100-step warm-up and Adam at 3e-4 kept them active.
    A 256-px crop holds tens of nuclei: 256 RPN anchors per image (detectron2's count;
    Matterport's nucleus config: 64) and 200 ROIs raised segm AP@0.5 from 0.532 to 0.579
    in the same 30 minutes; 256 ROIs and Adam at 5e-4 (the RPN stays active after the
    warm-up) to 0.588. Training in bfloat16 on a CPU that does it natively (AVX512-BF16,
    AMX or Arm bf16; this machine: AVX512-BF16) makes a step 1.37x faster (0.98 -> 0.71 s):
    22 instead of 14 epochs in 30 minutes, 0.616. Elsewhere float32 (emulated bf16 would be
    slower). Weights stay float32 either way, and evaluation runs in float32.
    """
    NAME = "nucleus_scratch"
    MIXED_PRECISION = "mixed_bfloat16" if cpu_supports_bfloat16() else None
    TRAIN_BN = True
    BN_MOMENTUM = 0.9
    OPTIMIZER = "adam"
    LEARNING_RATE = 0.0005
    LEARNING_RATE_WARMUP_STEPS = 100
    RPN_INIT_STD = 0.01
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    TRAIN_ROIS_PER_IMAGE = 256
    TOP_DOWN_PYRAMID_SIZE = 128
    RPN_CONV_DIM = 128
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    MASK_HEAD_CONV_DIM = 64
    VALIDATION_STEPS = 5


class NucleusScratchInferenceConfig(_WholeImageInference, NucleusScratchConfig):
    """NucleusScratchConfig for detection on whole images, in float32 (as evaluated)."""
    MIXED_PRECISION = None


make_config = sample_cli.make_config


############################################################
#  Dataset
############################################################

class NucleusDataset(datasets.NucleusDataset):
    """DSB2018 nuclei with Matterport's subsets."""

    def load_nucleus(self, dataset_dir, subset, skip_bad=False, cache_masks=False):
        """Load a subset of the nuclei dataset.

        dataset_dir: root of the dataset (holding stage1_train/, ...).
        subset: "train" or "val" (the split of stage1_train described in the module
            docstring), or the name of a sub-folder such as "stage1_train" (all of it) or
            "stage1_test" (images without masks: load_mask returns no instances).
        cache_masks: keep decoded masks in memory (see mrcnn.datasets.NucleusDataset).
        """
        if subset in ("train", "val"):
            subset_dir = os.path.join(dataset_dir, "stage1_train")
            train_ids, val_ids = datasets.split_ids(subset_dir, val_fraction=VAL_FRACTION,
                                                    seed=SPLIT_SEED)
            ids = train_ids if subset == "train" else val_ids
        else:
            subset_dir = os.path.join(dataset_dir, subset)
            ids = datasets.list_nucleus_ids(subset_dir)
        super().load_nucleus(subset_dir, subset_ids=ids, skip_bad=skip_bad,
                             cache_masks=cache_masks)


############################################################
#  RLE (Kaggle submission format)
############################################################

def rle_encode(mask):
    """Kaggle DSB run-length encoding of a 2-D mask: "start length ..." with 1-based
    starts over the pixels in column-major (top-to-bottom, then left-to-right) order."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError("mask must be [H, W], got shape {}".format(mask.shape))
    flat = np.concatenate([[False], mask.T.reshape(-1) > 0, [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # run starts and (exclusive) ends
    starts, ends = edges[0::2], edges[1::2]
    return " ".join("{} {}".format(s + 1, e - s) for s, e in zip(starts, ends))


def rle_decode(rle, shape):
    """Inverse of rle_encode: "start length ..." -> bool mask of ``shape`` (H, W)."""
    height, width = shape
    values = np.asarray([int(v) for v in rle.split()], dtype=np.int64).reshape(-1, 2)
    flat = np.zeros(height * width, dtype=bool)
    for start, length in values:
        if start < 1 or start - 1 + length > flat.size:
            raise ValueError("run {} {} is outside a {}x{} mask".format(start, length,
                                                                       height, width))
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(width, height).T


def mask_to_rle(image_id, mask, scores):
    """Submission lines "image_id, rle" of an image's instances, overlaps removed.

    Each pixel goes to the highest-scoring instance covering it (the format forbids
    overlaps). An image with no instance gives "image_id," alone.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError("mask must be [H, W, N], got shape {}".format(mask.shape))
    if mask.shape[-1] == 0:
        return "{},".format(image_id)
    order = np.argsort(-np.asarray(scores), kind="stable")
    # Best instance first: a pixel belongs to the first instance that claims it.
    taken = np.zeros(mask.shape[:2], dtype=bool)
    lines = []
    for i in order:
        m = (mask[:, :, i] > 0) & ~taken
        taken |= m
        if m.any():
            lines.append("{}, {}".format(image_id, rle_encode(m)))
    return "\n".join(lines) if lines else "{},".format(image_id)


############################################################
#  Commands
############################################################

def resolve_weights(model, weights):
    """Weights path for "coco" (downloaded if absent), "last", "imagenet" or a path; None
    for "none" (see mrcnn.sample_cli.resolve_weights)."""
    return sample_cli.resolve_weights(model, weights, COCO_WEIGHTS_PATH, WEIGHT_KEYWORDS)


def load_dataset(dataset_dir, subset, cache_masks=False):
    """A prepared NucleusDataset of ``subset`` (see NucleusDataset.load_nucleus)."""
    dataset = NucleusDataset()
    dataset.load_nucleus(dataset_dir, subset, cache_masks=cache_masks)
    dataset.prepare()
    return dataset


def augmenter():
    """Matterport's nucleus augmentation: up to two of flips, 90-degree rotations,
    brightness and blur."""
    from mrcnn.augment import iaa
    return iaa.SomeOf((0, 2), [
        iaa.Fliplr(0.5),
        iaa.Flipud(0.5),
        iaa.OneOf([iaa.Affine(rotate=90), iaa.Affine(rotate=180), iaa.Affine(rotate=270)]),
        iaa.Multiply((0.8, 1.5)),
        iaa.GaussianBlur(sigma=(0.0, 5.0)),
    ])


def train(model, config, dataset_dir=DEFAULT_DATASET, subset="train", scratch=False,
          time_budget=None):
    """Matterport's schedule: heads to epoch 20, then all layers to epoch 40. With
    ``scratch`` (random weights) all layers from the start, to epoch 40. ``time_budget``
    (minutes) ends training early, with the learning rate lowered 10x for its last
    20% (mrcnn.training.TimeBudget). Augmentation: ``augmenter()``."""
    from mrcnn.training import TimeBudget

    # Every epoch reads the same masks again: keep them (as small crops) in memory.
    dataset_train = load_dataset(dataset_dir, subset, cache_masks=True)
    dataset_val = load_dataset(dataset_dir, "val", cache_masks=True)
    augmentation = augmenter()
    callbacks = [TimeBudget(time_budget)] if time_budget else []

    if not scratch:
        print("Train network heads")
        model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                    epochs=20, augmentation=augmentation, layers="heads",
                    custom_callbacks=callbacks)
        if callbacks and callbacks[0].expired():
            return
    print("Train all layers")
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=40, augmentation=augmentation, layers="all",
                custom_callbacks=callbacks)


def evaluate(model, dataset_dir=DEFAULT_DATASET, subset="val", limit=None,
             results_json=None):
    """COCO bbox and segm metrics on ``subset``; segm AP@0.5 is the headline number."""
    # Up to 400 nuclei per image: COCO's 100 detections per image would cap recall.
    metrics = sample_cli.evaluate_dataset(model, load_dataset(dataset_dir, subset),
                                          limit=limit, results_json=results_json,
                                          max_dets=model.config.DETECTION_MAX_INSTANCES)
    print("segm AP@0.5 ({} images): {:.3f}".format(metrics.get("num_images", "?"),
                                                   metrics["segm"]["AP50"]))
    return metrics


def detect(model, dataset_dir=DEFAULT_DATASET, subset="val", results_dir=RESULTS_DIR,
           save_images=True):
    """Detect nuclei on every image of ``subset``; write submit.csv (Kaggle RLE) and,
    when mrcnn.visualize is available, one PNG per image into a new folder of
    ``results_dir``. Returns that folder."""
    submit_dir = os.path.join(results_dir, "submit_{:%Y%m%dT%H%M%S}".format(
        datetime.datetime.now()))
    os.makedirs(submit_dir)
    dataset = load_dataset(dataset_dir, subset)

    plt = visualize = None
    if save_images:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from mrcnn import visualize
        except ImportError:
            save_images = False

    lines = []
    for image_id in dataset.image_ids:
        image = dataset.load_image(image_id)
        r = model.detect([image], verbose=0)[0]
        source_id = dataset.image_info[image_id]["id"]
        lines.append(mask_to_rle(source_id, r["masks"], r["scores"]))
        if save_images:
            visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"],
                                        dataset.class_names, r["scores"], show_bbox=False,
                                        show_mask=False, title="Predictions")
            plt.savefig(os.path.join(submit_dir, "{}.png".format(source_id)))
            plt.close("all")

    path = os.path.join(submit_dir, "submit.csv")
    with open(path, "w") as f:
        f.write("ImageId,EncodedPixels\n" + "\n".join(lines) + "\n")
    print("Saved to ", submit_dir)
    return submit_dir


def build_parser():
    """Matterport's nucleus command line, with --limit, --results, --cascade, --scratch and
    --time-budget."""
    parser = sample_cli.base_parser("Mask R-CNN for nuclei counting and segmentation",
                                    ("train", "evaluate", "detect"))
    sample_cli.add_dataset_arg(parser, DEFAULT_DATASET, "/path/to/dataset/",
                               "Root directory of the dataset")
    sample_cli.add_model_args(parser, DEFAULT_LOGS_DIR, keywords=WEIGHT_KEYWORDS,
                              weights_help=" (random initialisation, for train)")
    parser.add_argument("--subset", metavar="Dataset sub-directory", default=None,
                        help="Subset: train, val, or a sub-folder such as stage1_test "
                             "(default: train for train, val otherwise)")
    sample_cli.add_eval_args(parser)
    parser.add_argument("--scratch", action="store_true",
                        help="NucleusScratchConfig: the model for training from random "
                             "weights (all layers, Adam); use it for evaluate/detect too")
    parser.add_argument("--time-budget", type=float, default=None, metavar="<minutes>",
                        help="train: stop after this many minutes (the learning rate drops "
                             "10x for the last 20%%)")
    return parser


def config_class_for(command, scratch=False):
    """The Config class of ``command``: (scratch) training config for "train", the
    whole-image inference config otherwise."""
    if command == "train":
        return NucleusScratchConfig if scratch else NucleusConfig
    return NucleusScratchInferenceConfig if scratch else NucleusInferenceConfig


def main(argv=None):
    """Run a command of the command line ``argv`` (default sys.argv[1:]); returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.weights.lower() == sample_cli.NO_WEIGHTS and args.command != "train":
        parser.error("--weights=none (random initialisation) is for train only")
    subset = args.subset or ("train" if args.command == "train" else "val")
    sample_cli.print_settings(("Weights", args.weights), ("Dataset", args.dataset),
                              ("Subset", subset), ("Logs", args.logs))
    model = sample_cli.build_model(args.command, config_class_for(args.command, args.scratch),
                                   args.cascade, args.logs)
    sample_cli.load_weights(model, args.weights, COCO_WEIGHTS_PATH, WEIGHT_KEYWORDS)

    if args.command == "train":
        train(model, model.config, args.dataset, subset, scratch=args.scratch,
              time_budget=args.time_budget)
    elif args.command == "evaluate":
        evaluate(model, args.dataset, subset, limit=args.limit, results_json=args.results)
    else:
        detect(model, args.dataset, subset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
