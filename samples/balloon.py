"""Mask R-CNN on the balloon set: train, evaluate, and the colour-splash effect.

Same names and command line as Matterport's samples/balloon/balloon.py. The dataset folder
holds ``train/`` and ``val/``, each with JPEGs and a VIA ``via_region_data.json``. When only
``train/`` exists (as in ``../shared/data/balloon``), "train" and "val" are a fixed split of
its annotated images (see ``BalloonDataset.load_balloon``).

Usage::

    # Train from the COCO-trained weights (or imagenet / last / a .h5 path)
    python samples/balloon.py train --dataset=../shared/data/balloon --weights=coco
    # COCO-style AP (bbox and segm) on the validation images
    python samples/balloon.py evaluate --weights=last
    # Colour splash on an image or a video
    python samples/balloon.py splash --weights=last --image=<path or URL>
    python samples/balloon.py splash --weights=last --video=<path>

``--dataset`` defaults to ``$MRCNN_SHARED_DATA/balloon`` (``../shared/data/balloon``).
Importing this module runs nothing; the model code is imported only by the commands.
"""

import datetime
import os
import sys

import numpy as np

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT_DIR not in sys.path:
    sys.path.insert(0, ROOT_DIR)

from mrcnn import sample_cli  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.datasets import MissingFileError, ViaDataset, read_via_json, split_items  # noqa: E402

COCO_WEIGHTS_PATH, DEFAULT_LOGS_DIR, SHARED_DATA = sample_cli.sample_paths(ROOT_DIR)
DEFAULT_DATASET = os.path.join(SHARED_DATA, "balloon")

# Split used when the dataset has no val/ folder: of the annotated images of train/
# (sorted file names), round(20%) chosen by np.random.RandomState(42) are "val", the rest
# "train". For the 53 annotated images of the shared set: 42 train / 11 val.
VAL_FRACTION = 0.2
SPLIT_SEED = 42

# Layers whose shapes depend on NUM_CLASSES: not loaded from the 81-class COCO weights.
COCO_HEAD_LAYERS = sample_cli.COCO_HEAD_LAYERS


############################################################
#  Configurations
############################################################

class BalloonConfig(Config):
    """Training on the balloon set (Matterport's values)."""
    NAME = "balloon"
    # Two images fit a 12 GB GPU.
    IMAGES_PER_GPU = 2
    # Background + balloon.
    NUM_CLASSES = 1 + 1
    STEPS_PER_EPOCH = 100
    # Skip detections with < 90% confidence.
    DETECTION_MIN_CONFIDENCE = 0.9


class BalloonInferenceConfig(BalloonConfig):
    """One image at a time (splash)."""
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1


class BalloonEvalConfig(BalloonInferenceConfig):
    """Evaluation keeps every detection: COCO AP needs the whole score ranking."""
    DETECTION_MIN_CONFIDENCE = 0


make_config = sample_cli.make_config


############################################################
#  Dataset
############################################################

class BalloonDataset(ViaDataset):
    """Balloons annotated as VIA polygons; one class, source "balloon"."""

    def load_balloon(self, dataset_dir, subset, skip_bad=False):
        """Load the "train" or "val" subset of the balloon set.

        When dataset_dir/val/ exists, dataset_dir/<subset>/ with its via_region_data.json
        is used (Matterport's layout). Otherwise the annotated images of dataset_dir/train/
        are split deterministically (VAL_FRACTION, SPLIT_SEED; see
        mrcnn.datasets.split_items) and ``subset`` picks one side. Images without
        regions are skipped (listed in ``self.unannotated``).
        """
        if subset not in ("train", "val"):
            raise ValueError("subset must be 'train' or 'val', got {!r}".format(subset))
        train_dir = os.path.join(dataset_dir, "train")
        if os.path.isdir(os.path.join(dataset_dir, "val")):
            self.load_via(os.path.join(dataset_dir, subset), class_name="balloon",
                          skip_bad=skip_bad)
            return
        if not os.path.isdir(train_dir):
            raise MissingFileError("balloon dataset: {} has no train/ folder".format(
                dataset_dir))
        train_names, val_names = self.split(train_dir)
        self.load_via(train_dir, class_name="balloon", skip_bad=skip_bad,
                      filenames=train_names if subset == "train" else val_names)

    @staticmethod
    def split(train_dir, annotation_file="via_region_data.json"):
        """(train file names, val file names) of the annotated images of ``train_dir``."""
        entries = read_via_json(os.path.join(train_dir, annotation_file))
        annotated = sorted({e["filename"] for e in entries if e.get("regions")})
        return split_items(annotated, val_fraction=VAL_FRACTION, seed=SPLIT_SEED)


############################################################
#  Colour splash
############################################################

def color_splash(image, mask):
    """Grayscale copy of ``image`` with the masked pixels kept in colour.

    image: RGB [H, W, 3]. mask: instance masks [H, W, N] (N may be 0).
    Returns uint8 [H, W, 3].
    """
    import skimage.color
    image = np.asarray(image)
    gray = skimage.color.gray2rgb(skimage.color.rgb2gray(image)) * 255
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] > 0:
        keep = np.any(mask, axis=-1, keepdims=True)
        splash = np.where(keep, image, gray)
    else:
        splash = gray
    return np.clip(np.round(splash), 0, 255).astype(np.uint8)


def detect_and_color_splash(model, image_path=None, video_path=None, output_dir="."):
    """Run detection on an image (path or URL) or every frame of a video and save the
    colour splash as splash_<time>.png / .avi in ``output_dir``. Returns the file path."""
    if not (image_path or video_path):
        raise ValueError("give image_path or video_path")
    os.makedirs(output_dir, exist_ok=True)
    stamp = "{:%Y%m%dT%H%M%S}".format(datetime.datetime.now())
    if image_path:
        import skimage.io
        print("Running on {}".format(image_path))
        image = skimage.io.imread(image_path)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = image[..., :3]
        r = model.detect([image], verbose=1)[0]
        splash = color_splash(image, r["masks"])
        file_name = os.path.join(output_dir, "splash_{}.png".format(stamp))
        skimage.io.imsave(file_name, splash)
    else:
        import cv2
        capture = cv2.VideoCapture(video_path)
        if not capture.isOpened():
            raise FileNotFoundError("cannot open video {}".format(video_path))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = capture.get(cv2.CAP_PROP_FPS) or 25
        file_name = os.path.join(output_dir, "splash_{}.avi".format(stamp))
        writer = cv2.VideoWriter(file_name, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                 (width, height))
        count = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                image = frame[..., ::-1]  # OpenCV frames are BGR
                r = model.detect([image], verbose=0)[0]
                writer.write(color_splash(image, r["masks"])[..., ::-1])
                count += 1
                print("frame: ", count)
        finally:
            capture.release()
            writer.release()
    print("Saved to ", file_name)
    return file_name


############################################################
#  Commands
############################################################

def resolve_weights(model, weights):
    """Weights path for "coco" (downloaded if absent), "last", "imagenet" or a path
    (see mrcnn.sample_cli.resolve_weights)."""
    return sample_cli.resolve_weights(model, weights, COCO_WEIGHTS_PATH)


def load_dataset(dataset_dir, subset):
    """A prepared BalloonDataset of ``subset`` ("train" or "val")."""
    dataset = BalloonDataset()
    dataset.load_balloon(dataset_dir, subset)
    dataset.prepare()
    return dataset


def load_datasets(dataset_dir):
    """Prepared (train, val) BalloonDatasets."""
    return load_dataset(dataset_dir, "train"), load_dataset(dataset_dir, "val")


def train(model, config, dataset_dir=DEFAULT_DATASET):
    """Matterport's schedule: the heads only, 30 epochs (enough from COCO weights)."""
    dataset_train, dataset_val = load_datasets(dataset_dir)
    print("Training network heads")
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=30, layers="heads")


def evaluate(model, dataset_dir=DEFAULT_DATASET, limit=None, results_json=None):
    """COCO-style bbox and segm AP on the validation images; prints and returns them."""
    return sample_cli.evaluate_dataset(model, load_dataset(dataset_dir, "val"), limit=limit,
                                       results_json=results_json)


def build_parser():
    """Matterport's balloon command line, with evaluate, --limit, --results, --cascade."""
    parser = sample_cli.base_parser("Train Mask R-CNN to detect balloons.",
                                    ("train", "evaluate", "splash"))
    sample_cli.add_dataset_arg(parser, DEFAULT_DATASET, "/path/to/balloon/dataset/",
                               "Directory of the Balloon dataset")
    sample_cli.add_model_args(parser, DEFAULT_LOGS_DIR)
    parser.add_argument("--image", metavar="path or URL to image",
                        help="Image to apply the color splash effect on")
    parser.add_argument("--video", metavar="path or URL to video",
                        help="Video to apply the color splash effect on")
    sample_cli.add_eval_args(parser, limit_help="evaluate: only the first N validation images")
    return parser


def main(argv=None):
    """Run a command of the command line ``argv`` (default sys.argv[1:]); returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "splash" and not (args.image or args.video):
        parser.error("splash needs --image or --video")
    sample_cli.print_settings(("Weights", args.weights), ("Dataset", args.dataset),
                              ("Logs", args.logs))
    config_class = {"train": BalloonConfig, "evaluate": BalloonEvalConfig,
                    "splash": BalloonInferenceConfig}[args.command]
    model = sample_cli.build_model(args.command, config_class, args.cascade, args.logs)
    sample_cli.load_weights(model, args.weights, COCO_WEIGHTS_PATH)

    if args.command == "train":
        train(model, model.config, args.dataset)
    elif args.command == "evaluate":
        evaluate(model, args.dataset, limit=args.limit, results_json=args.results)
    else:
        detect_and_color_splash(model, image_path=args.image, video_path=args.video)
    return 0


if __name__ == "__main__":
    sys.exit(main())
