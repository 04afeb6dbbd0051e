"""The command line: ``python -m mrcnn <command> ...``.

    python -m mrcnn train --train data/train --val data/val --weights coco --epochs 20
    python -m mrcnn evaluate --val data/val --weights last
    python -m mrcnn detect photos/ --weights best --out detections/
    python -m mrcnn export --weights mask_rcnn_shapes_0008.h5 \\
        --config samples/shapes.py:ShapesInferenceConfig --out export/1 [--masks full]

Commands:
  train     train on annotations in COCO JSON, VIA, labelme or DSB2018 mask-folder format
            (detected from the path, mrcnn.datasets.load_annotated); NUM_CLASSES and the
            class names come from the data; --config KEY=VALUE sets Config attributes. The
            run folder gets mrcnn_run.json (classes, format, config), from which evaluate
            and detect rebuild the model given only the weights.
  evaluate  pycocotools bbox/segm table and per-class AP on annotated images, and the
            detections as a COCO results JSON
  detect    image files, folders or videos -> one PNG with masks per image, one MP4 per
            video and detections.json; from .h5 weights or an exported model (SavedModel
            folder, .onnx, .tflite)
            (COCO results with file_name and category_name); --tile for large images
  export    write a SavedModel for TF Serving, or an ONNX model (--format onnx or an
            .onnx --out), from a weight file and a Config class
            (mrcnn.export; ``python -m mrcnn.export ...`` is the same command)

The samples (samples/coco.py, balloon.py, nucleus.py, shapes.py) keep Matterport's command
lines. TensorFlow and the model are imported only when a command runs, so ``--help`` is
quick.
"""

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile


def load_config_class(spec, flag="--config"):
    """'package.module:ClassName' or 'path/to/file.py:ClassName' -> the class; errors
    name ``flag``, the option that gave ``spec``."""
    if ":" not in spec:
        raise ValueError("{} must look like module:ClassName or file.py:ClassName, "
                         "got {!r}".format(flag, spec))
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") or os.sep in where:
        if not os.path.isfile(where):
            raise FileNotFoundError("{}: no file {}".format(flag, where))
        mod_name = "_mrcnn_cli_config_" + os.path.splitext(os.path.basename(where))[0]
        spec_ = importlib.util.spec_from_file_location(mod_name, where)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module
        spec_.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, name):
        raise ValueError("{}: {} has no class {}".format(flag, where, name))
    return getattr(module, name)


def _add_export_parser(commands):
    parser = commands.add_parser(
        "export", help="write a SavedModel (TF Serving), ONNX or TFLite model",
        description="Export Mask R-CNN weights as a SavedModel for TF Serving, an ONNX "
                    "model or a TFLite model (uint8 images in, detections out).")
    parser.add_argument("--weights", required=True, help="Keras-2-layout .h5 weight file")
    parser.add_argument("--config", required=True,
                        help="Config class: package.module:ClassName or file.py:ClassName")
    parser.add_argument("--out", required=True,
                        help="new SavedModel directory, .onnx or .tflite file (must not "
                             "exist)")
    # Checked against mrcnn.export.EXPORT_FORMATS when the command runs.
    parser.add_argument("--format", default=None, metavar="saved_model|onnx|tflite",
                        help="export format (default: from --out's suffix: .onnx, "
                             ".tflite, else a SavedModel directory)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default mrcnn.export.ONNX_OPSET)")
    # Checked against mrcnn.export.MASK_MODES when the command runs (importing it here
    # would import TensorFlow for --help).
    parser.add_argument("--masks", default="small",
                        help="small: mask-head probabilities per box (default); "
                             "full: boolean masks of the image size")
    parser.set_defaults(run=run_export)
    return parser


def run_export(args, parser):
    """The export command: build an inference model of the config, load the weights by
    name, write the SavedModel. Returns the exit status."""
    import tensorflow as tf

    from mrcnn.config import Config
    from mrcnn.export import (MASK_MODES, ONNX_OPSET, SERVING_KEYS, ExportError,
                              export_format, export_model)
    from mrcnn.model import MaskRCNN

    if args.masks not in MASK_MODES:
        parser.error("--masks must be one of {}, got {!r}".format(MASK_MODES, args.masks))
    if os.path.lexists(args.out):
        parser.error("--out {} already exists: refusing to overwrite it".format(args.out))
    try:
        fmt = export_format(args.out, args.format)
    except ExportError as e:
        parser.error("--format: {}".format(e))
    cls = load_config_class(args.config)
    if not (isinstance(cls, type) and issubclass(cls, Config)):
        parser.error("--config {} is not a mrcnn.config.Config subclass".format(args.config))
    config = cls()
    # Export runs on one device whatever GPU_COUNT says.
    model = MaskRCNN("inference", config, model_dir=tempfile.gettempdir(),
                     strategy=tf.distribute.get_strategy())
    report = model.load_weights(args.weights, by_name=True, verbose=0)
    print(report.summary() if hasattr(report, "summary") else report)
    # The run's class names (when the weights come from `python -m mrcnn train`) travel
    # with the export, for `detect` on the exported model.
    class_names = (read_run_description(args.weights) or {}).get("class_names")
    try:
        export_model(model, args.out, format=fmt, masks=args.masks,
                     opset=ONNX_OPSET if args.opset is None else args.opset,
                     class_names=class_names)
    except ExportError as e:
        parser.error(str(e))
    kind = {"saved_model": "SavedModel", "onnx": "ONNX model", "tflite": "TFLite model"}
    print("{} written to {} (serving_default: uint8 images [B, H, W, {}] -> {}; "
          "masks={})".format(kind[fmt], args.out, config.IMAGE_CHANNEL_COUNT,
                             ", ".join(SERVING_KEYS), args.masks))
    return 0


# ---------------------------------------------------------------------------- shared pieces

# The run description written into a training run's folder: with it, evaluate and detect
# rebuild the model from the weights path alone.
RUN_FILE = "mrcnn_run.json"
DEFAULT_NAME = "mrcnn"
DEFAULT_EPOCHS = 20
FORMATS = ("auto", "coco", "via", "labelme", "masks")
TRAIN_WEIGHTS = ("coco", "imagenet", "last", "best", "none")
RUN_WEIGHTS = ("last", "best")


def parse_config_overrides(pairs):
    """["KEY=VALUE", ...] -> {KEY: value}: values are Python literals (ints, floats,
    tuples, lists, bools, None) or else strings. KEY must be an uppercase attribute that
    mrcnn.config.Config defines; NUM_CLASSES comes from the data."""
    import ast

    from mrcnn.config import Config
    overrides = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError("--config expects KEY=VALUE, got {!r}".format(pair))
        if not (key.isupper() and hasattr(Config, key)):
            raise ValueError("--config {}: unknown setting {!r} (not an uppercase "
                             "attribute of mrcnn.config.Config)".format(pair, key))
        if key == "NUM_CLASSES":
            raise ValueError("--config {}: NUM_CLASSES comes from the data".format(pair))
        try:
            overrides[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            overrides[key] = raw.strip()  # a bare word, e.g. BACKBONE=resnet101
    return overrides


def _base_config_class(spec):
    """The Config subclass named by --config-class, or mrcnn.config.Config."""
    from mrcnn.config import Config
    if not spec:
        return Config
    cls = load_config_class(spec, flag="--config-class")
    if not (isinstance(cls, type) and issubclass(cls, Config)):
        raise ValueError("--config-class {} is not a mrcnn.config.Config subclass".format(
            spec))
    return cls


def _portable_spec(spec):
    """--config-class with a file path made absolute, so the run description works from
    any folder."""
    if not spec or ":" not in spec:
        return spec
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") or os.sep in where:
        where = os.path.abspath(where)
    return "{}:{}".format(where, name)


def config_class_for(base, name, class_names, overrides, extra=None):
    """A subclass of ``base`` with NAME, NUM_CLASSES = 1 + len(class_names), then
    ``extra`` (the command's own settings), then the --config ``overrides``."""
    attrs = {"NAME": name, "NUM_CLASSES": 1 + len(class_names)}
    attrs.update(extra or {})
    attrs.update(overrides)
    return type("Cli" + base.__name__, (base,), attrs)


def _run_name(args):
    """NAME of the run: --name, else DEFAULT_NAME (not the config class's NAME, so that
    ``--weights last`` finds the run with the same --name whatever the other flags)."""
    return args.name or DEFAULT_NAME


class _RunFinder(object):
    """MaskRCNN.find_last / find_best without building a model: both read only
    config.NAME and model_dir, and evaluate/detect need the weights path (and the run
    description beside it) before they can build the model."""

    def __init__(self, name, model_dir):
        import types

        from mrcnn.model import MaskRCNN
        self.config = types.SimpleNamespace(NAME=name)
        self.model_dir = model_dir
        self._cls = MaskRCNN

    def find_last(self):
        return self._cls.find_last(self)

    def find_best(self):
        return self._cls.find_best(self)


def write_run_description(log_dir, description):
    """Write ``description`` (a JSON-able dict) to log_dir/RUN_FILE atomically."""
    os.makedirs(log_dir, exist_ok=True)
    return _write_json(os.path.join(log_dir, RUN_FILE), description, indent=1)


def read_run_description(weights_path):
    """The run description next to ``weights_path``, or None when there is none."""
    path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _add_config_args(parser):
    parser.add_argument("--config", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="Config settings, e.g. IMAGE_MAX_DIM=512 "
                             "RPN_ANCHOR_SCALES=(16,32,64,128,256) (Python literals)")
    parser.add_argument("--config-class", default=None, metavar="module:Class",
                        help="Config subclass to start from (module:Class or file.py:Class; "
                             "default mrcnn.config.Config)")


def _add_run_args(parser, weights_keywords, weights_help, weights_type=None):
    from mrcnn import sample_cli
    parser.add_argument("--weights", required=True,
                        type=weights_type or sample_cli.weights_type(weights_keywords),
                        metavar="|".join(weights_keywords) + "|PATH", help=weights_help)
    parser.add_argument("--logs", default="logs", metavar="DIR",
                        help="runs folder (default ./logs)")
    parser.add_argument("--name", default=None,
                        help="run NAME: runs are <logs>/<name><date> folders "
                             "(default {!r})".format(DEFAULT_NAME))
    parser.add_argument("--cascade", action="store_true",
                        help="Cascade Mask R-CNN (train), or look for cascade runs "
                             "(last/best)")
    _add_config_args(parser)


def _add_data_args(parser, flag, required=True):
    parser.add_argument(flag, required=required, metavar="DIR_OR_FILE",
                        help="annotations: a COCO/VIA/labelme JSON or a folder "
                             "(see --format)")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="annotation format (default: detected from the path)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad annotation entries with a warning instead of "
                             "stopping")


# ---------------------------------------------------------------------------- train

def _add_train_parser(commands):
    parser = commands.add_parser(
        "train", help="train on annotated images (COCO, VIA, labelme, mask folders)",
        description="Train Mask R-CNN on a folder or file of annotations; the format and "
                    "the classes come from the data.")
    _add_data_args(parser, "--train")
    parser.add_argument("--val", required=True, metavar="DIR_OR_FILE",
                        help="validation annotations (its classes must be the training "
                             "set's)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="image folder of --train (default: found from the JSON)")
    parser.add_argument("--val-images", default=None, metavar="DIR",
                        help="image folder of --val")
    _add_run_args(parser, TRAIN_WEIGHTS,
                  "weights to start from: coco, imagenet, last, best, none (random) or a "
                  ".h5 file")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None,
                        help="train until this epoch (a resumed run's epochs count; "
                             "default {} without --time-budget)".format(DEFAULT_EPOCHS))
    budget.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                        help="train for this wall time (learning rate x0.1 for its last "
                             "20%%)")
    parser.add_argument("--layers", default=None, choices=("heads", "3+", "4+", "5+", "all"),
                        help="layers to train (default: heads from coco weights, else all)")
    parser.add_argument("--evaluate-every", type=int, default=None, metavar="N",
                        help="COCO evaluation of --val every N epochs (val_segm_AP, ...)")
    parser.add_argument("--evaluate-limit", type=int, default=None, metavar="N",
                        help="evaluate on the first N validation images only")
    parser.add_argument("--keep-best", default=None, metavar="METRIC",
                        help="keep mask_rcnn_<name>_best.h5 of the best METRIC "
                             "(e.g. val_segm_AP)")
    parser.add_argument("--keep-last", type=int, default=None, metavar="K",
                        help="keep only the K newest epoch checkpoints")
    parser.add_argument("--early-stopping", type=int, default=None, metavar="P",
                        help="stop after P evaluations without improvement")
    parser.set_defaults(run=run_train)
    return parser


def _training_setup(args):
    """(train dataset, val dataset, config class, run description) of the train command;
    raises ValueError / FileNotFoundError naming the bad argument or file."""
    from mrcnn.datasets import load_annotated
    overrides = parse_config_overrides(args.config)  # bad keys fail before any loading
    base = _base_config_class(args.config_class)
    train = load_annotated(args.train, args.format, images=args.images,
                           skip_bad=args.skip_bad)
    class_names = [c["name"] for c in train.class_info[1:]]
    val = load_annotated(args.val, args.format, images=args.val_images,
                         class_names=class_names, skip_bad=args.skip_bad)
    name = _run_name(args)
    config_class = config_class_for(base, name, class_names, overrides)
    description = {
        "class_names": class_names, "format": train.annotation_format,
        "train": os.path.abspath(args.train), "val": os.path.abspath(args.val),
        "config_class": _portable_spec(args.config_class), "config": list(args.config),
        "name": name, "cascade": bool(args.cascade)}
    print("Training set: {} images ({}, {}); validation set: {} images; classes: {}".format(
        train.num_images, train.annotation_format, train.annotation_path, val.num_images,
        ", ".join(class_names)))
    return train, val, config_class, description


def _train_kwargs(args):
    """model.train keyword arguments of the validation flags that were given."""
    pairs = (("evaluate_every", args.evaluate_every), ("evaluate_limit", args.evaluate_limit),
             ("keep_best", args.keep_best), ("keep_last", args.keep_last),
             ("early_stopping_patience", args.early_stopping))
    return {k: v for k, v in pairs if v is not None}


def run_train(args, parser):
    """The train command. Returns the exit status."""
    from mrcnn import sample_cli
    try:
        if args.epochs is not None and args.epochs < 1:
            raise ValueError("--epochs must be >= 1, got {}".format(args.epochs))
        if args.time_budget is not None and not args.time_budget > 0:
            raise ValueError("--time-budget must be > 0 minutes, got {}".format(
                args.time_budget))
        train, val, config_class, description = _training_setup(args)
        model = sample_cli.build_model("train", config_class, args.cascade, args.logs)
        sample_cli.load_weights(model, args.weights, _coco_weights_path(),
                                TRAIN_WEIGHTS)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    # After load_weights: resuming a checkpoint ("last") continues its run folder.
    path = write_run_description(model.log_dir, description)
    print("Run description: {}".format(path))
    callbacks = []
    if args.time_budget:
        from mrcnn.training import TimeBudget
        callbacks.append(TimeBudget(args.time_budget))
    epochs = args.epochs or (DEFAULT_EPOCHS if not args.time_budget else 10 ** 6)
    layers = args.layers or ("heads" if args.weights.lower() == "coco" else "all")
    history = model.train(train, val, learning_rate=model.config.LEARNING_RATE,
                          epochs=epochs, layers=layers, custom_callbacks=callbacks,
                          on_error="skip" if args.skip_bad else "raise",
                          **_train_kwargs(args))
    if history is not None and history.history.get("loss"):
        print("Final loss: {:.4f} (epoch {})".format(history.history["loss"][-1],
                                                    model.epoch))
    print("Weights: {}".format(_newest_weights(model)))
    return 0


def _newest_weights(model):
    try:
        return model.find_last()
    except FileNotFoundError as e:
        return "none written ({})".format(e)


def _coco_weights_path():
    """Matterport's mask_rcnn_coco.h5 in the repository folder (downloaded when absent)."""
    from mrcnn import sample_cli
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return sample_cli.sample_paths(root).coco_weights


# ---------------------------------------------------------------------------- evaluate / detect

def _resolve_run_weights(args):
    """(weights path, run description or None) of --weights: a file, or the last / best
    checkpoint of the runs named --name (cascade_ prefix with --cascade) under --logs."""
    from mrcnn import sample_cli
    weights = args.weights
    if weights.lower() in RUN_WEIGHTS:
        name = ("cascade_" if args.cascade else "") + _run_name(args)
        try:
            weights = sample_cli.resolve_weights(_RunFinder(name, args.logs), weights,
                                                 keywords=RUN_WEIGHTS)
        except FileNotFoundError as e:
            raise FileNotFoundError("--weights {}: {} (runs named {!r}: give --name, "
                                    "--cascade and --logs as to train)".format(
                                        args.weights, e, name)) from None
    return weights, read_run_description(weights)


def _inference_model(args, class_names, description, extra, final=None):
    """The inference MaskRCNN of evaluate / detect (weights not loaded yet).

    Settings in order: the run's config class and --config values (from its
    description), ``extra`` (the command's defaults), this command's --config values,
    then ``final`` (the command's explicit flags).
    """
    from mrcnn import sample_cli
    description = description or {}
    base = _base_config_class(args.config_class or description.get("config_class"))
    overrides = parse_config_overrides(description.get("config", []))
    overrides.update(extra)
    overrides.update(parse_config_overrides(args.config))
    overrides.update(final or {})
    name = description.get("name") or _run_name(args)
    config_class = config_class_for(base, name, class_names, overrides, {"GPU_COUNT": 1})
    cascade = bool(args.cascade or description.get("cascade"))
    return sample_cli.build_model("inference", config_class, cascade, args.logs)


def _add_evaluate_parser(commands):
    parser = commands.add_parser(
        "evaluate", help="COCO AP (bbox, segm, per class) of trained weights",
        description="Evaluate trained weights on annotated images with pycocotools.")
    _add_data_args(parser, "--val")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="image folder of --val (default: found from the JSON)")
    _add_run_args(parser, RUN_WEIGHTS, "a .h5 file, or last / best of the runs of --name")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only the first N images")
    parser.add_argument("--results", default=None, metavar="out.json",
                        help="COCO results JSON (default: <weights>_results.json)")
    parser.set_defaults(run=run_evaluate)
    return parser


def run_evaluate(args, parser):
    """The evaluate command: prints the pycocotools table and per-class AP, writes the
    detections as a COCO results JSON. Returns the exit status."""
    from mrcnn import sample_cli
    from mrcnn.datasets import load_annotated
    try:
        weights, description = _resolve_run_weights(args)
        class_names = (description or {}).get("class_names")
        val = load_annotated(args.val, args.format, images=args.images,
                             class_names=class_names, skip_bad=args.skip_bad)
        class_names = class_names or [c["name"] for c in val.class_info[1:]]
        # COCO AP ranks every detection: keep them all (a --config value still wins).
        model = _inference_model(args, class_names, description,
                                 {"DETECTION_MIN_CONFIDENCE": 0.0})
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print("Loading weights ", weights)
    model.load_weights(weights, by_name=True)
    results = args.results or os.path.splitext(weights)[0] + "_results.json"
    sample_cli.evaluate_dataset(model, val, limit=args.limit, results_json=results)
    print("Detections written to {} (image_id = index in the dataset, category_id = "
          "index in {})".format(results, ["BG"] + list(class_names)))
    return 0


def _add_detect_parser(commands):
    parser = commands.add_parser(
        "detect", help="detect objects in images or videos, write PNGs / MP4s with masks "
                       "and a COCO JSON",
        description="Run trained weights or an exported model on image files, folders of "
                    "images or video files.")
    parser.add_argument("inputs", nargs="+", metavar="INPUTS",
                        help="image files, folders or video files ({}; give them before "
                             "--config)".format(", ".join(VIDEO_EXTENSIONS)))
    parser.add_argument("--batch", type=int, default=None, metavar="N",
                        help="images per call of an exported model, or video frames per "
                             "call (default: the config's BATCH_SIZE; 4 for exported "
                             "models)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--tile", type=int, default=None, metavar="N",
                        help="tiled detection in N x N windows (N a multiple of 64) for "
                             "images larger than the model's input")
    parser.add_argument("--min-confidence", type=float, default=None, metavar="X",
                        help="keep detections scoring at least X (default: the config's "
                             "DETECTION_MIN_CONFIDENCE)")
    _add_run_args(parser, RUN_WEIGHTS, "a .h5 file, last / best of the runs of --name, or "
                  "an exported model (SavedModel folder, .onnx or .tflite file)",
                  weights_type=_detect_weights_type)
    parser.set_defaults(run=run_detect)
    return parser


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_EXPORTED_BATCH = 4


def _is_exported_model(path):
    """A SavedModel folder, or an .onnx / .tflite file (by name: checked when loaded)."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "saved_model.pb"))
    return path.lower().endswith((".onnx", ".tflite"))


def _detect_weights_type(value):
    """detect's --weights: an exported model, or what evaluate accepts."""
    from mrcnn import sample_cli
    if _is_exported_model(value):
        if not os.path.exists(value):
            raise argparse.ArgumentTypeError("exported model not found: {}".format(value))
        return value
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError("{} is a folder but not a SavedModel (no "
                                          "saved_model.pb)".format(value))
    return sample_cli.weights_type(RUN_WEIGHTS)(value)


def _split_inputs(inputs):
    """(video files, other inputs) of detect's INPUTS, by extension."""
    videos = [p for p in inputs if os.path.splitext(p)[1].lower() in VIDEO_EXTENSIONS]
    return videos, [p for p in inputs if p not in videos]


def image_files(inputs):
    """Image paths of ``inputs`` (files, or folders: their images, sorted, not
    recursive). Raises FileNotFoundError naming a missing path or a folder without
    images."""
    from mrcnn.datasets import IMAGE_EXTENSIONS
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = [os.path.join(path, f) for f in sorted(os.listdir(path))
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
            if not found:
                raise FileNotFoundError("{}: no image files ({}) in this folder".format(
                    path, ", ".join(IMAGE_EXTENSIONS)))
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError("input not found: {}".format(path))
    return files


def _detect_class_names(args, description):
    """Class names of the run, or generic names from --config-class's NUM_CLASSES."""
    if description and description.get("class_names"):
        return list(description["class_names"])
    if not args.config_class:
        raise ValueError("--weights {}: no {} beside it (not a run of `python -m mrcnn "
                         "train`); give --config-class with its NUM_CLASSES".format(
                             args.weights, RUN_FILE))
    n = _base_config_class(args.config_class).NUM_CLASSES
    return ["class{}".format(i) for i in range(1, n)]


def _output_png(out_dir, image_path, used):
    """<out>/<image name>_detections.png, numbered when two inputs share a name."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    name, k = stem + "_detections.png", 1
    while name in used:
        k += 1
        name = "{}_{}_detections.png".format(stem, k)
    used.add(name)
    return os.path.join(out_dir, name)


def run_detect(args, parser):
    """The detect command: one PNG per image, one MP4 per video, and detections.json (COCO
    results with file_name and category_name; a video's frames are images of their own,
    with frame_index). Returns the exit status."""
    try:
        if args.tile is not None and (args.tile < 64 or args.tile % 64):
            raise ValueError("--tile must be a multiple of 64, got {}".format(args.tile))
        if args.batch is not None and args.batch < 1:
            raise ValueError("--batch must be >= 1, got {}".format(args.batch))
        videos, others = _split_inputs(args.inputs)
        for video in videos:
            if not os.path.isfile(video):
                raise FileNotFoundError("input not found: {}".format(video))
        files = image_files(others) if others else []
        if _is_exported_model(args.weights):
            if args.tile is not None:
                raise ValueError("--tile needs .h5 weights, not the exported model "
                                 "{}".format(args.weights))
            model, class_names = _exported_detector(args)
            weights = None
        else:
            weights, description = _resolve_run_weights(args)
            class_names = _detect_class_names(args, description)
            final = ({} if args.min_confidence is None
                     else {"DETECTION_MIN_CONFIDENCE": args.min_confidence})
            model = _inference_model(args, class_names, description, {}, final)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if weights is not None:
        print("Loading weights ", weights)
        model.load_weights(weights, by_name=True)
    os.makedirs(args.out, exist_ok=True)
    entries = _detect_files(model, files, ["BG"] + class_names, args.out, args.tile) \
        if files else []
    frames = 0
    for video in videos:
        try:
            video_entries, n = _detect_video(model, video, ["BG"] + class_names, args.out,
                                             len(files) + frames, args.batch)
        except (ValueError, FileNotFoundError) as e:
            parser.error(str(e))
        entries += video_entries
        frames += n
    path = os.path.join(args.out, "detections.json")
    _write_json(path, entries)
    print("{} detections in {} images and {} video frames: {} and the PNGs/MP4s in "
          "{}".format(len(entries), len(files), frames, path, args.out))
    return 0


class _ExportedDetector(object):
    """An exported model behind the detect()/config interface _detect_files uses."""

    def __init__(self, exported, batch, min_confidence):
        import types
        self.exported = exported
        self.config = types.SimpleNamespace(BATCH_SIZE=batch)
        self.min_confidence = min_confidence

    def detect(self, images, tile=None):
        results = self.exported.detect(images)
        if self.min_confidence is not None:
            for r in results:
                keep = r["scores"] >= self.min_confidence
                r.update(rois=r["rois"][keep], class_ids=r["class_ids"][keep],
                         scores=r["scores"][keep], masks=r["masks"][..., keep])
        return results


def _exported_detector(args):
    """(detector, class names) of an exported model given as --weights."""
    from mrcnn.export import ExportError, ExportedModel
    try:
        exported = ExportedModel(args.weights)
    except ExportError as e:
        raise ValueError(str(e)) from None
    names = exported.class_names
    if not names:
        n = (exported.info.get("config") or {}).get("NUM_CLASSES")
        if not n:
            raise ValueError("--weights {}: no class names or NUM_CLASSES in the export's "
                             "config".format(args.weights))
        names = ["class{}".format(i) for i in range(1, int(n))]
    print("Exported model: {} ({})".format(args.weights, exported.format))
    return (_ExportedDetector(exported, args.batch or DEFAULT_EXPORTED_BATCH,
                              args.min_confidence), list(names))


def _detect_video(model, path, class_names, out_dir, first_id, batch=None):
    """Detect in every frame of the video ``path`` (OpenCV), ``batch`` frames per call
    (default config.BATCH_SIZE). Writes <out>/<name>_detections.mp4 (masks drawn, the
    source's frame rate) and returns (COCO entries, frame count); frame k is image_id
    first_id + k, with file_name and frame_index. Raises ValueError naming a video that
    cannot be opened or holds no frame."""
    import cv2
    import keras
    from mrcnn.evaluate import detections_to_coco
    from mrcnn.visualize import draw_instances
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError("cannot open video {} (not a video, or a codec OpenCV lacks)".format(
            path))
    batch = batch or model.config.BATCH_SIZE
    if getattr(model, "exported", None) is None and batch != model.config.BATCH_SIZE:
        batch = model.config.BATCH_SIZE     # a Keras model's graph takes BATCH_SIZE images
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = os.path.splitext(os.path.basename(path))[0]
    out_path = os.path.join(out_dir, stem + "_detections.mp4")
    writer, entries, count = None, [], 0
    progress = keras.utils.Progbar(total, unit_name="frame")
    try:
        done = False
        while not done:
            frames = []
            while len(frames) < batch:
                ok, frame = capture.read()
                if not ok:
                    done = True
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if not frames:
                break
            padded = frames
            if getattr(model, "exported", None) is None:
                # A Keras model's detect() takes BATCH_SIZE images: pad a short last batch.
                padded = frames + [frames[-1]] * (batch - len(frames))
            results = model.detect(padded)[:len(frames)]
            for frame, r in zip(frames, results):
                drawn = draw_instances(frame, r, class_names)
                if writer is None:
                    h, w = drawn.shape[:2]
                    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"),
                                             fps, (w, h))
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                for e in detections_to_coco(first_id + count, r):
                    e.update(file_name=path, frame_index=count,
                             category_name=class_names[e["category_id"]])
                    entries.append(e)
                count += 1
            progress.update(count)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if count == 0:
        raise ValueError("video {} has no readable frame".format(path))
    print("detect: {} frames of {} -> {}".format(count, path, out_path))
    return entries, count


def _detect_files(model, files, class_names, out_dir, tile):
    """model.detect over ``files`` in batches of config.BATCH_SIZE; writes each image's
    PNG and returns the COCO result entries (image_id = index in ``files``)."""
    if "matplotlib.pyplot" not in sys.modules:
        # Files only: an interactive backend would open (and wait on) a window per image.
        os.environ.setdefault("MPLBACKEND", "Agg")
    from mrcnn.dataset import Dataset
    from mrcnn.evaluate import detections_to_coco
    from mrcnn.visualize import save_instances_png
    reader = Dataset()  # its load_image: any format, errors naming the file
    for path in files:
        reader.add_image("detect", image_id=path, path=path)
    import keras
    entries, used = [], set()
    batch = model.config.BATCH_SIZE
    progress = keras.utils.Progbar(len(files), unit_name="image")
    for start in range(0, len(files), batch):
        ids = list(range(start, min(start + batch, len(files))))
        images = [reader.load_image(i) for i in ids]
        results = (model.detect(images) if tile is None
                   else model.detect(images, tile=tile))
        for i, image, r in zip(ids, images, results):
            save_instances_png(_output_png(out_dir, files[i], used), image, r,
                               class_names, title=os.path.basename(files[i]))
            for e in detections_to_coco(i, r):
                e.update(file_name=files[i], category_name=class_names[e["category_id"]])
                entries.append(e)
        progress.update(ids[-1] + 1)
    return entries


def _write_json(path, obj, indent=None):
    """Write ``obj`` as JSON to ``path`` atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- main

def main(argv=None):
    """Parse ``argv`` (default sys.argv[1:]) and run the command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mrcnn",
                                     description="Mask R-CNN command-line tools.")
    commands = parser.add_subparsers(dest="command", metavar="command")
    subparsers = {"train": _add_train_parser(commands),
                  "evaluate": _add_evaluate_parser(commands),
                  "detect": _add_detect_parser(commands),
                  "export": _add_export_parser(commands)}
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args, subparsers[args.command])
