"""Tiled detection on a large generated image against resizing the whole image.

    python samples/shapes.py train --logs /tmp/tiling/logs          # once, ~14 min
    python benchmarks/bench_tiling.py --weights /tmp/tiling/logs/shapes.../mask_rcnn_shapes_0010.h5

Scene: a --height x --width (4000 x 6000) image of --objects (300) shapes-sample objects
(squares, circles, triangles, size s in [10, 32) as samples/shapes.py draws them on
128-px images, colours >= 120 apart from the one background colour), no two touching;
--crossing (60) of them are centred on inner window borders of the tiled layout (a
third across vertical borders, a third across horizontal ones, a third at corners), the
others cross none. The model is the shapes sample's (trained on 128-px images):
windows of --tile (256) px are fed at scale 1, so objects are at their trained size.

Each measured run is its own subprocess (peak RSS = its ru_maxrss):
  base           scene + model + a warm-up detect: the floor the others start from;
  tiled          detect([image], tile=..., masks="crops");
  tiled-agnostic the same with detect_tiled(..., class_agnostic=True);
  whole-<dim>    detect([image]) with IMAGE_MAX_DIM = dim (the image resized into the
                 model, Matterport's way), for each --whole-dims.
Reported per run: objects detected exactly once (a detection with mask IoU >= 0.5 with
the whole object; target >= 98%), missed, duplicates (extra matches of an object:
same-class ones, which the tiling must remove, and other-class ones, the network's own
per-class NMS that detect() without tiles has too), false positives (detections
matching no object), class accuracy of the objects detected once, seconds in detect(),
peak RSS; the crossing objects separately. One BENCH_JSON line per run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ------------------------------------------------------------------ scene
def inner_edges(length, tile, overlap):
    """Window borders along one axis that are not the image's own edges."""
    from mrcnn.tiling import axis_starts
    starts = axis_starts(length, tile, overlap)
    edges = np.concatenate([starts, np.minimum(starts + tile, length)])
    return np.unique(edges[(edges > 0) & (edges < length)])


def draw_object(rng, cy, cx, height, width):
    """A random shapes-sample object centred at (cy, cx): (class_id, roi, crop) with roi
    (y1, x1, y2, x2) the mask's box in the image and crop its bool mask, or None when it
    would leave the image."""
    from mrcnn.boxes import extract_bboxes
    from samples.shapes import SHAPES, draw_shape_mask
    shape_ix = int(rng.integers(0, len(SHAPES)))
    s = int(rng.integers(10, 32))
    y0, x0 = cy - s - 1, cx - s - 1
    if y0 < 0 or x0 < 0 or cy + s + 1 > height or cx + s + 1 > width:
        return None
    mask = draw_shape_mask(SHAPES[shape_ix], (s + 1, s + 1, s), 2 * s + 2, 2 * s + 2)
    y1, x1, y2, x2 = extract_bboxes(mask[:, :, None])[0]
    roi = np.array([y0 + y1, x0 + x1, y0 + y2, x0 + x2])
    return shape_ix + 1, roi, mask[y1:y2, x1:x2]


def crosses(roi, ys, xs):
    """Does the box have pixels on both sides of one of the lines y in ys / x in xs?"""
    return bool(np.any((ys > roi[0]) & (ys < roi[2])) or np.any((xs > roi[1]) & (xs < roi[3])))


def place(rng, ys, xs, height, width, crossing):
    """Centre of a new object: on a border line (crossing) or anywhere."""
    if not crossing:
        return int(rng.integers(0, height)), int(rng.integers(0, width))
    kind = int(rng.integers(0, 3))
    jitter = rng.integers(-8, 9, 2)
    cy = int(rng.choice(ys)) if kind != 1 else int(rng.integers(0, height))
    cx = int(rng.choice(xs)) if kind != 0 else int(rng.integers(0, width))
    return cy + int(jitter[0]) * (kind != 1), cx + int(jitter[1]) * (kind != 0)


def make_scene(args):
    """The benchmark image and its objects: image uint8 [H, W, 3], class_ids [N], rois
    [N, 4], crops (list of bool masks), crossing bool [N]."""
    rng = np.random.default_rng(args.seed)
    h, w = args.height, args.width
    ys, xs = inner_edges(h, args.tile, args.overlap), inner_edges(w, args.tile, args.overlap)
    bg = rng.integers(0, 256, 3)
    objects, boxes = [], np.zeros([0, 4])
    while len(objects) < args.objects:
        crossing = len(objects) < args.crossing
        obj = draw_object(rng, *place(rng, ys, xs, h, w, crossing), h, w)
        if obj is None or crosses(obj[1], ys, xs) != crossing:
            continue
        # At least 4 px between any two objects' boxes: separate objects.
        grown = obj[1] + [-4, -4, 4, 4]
        if np.any((np.minimum(grown[2], boxes[:, 2]) > np.maximum(grown[0], boxes[:, 0])) &
                  (np.minimum(grown[3], boxes[:, 3]) > np.maximum(grown[1], boxes[:, 1]))):
            continue
        objects.append(obj)
        boxes = np.vstack([boxes, obj[1]])
    image = np.empty((h, w, 3), np.uint8)
    image[:] = bg
    for _, (y1, x1, y2, x2), crop in objects:
        color = rng.integers(0, 256, 3)
        while np.abs(color - bg).sum() < 120:
            color = rng.integers(0, 256, 3)
        image[y1:y2, x1:x2][crop] = color
    crossing = np.arange(len(objects)) < args.crossing
    return (image, np.array([o[0] for o in objects]), np.array([o[1] for o in objects]),
            [o[2] for o in objects], crossing)


# ------------------------------------------------------------------ scoring
def mask_iou(roi_a, crop_a, roi_b, crop_b):
    """IoU of two crops at their boxes (pasted in the union box)."""
    from mrcnn.tiling import paste
    box = np.concatenate([np.minimum(roi_a[:2], roi_b[:2]), np.maximum(roi_a[2:], roi_b[2:])])
    a, b = paste(crop_a, roi_a, box), paste(crop_b, roi_b, box)
    return (a & b).sum() / max((a | b).sum(), 1)


def score(scene, result, iou_threshold=0.5):
    """Counts of a result (rois, class_ids, crops) against the scene's objects."""
    from mrcnn.boxes import compute_overlaps
    _, gt_class, gt_rois, gt_crops, crossing = scene
    rois, crops = result["rois"], result["masks"]
    hit = np.zeros((len(gt_rois), len(rois)), bool)
    for g, d in np.argwhere(compute_overlaps(gt_rois, rois) > 0):
        hit[g, d] = mask_iou(gt_rois[g], gt_crops[g], rois[d], crops[d]) >= iou_threshold
    per_object = hit.sum(axis=1)
    once = per_object == 1
    class_ids = np.asarray(result["class_ids"])
    right_class = np.zeros_like(once)
    if len(rois):
        right_class = once & (class_ids[hit.argmax(axis=1)] == gt_class)
    # Extra matches of one class are what cross-window merging and per-class NMS must
    # remove; extra classes on one object are the network's per-class NMS (detect()
    # without tiles gives them too).
    classes = np.array([len(set(class_ids[h])) for h in hit])
    return {"objects": len(gt_rois), "detections": int(len(rois)),
            "detected_once": int(once.sum()), "detected_once_frac": float(once.mean()),
            "missed": int((per_object == 0).sum()),
            "duplicates": int(np.maximum(per_object - 1, 0).sum()),
            "duplicates_same_class": int((per_object - classes).sum()),
            "duplicates_other_class": int(np.maximum(classes - 1, 0).sum()),
            "false_positives": int((~hit.any(axis=0)).sum()),
            "class_accuracy": float(right_class.sum() / max(once.sum(), 1)),
            "crossing_once": int(once[crossing].sum()), "crossing": int(crossing.sum())}


# ------------------------------------------------------------------ one run
def build_model(args, max_dim):
    from mrcnn import model as modellib
    from samples.shapes import ShapesInferenceConfig

    class TileInferenceConfig(ShapesInferenceConfig):
        IMAGE_MIN_DIM = min(128, max_dim)
        IMAGE_MAX_DIM = max_dim
        IMAGES_PER_GPU = args.batch

    model = modellib.MaskRCNN("inference", TileInferenceConfig(), "/tmp/tiling/bench_logs")
    model.load_weights(args.weights, by_name=True, verbose=0)
    return model


def to_crops(result):
    """detect()'s full masks -> crops at the rois (for scoring the whole-image run)."""
    masks = result["masks"]
    result["masks"] = [masks[y1:y2, x1:x2, i] for i, (y1, x1, y2, x2)
                       in enumerate(result["rois"])]
    return result


def child(args):
    """One measured run in this process; prints BENCH_JSON."""
    scene = make_scene(args)
    image = scene[0]
    whole = args.child.startswith("whole-")
    max_dim = int(args.child.split("-")[1]) if whole else args.tile
    model = build_model(args, max_dim)
    model.detect([image[:args.tile, :args.tile]])   # trace once, outside the timing
    out = {"run": args.child, "tile": args.tile, "overlap": args.overlap,
           "image": [args.height, args.width]}
    if args.child != "base":
        t0 = time.time()
        if args.child == "tiled":
            r = model.detect([image], tile=args.tile, overlap=args.overlap, masks="crops",
                             verbose=1)[0]
        elif args.child == "tiled-agnostic":
            from mrcnn.tiling import detect_tiled
            r = detect_tiled(model, image, args.tile, args.overlap, masks="crops",
                             class_agnostic=True, verbose=1)
        else:
            r = to_crops(model.detect([image])[0])
        out["detect_s"] = round(time.time() - t0, 1)
        out.update(score(scene, r))
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("BENCH_JSON " + json.dumps(out), flush=True)


def run_child(argv, name):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit("run {} failed".format(name))
    print("\n".join(l for l in proc.stdout.splitlines() if l.startswith("tiled")))
    print(lines[-1], flush=True)
    return json.loads(lines[-1][len("BENCH_JSON "):])


def report(rows):
    keys = ("detected_once", "missed", "duplicates_same_class", "duplicates_other_class",
            "false_positives", "class_accuracy", "crossing_once", "detect_s", "peak_rss_mb")
    print("\n{:<12}".format("run") + "".join("{:>14}".format(k[:13]) for k in keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            if k == "detected_once" and v != "":
                v = "{} ({:.1%})".format(v, r["detected_once_frac"])
            elif k == "crossing_once" and v != "":
                v = "{}/{}".format(v, r["crossing"])
            elif isinstance(v, float):
                v = "{:.3f}".format(v)
            cells.append("{:>14}".format(v))
        print("{:<12}".format(r["run"]) + "".join(cells))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="shapes model .h5")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="windows per network call")
    p.add_argument("--height", type=int, default=4000)
    p.add_argument("--width", type=int, default=6000)
    p.add_argument("--objects", type=int, default=300)
    p.add_argument("--crossing", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--whole-dims", type=int, nargs="*", default=[128, 1024],
                   help="IMAGE_MAX_DIM of the whole-image runs (none: skip them)")
    p.add_argument("--runs", nargs="*", default=None,
                   help="subset of: base tiled tiled-agnostic whole-DIM (default: all)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return child(args)
    runs = args.runs or (["base", "tiled", "tiled-agnostic"] +
                         ["whole-{}".format(d) for d in args.whole_dims])
    # The children get the scene and model options (and one --child each).
    passed = ["--weights", args.weights] + [
        "--{}={}".format(k, getattr(args, k)) for k in
        ("tile", "overlap", "batch", "height", "width", "objects", "crossing", "seed")]
    report([run_child(passed, name) for name in runs])


if __name__ == "__main__":
    main()
