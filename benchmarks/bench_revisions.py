"""Speed of this checkout against another git revision, runs alternated in one script.

A refactor must not change speed. This script checks out ``--base`` into a temporary git
worktree, then runs ``benchmarks/bench_speed.py`` of the base and of this checkout in
turn (base, head, base, head, ...) ``--rounds`` times with the same arguments, and prints
for every figure the median of each side and head / base. Alternating keeps a noisy
machine's drift out of the ratio.

    python benchmarks/bench_revisions.py --base 4c81cf2 --sizes 512 --tasks infer train
    python benchmarks/bench_revisions.py --base HEAD~3 --sizes 512 1024 --rounds 3

Each bench_speed run is a separate process importing its own tree's mrcnn (PYTHONPATH).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench_speed's per-case figures compared here (seconds; lower is better).
FIGURES = ("infer_detect_s", "infer_graph_s", "train_step_s", "train_forward_s")


def run_bench(tree, args, json_path):
    """One bench_speed.py run of ``tree``; returns its JSON result list."""
    cmd = [sys.executable, os.path.join(tree, "benchmarks", "bench_speed.py"),
           "--sizes"] + [str(s) for s in args.sizes] + ["--tasks"] + args.tasks + \
        ["--json-out", json_path]
    if args.set:
        cmd += ["--set"] + args.set
    env = dict(os.environ, PYTHONPATH=tree)
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        return json.load(f)


def collect(results, into):
    """Append each case's figures (one case per image size) to into[(size, figure)]."""
    for case in results:
        key = "{} px".format(case.get("size"))
        for name in FIGURES:
            if isinstance(case.get(name), (int, float)):
                into.setdefault((key, name), []).append(float(case[name]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--sizes", type=int, nargs="+", default=[512])
    p.add_argument("--tasks", nargs="+", default=["infer", "train"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], metavar="ATTR=VALUE")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        base_tree = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", base_tree,
                        args.base], check=True, stdout=subprocess.DEVNULL)
        try:
            figures = {"base": {}, "head": {}}
            for r in range(args.rounds):
                for side, tree in (("base", base_tree), ("head", ROOT)):
                    out = os.path.join(tmp, "{}_{}.json".format(side, r))
                    collect(run_bench(tree, args, out), figures[side])
                    print("round {} {} done".format(r + 1, side), flush=True)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base_tree],
                           check=False)
    print("\n{:<10} {:<16} {:>10} {:>10} {:>8}".format("case", "figure", "base s",
                                                        "head s", "ratio"))
    for key in sorted(figures["head"]):
        if key not in figures["base"]:
            continue
        base = statistics.median(figures["base"][key])
        head = statistics.median(figures["head"][key])
        print("{:<10} {:<16} {:>10.3f} {:>10.3f} {:>8.3f}".format(key[0], key[1], base,
                                                                 head, head / base))


if __name__ == "__main__":
    main()
