"""Tests of mrcnn.evaluate against pycocotools called directly and hand-made cases."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn import evaluate, utils
from mrcnn.config import Config

CLASS_NAMES = ["BG", "square", "disc"]


def draw(h, w, class_id, box):
    """Binary mask [h, w]: a filled box for class 1, the disc inscribed in box for 2."""
    y1, x1, y2, x2 = box
    m = np.zeros((h, w), bool)
    if abs(class_id) == 2:
        yy, xx = np.mgrid[:h, :w]
        cy, cx = (y1 + y2 - 1) / 2.0, (x1 + x2 - 1) / 2.0
        r = min(y2 - y1, x2 - x1) / 2.0
        m[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)] = True
    else:
        m[y1:y2, x1:x2] = True
    return m


def box_of(mask):
    """(y1, x1, y2, x2) of a mask, y2/x2 exclusive (as utils.extract_bboxes)."""
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])


class ToyDataset(utils.Dataset):
    """In-memory dataset: specs is a list of (h, w, [(class_id, (y1, x1, y2, x2)), ...]);
    a negative class id is a crowd region."""

    def __init__(self, specs):
        super().__init__()
        self.add_class("toy", 1, "square")
        self.add_class("toy", 2, "disc")
        for i, (h, w, inst) in enumerate(specs):
            self.add_image("toy", i, "mem://{}".format(i), height=h, width=w, instances=inst)
        self.prepare()

    def load_image(self, image_id):
        info = self.image_info[image_id]
        image = np.full((info["height"], info["width"], 3), 40, np.uint8)
        image[0, 0, 0] = image_id  # lets the fake model know which image it got
        return image

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        h, w, inst = info["height"], info["width"], info["instances"]
        masks = np.zeros((h, w, len(inst)), bool)
        for i, (cid, box) in enumerate(inst):
            masks[:, :, i] = draw(h, w, cid, box)
        return masks, np.array([c for c, _ in inst], np.int32)


SPECS = [
    (64, 64, [(1, (10, 10, 30, 30)), (2, (35, 35, 60, 60))]),
    (48, 64, [(1, (5, 5, 25, 45)), (-1, (30, 30, 46, 60))]),
    (64, 48, [(2, (0, 0, 40, 40)), (1, (50, 30, 58, 38))]),
]

# (image_id, class_id, score, box drawn as mask): partial overlaps, a false positive, a
# detection inside the crowd region, a wrong class and a missed small object.
PREDS = [
    (0, 1, 0.90, (12, 12, 32, 32)),
    (0, 2, 0.80, (35, 35, 60, 60)),
    (0, 1, 0.95, (40, 0, 50, 10)),
    (1, 1, 0.70, (5, 5, 25, 30)),
    (1, 1, 0.85, (32, 32, 44, 58)),
    (1, 2, 0.60, (5, 5, 25, 45)),
    (2, 2, 0.50, (2, 3, 42, 41)),
    # Disc of diameter 34: mask area ~908 px (COCO "small"), box area 1156 ("medium").
    (2, 2, 0.97, (24, 10, 58, 44)),
]


def result_dicts(dataset, preds):
    """Group predictions per image into Matterport detect() result dicts."""
    out = {}
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        h, w = info["height"], info["width"]
        mine = [p for p in preds if p[0] == image_id]
        masks = np.zeros((h, w, len(mine)), bool)
        for i, p in enumerate(mine):
            masks[:, :, i] = draw(h, w, p[1], p[3])
        rois = np.array([box_of(masks[:, :, i]) for i in range(len(mine))],
                        np.int32).reshape(-1, 4)
        out[int(image_id)] = {"rois": rois,
                              "class_ids": np.array([p[1] for p in mine], np.int32),
                              "scores": np.array([p[2] for p in mine], np.float32),
                              "masks": masks}
    return out


def all_detections(dataset, results):
    dets = []
    for image_id, r in results.items():
        dets += evaluate.detections_to_coco(image_id, r, dataset)
    return dets


def gt_as_predictions(dataset):
    """detect()-style results equal to the non-crowd ground truth."""
    out = {}
    for image_id in dataset.image_ids:
        masks, class_ids = dataset.load_mask(image_id)
        keep = class_ids > 0
        masks, class_ids = masks[:, :, keep], class_ids[keep]
        out[int(image_id)] = {
            "rois": utils.extract_bboxes(masks).reshape(-1, 4),
            "class_ids": class_ids,
            "scores": np.linspace(0.99, 0.9, len(class_ids)).astype(np.float32),
            "masks": masks}
    return out


def reference_coco(specs, preds, iou_type):
    """pycocotools used directly: hand-written GT dict, loadRes, COCOeval."""
    images, anns = [], []
    for i, (h, w, inst) in enumerate(specs):
        images.append({"id": i, "height": h, "width": w})
        for cid, box in inst:
            m = draw(h, w, cid, box)
            rle = mask_utils.encode(np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]
            y1, x1, y2, x2 = box_of(m)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": abs(cid),
                         "segmentation": rle, "area": float(m.sum()),
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                         "iscrowd": int(cid < 0)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]}
        gt.createIndex()
        res_list = []
        for image_id, cid, score, box in preds:
            h, w = specs[image_id][:2]
            m = draw(h, w, cid, box)
            entry = {"image_id": image_id, "category_id": cid, "score": score}
            if iou_type == "bbox":
                y1, x1, y2, x2 = box_of(m)
                entry["bbox"] = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            else:
                entry["segmentation"] = mask_utils.encode(
                    np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]
            res_list.append(entry)
        res = gt.loadRes(res_list)
        stats, per_class = None, {}
        for cats in (None, [1], [2]):
            E = COCOeval(gt, res, iou_type)
            if cats is not None:
                E.params.catIds = cats
            E.evaluate()
            E.accumulate()
            E.summarize()
            if cats is None:
                stats = np.array(E.stats)
            else:
                per_class[CLASS_NAMES[cats[0]]] = E.stats[0]
    return stats, per_class


@pytest.fixture(scope="module")
def dataset():
    return ToyDataset(SPECS)


@pytest.fixture(scope="module")
def gt(dataset):
    return evaluate.build_coco_gt(dataset)


# ----------------------------------------------------------------------- build_coco_gt

def test_build_coco_gt_fields(dataset, gt):
    assert sorted(gt.getImgIds()) == [0, 1, 2]
    assert [(gt.imgs[i]["height"], gt.imgs[i]["width"]) for i in range(3)] == \
        [(64, 64), (48, 64), (64, 48)]
    assert {c["id"]: c["name"] for c in gt.dataset["categories"]} == {1: "square", 2: "disc"}
    anns = gt.loadAnns(gt.getAnnIds())
    assert len(anns) == 6
    assert min(a["id"] for a in anns) >= 1  # COCOeval reads id 0 as "unmatched"
    by_image = {i: gt.loadAnns(gt.getAnnIds(imgIds=[i])) for i in range(3)}
    for i, (h, w, inst) in enumerate(SPECS):
        got = sorted(by_image[i], key=lambda a: a["bbox"])
        want = sorted(inst, key=lambda t: [box_of(draw(h, w, *t))[k] for k in (1, 0, 3, 2)])
        for a, (cid, box) in zip(got, want):
            m = draw(h, w, cid, box)
            y1, x1, y2, x2 = box_of(m)
            assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert a["area"] == m.sum()
            assert a["iscrowd"] == int(cid < 0)
            assert a["category_id"] == abs(cid)
            assert np.array_equal(gt.annToMask(a).astype(bool), m)
    # Rectangles: area is simply the box area; the crowd is flagged.
    crowd = [a for a in anns if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["image_id"] == 1 and crowd[0]["area"] == 16 * 30
    assert crowd[0]["bbox"] == [30, 30, 30, 16]
    # JSON-serialisable (RLE counts are str).
    json.dumps(gt.dataset)


def test_build_coco_gt_subset_config_and_errors(dataset):
    sub = evaluate.build_coco_gt(dataset, image_ids=[2])
    assert sub.getImgIds() == [2] and len(sub.getAnnIds()) == 2

    class C(Config):
        NAME = "toy"
        NUM_CLASSES = 3
    evaluate.build_coco_gt(dataset, [0], config=C())

    class Wrong(Config):
        NAME = "toy"
        NUM_CLASSES = 5
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        evaluate.build_coco_gt(dataset, [0], config=Wrong())
    with pytest.raises(ValueError, match="image id 7"):
        evaluate.build_coco_gt(dataset, [7])


def test_gt_instances_round_trip(dataset, gt):
    boxes, class_ids, masks = evaluate.gt_instances(gt, 1)
    assert class_ids.tolist() == [1]  # the crowd is left out
    assert boxes.tolist() == [[5, 5, 25, 45]]
    assert np.array_equal(masks[:, :, 0], draw(48, 64, 1, (5, 5, 25, 45)))
    _, cids, _ = evaluate.gt_instances(gt, 1, include_crowd=True)
    assert sorted(cids.tolist()) == [-1, 1]


# ----------------------------------------------------------------------- detections

def test_detections_to_coco_fields():
    masks = np.zeros((20, 30, 2), bool)
    masks[2:5, 3:9, 0] = True
    masks[10:20, 0:30, 1] = True
    r = {"rois": np.array([[2, 3, 5, 9], [10, 0, 20, 30]]), "class_ids": np.array([2, 1]),
         "scores": np.array([0.5, 0.25]), "masks": masks}
    d = evaluate.detections_to_coco(4, r)
    assert [e["bbox"] for e in d] == [[3, 2, 6, 3], [0, 10, 30, 10]]
    assert [e["category_id"] for e in d] == [2, 1]
    assert [e["score"] for e in d] == [0.5, 0.25]
    assert all(e["image_id"] == 4 for e in d)
    assert all(isinstance(e["segmentation"]["counts"], str) for e in d)
    for e, k in zip(d, range(2)):
        assert np.array_equal(mask_utils.decode(e["segmentation"]).astype(bool), masks[:, :, k])
    json.dumps(d)
    with pytest.raises(ValueError, match="image 4"):
        evaluate.detections_to_coco(4, {"rois": r["rois"], "class_ids": [1],
                                        "scores": [1.0, 1.0]})


# ----------------------------------------------------------------------- evaluate_detections

def test_perfect_predictions_give_ap_one(dataset, gt):
    dets = all_detections(dataset, gt_as_predictions(dataset))
    m = evaluate.evaluate_detections(gt, dets, ("bbox", "segm"))
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == pytest.approx(1.0)
        assert m[t]["AP50"] == pytest.approx(1.0)
        assert m[t]["AP75"] == pytest.approx(1.0)
        assert m[t]["AR100"] == pytest.approx(1.0)
        assert m[t]["per_class_AP"] == pytest.approx({"square": 1.0, "disc": 1.0})
        assert m[t]["num_detections"] == 5


def test_max_dets_for_crowded_images():
    # One image with 150 small squares (a crowded nuclei image), predicted perfectly:
    # COCO's 100 detections per image cap recall at 100/150; max_dets=150 gives AP 1.
    boxes = [(4 * (k // 15) + 1, 4 * (k % 15) + 1, 4 * (k // 15) + 4, 4 * (k % 15) + 4)
             for k in range(150)]
    crowded = ToyDataset([(64, 64, [(1, b) for b in boxes])])
    gt = evaluate.build_coco_gt(crowded)
    dets = all_detections(crowded, gt_as_predictions(crowded))
    capped = evaluate.evaluate_detections(gt, dets, ("segm",))["segm"]
    assert capped["AR100"] == pytest.approx(100 / 150)
    assert capped["AP50"] < 0.7 and capped["max_dets"] == 100
    full = evaluate.evaluate_detections(gt, dets, ("bbox", "segm"), max_dets=150)
    for t in ("bbox", "segm"):
        assert full[t]["AP"] == pytest.approx(1.0)   # not summarize()'s -1 at maxDets 100
        assert full[t]["AP50"] == pytest.approx(1.0)
        assert full[t]["AR100"] == pytest.approx(1.0) and full[t]["max_dets"] == 150


def test_disjoint_and_empty_predictions_give_ap_zero(dataset, gt):
    # One box per image in a corner no GT touches.
    preds = [(0, 1, 0.9, (0, 50, 8, 62)), (1, 2, 0.8, (40, 0, 48, 4)),
             (2, 1, 0.7, (56, 0, 64, 6))]
    dets = all_detections(dataset, result_dicts(dataset, preds))
    for d in (dets, []):
        m = evaluate.evaluate_detections(gt, d, ("bbox", "segm"))
        for t in ("bbox", "segm"):
            assert m[t]["AP"] == 0.0 and m[t]["AP50"] == 0.0 and m[t]["AR100"] == 0.0
            assert m[t]["per_class_AP"] == {"square": 0.0, "disc": 0.0}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools_directly(dataset, gt, iou_type):
    dets = all_detections(dataset, result_dicts(dataset, PREDS))
    m = evaluate.evaluate_detections(gt, dets, (iou_type,))[iou_type]
    ref_stats, ref_per_class = reference_coco(SPECS, PREDS, iou_type)
    got = np.array([m[k] for k in evaluate.STAT_NAMES])
    np.testing.assert_allclose(got, ref_stats, atol=1e-12)
    # A real mixed case, not a degenerate 0/1 one.
    assert 0.1 < m["AP50"] < 1.0 and m["AP"] < m["AP50"]
    assert set(m["per_class_AP"]) == {"square", "disc"}
    for name, ap in ref_per_class.items():
        assert m["per_class_AP"][name] == pytest.approx(ap, abs=1e-12)


def test_segm_uses_mask_area_not_box_area(dataset, gt):
    # The unmatched 34-px disc is "small" by its mask area but "medium" by its box area:
    # segm APs must count it as a small false positive (pycocotools' loadRes would use the
    # box area if the box were passed along with the mask).
    dets = all_detections(dataset, result_dicts(dataset, PREDS))
    m = evaluate.evaluate_detections(gt, dets, ("bbox", "segm"))
    ref, _ = reference_coco(SPECS, PREDS, "segm")
    assert m["segm"]["APs"] == pytest.approx(ref[3], abs=1e-12)
    assert m["segm"]["APm"] == pytest.approx(ref[4], abs=1e-12)
    assert m["segm"]["APs"] < m["bbox"]["APs"] - 0.1


def test_unknown_ids_raise(gt):
    with pytest.raises(ValueError, match="image id 9"):
        evaluate.evaluate_detections(gt, [{"image_id": 9, "category_id": 1, "score": 1.0,
                                           "bbox": [0, 0, 1, 1]}], ("bbox",))
    with pytest.raises(ValueError, match="category id 5"):
        evaluate.evaluate_detections(gt, [{"image_id": 0, "category_id": 5, "score": 1.0,
                                           "bbox": [0, 0, 1, 1]}], ("bbox",))
    with pytest.raises(ValueError, match="segmentation"):
        evaluate.evaluate_detections(gt, [{"image_id": 0, "category_id": 1, "score": 1.0,
                                           "bbox": [0, 0, 1, 1]}], ("segm",))


# ----------------------------------------------------------------------- evaluate_coco

class FakeConfig(Config):
    NAME = "toy"
    NUM_CLASSES = 3
    IMAGES_PER_GPU = 2


class FakeModel:
    """Returns the ground truth as detections; insists on full batches like Matterport."""

    def __init__(self, dataset, results):
        self.config = FakeConfig()
        self.results = results
        self.calls = 0

    def detect(self, images, verbose=0):
        assert len(images) == self.config.BATCH_SIZE
        self.calls += 1
        return [self.results[int(image[0, 0, 0])] for image in images]


def test_evaluate_coco_end_to_end(dataset, tmp_path):
    model = FakeModel(dataset, gt_as_predictions(dataset))
    path = str(tmp_path / "out" / "results.json")
    m = evaluate.evaluate_coco(model, dataset, results_json=path, verbose=0)
    assert model.calls == 2  # 3 images in batches of 2, the last one padded
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == pytest.approx(1.0)
        assert set(m[t]["per_class_AP"]) == {"square", "disc"}
    assert m["mAP50_compute_ap"] == pytest.approx(1.0)
    assert m["num_images"] == 3 and m["num_detections"] == 5
    # The JSON is a valid COCO results file for this ground truth.
    with open(path) as f:
        assert len(json.load(f)) == 5
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".tmp_")]
    gt = evaluate.build_coco_gt(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        res = gt.loadRes(path)
    assert len(res.getAnnIds()) == 5
    text = evaluate.format_metrics(m)
    assert "segm" in text and "square" in text and "1.000" in text


def test_evaluate_coco_compute_ap_matches_utils(dataset):
    results = result_dicts(dataset, PREDS)
    model = FakeModel(dataset, results)
    m = evaluate.evaluate_coco(model, dataset, image_ids=[0, 1], iou_types=("segm",),
                               verbose=0, batch_size=2)
    assert set(m) >= {"segm", "mAP50_compute_ap"} and "bbox" not in m
    # Reference: utils.compute_ap per image on masks, crowd left out, averaged.
    aps = []
    for i in (0, 1):
        masks, cids = dataset.load_mask(i)
        keep = cids > 0
        r = results[i]
        aps.append(utils.compute_ap(utils.extract_bboxes(masks[:, :, keep]), cids[keep],
                                    masks[:, :, keep], r["rois"], r["class_ids"],
                                    r["scores"], r["masks"], iou_threshold=0.5)[0])
    assert m["mAP50_compute_ap"] == pytest.approx(np.mean(aps))
    assert 0 < m["mAP50_compute_ap"] < 1
    # Only images 0 and 1 were evaluated: same as pycocotools on those two.
    sub_gt = evaluate.build_coco_gt(dataset, [0, 1])
    dets = [d for d in all_detections(dataset, results) if d["image_id"] in (0, 1)]
    direct = evaluate.evaluate_detections(sub_gt, dets, ("segm",))["segm"]
    assert m["segm"]["AP"] == pytest.approx(direct["AP"])


def test_evaluate_coco_limit_and_shape_mismatch(dataset):
    results = gt_as_predictions(dataset)
    m = evaluate.evaluate_coco(FakeModel(dataset, results), dataset, limit=1,
                               iou_types=("bbox",), verbose=0)
    assert m["num_images"] == 1 and m["bbox"]["AP"] == pytest.approx(1.0)
    bad = dict(results)
    bad[0] = dict(results[0], masks=np.zeros((10, 10, 2), bool))
    with pytest.raises(ValueError, match="image 0"):
        evaluate.evaluate_coco(FakeModel(dataset, bad), dataset, verbose=0)
