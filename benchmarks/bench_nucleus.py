"""DSB2018 nuclei from random initialisation under a wall-time budget, then pycocotools.

    python benchmarks/bench_nucleus.py --minutes 30 [--dataset ../shared/data/dsb2018]

Trains all layers from random weights (batch norm trained, Adam) on the training split of
samples/nucleus.py (sorted image ids permuted with seed 42; 10% = 60 images held out for
validation), stops after --minutes of training, then evaluates bbox and segm AP on the
validation split with mrcnn.evaluate.evaluate_coco and prints segm AP@0.5 (the figure of
issue 4) with the time taken.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def main():
    import samples.nucleus as nucleus
    from samples.shapes import TimeBudget

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--dataset", default=nucleus.DEFAULT_DATASET)
    p.add_argument("--logs", default=None)
    p.add_argument("--limit", type=int, default=None, help="validation images to evaluate")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()

    from mrcnn import model as modellib
    from mrcnn.augment import iaa
    from mrcnn.evaluate import evaluate_coco, format_metrics

    class ScratchConfig(nucleus.NucleusConfig):
        NAME = "nucleus_scratch"
        TRAIN_BN = True
        BN_MOMENTUM = 0.9
        OPTIMIZER = "adam"
        LEARNING_RATE = args.lr
        STEPS_PER_EPOCH = 100
        VALIDATION_STEPS = 5

    class ScratchInference(nucleus.NucleusInferenceConfig):
        NAME = "nucleus_scratch"
        TRAIN_BN = True

    logs = args.logs or tempfile.mkdtemp(prefix="bench_nucleus_")
    train_ds = nucleus.NucleusDataset()
    train_ds.load_nucleus(args.dataset, "train")
    train_ds.prepare()
    val_ds = nucleus.NucleusDataset()
    val_ds.load_nucleus(args.dataset, "val")
    val_ds.prepare()
    print("train images {}, val images {}".format(len(train_ds.image_ids),
                                                  len(val_ds.image_ids)), flush=True)

    config = ScratchConfig()
    model = modellib.MaskRCNN("training", config, logs)
    augmentation = iaa.SomeOf((0, 2), [iaa.Fliplr(0.5), iaa.Flipud(0.5),
                                       iaa.Rot90([1, 2, 3])])
    t0 = time.time()
    model.train(train_ds, val_ds, learning_rate=config.LEARNING_RATE, epochs=1000,
                layers="all", augmentation=augmentation,
                custom_callbacks=[TimeBudget.make(args.minutes)], verbose=2)
    train_min = (time.time() - t0) / 60
    weights = model.find_last()

    infer = modellib.MaskRCNN("inference", ScratchInference(), logs)
    infer.load_weights(weights, by_name=True, verbose=0)
    t1 = time.time()
    metrics = evaluate_coco(infer, val_ds, iou_types=("bbox", "segm"), limit=args.limit,
                            verbose=0)
    eval_min = (time.time() - t1) / 60
    print(format_metrics(metrics))
    summary = {"train_minutes": round(train_min, 1), "epochs": model.epoch,
               "eval_minutes": round(eval_min, 1),
               "val_images": metrics.get("num_images"),
               "segm_AP50": round(float(metrics["segm"]["AP50"]), 4),
               "segm_AP": round(float(metrics["segm"]["AP"]), 4),
               "bbox_AP50": round(float(metrics["bbox"]["AP50"]), 4),
               "weights": weights}
    print("segm AP@0.5 on the validation split: {:.3f} (trained {:.1f} min)".format(
        summary["segm_AP50"], train_min))
    print(json.dumps(summary))


if __name__ == "__main__":
    np.random.seed(0)
    main()
