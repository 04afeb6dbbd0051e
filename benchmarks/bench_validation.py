"""Cost of validation during training (issue 18): COCO evaluation every epoch against
the epoch's training time, and the best checkpoint's AP against the best logged value.

    python benchmarks/bench_validation.py [--epochs 3] [--val-images 50]
                                          [--min-confidence 0.0] [--logs DIR]

Trains samples/shapes.py's ShapesConfig (its STEPS_PER_EPOCH, VALIDATION_STEPS, batch)
from random weights on 500 generated training images, with an EvaluationCallback
(every epoch, 50 generated validation images, 3 drawn into TensorBoard; the class
train(evaluate_every=1) uses) and keep_best="val_segm_AP". The inference model is the
training config on one replica with DETECTION_MIN_CONFIDENCE = --min-confidence (0, as
samples/shapes.py evaluates: every one of the 20 detections per image is unmolded and
scored, the most expensive evaluation; ShapesConfig's 0.7 keeps few early in training,
which makes evaluation cheaper and the AP near 0). Per epoch it prints the
training time (first step to last step, wall and process CPU), the evaluation time
(weight copy + evaluate_coco + drawing) and their ratio; epoch 1 includes the traces of
both graphs, so the issue's figure (evaluation <= 10% of an epoch) is read on the later
epochs. Then it loads mask_rcnn_shapes_best.h5 into a separate inference model,
re-evaluates it and checks its segm AP equals the best logged val_segm_AP (1e-6).
The machine is shared: wall seconds vary with other jobs; CPU seconds less so.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402

from mrcnn import evaluate  # noqa: E402
from mrcnn import model as modellib  # noqa: E402
from mrcnn.training import EvaluationCallback  # noqa: E402
from samples.shapes import ShapesConfig, ShapesDataset  # noqa: E402

JSON_PREFIX = "BENCH_JSON "


class EpochTimer(keras.callbacks.Callback):
    """Wall and CPU seconds from each epoch's start to its last training step."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.time(), time.process_time())

    def on_train_batch_end(self, batch, logs=None):
        self._end = (time.time(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((self._end[0] - self._start[0], self._end[1] - self._start[1]))


class CpuTimedEvaluation(EvaluationCallback):
    """EvaluationCallback also recording the process CPU seconds of each evaluation."""

    cpu_seconds = ()

    def on_epoch_end(self, epoch, logs=None):
        c0, n = time.process_time(), len(self.evaluations)
        super().on_epoch_end(epoch, logs)
        if len(self.evaluations) > n:
            self.cpu_seconds = tuple(self.cpu_seconds) + (time.process_time() - c0,)


def shapes(count, seed):
    ds = ShapesDataset()
    ds.load_shapes(count, ShapesConfig.IMAGE_MAX_DIM, ShapesConfig.IMAGE_MAX_DIM, seed=seed)
    ds.prepare()
    return ds


def eval_config(min_confidence):
    """ShapesConfig on one replica (as train(evaluate_every=...) builds it) with the
    given DETECTION_MIN_CONFIDENCE."""
    config = ShapesConfig()
    config.GPU_COUNT, config.BATCH_SIZE = 1, config.IMAGES_PER_GPU
    config.DETECTION_MIN_CONFIDENCE = min_confidence
    return config


def run(epochs, val_images, logs, min_confidence):
    config = ShapesConfig()
    train, val = shapes(500, seed=1), shapes(val_images, seed=2)
    model = modellib.MaskRCNN("training", config, logs)
    inference = modellib.MaskRCNN("inference", eval_config(min_confidence), logs)
    evaluation = CpuTimedEvaluation(val, inference, every=1, log_dir=model.log_dir,
                                    verbose=1)
    timer = EpochTimer()
    history = model.train(train, val, config.LEARNING_RATE, epochs, "all",
                          custom_callbacks=[evaluation, timer], keep_best="val_segm_AP",
                          verbose=2)
    rows = []
    for i, ((wall, cpu), (epoch, _, eval_wall)) in enumerate(zip(timer.epochs,
                                                                 evaluation.evaluations)):
        eval_cpu = evaluation.cpu_seconds[i]
        rows.append(dict(epoch=epoch, train_s=wall, train_cpu_s=cpu, eval_s=eval_wall,
                         eval_cpu_s=eval_cpu, ratio=eval_wall / wall,
                         ratio_cpu=eval_cpu / cpu,
                         val_segm_AP=history.history["val_segm_AP"][i]))
    return model, val, history, rows


def reevaluate_best(model, val, min_confidence):
    """segm AP of mask_rcnn_shapes_best.h5 in a new inference model of the same
    config as the callback's."""
    checker = modellib.MaskRCNN("inference", eval_config(min_confidence), model.model_dir)
    path = model.find_best()
    checker.load_weights(path, verbose=0)
    return path, evaluate.evaluate_coco(checker, val, verbose=0)["segm"]["AP"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--val-images", type=int, default=50)
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="DETECTION_MIN_CONFIDENCE of the evaluated model (default 0)")
    p.add_argument("--logs", default=None)
    args = p.parse_args()
    logs = args.logs or tempfile.mkdtemp(prefix="bench_validation_")
    model, val, history, rows = run(args.epochs, args.val_images, logs,
                                    args.min_confidence)
    print("\nepoch  train s (cpu)      eval s (cpu)     eval/train (cpu)  val_segm_AP")
    for r in rows:
        print("{epoch:5d}  {train_s:6.1f} ({train_cpu_s:6.1f})  {eval_s:6.1f} "
              "({eval_cpu_s:6.1f})  {ratio:6.1%} ({ratio_cpu:6.1%})   "
              "{val_segm_AP:.4f}".format(**r))
    later = rows[1:] or rows
    ratio = sum(r["eval_s"] for r in later) / sum(r["train_s"] for r in later)
    ratio_cpu = sum(r["eval_cpu_s"] for r in later) / sum(r["train_cpu_s"] for r in later)
    best_logged = max(history.history["val_segm_AP"])
    path, best_again = reevaluate_best(model, val, args.min_confidence)
    equal = abs(best_again - best_logged) <= 1e-6
    print("\nepochs {}..{}: evaluation = {:.1%} of training time ({:.1%} in CPU "
          "seconds; target <= 10%)".format(later[0]["epoch"], later[-1]["epoch"], ratio,
                                           ratio_cpu))
    print("best checkpoint {}: segm AP re-evaluated {:.6f}, best logged {:.6f}: {}".format(
        path, best_again, best_logged, "equal" if equal else "DIFFERENT"))
    print(JSON_PREFIX + json.dumps(dict(
        steps_per_epoch=ShapesConfig.STEPS_PER_EPOCH, val_images=len(val.image_ids),
        min_confidence=args.min_confidence,
        epochs=rows, eval_over_train=ratio, eval_over_train_cpu=ratio_cpu,
        best_logged=best_logged, best_reevaluated=best_again, best_equal=equal)))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
