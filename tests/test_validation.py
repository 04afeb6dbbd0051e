"""Validation during training (issue 18, parts 1-2): EvaluationCallback's COCO AP in the
epoch logs (History, TensorBoard, images), the best checkpoint, keep_last pruning, early
stopping, resume, find_best / --weights=best, and the argument checks.

Two training scenarios on the tiny callable backbone (64 px, 3 steps per epoch):
* ``real_run``: the real evaluation. Its validation set is labelled with the detections
  of the initial weights (heads set so that every ROI is a full-box class-1 detection),
  so the AP after training is neither 0 nor a constant: it depends on the weights.
* ``scripted``: evaluate_coco replaced by a script of segm AP values, for the
  best / prune / patience / resume logic (train 3 epochs, kill, resume to epoch 4).
"""

import json
import logging
import os

import keras
import numpy as np
import pytest

from mrcnn import data, evaluate, sample_cli
from mrcnn import model as modellib
from mrcnn import training
from mrcnn.training import (BestCheckpoint, CheckpointCallback, EvaluationCallback,
                            check_validation_args, metric_mode)
from mrcnn.visualize import read_tensorboard_scalars
from mrcnn.weights import read_weight_groups
from samples.shapes import ShapesDataset
from tiny_models import tiny_shapes_config_class

AP_NAMES = ["val_bbox_AP", "val_bbox_AP50", "val_bbox_AP75",
            "val_segm_AP", "val_segm_AP50", "val_segm_AP75"]


class ValConfig(tiny_shapes_config_class()):
    NAME = "valid"
    DETECTION_MIN_CONFIDENCE = 0.0   # AP ranks every detection
    OPTIMIZER = "sgd"   # Adam's first steps move every weight by ~lr: the AP falls to 0


class LabelledShapes(ShapesDataset):
    """Shapes images whose ground truth is given (masks, class ids) per image."""

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        return info["gt_masks"], info["gt_class_ids"]


def shapes(count, seed):
    ds = ShapesDataset()
    ds.load_shapes(count, 64, 64, seed=seed)
    ds.prepare()
    return ds


def set_heads_to_full_box_class1(keras_model):
    """Every ROI becomes a class-1 detection at its proposal box with a full mask: a
    random model then gives detections to label with, whatever its random init."""
    for name, bias in (("mrcnn_class_logits", 0.0), ("mrcnn_bbox_fc", 0.0),
                       ("mrcnn_mask", 6.0)):
        layer = keras_model.get_layer(name)
        kernel, b = layer.get_weights()
        b = np.full_like(b, bias)
        if name == "mrcnn_class_logits":
            b[1] = 6.0
        layer.set_weights([np.zeros_like(kernel), b])


def labelled_by(model, source, per_image=3):
    """``source``'s images labelled with ``model``'s top detections (boxes as masks)."""
    out = LabelledShapes()
    for c in source.class_info[1:]:
        out.add_class(c["source"], c["id"], c["name"])
    for i in source.image_ids:
        r = model.detect([source.load_image(i)])[0]
        n = min(per_image, len(r["class_ids"]))
        assert n > 0, "the labelling model detected nothing"
        info = {k: v for k, v in source.image_info[i].items()
                if k not in ("id", "source", "path")}
        out.add_image("shapes", image_id=i, path=None, gt_masks=r["masks"][:, :, :n],
                      gt_class_ids=r["class_ids"][:n], **info)
    out.prepare()
    return out


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("valid_logs"))
    keras.utils.set_random_seed(5)
    model = modellib.MaskRCNN("training", ValConfig(), logs)
    set_heads_to_full_box_class1(model.keras_model)
    checker = modellib.MaskRCNN("inference", ValConfig(), logs)   # the separate model
    for target, source in training.weight_pairs(model.keras_model, checker.keras_model):
        target.assign(source)
    val = labelled_by(checker, shapes(4, seed=2))
    built = []          # (is the validation set, tf.data autotuning on) per pipeline
    build = data.build_dataset

    def spy(dataset, *args, **kwargs):
        ds = build(dataset, *args, **kwargs)
        # enabled is None (TensorFlow's default: on) unless set.
        built.append((dataset is val, ds.options().autotune.enabled is not False))
        return ds

    with pytest.MonkeyPatch.context() as patch:     # the fixture is module-scoped
        patch.setattr(data, "build_dataset", spy)
        history = model.train(shapes(6, seed=1), val, learning_rate=0.001, epochs=2,
                              layers="heads", evaluate_every=1, keep_best="val_segm_AP",
                              keep_last=1, verbose=0)
    return dict(model=model, checker=checker, val=val, history=history,
                log_dir=model.log_dir, built=built)


def test_validation_pipeline_is_not_autotuned(real_run):
    # Keras iterates validation data afresh every epoch; destroying an autotuned
    # iterator can wait up to 60 s for tf.data's tuning thread (see build_dataset).
    assert sorted(real_run["built"]) == [(False, True), (True, False)]


def logged(history, epoch):
    """The AP metrics History holds for 1-based ``epoch``."""
    return {k: history.history[k][history.epoch.index(epoch - 1)] for k in AP_NAMES}


def evaluated(checker, val, path):
    checker.load_weights(path, verbose=0)
    m = evaluate.evaluate_coco(checker, val, verbose=0)
    return {"val_{}_{}".format(t, s): m[t][s] for t in ("bbox", "segm")
            for s in ("AP", "AP50", "AP75")}


def test_logged_ap_equals_evaluate_coco_on_the_checkpoints(real_run):
    """The AP the callback logged for epoch 2 is evaluate_coco of the epoch-2 checkpoint
    in a separate inference model, and the best file's AP is the best logged value."""
    h, log_dir = real_run["history"], real_run["log_dir"]
    last = os.path.join(log_dir, "mask_rcnn_valid_0002.h5")
    again = evaluated(real_run["checker"], real_run["val"], last)
    for name, value in logged(h, 2).items():
        assert abs(again[name] - value) <= 1e-6, (name, again[name], value)
    # Not a vacuous equality: trained weights score between nothing and the labels.
    assert 0.0 < again["val_segm_AP"] < 1.0 and 0.0 < again["val_bbox_AP50"]
    state = json.load(open(os.path.join(log_dir, "mask_rcnn_valid_best.json")))
    values = h.history["val_segm_AP"]
    assert state["best"] == pytest.approx(max(values), abs=1e-12)
    assert state["best_epoch"] == 1 + int(np.argmax(values))
    best = evaluated(real_run["checker"], real_run["val"], real_run["model"].find_best())
    assert abs(best["val_segm_AP"] - max(values)) <= 1e-6
    for name, value in logged(h, state["best_epoch"]).items():
        assert abs(best[name] - value) <= 1e-6, name


def test_metrics_reach_history_and_tensorboard(real_run):
    h, log_dir = real_run["history"], real_run["log_dir"]
    assert h.epoch == [0, 1]
    for name in AP_NAMES:
        assert len(h.history[name]) == 2
    scalars = read_tensorboard_scalars(log_dir)["validation"]
    for name in AP_NAMES:
        steps, values = scalars["epoch_" + name[4:]]
        assert list(steps) == [0, 1]
        np.testing.assert_allclose(values, h.history[name], atol=1e-6)
    # Drawn detections: 3 images (the first evaluated ids) at each of the 2 epochs.
    images = tensorboard_images(os.path.join(log_dir, "evaluation"))
    assert sorted(images) == ["detections/image_0", "detections/image_1",
                              "detections/image_2"]
    for tag, (steps, shape) in images.items():
        assert steps == [0, 1] and shape[2] == 3 and min(shape[:2]) >= 100, (tag, shape)


def tensorboard_images(logdir):
    """{tag: (steps, (h, w, c) of the last image)} of the image summaries in logdir."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    out = {}
    for name in os.listdir(logdir):
        for record in tf.data.TFRecordDataset(os.path.join(logdir, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "images":
                    png = tf.make_ndarray(v.tensor)[2]
                    shape = tuple(tf.io.decode_png(png).shape)
                    steps = out.get(v.tag, ([], None))[0] + [int(event.step)]
                    out[v.tag] = (steps, shape)
    return out


def test_files_after_real_run(real_run):
    """keep_last=1 left one epoch checkpoint; find_last skips the best file."""
    log_dir, model = real_run["log_dir"], real_run["model"]
    h5 = sorted(f for f in os.listdir(log_dir) if f.endswith(".h5"))
    assert h5 == ["mask_rcnn_valid_0002.h5", "mask_rcnn_valid_best.h5"]
    assert model.find_last() == os.path.join(log_dir, "mask_rcnn_valid_0002.h5")
    assert model.find_best() == os.path.join(log_dir, "mask_rcnn_valid_best.h5")


def test_bad_arguments_name_the_argument(real_run):
    model, val = real_run["model"], real_run["val"]

    def call(**kwargs):
        model.train(val, val, 0.01, 1, "heads", verbose=0, **kwargs)

    cases = [
        (dict(keep_best="val_segm_AP"), r"keep_best='val_segm_AP' is never logged "
                                        r"\(the AP metrics need evaluate_every\)"),
        (dict(keep_best="val_loss"), r"keep_best='val_loss' is never logged \(val_ "
                                     r"losses need config.VALIDATION_STEPS"),
        (dict(keep_best="accuracy", evaluate_every=1), r"keep_best='accuracy' is never "
                                                       r"logged; logged metrics: loss, "),
        (dict(early_stopping_patience=2), r"early_stopping_patience=2 needs "
                                          r"evaluate_every .* or keep_best"),
        (dict(evaluate_every=0), r"evaluate_every must be an integer >= 1"),
        (dict(keep_last=0), r"keep_last must be an integer >= 1"),
        (dict(evaluate_limit=5), r"evaluate_limit=5 needs evaluate_every"),
        (dict(keep_best=("loss", "up")), r"keep_best mode must be 'max' or 'min'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            call(**kwargs)


def test_check_validation_args_modes():
    c = ValConfig()
    assert check_validation_args(c, 1, None, None, None, 3) == ("val_segm_AP", "max")
    assert check_validation_args(c, None, None, "mrcnn_mask_loss", 2, 1) == \
        ("mrcnn_mask_loss", "min")
    assert check_validation_args(c, 2, 10, ("val_bbox_AP50", "min"), None, None) == \
        ("val_bbox_AP50", "min")
    assert check_validation_args(c, None, None, None, None, None) == (None, None)
    assert metric_mode("val_segm_AP75") == "max" and metric_mode("val_loss") == "min"


# ----------------------------------------------------------------- scripted metrics

SCRIPT = [0.1, 0.3, 0.2,        # first process: best at epoch 2, one miss
          0.25, 0.1, 0.1]       # resumed: epoch 4 misses again -> patience 2 stops


def scripted_evaluation(values):
    def fake(model, dataset, image_ids=None, **kwargs):
        ap = values.pop(0)
        stats = dict(AP=ap, AP50=ap + 0.1, AP75=ap / 2)
        return {"bbox": dict(stats), "segm": dict(stats)}
    return fake


class NoDetections(object):
    """Stands for the inference model: no weights to copy, detects nothing."""
    keras_model = keras.Sequential([keras.Input((1,))])

    def detect(self, images):
        return [{"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
                 "scores": np.zeros(0, np.float32),
                 "masks": np.zeros(image.shape[:2] + (0,), bool)} for image in images]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """Train to epoch 3, then a new MaskRCNN object resumes from find_last() to at most
    epoch 8 with patience 2, evaluate_coco returning SCRIPT's values in turn."""
    mp = pytest.MonkeyPatch()
    values = list(SCRIPT)
    mp.setattr(evaluate, "evaluate_coco", scripted_evaluation(values))
    # No inference graph to build and trace: nothing is really evaluated here.
    mp.setattr(modellib.MaskRCNN, "_evaluation_model", lambda self: NoDetections())
    logs = str(tmp_path_factory.mktemp("scripted_logs"))
    train, val = shapes(6, seed=1), shapes(3, seed=2)
    args = dict(evaluate_every=1, keep_best="val_segm_AP", keep_last=2,
                early_stopping_patience=2, verbose=0)
    try:
        first = modellib.MaskRCNN("training", ValConfig(), logs)
        first.train(train, val, 0.01, 3, "heads", **args)
        log_dir = first.log_dir
        after_first = dict(files=sorted(os.listdir(log_dir)),
                           best=read_weight_groups(first.find_best()),
                           epoch2=read_weight_groups(
                               os.path.join(log_dir, "mask_rcnn_valid_0002.h5")),
                           state=json.load(open(os.path.join(
                               log_dir, "mask_rcnn_valid_best.json"))))
        second = modellib.MaskRCNN("training", ValConfig(), logs)
        second.load_weights(second.find_last(), verbose=0)
        resumed_from = (second.epoch, second.log_dir)
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("mrcnn").addHandler(handler)
        logging.getLogger("mrcnn").setLevel(logging.INFO)
        try:
            history = second.train(train, val, 0.01, 8, "heads", **args)
        finally:
            logging.getLogger("mrcnn").removeHandler(handler)
    finally:
        mp.undo()
    return dict(log_dir=log_dir, after_first=after_first, resumed_from=resumed_from,
                history=history, model=second, left=values,
                messages=[r.getMessage() for r in records])


def test_best_and_pruning_after_first_process(scripted):
    first = scripted["after_first"]
    assert [f for f in first["files"] if f.endswith(".h5")] == [
        "mask_rcnn_valid_0002.h5", "mask_rcnn_valid_0003.h5", "mask_rcnn_valid_best.h5"]
    assert first["state"] == {"metric": "val_segm_AP", "mode": "max", "best": 0.3,
                              "best_epoch": 2, "wait": 1, "last_epoch": 3,
                              "best_path": os.path.join(scripted["log_dir"],
                                                        "mask_rcnn_valid_best.h5")}
    assert_same_weights(first["best"], first["epoch2"])   # best = epoch 2's weights


def test_resume_keeps_best_and_patience(scripted):
    """Resumed at epoch 3: epoch 4 (0.25 < 0.3) did not replace best.h5, and with the
    recovered miss count it was the second miss: stopped after epoch 4."""
    log_dir = scripted["log_dir"]
    assert scripted["resumed_from"] == (3, log_dir)
    assert scripted["history"].epoch == [3]
    assert scripted["history"].history["val_segm_AP"] == [0.25]
    assert scripted["left"] == [0.1, 0.1]       # epochs 5.. never evaluated
    assert scripted["model"].epoch == 4
    assert_same_weights(read_weight_groups(os.path.join(log_dir,
                                                        "mask_rcnn_valid_best.h5")),
                        scripted["after_first"]["epoch2"])
    state = json.load(open(os.path.join(log_dir, "mask_rcnn_valid_best.json")))
    assert (state["best"], state["best_epoch"], state["wait"], state["last_epoch"]) == \
        (0.3, 2, 2, 4)
    assert sorted(f for f in os.listdir(log_dir) if f.endswith(".h5")) == [
        "mask_rcnn_valid_0003.h5", "mask_rcnn_valid_0004.h5", "mask_rcnn_valid_best.h5"]
    assert scripted["model"].find_last().endswith("mask_rcnn_valid_0004.h5")


def test_early_stopping_says_why(scripted):
    assert scripted["messages"] == [
        "Early stopping at epoch 4: val_segm_AP did not improve for 2 evaluation(s) "
        "(best 0.3 at epoch 2)"]


def assert_same_weights(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        for (_, x), (_, y) in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)


# ----------------------------------------------------------------- units, no training

class FakeTrainer(object):
    stop_training = False


def test_best_checkpoint_min_mode_and_patience(capsys):
    cb = BestCheckpoint("val_loss", patience=2, verbose=1)
    cb.set_model(FakeTrainer())
    for epoch, value in enumerate([3.0, 2.0, 2.5, 2.0]):
        cb.on_epoch_end(epoch, {"val_loss": value})
    assert (cb.best, cb.best_epoch, cb.wait) == (2.0, 2, 2)   # equal is no improvement
    assert cb.model.stop_training
    assert "Early stopping at epoch 4: val_loss did not improve for 2" in \
        capsys.readouterr().out
    cb = BestCheckpoint("val_segm_AP", patience=1)
    cb.set_model(FakeTrainer())
    cb.on_epoch_end(0, {"loss": 1.0})      # not evaluated this epoch: not counted
    assert (cb.best, cb.wait, cb.model.stop_training) == (None, 0, False)


def test_prune_keeps_the_newest_and_other_files(tmp_path):
    for name in ["mask_rcnn_x_0001.h5", "mask_rcnn_x_0002.h5", "mask_rcnn_x_0004.h5",
                 "mask_rcnn_x_0005.h5", "mask_rcnn_x_best.h5", "other.h5"]:
        (tmp_path / name).write_bytes(b"")
    cb = CheckpointCallback(None, str(tmp_path / "mask_rcnn_x_{epoch:04d}.h5"),
                            keep_last=2)
    cb.prune(4)      # epoch 5 (a later file of an abandoned run) is left alone
    assert sorted(os.listdir(tmp_path)) == [
        "mask_rcnn_x_0002.h5", "mask_rcnn_x_0004.h5", "mask_rcnn_x_0005.h5",
        "mask_rcnn_x_best.h5", "other.h5"]


def test_evaluation_schedule_and_weight_copy(monkeypatch):
    """every=2 over epochs 1..5 evaluates after 2, 4 and the last (5), each time on the
    training weights of that moment, copied by layer name."""
    def net(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d1")])

    class Inference(object):
        keras_model = net(1)

    seen = []
    monkeypatch.setattr(evaluate, "evaluate_coco", lambda model, *a, **k: seen.append(
        model.keras_model.get_layer("d1").get_weights()[1].copy()) or
        {"bbox": {"AP": 0.5, "AP50": 0.6, "AP75": 0.4},
         "segm": {"AP": 0.5, "AP50": 0.6, "AP75": 0.4}})
    cb = EvaluationCallback(shapes(2, seed=3), Inference(), every=2, draw_images=0,
                            verbose=0)
    source = net(2)
    cb.set_model(source)
    cb.set_params({"epochs": 5})
    logs = []
    for epoch in range(5):
        source.get_layer("d1").set_weights([np.zeros((3, 2)), np.full(2, float(epoch))])
        logs.append({"loss": 1.0})
        cb.on_epoch_end(epoch, logs[-1])
    assert [e for e, _, _ in cb.evaluations] == [2, 4, 5]
    assert [float(b[0]) for b in seen] == [1.0, 3.0, 4.0]
    assert [sorted(l) for l in logs][1] == sorted(["loss"] + AP_NAMES)
    assert logs[0] == {"loss": 1.0}


def test_find_best_error_names_the_folder(tmp_path):
    m = modellib.MaskRCNN.__new__(modellib.MaskRCNN)   # find_best needs no graph
    m.config, m.model_dir = ValConfig(), str(tmp_path)
    (tmp_path / "valid20240101T0000").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mask_rcnn_valid_best.h5 .* under "
                                                r".*newest run: .*valid20240101T0000"):
        m.find_best()


def test_weights_keyword_best_resolves_to_find_best():
    class Fake(object):
        def find_best(self):
            return "/logs/run/mask_rcnn_x_best.h5"

    assert "best" in sample_cli.WEIGHT_KEYWORDS
    assert sample_cli.resolve_weights(Fake(), "best") == "/logs/run/mask_rcnn_x_best.h5"
    assert sample_cli.resolve_weights(Fake(), "Best", keywords=("last", "best")) == \
        "/logs/run/mask_rcnn_x_best.h5"
