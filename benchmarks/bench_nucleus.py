"""DSB2018 nuclei from random initialisation under a wall-time budget, then pycocotools.

    python benchmarks/bench_nucleus.py --minutes 30 [--dataset ../shared/data/dsb2018]

Runs what ``python samples/nucleus.py train --scratch --weights=none --time-budget=30``
runs (NucleusScratchConfig: all layers from random weights, batch norm trained, Adam, the
learning rate lowered 10x for the last 20% of the budget) on the training split of
samples/nucleus.py (sorted image ids permuted with seed 42; 10% = 60 images held out for
validation), then evaluates bbox and segm AP on the validation split with
mrcnn.evaluate.evaluate_coco and prints segm AP@0.5 (the figure of issue 4) with the time
taken.
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

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--dataset", default=nucleus.DEFAULT_DATASET)
    p.add_argument("--logs", default=None)
    p.add_argument("--limit", type=int, default=None, help="validation images to evaluate")
    p.add_argument("--set", nargs="*", default=[], metavar="ATTR=VALUE",
                   help="Config overrides for training and inference (Python literals, as "
                        "bench_speed.py --set), e.g. IMAGE_MIN_SCALE=2.0")
    p.add_argument("--train-set", nargs="*", default=[], metavar="ATTR=VALUE",
                   help="Config overrides for training only, e.g. "
                        "MIXED_PRECISION=mixed_bfloat16 (evaluation stays float32)")
    args = p.parse_args()
    from bench_speed import parse_overrides
    overrides = parse_overrides(args.set)
    train_overrides = dict(overrides, **parse_overrides(args.train_set))

    from mrcnn import model as modellib
    from mrcnn.evaluate import (build_coco_gt, evaluate_coco, evaluate_detections,
                                format_metrics)

    logs = args.logs or tempfile.mkdtemp(prefix="bench_nucleus_")
    # Overrides as subclass attributes, so values Config derives in __init__ follow them.
    config = type("Bench", (nucleus.NucleusScratchConfig,), train_overrides)()
    model = modellib.MaskRCNN("training", config, logs)
    t0 = time.time()
    nucleus.train(model, config, args.dataset, "train", scratch=True,
                  time_budget=args.minutes)
    train_min = (time.time() - t0) / 60
    weights = model.find_last()

    infer_config = type("BenchInference", (nucleus.NucleusScratchInferenceConfig,),
                        overrides)()
    infer = modellib.MaskRCNN("inference", infer_config, logs)
    infer.load_weights(weights, by_name=True, verbose=0)
    val_ds = nucleus.NucleusDataset()
    val_ds.load_nucleus(args.dataset, "val")
    val_ds.prepare()
    t1 = time.time()
    results = os.path.join(logs, "val_detections.json")
    metrics = evaluate_coco(infer, val_ds, iou_types=("bbox", "segm"), limit=args.limit,
                            verbose=0, max_dets=infer.config.DETECTION_MAX_INSTANCES,
                            results_json=results)
    # The same detections under COCO's default cap of 100 per image, for comparison.
    ids = list(val_ds.image_ids)[:args.limit] if args.limit else list(val_ds.image_ids)
    with open(results) as f:
        capped = evaluate_detections(build_coco_gt(val_ds, ids), json.load(f),
                                     ("segm",))["segm"]
    eval_min = (time.time() - t1) / 60
    print(format_metrics(metrics))
    summary = {"train_minutes": round(train_min, 1), "epochs": model.epoch,
               "steps_per_epoch": config.STEPS_PER_EPOCH,
               "eval_minutes": round(eval_min, 1),
               "val_images": metrics.get("num_images"),
               "max_dets": infer.config.DETECTION_MAX_INSTANCES,
               "segm_AP50": round(float(metrics["segm"]["AP50"]), 4),
               "segm_AP50_maxdets100": round(float(capped["AP50"]), 4),
               "segm_AP": round(float(metrics["segm"]["AP"]), 4),
               "bbox_AP50": round(float(metrics["bbox"]["AP50"]), 4),
               "overrides": overrides, "train_overrides": train_overrides,
               "weights": weights}
    print("segm AP@0.5 on the validation split: {:.3f} with up to {} detections per image "
          "({:.3f} at COCO's 100) (trained {:.1f} min)".format(
              summary["segm_AP50"], summary["max_dets"], summary["segm_AP50_maxdets100"],
              train_min))
    print(json.dumps(summary))


if __name__ == "__main__":
    np.random.seed(0)
    main()
