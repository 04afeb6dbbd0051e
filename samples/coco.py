"""Mask R-CNN on MS COCO: configuration, dataset loading, training and evaluation.

Same names and command line as Matterport's samples/coco/coco.py. The dataset folder uses
the standard COCO layout::

    <dataset>/annotations/instances_<subset><year>.json
    <dataset>/<subset><year>/*.jpg        (minival / valminusminival images live in val<year>)

Usage::

    # Train from the COCO-trained weights (or imagenet / last / a .h5 path)
    python samples/coco.py train --dataset=/path/to/coco --model=coco
    # Also download COCO images and annotations first
    python samples/coco.py train --dataset=/path/to/coco --model=imagenet --download=True
    # Cascade Mask R-CNN
    python samples/coco.py train --dataset=/path/to/coco --model=imagenet --cascade
    # COCO evaluation (bbox and segm) of the last trained model on 500 images
    python samples/coco.py evaluate --dataset=/path/to/coco --model=last --limit=500

Importing this module runs nothing; the model code is imported only by the commands.
"""

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile

import numpy as np
from pycocotools import mask as maskUtils

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT_DIR not in sys.path:
    sys.path.insert(0, ROOT_DIR)

from mrcnn import sample_cli  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.datasets import CocoJsonDataset  # noqa: E402

# Matterport's COCO-trained weights (downloaded on first use of --model=coco).
COCO_MODEL_PATH, DEFAULT_LOGS_DIR, _ = sample_cli.sample_paths(ROOT_DIR)
DEFAULT_DATASET_YEAR = "2014"

IMAGES_URL = "http://images.cocodataset.org/zips/{}{}.zip"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval{}.zip"
# The 2014 minival / valminusminival splits (Detectron's), as linked by Matterport.
MINIVAL_URLS = {
    "minival": "https://dl.dropboxusercontent.com/s/o43o90bna78omob/"
               "instances_minival2014.json.zip?dl=0",
    "valminusminival": "https://dl.dropboxusercontent.com/s/s3tw5zcg7395368/"
                       "instances_valminusminival2014.json.zip?dl=0",
}


############################################################
#  Configurations
############################################################

class CocoConfig(Config):
    """Training on MS COCO (Matterport's values)."""
    NAME = "coco"
    # Two 1024x1024 images fit a 12 GB GPU.
    IMAGES_PER_GPU = 2
    # Background + 80 classes.
    NUM_CLASSES = 1 + 80


class CocoInferenceConfig(CocoConfig):
    """One image at a time; keep every detection so COCO AP sees the full ranking."""
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0


make_config = sample_cli.make_config


############################################################
#  Dataset
############################################################

class CocoDataset(CocoJsonDataset):
    """COCO instances (polygons, RLE, crowds as negative class ids) in the COCO layout."""

    def load_coco(self, dataset_dir, subset, year=DEFAULT_DATASET_YEAR, class_ids=None,
                  class_map=None, return_coco=False, auto_download=False, skip_bad=False):
        """Load a subset of the COCO dataset.

        dataset_dir: root of the COCO dataset.
        subset: "train", "val", "minival" or "valminusminival" (the last two: 2014 only;
            their images are in val<year>).
        year: "2014" or "2017", as a string.
        class_ids: if given, only these COCO category ids and the images that contain them.
        class_map: accepted and unused, as in Matterport.
        return_coco: return the pycocotools COCO object of the loaded part.
        auto_download: download and unzip images and annotations first (see auto_download).
        skip_bad: skip (and record in self.skipped) bad entries instead of raising.
        """
        if auto_download is True:
            self.auto_download(dataset_dir, subset, year)
        annotation_path = os.path.join(dataset_dir, "annotations",
                                       "instances_{}{}.json".format(subset, year))
        image_subset = "val" if subset in ("minival", "valminusminival") else subset
        image_dir = os.path.join(dataset_dir, "{}{}".format(image_subset, year))
        return self.load_coco_json(annotation_path, image_dir, class_ids=class_ids,
                                   source="coco", skip_bad=skip_bad, return_coco=return_coco)

    def auto_download(self, dataDir, dataType, dataYear):
        """Download and unzip the COCO images and annotations of one subset if missing.

        dataType: "train", "val", "minival" or "valminusminival" (the last two: 2014).
        Downloads go to a temporary file renamed when complete, and archives are unpacked
        into a temporary folder whose content is then moved into place, so an interrupted
        run never leaves a partial zip or a half-filled image folder behind.
        """
        image_type = "val" if dataType in ("minival", "valminusminival") else dataType
        image_dir = os.path.join(dataDir, "{}{}".format(image_type, dataYear))
        os.makedirs(dataDir, exist_ok=True)
        if not os.path.exists(image_dir):
            zip_path = os.path.join(dataDir, "{}{}.zip".format(image_type, dataYear))
            if not os.path.exists(zip_path):
                print("Downloading images to " + zip_path + " ...")
                _download_atomic(IMAGES_URL.format(image_type, dataYear), zip_path)
            print("Unzipping " + zip_path)
            _extract_atomic(zip_path, dataDir)
        print("Will use images in " + image_dir)

        ann_dir = os.path.join(dataDir, "annotations")
        os.makedirs(ann_dir, exist_ok=True)
        ann_file = os.path.join(ann_dir, "instances_{}{}.json".format(dataType, dataYear))
        if dataType in MINIVAL_URLS:
            if dataYear != "2014":
                raise ValueError("{} exists only for 2014, not {}".format(dataType, dataYear))
            zip_path = os.path.join(dataDir, "instances_{}2014.json.zip".format(dataType))
            url, unzip_dir = MINIVAL_URLS[dataType], ann_dir
        else:
            zip_path = os.path.join(dataDir, "annotations_trainval{}.zip".format(dataYear))
            url, unzip_dir = ANNOTATIONS_URL.format(dataYear), dataDir
        if not os.path.exists(ann_file):
            if not os.path.exists(zip_path):
                print("Downloading zipped annotations to " + zip_path + " ...")
                _download_atomic(url, zip_path)
            print("Unzipping " + zip_path)
            _extract_atomic(zip_path, unzip_dir)
        print("Will use annotations in " + ann_file)

    def image_reference(self, image_id):
        """Link to the image on the COCO website."""
        info = self.image_info[image_id]
        if info["source"] == "coco":
            return "http://cocodataset.org/#explore?id={}".format(info["id"])
        return super().image_reference(image_id)


def _download_atomic(url, path):
    """Download ``url`` to ``path`` through a temporary file in the same folder."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    print("... done downloading.")


def _extract_atomic(zip_path, dest_dir):
    """Unzip into a temporary folder of ``dest_dir``, then move each top-level entry in.

    A top-level folder that does not exist yet is moved with one rename (it appears
    complete or not at all); into an existing folder, missing files are moved one by one.
    """
    tmp = tempfile.mkdtemp(prefix=".unzip-", dir=dest_dir)
    try:
        with zipfile.ZipFile(zip_path, "r") as z:
            z.extractall(tmp)
        for root, dirs, files in os.walk(tmp, topdown=True):
            rel = os.path.relpath(root, tmp)
            target_root = dest_dir if rel == "." else os.path.join(dest_dir, rel)
            for d in list(dirs):
                target = os.path.join(target_root, d)
                if not os.path.exists(target):
                    os.replace(os.path.join(root, d), target)
                    dirs.remove(d)  # moved whole: do not walk into it
            for f in files:
                target = os.path.join(target_root, f)
                if not os.path.exists(target):
                    os.replace(os.path.join(root, f), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("... done unzipping")


############################################################
#  COCO results
############################################################

def build_coco_results(dataset, image_ids, rois, class_ids, scores, masks):
    """Detections of ONE image in the COCO results format (Matterport's helper).

    dataset: the CocoDataset (maps internal class ids back to COCO category ids).
    image_ids: the COCO image id, or a one-element list of it.
    rois: [N, (y1, x1, y2, x2)] pixels; class_ids [N] internal; scores [N];
    masks: [H, W, N] (bool or uint8).
    Returns a list of dicts image_id, category_id, bbox [x, y, w, h], score and
    segmentation (compressed RLE with str counts, JSON-ready).
    """
    if rois is None:
        return []
    ids = list(np.atleast_1d(image_ids))
    if len(ids) != 1:
        raise ValueError("build_coco_results converts the detections of one image; got "
                         "{} image ids".format(len(ids)))
    image_id = ids[0]
    image_id = int(image_id) if isinstance(image_id, (int, np.integer)) else image_id
    results = []
    for i in range(rois.shape[0]):
        y1, x1, y2, x2 = [float(v) for v in np.around(rois[i], 1)]
        rle = maskUtils.encode(np.asfortranarray(masks[:, :, i].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({
            "image_id": image_id,
            "category_id": dataset.get_source_class_id(int(class_ids[i]), "coco"),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[i]),
            "segmentation": rle,
        })
    return results


############################################################
#  Commands
############################################################

def resolve_weights(model, weights):
    """Weights path for "coco" (downloaded if absent), "last", "imagenet" or a path
    (see mrcnn.sample_cli.resolve_weights)."""
    return sample_cli.resolve_weights(model, weights, COCO_MODEL_PATH)


def load_val_dataset(dataset_dir, year=DEFAULT_DATASET_YEAR, download=False):
    """The prepared validation CocoDataset: val2017, or minival for 2014."""
    dataset_val = CocoDataset()
    val_type = "val" if year == "2017" else "minival"
    dataset_val.load_coco(dataset_dir, val_type, year=year, auto_download=download)
    dataset_val.prepare()
    return dataset_val


def train(model, config, dataset_dir, year=DEFAULT_DATASET_YEAR, download=False):
    """Matterport's staged schedule: heads to epoch 40, ResNet stage 4+ to 120, all
    layers to 160 at a tenth of the learning rate; horizontal flips half of the time."""
    from mrcnn.augment import iaa

    # Train on train (+ valminusminival for 2014: the 35k val images of the paper).
    dataset_train = CocoDataset()
    dataset_train.load_coco(dataset_dir, "train", year=year, auto_download=download)
    if year == "2014":
        dataset_train.load_coco(dataset_dir, "valminusminival", year=year,
                                auto_download=download)
    dataset_train.prepare()
    dataset_val = load_val_dataset(dataset_dir, year, download)

    augmentation = iaa.Fliplr(0.5)

    print("Training network heads")
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=40, layers="heads", augmentation=augmentation)
    print("Fine tune Resnet stage 4 and up")
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=120, layers="4+", augmentation=augmentation)
    print("Fine tune all layers")
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE / 10,
                epochs=160, layers="all", augmentation=augmentation)


def evaluate(model, dataset_dir, year=DEFAULT_DATASET_YEAR, limit=500, results_json=None,
             download=False):
    """COCO bbox and segm evaluation on val2017 / minival2014 (first ``limit`` images).

    Prints the metrics table, writes the detections to ``results_json`` (ids are the
    dataset's internal image / class ids, see mrcnn.evaluate) and returns the metrics.
    """
    dataset_val = load_val_dataset(dataset_dir, year, download)
    print("Running COCO evaluation on {} images.".format(limit or dataset_val.num_images))
    metrics = sample_cli.evaluate_dataset(model, dataset_val, limit=limit or None,
                                          results_json=results_json)
    if results_json:
        print("Detections written to", results_json)
    return metrics


def str2bool(value):
    """argparse type for Matterport's --download=True/False."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "1", "yes", "y"):
        return True
    if value.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError("expected True or False, got {!r}".format(value))


def build_parser():
    """Matterport's coco command line (--model, --year, --download), with --cascade and
    --results."""
    parser = sample_cli.base_parser("Train Mask R-CNN on MS COCO.", ("train", "evaluate"),
                                    "'train' or 'evaluate' on MS COCO")
    sample_cli.add_dataset_arg(parser, metavar="/path/to/coco/",
                               help="Directory of the MS-COCO dataset")
    parser.add_argument("--year", default=DEFAULT_DATASET_YEAR, metavar="<year>",
                        help="Year of the MS-COCO dataset (2014 or 2017) (default=2014)")
    sample_cli.add_model_args(parser, DEFAULT_LOGS_DIR, flag="--model")
    parser.add_argument("--download", type=str2bool, nargs="?", const=True, default=False,
                        metavar="<True|False>",
                        help="Automatically download and unzip MS-COCO files (default=False)")
    sample_cli.add_eval_args(
        parser, limit=500, limit_help="Images to use for evaluation, 0 = all (default=500)",
        results_help="Where evaluate writes the detections (default: "
                     "<logs>/coco_results_<year>_<time>.json)")
    return parser


def results_path(results, logs_dir, year):
    """``results``, by default <logs_dir>/coco_results_<year>_<time>.json; its folder is
    created."""
    results = results or os.path.join(logs_dir, "coco_results_{}_{:%Y%m%dT%H%M%S}.json".format(
        year, datetime.datetime.now()))
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    return results


def main(argv=None):
    """Run a command of the command line ``argv`` (default sys.argv[1:]); returns 0."""
    args = build_parser().parse_args(argv)
    sample_cli.print_settings(
        ("Command", args.command), ("Model", args.model), ("Dataset", args.dataset),
        ("Year", args.year), ("Logs", args.logs), ("Auto Download", args.download),
        ("Cascade", args.cascade))
    config_class = CocoConfig if args.command == "train" else CocoInferenceConfig
    model = sample_cli.build_model(args.command, config_class, args.cascade, args.logs)
    # The model has COCO's 81 classes: --model=coco loads the heads too.
    sample_cli.load_weights(model, args.model, COCO_MODEL_PATH, coco_heads=True)

    if args.command == "train":
        train(model, model.config, args.dataset, year=args.year, download=args.download)
    else:
        evaluate(model, args.dataset, year=args.year, limit=args.limit,
                 results_json=results_path(args.results, args.logs, args.year),
                 download=args.download)
    return 0


if __name__ == "__main__":
    sys.exit(main())
