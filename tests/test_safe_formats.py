"""Safe formats: nothing in mrcnn pickles or unpickles, no Lambda layer holds Python code
in a model users save, checkpoints hold only plain HDF5 datasets and attributes, and a
weight file from a stranger with pickle payloads in it cannot execute code when loaded.
"""

import ast
import math
import os
import pickle  # only to build hostile payloads; mrcnn itself must never import it

import h5py
import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.weights import WeightsFileError, load_weights_by_name, read_weight_groups
from samples.shapes import ShapesConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ("mrcnn", "samples")

# Modules that can turn bytes into code or arbitrary objects.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal", "jsonpickle"}


def python_sources():
    for d in SOURCE_DIRS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(dirpath, name)


def unsafe_constructs(path):
    """(line, what) of every unsafe construct in one Python file, found on its AST (so
    comments and docstrings that merely mention them do not count)."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    found.append((node.lineno, "import " + alias.name))
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                found.append((node.lineno, "from {} import".format(node.module)))
            for alias in node.names:
                if alias.name == "Lambda":
                    found.append((node.lineno, "imports Lambda"))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "Lambda":
                found.append((node.lineno, "Lambda layer"))
            if name in ("eval", "exec") and isinstance(func, ast.Name):
                found.append((node.lineno, name + "()"))
            if name in ("load", "load_all") and isinstance(func, ast.Attribute) and \
                    getattr(func.value, "id", "") == "yaml":
                found.append((node.lineno, "yaml." + name))
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append((node.lineno, "allow_pickle not False"))
                if kw.arg == "safe_mode" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is True):
                    found.append((node.lineno, "safe_mode not True"))
        elif isinstance(node, ast.Attribute) and node.attr == "Lambda":
            found.append((node.lineno, "refers to a Lambda layer"))
    return found


def test_no_pickle_lambda_or_eval_in_sources():
    files = list(python_sources())
    assert len(files) > 15   # the scan really saw the package
    problems = ["{}:{}: {}".format(os.path.relpath(p, ROOT), line, what)
                for p in files for line, what in unsafe_constructs(p)]
    assert not problems, "\n".join(problems)
    # Plain text as well, for anything the AST walk could miss (e.g. strings fed to
    # exec by a future change).
    for path in files:
        with open(path) as f:
            text = f.read()
        assert "allow_pickle=True" not in text.replace(" ", ""), path
        assert "pickle.load" not in text, path


def test_scanner_catches_what_it_should(tmp_path):
    """The scanner itself: each unsafe construct in a sample file is reported."""
    sample = tmp_path / "bad.py"
    sample.write_text("import pickle\nfrom dill import loads\nimport numpy as np\n"
                      "x = np.load('a.npy', allow_pickle=True)\n"
                      "y = keras.layers.Lambda(lambda t: t)\n"
                      "m = keras.models.load_model('m.keras', safe_mode=False)\n"
                      "eval('1')\n# pickle and Lambda in a comment are fine\n")
    whats = [w for _, w in unsafe_constructs(str(sample))]
    assert "import pickle" in whats and "from dill import" in whats
    assert "allow_pickle not False" in whats and "safe_mode not True" in whats
    assert "Lambda layer" in whats and "eval()" in whats
    assert "refers to a Lambda layer" in whats and len(whats) == 7, whats


# ---------------------------------------------------------------------------- models
def tiny_backbone(input_image, stage5=True, train_bn=False):
    """Five stride-2 3x3 convolutions: C1..C5 at strides 2..32."""
    x, out = input_image, []
    for i, channels in enumerate((8, 8, 16, 16, 32)):
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu",
                                name="tiny_c{}".format(i + 1))(x)
        out.append(x)
    return out


def tiny_backbone_shapes(image_shape):
    return np.array([[math.ceil(image_shape[0] / s), math.ceil(image_shape[1] / s)]
                     for s in (4, 8, 16, 32, 64)])


class SmallResNetConfig(ShapesConfig):
    """ResNet-50 (the backbone users save) at 64 px with narrow heads: built, never run."""
    NAME = "safe"
    BACKBONE = "resnet50"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    IMAGES_PER_GPU = 1
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    TOP_DOWN_PYRAMID_SIZE = 16
    FPN_CLASSIF_FC_LAYERS_SIZE = 32
    MASK_HEAD_CONV_DIM = 8
    TRAIN_ROIS_PER_IMAGE = 16
    POST_NMS_ROIS_TRAINING = 50
    POST_NMS_ROIS_INFERENCE = 30
    MAX_GT_INSTANCES = 4


class TinyCascadeConfig(SmallResNetConfig):
    NAME = "safecascade"
    BACKBONE = staticmethod(tiny_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(tiny_backbone_shapes)
    CASCADE = True


def all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            for sub in all_layers(layer):
                yield sub


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("safe_logs"))
    return {
        "training": modellib.MaskRCNN("training", SmallResNetConfig(), logs),
        "inference": modellib.MaskRCNN("inference", SmallResNetConfig(), logs),
        "cascade inference": modellib.MaskRCNN("inference", TinyCascadeConfig(), logs),
    }


def test_built_models_hold_no_lambda_layers(built):
    for what, model in built.items():
        layers = list(all_layers(model.keras_model))
        assert len(layers) > 20, what
        lambdas = [l.name for l in layers if isinstance(l, keras.layers.Lambda)]
        assert not lambdas, (what, lambdas)


def walk_h5(group, out):
    """Append (name, h5 object) for every object below ``group``."""
    for key in group:
        obj = group[key]
        out.append((obj.name, obj))
        if isinstance(obj, h5py.Group):
            walk_h5(obj, out)
    return out


def plain_attribute(value):
    """An attribute value that is bytes/str (or arrays of them) or plain numbers."""
    arr = np.asarray(value)
    if arr.dtype.kind in "SU":
        return not any(bytes(v if isinstance(v, bytes) else str(v).encode())[:1] == b"\x80"
                       for v in arr.reshape(-1))
    if arr.dtype.kind == "O":
        return all(isinstance(v, (str, bytes)) for v in arr.reshape(-1))
    return arr.dtype.kind in "biuf"


def test_checkpoint_holds_only_plain_hdf5(built, tmp_path):
    """A saved checkpoint: groups and numeric datasets only, string/number attributes
    only (layer_names, backend, keras_version, weight_names), nothing opaque."""
    model = built["training"]
    path = str(tmp_path / "mask_rcnn_safe_0001.h5")
    model.save_weights(path)
    with h5py.File(path, "r") as f:
        assert set(f.attrs) == {"layer_names", "backend", "keras_version"}
        for key in f.attrs:
            assert plain_attribute(f.attrs[key]), key
        objects = walk_h5(f, [])
        datasets = [o for _, o in objects if isinstance(o, h5py.Dataset)]
        assert len(datasets) > 100
        for name, obj in objects:
            assert isinstance(obj, (h5py.Group, h5py.Dataset)), name
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind in "biuf", (name, obj.dtype)
                assert obj.dtype.fields is None and h5py.check_dtype(vlen=obj.dtype) is None
                assert h5py.check_dtype(ref=obj.dtype) is None
                assert not obj.attrs, name
            else:
                assert set(obj.attrs) <= {"weight_names"}, (name, set(obj.attrs))
                for key in obj.attrs:
                    assert plain_attribute(obj.attrs[key]), (name, key)


# ---------------------------------------------------------------------------- hostile files
class Trap(object):
    """Unpickling this object creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def small_net():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense_a"),
                             keras.layers.Dense(2, name="dense_b")])


def write_hostile(path, payload, where):
    """A Keras-2-layout file for small_net with ``payload`` (pickle bytes) placed at
    ``where``; the other weights are valid."""
    opaque = np.void(payload)
    with h5py.File(path, "w") as f:
        names = [b"dense_a", b"dense_b"]
        f.attrs["layer_names"] = opaque if where == "layer_names" else np.array(names)
        f.attrs["backend"] = b"tensorflow"
        if where == "root_attrs":
            f.attrs["model_config"] = opaque
            f.attrs["training_config"] = opaque
            f.attrs["keras_version"] = opaque
        for lname, shapes in (("dense_a", [(4, 3), (3,)]), ("dense_b", [(3, 2), (2,)])):
            g = f.create_group(lname)
            wnames = ["{}/kernel:0".format(lname), "{}/bias:0".format(lname)]
            g.attrs["weight_names"] = np.array([w.encode() for w in wnames])
            for wn, shape in zip(wnames, shapes):
                if where == "weight" and wn == "dense_b/kernel:0":
                    g.create_dataset(wn, data=np.array([opaque] * 6).reshape(shape))
                elif where == "string_weight" and wn == "dense_b/kernel:0":
                    g.create_dataset(wn, data=np.full(shape, payload[:8]))
                else:
                    g.create_dataset(wn, data=np.full(shape, 0.25, np.float32))
            if where == "group_attrs":
                g.attrs["config"] = opaque
                g.create_dataset("extra", data=opaque)


@pytest.mark.parametrize("where", ["root_attrs", "group_attrs", "layer_names", "weight",
                                   "string_weight"])
def test_hostile_h5_never_executes_code(tmp_path, where):
    marker = str(tmp_path / "code_ran")
    payload = pickle.dumps(Trap(marker), protocol=2)
    assert payload[:1] == b"\x80"
    path = str(tmp_path / "stranger.h5")
    write_hostile(path, payload, where)
    net = small_net()
    outcome = None
    try:
        report = load_weights_by_name(net, path)
        outcome = "loaded {}".format(sorted(report.loaded))
        groups = read_weight_groups(path)
        outcome += ", read {}".format(sorted(groups))
    except Exception as e:   # a refusal is fine; running the payload is not
        outcome = "{}: {}".format(type(e).__name__, e)
    assert not os.path.exists(marker), outcome
    if where in ("root_attrs", "group_attrs"):
        # Extra attributes are ignored: the valid weights load.
        assert outcome.startswith("loaded ['dense_a', 'dense_b']"), outcome
        np.testing.assert_array_equal(net.get_layer("dense_b").get_weights()[0],
                                      np.full((3, 2), 0.25, np.float32))
    elif where == "layer_names":
        assert outcome.startswith("WeightsFileError") and path in outcome, outcome
    else:
        # A weight that is not numbers is refused (how clearly: see the next test).
        assert not outcome.startswith("loaded"), outcome
    # Control: the payload is live. Unpickling it (what a loader must never do) runs it.
    pickle.loads(payload)
    assert os.path.exists(marker)


@pytest.mark.parametrize("where", ["weight", "string_weight"])
def test_non_numeric_weight_refused_by_name(tmp_path, where):
    path = str(tmp_path / "stranger.h5")
    write_hostile(path, pickle.dumps(Trap(str(tmp_path / "m")), protocol=2), where)
    net = small_net()
    before = [w.copy() for w in net.get_weights()]
    with pytest.raises(WeightsFileError) as e:
        load_weights_by_name(net, path)
    assert path in str(e.value) and "dense_b" in str(e.value)
    for a, b in zip(before, net.get_weights()):   # nothing assigned, not even dense_a
        np.testing.assert_array_equal(a, b)
