"""Convergence benchmark on the synthetic shapes: time to train and held-out mAP.

    python benchmarks/bench_shapes.py                    # the default shapes run (issue 2)
    python benchmarks/bench_shapes.py --seeds 0 1 2      # three runs and their median
    python benchmarks/bench_shapes.py --compare-cascade --minutes 12
                                                         # plain vs cascade, same wall time

Each run is `samples/shapes.py train` in a subprocess (fresh TensorFlow, own log dir); the
script prints the wall time, mAP@0.5, mAP@0.75 and inference seconds per image of every run,
then a JSON line per run.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_shapes(extra_args, logs):
    cmd = [sys.executable, os.path.join(ROOT, "samples", "shapes.py"), "train",
           "--logs", logs] + extra_args
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(out[-4000:])
        raise SystemExit("shapes run failed: {}".format(" ".join(cmd)))

    def grab(pattern):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    return {
        "args": " ".join(extra_args),
        "wall_min": round(wall / 60, 2),
        "train_min": grab(r"Training took ([\d.]+) min"),
        "map50": grab(r"mAP@0\.5 \(compute_ap[^:]*: ([\d.]+)"),
        "map75": grab(r"mAP@0\.75: ([\d.]+)"),
        "infer_s_per_image": grab(r"Inference: ([\d.]+) s per image"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--compare-cascade", action="store_true",
                   help="train plain and cascade for the same wall time")
    p.add_argument("--minutes", type=float, default=None,
                   help="training time budget per run (minutes)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="one run per seed (data, initial weights, shuffling); with several "
                        "the median mAP is printed, e.g. --seeds 0 1 2")
    p.add_argument("--logs", default=None)
    args = p.parse_args()

    logs = args.logs or tempfile.mkdtemp(prefix="bench_shapes_")
    common = []
    if args.minutes:
        common += ["--time-budget", str(args.minutes), "--epochs", str(args.epochs or 1000)]
    elif args.epochs:
        common += ["--epochs", str(args.epochs)]
    runs = []
    for seed in args.seeds:
        runs.append(("plain", common + ["--seed", str(seed)]))
        if args.compare_cascade:
            runs.append(("cascade", common + ["--seed", str(seed), "--cascade"]))
    results = []
    for name, extra in runs:
        r = run_shapes(extra, logs)
        r["model"] = name
        results.append(r)
        print("{:8} wall {:6.1f} min  train {:6} min  mAP@0.5 {:.3f}  mAP@0.75 {:.3f}  "
              "inference {:.3f} s/image".format(name, r["wall_min"], r["train_min"],
                                                r["map50"] or 0, r["map75"] or 0,
                                                r["infer_s_per_image"] or 0), flush=True)
    for r in results:
        print(json.dumps(r))
    for name in ("plain", "cascade"):
        maps = sorted(r["map50"] or 0 for r in results if r["model"] == name)
        if len(maps) > 1:
            print("{} mAP@0.5 over {} seeds: {} -> median {:.3f}".format(
                name, len(maps), ", ".join("{:.3f}".format(m) for m in maps),
                maps[len(maps) // 2]))
    if args.compare_cascade and len(results) == 2:
        plain, casc = results
        if plain["infer_s_per_image"] and casc["infer_s_per_image"]:
            print("cascade/plain inference time: {:.2f}x".format(
                casc["infer_s_per_image"] / plain["infer_s_per_image"]))
        print("AP75 cascade - plain: {:+.3f}".format((casc["map75"] or 0) -
                                                      (plain["map75"] or 0)))


if __name__ == "__main__":
    main()
