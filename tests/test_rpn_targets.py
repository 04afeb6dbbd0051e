"""RPN targets in the graph (rpn.rpn_targets_graph / RpnTargetsLayer) against the numpy
reference build_rpn_targets, and the input pipeline without RPN targets."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mrcnn import data, graph, rpn  # noqa: E402
from mrcnn.config import Config  # noqa: E402


class AnchorConfig(Config):
    NAME = "rpn_targets"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64


def make_config(base=AnchorConfig, **attrs):
    return type("TestConfig", (base,), attrs)()


def random_gt(rng, count, size, crowds=0):
    """count integer pixel boxes (as extract_bboxes gives) of all sizes, some duplicated
    (ties), the last `crowds` of them crowds (negative ids)."""
    y1x1 = rng.integers(0, size - 1, (count, 2))
    hw = np.minimum(rng.integers(1, size // 2, (count, 2)) * rng.integers(1, 3, (count, 1)),
                    size - y1x1)
    boxes = np.concatenate([y1x1, y1x1 + hw], axis=1)
    if count > 3:
        boxes[count // 2] = boxes[0]  # a duplicate GT: ties between GT boxes
    if count > 5:
        # Two GT boxes mirrored around the 16-px anchor at (40..56, 40..56): IoU 2/3 with
        # each, different deltas; the first GT must win (np.argmax's rule).
        boxes[1:3] = [[40, 40, 56, 64], [40, 32, 56, 56]]
    ids = rng.integers(1, 4, count)
    if crowds:
        ids[count - crowds:] *= -1
    return ids.astype(np.int32), boxes.astype(np.int32)


def padded_batch(cases, max_gt):
    """[(ids, boxes)] -> ids [B, max_gt], boxes [B, max_gt, 4], zero padded."""
    ids = np.zeros([len(cases), max_gt], np.int32)
    boxes = np.zeros([len(cases), max_gt, 4], np.float32)
    for b, (i, x) in enumerate(cases):
        ids[b, :len(i)] = i
        boxes[b, :len(i)] = x
    return ids, boxes


def graph_targets(anchors, ids, boxes, config, block=None):
    fn = tf.function(lambda a, i, x: rpn.rpn_targets_graph(a, i, x, config, block))
    match, bbox = fn(tf.constant(anchors), tf.constant(ids), tf.constant(boxes))
    return match.numpy(), bbox.numpy()


def numpy_targets(anchors, case, config):
    ids, boxes = case
    return rpn.build_rpn_targets(None, anchors, ids, boxes, config,
                                 rng=np.random.default_rng(0))


def assert_same_deltas(match, bbox, ref_match, ref_bbox):
    """Each positive anchor's row equals the numpy row of the same anchor."""
    rows = {a: r for r, a in enumerate(np.flatnonzero(ref_match == 1))}
    positive = np.flatnonzero(match == 1)
    want = np.array([ref_bbox[rows[a]] for a in positive]).reshape(-1, 4)
    np.testing.assert_allclose(bbox[:len(positive)], want, rtol=1e-6, atol=1e-6)
    assert not bbox[len(positive):].any()


CASES = {
    # name: [(GT count, crowds) per image], padded GT rows
    "plain_and_crowds": ([(5, 0), (9, 3)], 12),
    "no_objects": ([(0, 0), (4, 1)], 6),
    "only_crowds": ([(2, 2), (0, 0)], 3),
    "many_gt_over_cap": ([(40, 4), (25, 0)], 40),
}


@pytest.mark.parametrize("block", [3, 8])
@pytest.mark.parametrize("name", sorted(CASES))
def test_labels_and_deltas_equal_numpy_without_subsampling(name, block):
    """Caps above the anchor count: nothing is subsampled, so every label and delta is
    deterministic and must equal build_rpn_targets' (several IoU blocks with block=3)."""
    config = make_config()
    anchors = rpn.get_anchors(config, config.IMAGE_SHAPE)
    full = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=2 * len(anchors))
    rng = np.random.default_rng(sorted(CASES).index(name))
    counts, max_gt = CASES[name]
    cases = [random_gt(rng, n, 128, crowds) for n, crowds in counts]
    match, bbox = graph_targets(anchors, *padded_batch(cases, max_gt), full, block)
    assert match.shape == (2, len(anchors)) and bbox.shape == (2, 2 * len(anchors), 4)
    for b, case in enumerate(cases):
        ref_match, ref_bbox = numpy_targets(anchors, case, full)
        np.testing.assert_array_equal(match[b], ref_match)
        assert_same_deltas(match[b], bbox[b], ref_match, ref_bbox)
    if name == "no_objects":
        assert not np.any(match[0] == 1) and np.all(match[0] == -1)
    if name == "many_gt_over_cap":  # enough positives to exercise the cap below
        assert (match == 1).sum(axis=1).min() > config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_subsampled_counts_and_subsets(name):
    """With the cap: numpy's kept counts, kept anchors a subset of the right label set,
    and every kept positive's deltas equal to numpy's for that anchor."""
    config = make_config()
    anchors = rpn.get_anchors(config, config.IMAGE_SHAPE)
    full = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=2 * len(anchors))
    rng = np.random.default_rng(10 + sorted(CASES).index(name))
    counts, max_gt = CASES[name]
    cases = [random_gt(rng, n, 128, crowds) for n, crowds in counts]
    match, bbox = graph_targets(anchors, *padded_batch(cases, max_gt), config)
    total = config.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert bbox.shape == (2, total, 4)
    for b, case in enumerate(cases):
        sampled, _ = numpy_targets(anchors, case, config)
        for label in (1, -1):  # numpy's counts after _balance
            assert (match[b] == label).sum() == (sampled == label).sum(), (b, label)
        ref_match, ref_bbox = numpy_targets(anchors, case, full)
        assert np.all(ref_match[match[b] == 1] == 1)
        assert np.all(ref_match[match[b] == -1] == -1)
        assert_same_deltas(match[b], bbox[b], ref_match, ref_bbox)
    if name == "many_gt_over_cap":
        assert (match == 1).sum(axis=1).tolist() == [total // 2] * 2


def test_subsampling_is_random_and_seeded():
    config = make_config()
    anchors = rpn.get_anchors(config, config.IMAGE_SHAPE)
    ids, boxes = padded_batch([random_gt(np.random.default_rng(5), 30, 128)] * 2, 30)
    fn = tf.function(lambda: rpn.rpn_targets_graph(anchors, ids, boxes, config)[0])
    tf.random.set_seed(1)
    first = fn().numpy()
    # The two images have the same GT but their own draws.
    assert not np.array_equal(first[0], first[1])
    tf.random.set_seed(1)
    np.testing.assert_array_equal(fn().numpy(), first)


def test_unreachable_gt_and_tied_best_anchors():
    """A GT no anchor touches matches nothing; all anchors tying for a GT's best IoU are
    positive (the hand case of test_data, through the graph)."""
    anchors = np.array([[0, 0, 10, 20], [0, -10, 10, 10], [300, 300, 310, 310]], float)
    ids, boxes = padded_batch([(np.array([1]), np.array([[0, 0, 10, 10]])),
                               (np.array([1]), np.array([[500, 500, 510, 510]]))], 2)
    match, bbox = graph_targets(anchors, ids, boxes, make_config())
    np.testing.assert_array_equal(match, [[1, 1, -1], [-1, -1, -1]])
    assert not bbox[1].any()


def test_pixel_anchors_graph_equal_get_anchors():
    config = make_config(RPN_ANCHOR_RATIOS=[0.5, 1, 2])
    for shape in [(128, 128, 3), (192, 64, 3)]:
        want = rpn.get_anchors(config, shape)
        got = rpn.pyramid_anchors_pixels_graph(tf.constant(shape[:2]), config).numpy()
        np.testing.assert_array_equal(got, want)


def test_full_size_1024_equals_numpy():
    """The default 1024-px anchors (~262k) and MAX_GT_INSTANCES boxes, through the
    Keras layer (anchors from the image size), batch 2."""
    config = make_config(Config, IMAGE_MIN_DIM=800, IMAGE_MAX_DIM=1024,
                         RPN_TRAIN_ANCHORS_PER_IMAGE=256)
    anchors = rpn.get_anchors(config, config.IMAGE_SHAPE)
    rng = np.random.default_rng(3)
    cases = [random_gt(rng, 100, 1024, crowds=5), random_gt(rng, 7, 1024)]
    ids, boxes = padded_batch(cases, config.MAX_GT_INSTANCES)
    layer = rpn.RpnTargetsLayer(config)
    images = tf.zeros([2, 1024, 1024, 3])
    match, bbox = (t.numpy() for t in tf.function(layer)([images, ids, boxes]))
    assert match.shape == (2, len(anchors), 1) and bbox.shape == (2, 256, 4)
    full = make_config(Config, IMAGE_MIN_DIM=800, IMAGE_MAX_DIM=1024,
                       RPN_TRAIN_ANCHORS_PER_IMAGE=2 * len(anchors))
    for b, case in enumerate(cases):
        sampled, _ = numpy_targets(anchors, case, config)
        for label in (1, -1):
            assert (match[b, :, 0] == label).sum() == (sampled == label).sum()
        ref_match, ref_bbox = numpy_targets(anchors, case, full)
        assert np.all(ref_match[match[b, :, 0] == 1] == 1)
        assert np.all(ref_match[match[b, :, 0] == -1] == -1)
        assert_same_deltas(match[b, :, 0], bbox[b], ref_match, ref_bbox)


# ------------------------------------------------------------------ the training graph
def test_training_graph_inputs_follow_the_mode():
    config = make_config(RPN_TARGETS_IN_GRAPH=True)
    names = list(graph.model_inputs("training", config))
    assert "input_rpn_match" not in names and "input_gt_boxes" in names
    legacy = list(graph.model_inputs("training", make_config(RPN_TARGETS_IN_GRAPH=False)))
    assert legacy[2:4] == ["input_rpn_match", "input_rpn_bbox"]
    with pytest.raises(ValueError, match="RPN_TARGETS_IN_GRAPH"):
        make_config(RPN_TARGETS_IN_GRAPH="yes")


def test_golden_batch_losses_with_graph_targets(tmp_path):
    """The golden plain model built with graph-side targets, on the golden batch: the
    head losses are the golden ones (proposals do not depend on the RPN targets), and
    so is rpn_bbox_loss, as no positive anchor is subsampled on that batch."""
    from mrcnn import model as modellib
    from tests import test_golden as G
    with np.load(G.GOLDEN) as f:
        golden = dict(f)
    batch = {k[len("plain_batch_"):]: v for k, v in golden.items()
             if k.startswith("plain_batch_")}
    cap = G.training_config("plain").RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    assert (batch["input_rpn_match"] == 1).sum(axis=(1, 2)).max() < cap
    config = type("GraphTargets", (type(G.training_config("plain")),),
                  {"RPN_TARGETS_IN_GRAPH": True})()
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    assert "input_rpn_match" not in [t.name for t in model.keras_model.inputs]
    G.set_golden_weights(model.keras_model)
    feed = {k: v for k, v in batch.items() if k not in data.RPN_TARGET_NAMES}
    with G.fixed_uniform():
        out = G.named_outputs(model, model.keras_model(feed, training=True))
    for name in ("rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss"):
        np.testing.assert_allclose(out[name], golden["plain_" + name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    assert 0 < float(out["rpn_class_loss"]) < 10


# ---------------------------------------------------------------- the input pipeline
def test_pipeline_carries_rpn_targets_only_when_asked():
    from tests.test_data import RECTS, RectDataset, TinyConfig
    ds = RectDataset([{"rects": RECTS}, {"rects": RECTS[:2]}])
    for in_graph in (True, False):
        config = make_config(TinyConfig, RPN_TARGETS_IN_GRAPH=in_graph)
        batch = next(iter(data.build_dataset(ds, config, shuffle=False, seed=0)))
        assert list(batch) == list(data.example_spec(config))
        assert ("input_rpn_match" in batch) != in_graph
        ex = data.load_training_example(ds, config, 0, rng=np.random.default_rng(0))
        assert list(ex) == list(batch)
    # Matterport's generator keeps its seven inputs whatever the mode.
    config = make_config(TinyConfig, RPN_TARGETS_IN_GRAPH=True)
    inputs, _ = next(data.data_generator(ds, config, shuffle=False))
    assert len(inputs) == 7 and inputs[2].shape[2] == 1 and inputs[3].shape[1:] == (64, 4)
