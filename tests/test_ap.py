"""mrcnn.ap: Matterport's mask AP, its matching, and box recall, on hand-computed cases."""
import numpy as np
import pytest

from mrcnn import ap as AP

from test_masks import rect_mask  # noqa: E402


def test_trim_zeros():
    x = np.array([[1, 2], [0, 0], [0, 3], [0, 0]])
    np.testing.assert_array_equal(AP.trim_zeros(x), [[1, 2], [0, 3]])
    with pytest.raises(ValueError):
        AP.trim_zeros(np.zeros(3))


def _instances():
    """Two GT instances (classes 1, 2) on a 20x20 image."""
    gt_boxes = np.array([[0, 0, 10, 10], [10, 10, 20, 20]])
    gt_masks = rect_mask((20, 20), gt_boxes)
    return gt_boxes, np.array([1, 2]), gt_masks


def test_compute_ap_perfect():
    gb, gc, gm = _instances()
    ap, precisions, recalls, overlaps = AP.compute_ap(
        gb, gc, gm, gb, gc, np.array([0.9, 0.8]), gm)
    assert ap == pytest.approx(1.0)
    np.testing.assert_allclose(precisions, [1, 1, 1, 0])
    np.testing.assert_allclose(recalls, [0, 0.5, 1, 1])
    np.testing.assert_allclose(overlaps, np.eye(2))


def test_compute_ap_none_and_wrong_class():
    gb, gc, gm = _instances()
    far = np.array([[0, 10, 10, 20]])
    ap = AP.compute_ap(gb, gc, gm, far, np.array([1]), np.array([0.9]),
                          rect_mask((20, 20), far))[0]
    assert ap == 0.0
    # Right place, wrong class.
    ap = AP.compute_ap(gb, gc, gm, gb[:1], np.array([2]), np.array([0.9]), gm[..., :1])[0]
    assert ap == 0.0


def test_compute_ap_half_and_false_positive_first():
    gb, gc, gm = _instances()
    # One of two GTs found: recall 0.5 at precision 1 -> AP 0.5.
    ap = AP.compute_ap(gb, gc, gm, gb[:1], gc[:1], np.array([0.9]), gm[..., :1])[0]
    assert ap == pytest.approx(0.5)
    # A false positive ranked first, then a hit: precision 1/2 at recall 1/2 -> 0.25.
    far = np.array([[0, 10, 10, 20], [0, 0, 10, 10]])
    ap, precisions, recalls, _ = AP.compute_ap(
        gb, gc, gm, far, np.array([1, 1]), np.array([0.9, 0.8]), rect_mask((20, 20), far))
    assert ap == pytest.approx(0.25)
    np.testing.assert_allclose(recalls, [0, 0, 0.5, 1])


def test_compute_matches_duplicate_is_false_positive_and_padding_trimmed():
    gb, gc, gm = _instances()
    # Two predictions on GT 0 (the best-scored one first) plus a zero padding row.
    pb = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 0, 0]])
    pm = rect_mask((20, 20), pb)
    gt_match, pred_match, overlaps = AP.compute_matches(
        gb, gc, gm, pb, np.array([1, 1, 0]), np.array([0.9, 0.8, 0.0]), pm)
    np.testing.assert_array_equal(gt_match, [0, -1])
    np.testing.assert_array_equal(pred_match, [0, -1])
    assert overlaps.shape == (2, 2)
    ap = AP.compute_ap(gb, gc, gm, pb, np.array([1, 1, 0]),
                          np.array([0.9, 0.8, 0.0]), pm)[0]
    assert ap == pytest.approx(0.5)


def test_compute_matches_sorts_by_score():
    gb, gc, gm = _instances()
    pb = np.array([[0, 0, 10, 9], [0, 0, 10, 10]])
    gt_match, pred_match, overlaps = AP.compute_matches(
        gb, gc, gm, pb, np.array([1, 1]), np.array([0.5, 0.9]), rect_mask((20, 20), pb))
    # In score order the exact box comes first and takes GT 0.
    np.testing.assert_allclose(overlaps[:, 0], [1.0, 0.9])
    np.testing.assert_array_equal(pred_match, [0, -1])


def test_compute_ap_range():
    gb, gc, gm = _instances()
    # The top-scored prediction covers 90% of GT 0 (IoU 0.9); the second is exact on GT 1.
    # np.arange(0.5, 1.0, 0.05) holds 0.9000000000000004 > 0.9, so 8 thresholds give AP 1
    # and 2 give a miss first, then a hit: precision 1/2 at recall 1/2 -> 0.25.
    pb = np.array([[0, 0, 10, 9], [10, 10, 20, 20]])
    pm = rect_mask((20, 20), pb)
    ap = AP.compute_ap_range(gb, gc, gm, pb, gc, np.array([0.9, 0.8]), pm, verbose=0)
    assert ap == pytest.approx(np.mean([1.0] * 8 + [0.25] * 2))
    ap = AP.compute_ap_range(gb, gc, gm, pb, gc, np.array([0.9, 0.8]), pm,
                                iou_thresholds=np.array([0.5, 0.95]), verbose=0)
    assert ap == pytest.approx(0.625)


def test_compute_recall():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = np.array([[0, 0, 10, 9], [1, 1, 10, 10], [40, 40, 50, 50]])
    recall, positive = AP.compute_recall(pred, gt, 0.5)
    assert recall == 0.5
    np.testing.assert_array_equal(positive, [0, 1])
    recall, positive = AP.compute_recall(pred, gt, 0.85)
    assert recall == 0.5 and list(positive) == [0]
    assert AP.compute_recall(np.zeros((0, 4)), gt, 0.5)[0] == 0.0
