"""Tests of mrcnn.visualize: PNG output sizes, pixel-exact helpers, loss curves."""
import os

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from mrcnn import utils, visualize

plt = visualize.plt
CLASS_NAMES = ["BG", "square", "disc"]
H, W = 64, 96


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    """Headless: plt.show must never be called."""
    def fail(*a, **k):
        raise AssertionError("plt.show() called under a non-interactive backend")
    monkeypatch.setattr(plt, "show", fail)
    plt.close("all")
    yield
    plt.close("all")


def png(path, figsize, dpi=100):
    """Read a PNG back and check it has figsize * dpi pixels and real content."""
    assert os.path.getsize(path) > 0
    img = mpimg.imread(path)
    assert img.shape[:2] == (round(figsize[1] * dpi), round(figsize[0] * dpi))
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 120, (H, W, 3)).astype(np.uint8)
    masks = np.zeros((H, W, 2), bool)
    masks[5:30, 10:40, 0] = True
    yy, xx = np.mgrid[:H, :W]
    masks[:, :, 1] = (yy - 40) ** 2 + (xx - 70) ** 2 <= 15 ** 2
    boxes = utils.extract_bboxes(masks)
    return image, masks, boxes, np.array([1, 2]), np.array([0.9, 0.75])


def test_backend_is_headless():
    assert matplotlib.get_backend().lower() == "agg"
    assert not visualize.is_interactive_backend()


def test_random_colors():
    c = visualize.random_colors(7)
    assert len(c) == 7 and all(len(x) == 3 for x in c)
    assert np.all((np.array(c) >= 0) & (np.array(c) <= 1))
    ordered = visualize.random_colors(4, shuffle=False)
    # Hues 0, 1/4, 2/4, 3/4 at full saturation and value.
    np.testing.assert_allclose(ordered, [(1, 0, 0), (0.5, 1, 0), (0, 1, 1), (0.5, 0, 1)])
    dim = visualize.random_colors(5, bright=False, shuffle=False)
    assert np.isclose(np.max(dim), 0.7)
    assert visualize.random_colors(9, seed=3) == visualize.random_colors(9, seed=3)
    assert sorted(visualize.random_colors(9, seed=3)) == sorted(
        visualize.random_colors(9, shuffle=False))
    assert len(set(visualize.random_colors(9))) == 9
    assert visualize.random_colors(0) == []


def test_apply_mask_changes_exactly_mask_pixels(scene):
    image, masks, *_ = scene
    out = image.copy()
    color = (1.0, 0.5, 0.0)
    res = visualize.apply_mask(out, masks[:, :, 1], color, alpha=0.25)
    assert res is out  # in place, as Matterport
    changed = np.any(out != image, axis=-1)
    assert np.array_equal(changed, masks[:, :, 1])
    expected = np.round(image[masks[:, :, 1]] * 0.75 + 0.25 * 255 * np.array(color))
    np.testing.assert_array_equal(out[masks[:, :, 1]], expected.astype(np.uint8))
    # Float images keep full precision.
    f = image.astype(np.float64)
    visualize.apply_mask(f, masks[:, :, 0], color, alpha=0.5)
    np.testing.assert_allclose(f[masks[:, :, 0]],
                               image[masks[:, :, 0]] * 0.5 + 0.5 * 255 * np.array(color))
    with pytest.raises(ValueError, match="mask shape"):
        visualize.apply_mask(image.copy(), masks[:10, :, 0], color)


def test_draw_box_pixels():
    img = np.zeros((20, 20, 3), np.uint8)
    visualize.draw_box(img, (2, 3, 10, 15), (255, 0, 0))
    red = img[..., 0] == 255
    want = np.zeros((20, 20), bool)
    want[2:4, 3:15] = want[10:12, 3:15] = True
    want[2:10, 3:5] = want[2:10, 15:17] = True
    assert np.array_equal(red, want)
    assert img[..., 1:].max() == 0


def test_draw_instances_blends_masks_and_boxes(scene):
    """The video drawing: the input untouched, mask pixels blended as apply_mask does,
    the box outline in the instance's colour, nothing drawn far from any detection."""
    image, masks, boxes, cids, scores = scene
    r = {"rois": boxes, "masks": masks, "class_ids": cids, "scores": scores}
    before = image.copy()
    out = visualize.draw_instances(image, r, CLASS_NAMES, alpha=0.5)
    assert np.array_equal(image, before) and out.dtype == np.uint8
    colors = visualize.random_colors(2, shuffle=False)
    want = image.copy()
    for i, c in enumerate(colors):
        visualize.apply_mask(want, masks[:, :, i], c, 0.5)
    # Inside the square's mask, away from its box outline and label: the blend exactly.
    np.testing.assert_array_equal(out[14:28, 12:38], want[14:28, 12:38])
    # The square's box (5, 10, 30, 40): its left edge column in the first colour.
    red = tuple(int(255 * v) for v in colors[0])
    assert np.all(out[12:28, 10] == red)
    # A corner far from both instances is unchanged.
    np.testing.assert_array_equal(out[55:, :5], image[55:, :5])
    empty = {"rois": np.zeros((0, 4), int), "masks": np.zeros((H, W, 0), bool),
             "class_ids": np.zeros(0, int), "scores": np.zeros(0)}
    np.testing.assert_array_equal(visualize.draw_instances(image, empty, CLASS_NAMES), image)


def test_display_instances_png(scene, tmp_path):
    image, masks, boxes, cids, scores = scene
    path = str(tmp_path / "inst.png")
    fig = visualize.display_instances(image, boxes, masks, cids, CLASS_NAMES, scores,
                                      title="t", figsize=(4, 3), save_path=path)
    assert fig is not None
    assert plt.get_fignums() == []  # written, so closed: scripts do not leak figures
    img = png(path, (4, 3))
    # The mask blend shows up: some pixels are strongly coloured compared to the grey-ish
    # random input (each channel of the input is < 120/255).
    assert img[..., :3].max() > 0.6
    # Drawing into a caller's Axes: the caller keeps the figure.
    fig2, ax = plt.subplots(1, figsize=(2, 2))
    out = visualize.display_instances(image, boxes, masks, cids, CLASS_NAMES, ax=ax,
                                      show_mask=False, captions=["a", "b"])
    assert out is fig2 and plt.fignum_exists(fig2.number)
    plt.close(fig2)
    with pytest.raises(ValueError, match="class_ids"):
        visualize.display_instances(image, boxes, masks, cids[:1], CLASS_NAMES)
    with pytest.raises(ValueError, match="outside class_names"):
        visualize.display_instances(image, boxes, masks, np.array([1, 5]), CLASS_NAMES)


def test_matterport_savefig_pattern(scene, tmp_path):
    # Matterport's samples call display_instances() and then plt.savefig(): without
    # save_path the drawn figure must stay current.
    image, masks, boxes, cids, scores = scene
    fig = visualize.display_instances(image, boxes, masks, cids, CLASS_NAMES, scores,
                                      figsize=(3, 3))
    assert plt.gcf() is fig
    path = str(tmp_path / "mp.png")
    plt.savefig(path)
    a = png(path, (3, 3))
    fig.savefig(str(tmp_path / "again.png"), dpi=fig.dpi)
    np.testing.assert_array_equal(a, png(str(tmp_path / "again.png"), (3, 3)))


def test_display_instances_no_instances(scene, tmp_path):
    image = scene[0]
    path = str(tmp_path / "empty.png")
    visualize.display_instances(image, np.zeros((0, 4)), np.zeros((H, W, 0), bool),
                                np.zeros(0, int), CLASS_NAMES, figsize=(3, 2), save_path=path)
    png(path, (3, 2))


def test_save_instances_png(scene, tmp_path):
    image, masks, boxes, cids, scores = scene
    r = {"rois": boxes, "masks": masks, "class_ids": cids, "scores": scores}
    path = str(tmp_path / "sub" / "quick.png")
    assert visualize.save_instances_png(path, image, r, CLASS_NAMES) == path
    png(path, (6, 4))  # 96x64 image: long side 6 in, same aspect


def test_display_images_and_top_masks(scene, tmp_path):
    image, masks, _, cids, _ = scene
    p1 = str(tmp_path / "grid.png")
    visualize.display_images([image, masks[:, :, 0], image], titles=["a", "b", "c"], cols=3,
                             figsize=(6, 2), save_path=p1)
    png(p1, (6, 2))
    p2 = str(tmp_path / "top.png")
    visualize.display_top_masks(image, masks, cids, CLASS_NAMES, limit=2, figsize=(6, 2),
                                save_path=p2)
    png(p2, (6, 2))


def test_display_differences(scene, tmp_path):
    image, masks, boxes, cids, scores = scene
    pred_masks = np.roll(masks, 3, axis=1)
    path = str(tmp_path / "diff.png")
    visualize.display_differences(image, boxes, cids, masks, utils.extract_bboxes(pred_masks),
                                  cids, scores, pred_masks, CLASS_NAMES, figsize=(4, 4),
                                  save_path=path)
    png(path, (4, 4))


def test_matching_used_for_captions(scene, monkeypatch):
    """Captions come from utils.compute_matches (mapped back to the callers' order): two
    predictions on the same GT, only the higher score matches; a wrong class never."""
    _, masks, boxes, _, _ = scene
    gt_ids = np.array([1, 2])
    pred = np.stack([masks[:, :, 0], masks[:, :, 0], masks[:, :, 1]], -1)
    pred_boxes = utils.extract_bboxes(pred)
    captions = {}

    def capture(*args, **kwargs):
        captions["value"] = kwargs["captions"]
    monkeypatch.setattr(visualize, "display_instances", capture)
    visualize.display_differences(np.zeros(masks.shape[:2] + (3,), np.uint8), boxes[:2],
                                  gt_ids, masks[..., :2], pred_boxes, np.array([1, 1, 1]),
                                  np.array([0.5, 0.9, 0.8]), pred, CLASS_NAMES)
    # GT captions empty; predictions "score / IoU": 0.9 matched GT 0 (IoU 1), 0.5 is
    # unmatched but overlaps GT 0 fully, the class-1 prediction on the class-2 GT too.
    assert captions["value"] == ["", "", "0.50 / 1.00", "0.90 / 1.00", "0.80 / 1.00"]
    _, pred_match, _ = utils.compute_matches(boxes[:2], gt_ids, masks[..., :2], pred_boxes,
                                             np.array([1, 1, 1]), np.array([0.5, 0.9, 0.8]),
                                             pred)
    assert pred_match.tolist() == [0, -1, -1]        # score order: 0.9, 0.8, 0.5


def test_captions_show_the_matched_gts_iou_in_the_callers_order(monkeypatch):
    """A class-1 prediction covering GT A (class 1, 100 px) and GT B (class 2, 150 px):
    matched to A at IoU 0.4 (iou_threshold 0.3) although B overlaps it more (0.6); a
    lower-scored prediction listed first stays unmatched and shows its best IoU."""
    gt = np.zeros((20, 30, 2), bool)
    gt[0:10, 0:10, 0] = True                    # A: 100 px
    gt[0:10, 10:25, 1] = True                   # B: 150 px
    covering = gt[..., 0] | gt[..., 1]          # 250 px
    stray = np.zeros((20, 30), bool)
    stray[12:20, 0:10] = True
    pred = np.stack([stray, covering], -1)
    captions = {}
    monkeypatch.setattr(visualize, "display_instances",
                        lambda *a, **k: captions.setdefault("value", k["captions"]))
    visualize.display_differences(np.zeros((20, 30, 3), np.uint8), utils.extract_bboxes(gt),
                                  np.array([1, 2]), gt, utils.extract_bboxes(pred),
                                  np.array([1, 1]), np.array([0.3, 0.9]), pred, CLASS_NAMES,
                                  iou_threshold=0.3, score_threshold=0.0)
    assert captions["value"] == ["", "", "0.30 / 0.00", "0.90 / 0.40"]
    # score_threshold acts on the IoU, as Matterport's (default 0.5): no match at 0.4.
    captions.clear()
    visualize.display_differences(np.zeros((20, 30, 3), np.uint8), utils.extract_bboxes(gt),
                                  np.array([1, 2]), gt, utils.extract_bboxes(pred),
                                  np.array([1, 1]), np.array([0.3, 0.9]), pred, CLASS_NAMES,
                                  iou_threshold=0.3)
    assert captions["value"][3] == "0.90 / 0.60"


def test_draw_rois(scene, tmp_path):
    image, masks, boxes, _, _ = scene
    rois = np.concatenate([boxes, [[0, 0, 10, 10], [40, 0, 60, 20]]])
    refined = rois + 2
    cids = np.array([1, 2, 0, 0])
    small = np.ones((4, 14, 14), np.float32)
    path = str(tmp_path / "rois.png")
    visualize.draw_rois(image, rois, refined, small, cids, CLASS_NAMES, limit=3, seed=0,
                        figsize=(4, 3), save_path=path)
    png(path, (4, 3))
    # _paste_mask puts a full small mask exactly into its box.
    full = visualize._paste_mask(np.ones((14, 14)), (5, 10, 30, 40), (H, W))
    want = np.zeros((H, W), bool)
    want[5:30, 10:40] = True
    assert np.array_equal(full, want)


def test_precision_recall_and_overlaps(scene, tmp_path):
    image, masks, boxes, cids, scores = scene
    pred_masks = np.roll(masks, 4, axis=0)
    ap, precisions, recalls, overlaps = utils.compute_ap(
        boxes, cids, masks, utils.extract_bboxes(pred_masks), cids, scores, pred_masks)
    p1 = str(tmp_path / "pr.png")
    visualize.plot_precision_recall(ap, precisions, recalls, figsize=(4, 3), save_path=p1)
    png(p1, (4, 3))
    p2 = str(tmp_path / "ov.png")
    visualize.plot_overlaps(cids, cids, scores, overlaps, CLASS_NAMES, figsize=(5, 4),
                            save_path=p2)
    png(p2, (5, 4))


def test_draw_boxes(scene, tmp_path):
    image, masks, boxes, _, _ = scene
    path = str(tmp_path / "boxes.png")
    visualize.draw_boxes(image, boxes=boxes, refined_boxes=boxes + 1, masks=masks,
                         captions=["a", "b"], visibilities=[0, 2], title="x", figsize=(4, 3),
                         save_path=path)
    png(path, (4, 3))
    with pytest.raises(ValueError, match="captions"):
        visualize.draw_boxes(image, boxes=boxes, captions=["a"])


def test_display_table_and_weight_stats(capsys):
    text = visualize.display_table([["NAME", "VALUE"], ["a", 1], ["long name", 2.5]])
    assert text.splitlines()[0].split() == ["NAME", "VALUE"]
    assert text.splitlines()[3].split() == ["long", "name", "2.5"]
    assert "long name" in capsys.readouterr().out

    import keras
    inp = keras.Input((3,))
    x = keras.layers.Dense(2, kernel_initializer="zeros", name="dead_dense")(inp)
    x = keras.layers.Dense(1, kernel_initializer="ones", name="ok_dense")(x)
    model = keras.Model(inp, x)
    model.get_layer("ok_dense").set_weights([np.array([[1.0], [-2.0]]), np.array([0.0])])
    rows = visualize.display_weight_stats(model)
    names = [r[0] for r in rows[1:]]
    assert len(rows) == 5 and rows[0] == ["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]
    assert "dead?" in names[0] and "dead_dense" in names[0]
    assert not any("dead?" in n for n in names[1:])  # biases and the varied kernel
    assert rows[3][1] == "(2, 1)" and float(rows[3][2]) == -2.0 and float(rows[3][3]) == 1.0


def test_plot_losses_from_dict(tmp_path):
    hist = {"loss": [3.0, 2.0, 1.5], "val_loss": [3.2, 2.5, 2.0],
            "rpn_class_loss": [1.0, 0.5, 0.4], "val_rpn_class_loss": [1.1, 0.7, 0.6],
            "learning_rate": [0.01] * 3}
    path = str(tmp_path / "losses.png")
    fig = visualize.plot_losses(hist, save_path=path, figsize=(8, 3))
    png(path, (8, 3))
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["loss", "rpn_class_loss"]
    y = {l.get_label(): l.get_ydata() for l in axes[0].get_lines()}
    np.testing.assert_array_equal(y["train"], hist["loss"])
    np.testing.assert_array_equal(y["validation"], hist["val_loss"])

    class History:  # a Keras History stand-in
        history = hist
    fig = visualize.plot_losses(History())
    assert len(fig.get_axes()) == 2


def _write_tensorboard(logdir):
    """A Keras-like log directory: TF2 scalar tensors in train/ and validation/, plus a
    TF1-style simple_value event file in old/."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    from tensorflow.core.util import event_pb2

    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = "scalars"
    curves = {"train": {"epoch_loss": [2.0, 1.0, 0.5], "epoch_mrcnn_mask_loss": [0.7, 0.6, 0.4]},
              "validation": {"epoch_loss": [2.5, 1.5, 1.25],
                             "epoch_mrcnn_mask_loss": [0.8, 0.7, 0.65]}}
    for run, tags in curves.items():
        writer = tf.summary.create_file_writer(os.path.join(logdir, run))
        with writer.as_default():
            for tag, values in tags.items():
                for step, v in enumerate(values):
                    tf.summary.write(tag, tf.constant(v), step=step, metadata=md)
            # Not a scalar: must be skipped.
            tf.summary.write("some_histogram", tf.zeros([3, 3]), step=0)
        writer.close()
    os.makedirs(os.path.join(logdir, "old"))
    with tf.io.TFRecordWriter(os.path.join(logdir, "old", "events.out.tfevents.1.host")) as w:
        for step, v in enumerate([4.0, 3.0]):
            ev = event_pb2.Event(step=step, wall_time=1.0 + step)
            ev.summary.value.add(tag="loss", simple_value=v)
            w.write(ev.SerializeToString())
    return curves


def test_tensorboard_read_and_plot(tmp_path):
    logdir = str(tmp_path / "logs")
    curves = _write_tensorboard(logdir)
    scalars = visualize.read_tensorboard_scalars(logdir)
    assert set(scalars) == {"train", "validation", "old"}
    for run, tags in curves.items():
        assert set(scalars[run]) == set(tags)  # the histogram was skipped
        for tag, values in tags.items():
            steps, got = scalars[run][tag]
            assert steps.tolist() == list(range(len(values)))
            np.testing.assert_allclose(got, values, rtol=1e-6)
    assert scalars["old"]["loss"][1].tolist() == [4.0, 3.0]

    path = str(tmp_path / "tb.png")
    fig = visualize.plot_losses(logdir, save_path=path, figsize=(9, 3))
    png(path, (9, 3))
    titles = [a.get_title() for a in fig.get_axes()]
    assert titles == ["loss", "mrcnn_mask_loss", "old/loss"]
    y = {l.get_label(): l.get_ydata() for l in fig.get_axes()[1].get_lines()}
    np.testing.assert_allclose(y["validation"], curves["validation"]["epoch_mrcnn_mask_loss"],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        os.makedirs(str(tmp_path / "nothing"))
        visualize.plot_losses(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError):
        visualize.read_tensorboard_scalars(str(tmp_path / "missing"))
