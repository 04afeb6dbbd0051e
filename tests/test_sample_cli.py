"""Tests of mrcnn.sample_cli, the command-line and weight-resolution code of the samples,
and of the samples' use of it (their flags, weights and main() dispatch), without
TensorFlow: the models are fakes that record what is asked of them."""

import os
import subprocess
import sys

import pytest

from mrcnn import sample_cli
from mrcnn.config import Config
from samples import balloon, coco, nucleus, shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeModel(object):
    """Records load_weights calls; find_last / get_imagenet_weights return fixed paths."""

    def __init__(self, config=None):
        self.config = config
        self.loaded = []

    def find_last(self):
        return "/logs/run/last.h5"

    def get_imagenet_weights(self):
        return "/cache/imagenet.h5"

    def load_weights(self, filepath, **kwargs):
        self.loaded.append((filepath, kwargs))


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 1 + 1


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "my_weights.h5"
    path.write_bytes(b"")
    return str(path)


@pytest.fixture
def coco_file(tmp_path):
    path = tmp_path / "mask_rcnn_coco.h5"
    path.write_bytes(b"")
    return str(path)


# ----------------------------------------------------------------------------- import

def test_import_is_light():
    """Importing the helper (and so a sample) loads neither TensorFlow nor mrcnn.model."""
    code = ("import sys\nimport mrcnn.sample_cli\n"
            "print('tensorflow' in sys.modules, 'mrcnn.model' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- paths, configs

def test_sample_paths(monkeypatch, tmp_path):
    monkeypatch.delenv("MRCNN_SHARED_DATA", raising=False)
    root = str(tmp_path)
    paths = sample_cli.sample_paths(root)
    assert paths.coco_weights == os.path.join(root, "mask_rcnn_coco.h5")
    assert paths.logs == os.path.join(root, "logs")
    assert paths.shared_data == os.path.join(root, "..", "shared", "data")
    monkeypatch.setenv("MRCNN_SHARED_DATA", "/data/elsewhere")
    coco_weights, logs, shared = sample_cli.sample_paths(root)
    assert (coco_weights, logs, shared) == (paths.coco_weights, paths.logs, "/data/elsewhere")


def test_samples_keep_their_path_names():
    assert balloon.COCO_WEIGHTS_PATH == nucleus.COCO_WEIGHTS_PATH == coco.COCO_MODEL_PATH \
        == os.path.join(ROOT, "mask_rcnn_coco.h5")
    assert balloon.DEFAULT_LOGS_DIR == nucleus.DEFAULT_LOGS_DIR == coco.DEFAULT_LOGS_DIR \
        == shapes.DEFAULT_LOGS_DIR == os.path.join(ROOT, "logs")
    assert balloon.DEFAULT_DATASET == os.path.join(balloon.SHARED_DATA, "balloon")
    assert nucleus.DEFAULT_DATASET == os.path.join(nucleus.SHARED_DATA, "dsb2018")
    assert balloon.COCO_HEAD_LAYERS == nucleus.COCO_HEAD_LAYERS == sample_cli.COCO_HEAD_LAYERS
    for module in (balloon, coco, nucleus):
        assert module.make_config is sample_cli.make_config


def test_make_config_plain_and_cascade():
    plain = sample_cli.make_config(TinyConfig)
    assert type(plain) is TinyConfig and plain.NAME == "tiny" and not plain.CASCADE
    cascade = sample_cli.make_config(TinyConfig, cascade=True)
    assert isinstance(cascade, TinyConfig) and type(cascade).__name__ == "CascadeTinyConfig"
    assert cascade.CASCADE and cascade.NAME == "cascade_tiny" and cascade.NUM_STAGES == 3
    assert TinyConfig.NAME == "tiny"  # the class itself is untouched


# ----------------------------------------------------------------------------- weights

def test_resolve_weights_keywords(coco_file, monkeypatch):
    from mrcnn import utils
    monkeypatch.setattr(utils, "download_trained_weights",
                        lambda path: pytest.fail("downloaded although present"))
    model = FakeModel()
    assert sample_cli.resolve_weights(model, "coco", coco_file) == coco_file
    assert sample_cli.resolve_weights(model, "COCO", coco_file) == coco_file
    assert sample_cli.resolve_weights(model, "last") == "/logs/run/last.h5"
    assert sample_cli.resolve_weights(model, "Last") == "/logs/run/last.h5"
    assert sample_cli.resolve_weights(model, "imagenet") == "/cache/imagenet.h5"
    assert model.loaded == []  # resolving loads nothing


def test_resolve_weights_downloads_missing_coco(tmp_path, monkeypatch):
    from mrcnn import utils
    calls = []
    monkeypatch.setattr(utils, "download_trained_weights", calls.append)
    target = str(tmp_path / "sub" / "mask_rcnn_coco.h5")
    assert sample_cli.resolve_weights(FakeModel(), "coco", target) == target
    assert calls == [target]


def test_resolve_weights_path_and_none(weights_file):
    model = FakeModel()
    assert sample_cli.resolve_weights(model, weights_file) == weights_file
    keywords = sample_cli.WEIGHT_KEYWORDS + (sample_cli.NO_WEIGHTS,)
    assert sample_cli.resolve_weights(model, "none", keywords=keywords) is None
    assert sample_cli.resolve_weights(model, "None", keywords=keywords) is None


def test_resolve_weights_errors_name_the_value(tmp_path):
    model = FakeModel()
    missing = str(tmp_path / "nowhere.h5")
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nowhere.h5"):
        sample_cli.resolve_weights(model, missing)
    with pytest.raises(FileNotFoundError, match="other.h5"):
        sample_cli.resolve_weights(model, "other.h5")
    with pytest.raises(ValueError, match="unknown weights 'cocoa': expected 'coco', "
                                         "'imagenet', 'last', 'best' or the path"):
        sample_cli.resolve_weights(model, "cocoa")
    # "none" is a keyword only where it is allowed (nucleus.py).
    with pytest.raises(ValueError, match="'none'"):
        sample_cli.resolve_weights(model, "none")
    with pytest.raises(ValueError, match="coco_path"):
        sample_cli.resolve_weights(model, "coco")  # no place given for the COCO weights
    # shapes.py's --model knows "last" only.
    with pytest.raises(ValueError, match="unknown weights 'coco': expected 'last'"):
        sample_cli.resolve_weights(model, "coco", keywords=("last",))


def test_load_weights_choices(coco_file, weights_file, capsys):
    model = FakeModel()
    assert sample_cli.load_weights(model, "coco", coco_file) == coco_file
    assert sample_cli.load_weights(model, "coco", coco_file, coco_heads=True) == coco_file
    sample_cli.load_weights(model, "last")
    sample_cli.load_weights(model, "imagenet")
    sample_cli.load_weights(model, weights_file)
    assert model.loaded == [
        (coco_file, {"by_name": True, "exclude": sample_cli.COCO_HEAD_LAYERS}),
        (coco_file, {"by_name": True}),
        ("/logs/run/last.h5", {"by_name": True}),
        ("/cache/imagenet.h5", {"by_name": True}),
        (weights_file, {"by_name": True}),
    ]
    assert "Loading weights  " + coco_file in capsys.readouterr().out
    keywords = sample_cli.WEIGHT_KEYWORDS + (sample_cli.NO_WEIGHTS,)
    fresh = FakeModel()
    assert sample_cli.load_weights(fresh, "none", keywords=keywords) is None
    assert fresh.loaded == [] and "Random initialisation" in capsys.readouterr().out


def test_sample_resolve_weights_use_the_sample_coco_path(monkeypatch, coco_file):
    model = FakeModel()
    for module, name in ((balloon, "COCO_WEIGHTS_PATH"), (nucleus, "COCO_WEIGHTS_PATH"),
                         (coco, "COCO_MODEL_PATH")):
        monkeypatch.setattr(module, name, coco_file)
        assert module.resolve_weights(model, "coco") == coco_file
        assert module.resolve_weights(model, "last") == "/logs/run/last.h5"
        with pytest.raises(ValueError, match="'cocoa'"):
            module.resolve_weights(model, "cocoa")
    assert nucleus.resolve_weights(model, "none") is None
    with pytest.raises(ValueError, match="'none'"):
        balloon.resolve_weights(model, "none")


# ----------------------------------------------------------------------------- parser

def make_parser():
    parser = sample_cli.base_parser("test", ("train", "evaluate"))
    sample_cli.add_dataset_arg(parser, "/data/default")
    sample_cli.add_model_args(parser, "/logs/default")
    sample_cli.add_eval_args(parser)
    return parser


def test_parser_flags_and_defaults(weights_file):
    args = make_parser().parse_args(["train", "--weights=coco"])
    assert (args.command, args.weights, args.dataset, args.logs) == (
        "train", "coco", "/data/default", "/logs/default")
    assert (args.cascade, args.limit, args.results) == (False, None, None)
    args = make_parser().parse_args(["evaluate", "--weights", weights_file, "--dataset=/d",
                                     "--logs=/l", "--cascade", "--limit=7",
                                     "--results=/r.json"])
    assert (args.command, args.weights, args.dataset, args.logs) == (
        "evaluate", weights_file, "/d", "/l")
    assert (args.cascade, args.limit, args.results) == (True, 7, "/r.json")


def test_parser_required_dataset_and_model_flag():
    parser = sample_cli.base_parser("test", ("train",))
    sample_cli.add_dataset_arg(parser)
    sample_cli.add_model_args(parser, "/logs", flag="--model")
    args = parser.parse_args(["train", "--dataset=/coco", "--model=last"])
    assert (args.dataset, args.model) == ("/coco", "last")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model=last"])  # --dataset is required


@pytest.mark.parametrize("argv, message", [
    (["train"], "--weights"),                                   # required
    (["fly", "--weights=coco"], "invalid choice: 'fly'"),
    (["train", "--weights=cocoa"], "unknown weights 'cocoa'"),
    (["train", "--weights=/no/such/file.h5"], "weights file not found: /no/such/file.h5"),
    (["train", "--weights=coco", "--limit=x"], "--limit"),
])
def test_parser_errors_name_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_parsers_keep_matterports_flags(weights_file):
    args = balloon.build_parser().parse_args(
        ["splash", "--weights=last", "--image=x.jpg", "--video=v.avi", "--cascade"])
    assert (args.weights, args.image, args.video, args.cascade) == (
        "last", "x.jpg", "v.avi", True)
    assert args.dataset == balloon.DEFAULT_DATASET and args.logs == balloon.DEFAULT_LOGS_DIR
    args = coco.build_parser().parse_args(
        ["evaluate", "--dataset=/coco", "--model=coco", "--year=2017", "--download=True"])
    assert (args.model, args.year, args.download, args.limit) == ("coco", "2017", True, 500)
    assert coco.build_parser().parse_args(
        ["train", "--dataset=/c", "--model=imagenet", "--download"]).download is True
    args = nucleus.build_parser().parse_args(
        ["train", "--weights=none", "--scratch", "--time-budget=30", "--subset=stage1_test"])
    assert (args.weights, args.scratch, args.time_budget, args.subset) == (
        "none", True, 30.0, "stage1_test")
    args = shapes.build_parser().parse_args(["evaluate", "--model", weights_file])
    assert (args.model, args.logs, args.time_budget) == (weights_file, shapes.DEFAULT_LOGS_DIR,
                                                          13.5)
    with pytest.raises(SystemExit):
        shapes.build_parser().parse_args(["evaluate", "--model=imagenet"])


# ----------------------------------------------------------------------------- main()

def fake_build_model(built):
    def build_model(command, config_class, cascade=False, logs=None):
        config = sample_cli.make_config(config_class, cascade)
        model = FakeModel(config)
        built.append((command, type(config).__name__, config.NAME, logs, model))
        return model
    return build_model


def test_balloon_main_dispatch(monkeypatch, coco_file):
    built, calls = [], []
    monkeypatch.setattr(sample_cli, "build_model", fake_build_model(built))
    monkeypatch.setattr(balloon, "COCO_WEIGHTS_PATH", coco_file)
    monkeypatch.setattr(balloon, "train", lambda *a, **k: calls.append(("train", a, k)))
    monkeypatch.setattr(balloon, "evaluate", lambda *a, **k: calls.append(("evaluate", a, k)))
    assert balloon.main(["train", "--weights=coco", "--dataset=/b", "--logs=/l",
                         "--cascade"]) == 0
    command, class_name, name, logs, model = built[-1]
    assert (command, class_name, name, logs) == ("train", "CascadeBalloonConfig",
                                                 "cascade_balloon", "/l")
    assert model.loaded == [(coco_file, {"by_name": True,
                                         "exclude": sample_cli.COCO_HEAD_LAYERS})]
    assert calls[-1] == ("train", (model, model.config, "/b"), {})
    balloon.main(["evaluate", "--weights=last", "--limit=3", "--results=/r.json"])
    assert built[-1][1] == "BalloonEvalConfig"
    assert built[-1][4].loaded == [("/logs/run/last.h5", {"by_name": True})]
    assert calls[-1][0] == "evaluate" and calls[-1][2] == {"limit": 3,
                                                           "results_json": "/r.json"}
    with pytest.raises(SystemExit):
        balloon.main(["splash", "--weights=last"])  # needs --image or --video


def test_coco_main_loads_the_coco_heads(monkeypatch, coco_file, tmp_path):
    built, calls = [], []
    monkeypatch.setattr(sample_cli, "build_model", fake_build_model(built))
    monkeypatch.setattr(coco, "COCO_MODEL_PATH", coco_file)
    monkeypatch.setattr(coco, "evaluate", lambda *a, **k: calls.append((a, k)))
    results = str(tmp_path / "out" / "r.json")
    assert coco.main(["evaluate", "--dataset=/c", "--model=coco", "--limit=0",
                      "--results", results]) == 0
    assert built[-1][1] == "CocoInferenceConfig"
    assert built[-1][4].loaded == [(coco_file, {"by_name": True})]
    assert calls[-1][1]["results_json"] == results and calls[-1][1]["limit"] == 0
    assert os.path.isdir(tmp_path / "out")


def test_nucleus_main_random_initialisation(monkeypatch):
    built, calls = [], []
    monkeypatch.setattr(sample_cli, "build_model", fake_build_model(built))
    monkeypatch.setattr(nucleus, "train", lambda *a, **k: calls.append((a, k)))
    assert nucleus.main(["train", "--weights=none", "--scratch", "--time-budget=1"]) == 0
    assert built[-1][1] == "NucleusScratchConfig" and built[-1][4].loaded == []
    assert calls[-1][0][2:] == (nucleus.DEFAULT_DATASET, "train")
    assert calls[-1][1] == {"scratch": True, "time_budget": 1.0}
    with pytest.raises(SystemExit):
        nucleus.main(["detect", "--weights=none"])
