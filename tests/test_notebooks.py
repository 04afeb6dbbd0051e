"""Execute every tutorial notebook so that a broken one fails the build, and check that the
committed notebooks are in sync with their sources and carry the outputs of a real run.

Each notebook is kept as a pair (notebooks/<name>.py in jupytext percent format, and
notebooks/<name>.ipynb with outputs). The tests execute the .py sources, in memory (nothing
is written into the committed .ipynb files), each in a fresh IPython kernel of this
interpreter (nbclient, through notebooks/run_notebooks.py), with its working directory in
notebooks/ and MRCNN_NB_FAST=1 (64 px shapes, a couple of training steps, four images: see
notebooks/_settings.py). Logs and checkpoints go to a temporary folder. train_shapes runs
first (module fixture); its last checkpoint is handed to the notebooks that need trained
weights through MRCNN_NB_WEIGHTS, so the model is trained once.

Besides "no cell raised", each test checks printed values against numbers derived here
from the configuration (anchor counts, tensor shapes, checkpoint names), so a notebook that
silently computes the wrong thing fails too. Runtimes are printed (pytest -s).
"""

import glob
import importlib.util
import math
import os
import re

import pytest

import jupytext
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
SHARED_DATA = os.environ.get("MRCNN_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def _load_runner():
    """notebooks/run_notebooks.py, imported by path (notebooks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", os.path.join(NB_DIR, "run_notebooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
NAMES = runner.NOTEBOOKS

# Per cell: the first training step compiles the training graph, which takes a few
# minutes on a busy 2-core CPU.
CELL_TIMEOUT = 600

# Fast-mode values (notebooks/_settings.py) and ShapesConfig values the checks rely on.
IMAGE_SIZE = 64
TRAIN_BATCH = 2
EPOCHS = 2
NUM_CLASSES = 4
STRIDES = (4, 8, 16, 32, 64)
RATIOS = 3
POST_NMS_ROIS_INFERENCE = 100
DETECTION_MAX_INSTANCES = 20
MASK_SIZE = 28

# The committed .ipynb files: pictures each must show (as PNG) after a real run, and the
# budget for their total size.
COMMITTED_PNGS = {"train_shapes": 6, "demo": 2, "inspect_data": 8, "inspect_model": 6,
                  "inspect_weights": 2}
COMMITTED_MAX_BYTES = 5 * 1024 * 1024

pytestmark = pytest.mark.slow


class Run(object):
    """An executed notebook: nb (with outputs), seconds, error (None or the message)."""

    def __init__(self, name, nb, seconds, error):
        self.name, self.nb, self.seconds, self.error = name, nb, seconds, error

    def outputs(self):
        for cell in self.nb.cells:
            if cell.cell_type == "code":
                yield from cell.get("outputs", [])

    @property
    def stdout(self):
        return "".join(o.get("text", "") for o in self.outputs()
                       if o.output_type == "stream" and o.get("name") == "stdout")

    def count(self, mime):
        return sum(1 for o in self.outputs()
                   if o.output_type in ("display_data", "execute_result")
                   and mime in o.get("data", {}))

    def error_outputs(self):
        return ["{}: {}".format(o.get("ename"), o.get("evalue")) for o in self.outputs()
                if o.output_type == "error"]

    def check_ran(self):
        assert self.error is None, "{} failed:\n{}".format(self.name, self.error[-4000:])
        assert not self.error_outputs(), self.error_outputs()
        code_cells = [c for c in self.nb.cells if c.cell_type == "code"]
        assert code_cells and all(c.get("execution_count") for c in code_cells), \
            "{}: some code cells did not run".format(self.name)

    def find(self, pattern):
        """First match of a regex in the printed text (fails the test if absent)."""
        m = re.search(pattern, self.stdout)
        assert m, "{}: no output matching {!r}; stdout:\n{}".format(
            self.name, pattern, self.stdout[-3000:])
        return m


def run_notebook(name, logs, weights=None):
    """Execute notebooks/<name>.py in fast mode, in memory."""
    nb = runner.read_source(name)
    env = {"MRCNN_NB_FAST": "1", "MRCNN_NB_LOGS": logs,
           "MRCNN_NB_WEIGHTS": weights or "", "MRCNN_NB_BALLOON_WEIGHTS": "",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    seconds, error = runner.execute(nb, env, timeout=CELL_TIMEOUT)
    print("\n{}: {:.0f} s{}".format(name, seconds, " (FAILED)" if error else ""))
    return Run(name, nb, seconds, error)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("notebook_logs"))


@pytest.fixture(scope="module")
def trained(logs):
    """train_shapes (its .py source), executed once; .weights is its last checkpoint
    (or None)."""
    run = run_notebook("train_shapes", logs)
    checkpoints = sorted(glob.glob(os.path.join(logs, "shapes*", "mask_rcnn_shapes_*.h5")))
    run.checkpoints = checkpoints
    run.weights = checkpoints[-1] if checkpoints else None
    return run


def anchor_count(size):
    return sum(math.ceil(size / s) ** 2 for s in STRIDES) * RATIOS


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_source(name):
    """<name>.ipynb holds exactly the cells of its paired source <name>.py (jupytext), and
    both declare the pairing, so Jupyter keeps them in sync."""
    source = jupytext.read(os.path.join(NB_DIR, name + ".py"), fmt="py:percent")
    stored = nbformat.read(os.path.join(NB_DIR, name + ".ipynb"), as_version=4)
    nbformat.validate(stored)
    assert [(c.cell_type, c.source) for c in stored.cells] == \
        [(c.cell_type, c.source) for c in source.cells], \
        "{0}.ipynb differs from {0}.py: run python notebooks/run_notebooks.py".format(name)
    for nb in (source, stored):
        assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_stored_with_tutorial_outputs(name):
    """The committed .ipynb shows the outputs of a real run (tutorial settings, not the
    fast CI mode): every code cell ran, none raised, the pictures are there as PNG."""
    stored = Run(name, nbformat.read(os.path.join(NB_DIR, name + ".ipynb"), as_version=4),
                 0.0, None)
    stored.check_ran()
    counts = [c.execution_count for c in stored.nb.cells if c.cell_type == "code"]
    assert counts == sorted(counts), "{}: cells ran out of order".format(name)
    assert stored.find(r"(tutorial|FAST \(CI\)) mode").group(1) == "tutorial"
    assert stored.count("image/png") >= COMMITTED_PNGS[name]


def test_notebooks_total_size():
    sizes = {name: os.path.getsize(os.path.join(NB_DIR, name + ".ipynb")) for name in NAMES}
    assert sum(sizes.values()) <= COMMITTED_MAX_BYTES, sizes


def test_train_shapes(trained, logs):
    trained.check_ran()
    # EPOCHS epochs of training write exactly one checkpoint per epoch, numbered from 1.
    assert [os.path.basename(p) for p in trained.checkpoints] == [
        "mask_rcnn_shapes_{:04d}.h5".format(e + 1) for e in range(EPOCHS)]
    assert trained.find(r"last checkpoint: (\S+)").group(1) == trained.weights
    m = trained.find(r"mAP@0\.5 over (\d+) validation images: ([0-9.]+)")
    assert int(m.group(1)) == 4 and 0.0 <= float(m.group(2)) <= 1.0
    # format_metrics: a bbox and a segm row of 12 COCO numbers, and per-class rows.
    for iou_type in ("bbox", "segm"):
        row = trained.find(r"\n{}((?:\s+(?:[01]\.\d{{3}}|n/a)){{12}})\n".format(iou_type))
        assert len(row.group(1).split()) == 12
    for name in ("square", "circle", "triangle"):
        trained.find(r"\n{}\s+(?:[01]\.\d{{3}}|n/a)".format(name))
    assert int(trained.find(r"num_images = (\d+)").group(1)) == 4
    # Sample images (2), loss curves from History and TensorBoard (2), GT vs detections,
    # precision/recall: at least six pictures.
    assert trained.count("image/png") >= 6


def test_demo(trained, logs):
    run = run_notebook("demo", logs, weights=trained.weights)
    run.check_ran()
    if trained.weights:
        assert run.find(r"weights found: (\S+)").group(1) == trained.weights
    # One result dict per image, masks at the image's own size.
    n = int(run.find(r"'masks': \({0}, {0}, (\d+)\)".format(IMAGE_SIZE)).group(1))
    assert 0 <= n <= DETECTION_MAX_INSTANCES
    assert len(re.findall(r"image \d+: \d+ detection", run.stdout)) == 2
    # Detections side by side + differences, and two balloon figures with the data.
    balloon = os.path.isdir(os.path.join(SHARED_DATA, "balloon"))
    assert run.count("image/png") >= (4 if balloon else 2)
    if balloon:
        m = run.find(r"masks \((\d+), (\d+), \d+\) for a photo of \((\d+), (\d+), 3\)")
        assert m.group(1, 2) == m.group(3, 4)


def test_inspect_data(logs):
    run = run_notebook("inspect_data", logs)
    run.check_ran()
    assert int(run.find(r"Image count: (\d+)").group(1)) == 4
    anchors = anchor_count(IMAGE_SIZE)
    assert int(run.find(r"Anchors: (\d+) in total").group(1)) == anchors
    levels = re.findall(r"level \d: feature map (\d+)x(\d+), stride\s+(\d+)", run.stdout)
    assert [(int(h), int(s)) for h, _, s in levels] == [
        (math.ceil(IMAGE_SIZE / s), s) for s in STRIDES]
    # Deltas from build_rpn_targets put each positive anchor exactly on its GT box.
    iou = float(run.find(r"nearest ground-truth box: min ([0-9.]+|nan)").group(1))
    assert iou > 0.999
    ious = [float(v) for v in re.findall(r"mask IoU after the round trip: ([0-9.]+)",
                                         run.stdout)]
    assert ious and all(0.5 < v <= 1.0 for v in ious)
    # The tf.data batch has the training model's input shapes.
    shapes = dict(re.findall(r"(input_\w+)\s+\w+\s+(\(.*\))", run.stdout))
    assert shapes["input_image"] == "({}, {}, {}, 3)".format(TRAIN_BATCH, IMAGE_SIZE,
                                                             IMAGE_SIZE)
    # No RPN targets: the training graph computes them (RPN_TARGETS_IN_GRAPH).
    assert "input_rpn_match" not in shapes
    assert shapes["input_gt_boxes"] == "({}, 8, 4)".format(TRAIN_BATCH)
    assert shapes["input_gt_masks"] == "({}, 28, 28, 8)".format(TRAIN_BATCH)
    assert run.count("image/png") >= 8


def test_inspect_model(trained, logs):
    run = run_notebook("inspect_model", logs, weights=trained.weights)
    run.check_ran()
    assert int(run.find(r"(\d+) anchors, \d+ positive targets").group(1)) == \
        anchor_count(IMAGE_SIZE)
    assert run.find(r"proposals\s+(\(.*\))").group(1) == "(1, {}, 4)".format(
        POST_NMS_ROIS_INFERENCE)
    assert run.find(r"detections\s+(\(.*\))").group(1) == "(1, {}, 6)".format(
        DETECTION_MAX_INSTANCES)
    assert run.find(r"masks\s+(\(.*\))").group(1) == "(1, {0}, {1}, {1}, {2})".format(
        DETECTION_MAX_INSTANCES, MASK_SIZE, NUM_CLASSES)
    # The numpy re-implementation of the ProposalLayer reproduces the graph's proposals.
    m = run.find(r"of the first (\d+) numpy proposals (\d+) are graph proposals")
    compared, agree = int(m.group(1)), int(m.group(2))
    assert compared > 0 and agree >= 0.9 * compared
    assert run.count("image/png") >= 6


def test_inspect_weights(trained, logs):
    run = run_notebook("inspect_weights", logs, weights=trained.weights)
    run.check_ran()
    if trained.weights:
        assert int(run.find(r"Loaded (\d+) layer\(s\)").group(1)) > 100
    # The printed count equals the rows of the weight table shown as HTML.
    count = int(run.find(r"(\d+) weight tensors, \d+ flagged").group(1))
    html = [o["data"]["text/html"] for o in run.outputs() if "text/html" in o.get("data", {})]
    assert len(html) == 1
    assert html[0].count("<tr>") - 1 == count > 300
    assert run.count("image/png") >= 2
