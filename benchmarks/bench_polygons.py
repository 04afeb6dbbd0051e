"""Polygon rasterisation: skimage.draw.polygon against mrcnn.masks.polygon_mask.

Every polygon of the balloon annotations (``$MRCNN_SHARED_DATA/balloon/train``, else
``../shared/data/balloon/train``), as ViaDataset.load_mask rasterises it: full photo
resolution, continuous coordinates shifted by -0.5, one bool [H, W] mask per polygon
(the old call site: skimage's (rr, cc) written into a zeroed mask). The two are timed
polygon by polygon in one process, alternating which goes first, for a few rounds;
prints ms per polygon (median over rounds, wall and CPU), the speed-up, whether every
mask was identical, and one ``BENCH_JSON {...}`` line.

    python benchmarks/bench_polygons.py                  # 5 rounds
    python benchmarks/bench_polygons.py --rounds 3 --dataset /path/to/balloon/train
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)

import bench_speed  # noqa: E402  (JSON prefix, machine info; numpy only)

SHARED_DATA = os.environ.get("MRCNN_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def load_polygons(dataset_dir):
    """([(rows, cols, (H, W))] in pixel-index units as ViaDataset.load_mask passes them,
    number of images)."""
    from mrcnn.datasets import ViaDataset
    ds = ViaDataset()
    ds.load_via(dataset_dir)
    return [(np.asarray(p["all_points_y"]) - 0.5, np.asarray(p["all_points_x"]) - 0.5,
             (info["height"], info["width"]))
            for info in ds.image_info for p in info["polygons"]], len(ds.image_info)


def skimage_mask(rows, cols, shape):
    import skimage.draw
    m = np.zeros(shape, dtype=bool)
    m[skimage.draw.polygon(rows, cols, shape)] = True
    return m


def vectorised_mask(rows, cols, shape):
    from mrcnn.masks import polygon_mask
    return polygon_mask(rows, cols, shape)


def timed(fn, *args):
    """(result, wall s, process CPU s)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def run(polygons, rounds):
    """Per round, the total wall / CPU seconds of each method over all polygons."""
    methods = {"skimage": skimage_mask, "polygon_mask": vectorised_mask}
    totals = {name: {"wall": [], "cpu": []} for name in methods}
    identical = True
    for name, fn in methods.items():  # warm-up: imports, first calls
        fn(*polygons[0])
    for r in range(rounds):
        wall = dict.fromkeys(methods, 0.0)
        cpu = dict.fromkeys(methods, 0.0)
        for i, poly in enumerate(polygons):
            order = list(methods) if (i + r) % 2 == 0 else list(methods)[::-1]
            outs = {}
            for name in order:
                outs[name], w, c = timed(methods[name], *poly)
                wall[name] += w
                cpu[name] += c
            identical &= bool(np.array_equal(outs["skimage"], outs["polygon_mask"]))
        for name in methods:
            totals[name]["wall"].append(wall[name])
            totals[name]["cpu"].append(cpu[name])
        print("round {}: skimage {:.2f} ms, polygon_mask {:.3f} ms per polygon".format(
            r + 1, 1e3 * wall["skimage"] / len(polygons),
            1e3 * wall["polygon_mask"] / len(polygons)), flush=True)
    return totals, identical


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=os.path.join(SHARED_DATA, "balloon", "train"),
                        help="folder with images and via_region_data.json")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dataset):
        sys.exit("balloon annotations not found: {}".format(args.dataset))
    polygons, n_images = load_polygons(args.dataset)
    pixels = [p[2][0] * p[2][1] for p in polygons]
    print("{} polygons, {} images, median image {:.2f} Mpx, {}-{} vertices".format(
        len(polygons), n_images, statistics.median(pixels) / 1e6,
        min(len(p[0]) for p in polygons),
        max(len(p[0]) for p in polygons)))
    totals, identical = run(polygons, args.rounds)
    n = len(polygons)
    res = {"polygons": n, "rounds": args.rounds, "identical": identical,
           "load_1min": os.getloadavg()[0], "machine": bench_speed.machine_info()}
    for name in totals:
        for kind in ("wall", "cpu"):
            res["{}_{}_ms".format(name, kind)] = round(
                1e3 * statistics.median(totals[name][kind]) / n, 4)
    res["speedup_wall"] = round(res["skimage_wall_ms"] / res["polygon_mask_wall_ms"], 1)
    res["speedup_cpu"] = round(res["skimage_cpu_ms"] / max(res["polygon_mask_cpu_ms"], 1e-9), 1)
    print("ms per polygon (median of {} rounds)   wall      cpu".format(args.rounds))
    for name in totals:
        print("  {:<32} {:8.3f} {:8.3f}".format(name, res[name + "_wall_ms"],
                                                 res[name + "_cpu_ms"]))
    print("speed-up {:.1f}x wall, {:.1f}x CPU; masks identical: {}; load {:.2f}".format(
        res["speedup_wall"], res["speedup_cpu"], identical, res["load_1min"]))
    print(bench_speed.JSON_PREFIX + json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
