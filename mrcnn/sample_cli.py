"""Command-line and weight-resolution code shared by the samples.

``samples/coco.py``, ``balloon.py``, ``nucleus.py`` and ``shapes.py`` are Matterport-style
scripts: a positional command (train / evaluate / ...), the weights to start from
(``--weights``, or ``--model`` in coco.py and shapes.py: "coco", "imagenet", "last",
"best" or a path), ``--logs``, ``--cascade`` and a few options of their own. What they
have in common lives here, once:

* ``sample_paths``: the default locations (COCO weights, logs, the shared data folder);
* ``make_config``: a Config class, or its Cascade Mask R-CNN variant;
* ``check_weights`` / ``resolve_weights`` / ``load_weights``: from a --weights value to a
  file loaded by name (the 81-class COCO heads left out of a model with other classes);
* ``base_parser``, ``add_dataset_arg``, ``add_model_args``, ``add_eval_args``: the
  parser pieces, with Matterport's flags;
* ``print_settings``, ``build_model``, ``evaluate_dataset``: the glue of a sample's main().

Importing this module imports only the standard library. TensorFlow, mrcnn.model and
mrcnn.evaluate are imported inside the functions that need them, so that importing a sample
runs nothing and stays fast.
"""

import argparse
import collections
import os

# Layers whose shapes depend on NUM_CLASSES: not loaded from the 81-class COCO weights into
# a model with another number of classes.
COCO_HEAD_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]

# The --weights keywords of Matterport's samples; any other value is a weights file.
WEIGHT_KEYWORDS = ("coco", "imagenet", "last", "best")

# The extra keyword of nucleus.py: train from random weights (nothing is loaded).
NO_WEIGHTS = "none"

SamplePaths = collections.namedtuple("SamplePaths", ["coco_weights", "logs", "shared_data"])


############################################################
#  Paths and configurations
############################################################

def sample_paths(root_dir):
    """Default locations of a sample run from the repository folder ``root_dir``.

    Returns SamplePaths(coco_weights, logs, shared_data): Matterport's mask_rcnn_coco.h5 and
    logs/ in ``root_dir``, and the shared data folder, ``$MRCNN_SHARED_DATA`` or else
    ``<root_dir>/../shared/data``. Unpacks as a tuple in that order.
    """
    shared = os.environ.get("MRCNN_SHARED_DATA",
                            os.path.join(root_dir, "..", "shared", "data"))
    return SamplePaths(coco_weights=os.path.join(root_dir, "mask_rcnn_coco.h5"),
                       logs=os.path.join(root_dir, "logs"), shared_data=shared)


def make_config(config_class, cascade=False):
    """Instantiate ``config_class``, or a Cascade Mask R-CNN subclass of it.

    The cascade variant (class "Cascade<Name>", CASCADE = True) is named
    "cascade_<NAME>", so its log folders, and with them --weights=last, never mix with those
    of the plain model.
    """
    if cascade:
        config_class = type("Cascade" + config_class.__name__, (config_class,),
                            {"CASCADE": True, "NAME": "cascade_" + config_class.NAME})
    return config_class()


############################################################
#  Weights
############################################################

def _listed(words):
    """"'a', 'b', 'c'" for ("a", "b", "c")."""
    return ", ".join("'{}'".format(w) for w in words)


def _quoted(words, last="or"):
    """"'a', 'b' or 'c'" for ("a", "b", "c")."""
    if len(words) < 2:
        return _listed(words)
    return "{} {} '{}'".format(_listed(words[:-1]), last, words[-1])


def _looks_like_path(value):
    """True when ``value`` names a file (a folder separator or a file extension in it)."""
    separators = [s for s in (os.sep, os.altsep) if s]
    return any(s in value for s in separators) or bool(os.path.splitext(value)[1])


def check_weights(weights, keywords=WEIGHT_KEYWORDS):
    """Return ``weights`` when it is one of ``keywords`` (any case) or an existing file.

    Raises FileNotFoundError naming a missing file (a value with a folder or an extension,
    such as "logs/x.h5"), and ValueError naming any other value (say "cocoa") together with
    the accepted keywords.
    """
    if weights.lower() in keywords or os.path.isfile(weights):
        return weights
    if _looks_like_path(weights):
        raise FileNotFoundError("weights file not found: {}".format(weights))
    raise ValueError("unknown weights {!r}: expected {} or the path of a weights file".format(
        weights, _listed(keywords)))


def resolve_weights(model, weights, coco_path=None, keywords=WEIGHT_KEYWORDS):
    """The weights file that a --weights value names, for ``model``.

    "coco": ``coco_path``, Matterport's COCO-trained weights, downloaded there first when
    absent. "last": ``model.find_last()``, the newest checkpoint of the config's NAME.
    "best": ``model.find_best()``, the newest run's best checkpoint (train(keep_best=...)).
    "imagenet": ``model.get_imagenet_weights()`` (downloaded). "none" (when among
    ``keywords``): None, nothing to load. Anything else must be an existing file, returned
    as it is. Keywords are matched in any case; a value that is not among ``keywords`` and
    not a file raises (see check_weights).
    """
    key = check_weights(weights, keywords).lower()
    if key not in keywords:
        return weights
    if key == "coco":
        if not coco_path:
            raise ValueError("weights 'coco' need coco_path, where the COCO weights are kept")
        if not os.path.exists(coco_path):
            from mrcnn import utils
            utils.download_trained_weights(coco_path)
        return coco_path
    if key == "last":
        return model.find_last()
    if key == "best":
        return model.find_best()
    if key == "imagenet":
        return model.get_imagenet_weights()
    if key == NO_WEIGHTS:
        return None
    raise ValueError("no rule for the weights keyword {!r}".format(weights))


def load_weights(model, weights, coco_path=None, keywords=WEIGHT_KEYWORDS, coco_heads=False):
    """Resolve ``weights`` (see resolve_weights) and load the file into ``model`` by name.

    From "coco" the class-dependent head layers (COCO_HEAD_LAYERS) are left out unless
    ``coco_heads`` (a model with COCO's 81 classes, as in coco.py). Prints what it loads,
    or "Random initialisation" for "none". Returns the path loaded, or None.
    """
    path = resolve_weights(model, weights, coco_path, keywords)
    if path is None:
        print("Random initialisation")
        return None
    print("Loading weights ", path)
    if weights.lower() == "coco" and not coco_heads:
        # The COCO heads have 81 classes: skip the class-dependent layers.
        model.load_weights(path, by_name=True, exclude=COCO_HEAD_LAYERS)
    else:
        model.load_weights(path, by_name=True)
    return path


def weights_type(keywords=WEIGHT_KEYWORDS):
    """argparse ``type`` of a weights flag: check_weights at parse time, so that a wrong
    value stops the command with a usage error naming it, before a model is built."""
    def parse(value):
        try:
            return check_weights(value, keywords)
        except (ValueError, FileNotFoundError) as error:
            raise argparse.ArgumentTypeError(str(error))
    parse.__name__ = "weights"
    return parse


############################################################
#  Command line
############################################################

def base_parser(description, commands, command_help=None):
    """ArgumentParser with Matterport's positional ``<command>``, one of ``commands``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("command", metavar="<command>", choices=tuple(commands),
                        help=command_help or _quoted(commands))
    return parser


def add_dataset_arg(parser, default=None, metavar="/path/to/dataset/",
                    help="Directory of the dataset"):
    """--dataset: required when there is no ``default`` (coco.py), else optional."""
    if default is None:
        parser.add_argument("--dataset", required=True, metavar=metavar, help=help)
    else:
        parser.add_argument("--dataset", default=default, metavar=metavar,
                            help="{} (default: {})".format(help, default))


def add_model_args(parser, logs_dir, flag="--weights", keywords=WEIGHT_KEYWORDS,
                   weights_help=""):
    """The flags of every model sample: the weights to start from (required; ``flag`` is
    "--model" in Matterport's coco.py), --logs (default ``logs_dir``) and --cascade.
    ``weights_help`` is appended to the weights flag's help."""
    parser.add_argument(flag, required=True, type=weights_type(keywords),
                        metavar="/path/to/weights.h5",
                        help="Path to weights .h5 file or " + _listed(keywords) + weights_help)
    parser.add_argument("--logs", default=logs_dir, metavar="/path/to/logs/",
                        help="Logs and checkpoints directory (default=logs/)")
    parser.add_argument("--cascade", action="store_true",
                        help="Cascade Mask R-CNN (three box stages) instead of Mask R-CNN")


def add_eval_args(parser, limit=None, limit_help="evaluate: only the first N images",
                  results_help="evaluate: write the detections to this COCO results JSON"):
    """--limit (images to evaluate, default ``limit``) and --results (a JSON path)."""
    parser.add_argument("--limit", type=int, default=limit, metavar="<image count>",
                        help=limit_help)
    parser.add_argument("--results", default=None, metavar="/path/to/results.json",
                        help=results_help)


def print_settings(*settings):
    """Print (label, value) pairs the way Matterport's samples do: "Label:  value"."""
    for label, value in settings:
        print(label + ": ", value)


############################################################
#  Model and evaluation glue
############################################################

def build_model(command, config_class, cascade=False, logs=None):
    """The MaskRCNN of a sample command: ``make_config(config_class, cascade)``, displayed,
    in "training" mode for "train" and "inference" otherwise, logging into ``logs``.
    Imports mrcnn.model (and TensorFlow). Its config is ``model.config``."""
    from mrcnn import model as modellib
    config = make_config(config_class, cascade)
    config.display()
    mode = "training" if command == "train" else "inference"
    return modellib.MaskRCNN(mode=mode, config=config, model_dir=logs)


def evaluate_dataset(model, dataset, limit=None, results_json=None, **kwargs):
    """COCO-style bbox and segm metrics of ``model`` on a prepared ``dataset`` (the first
    ``limit`` images; detections written to ``results_json`` when given); prints the table
    and returns mrcnn.evaluate.evaluate_coco's metrics. ``kwargs`` go to evaluate_coco."""
    from mrcnn.evaluate import evaluate_coco, format_metrics
    metrics = evaluate_coco(model, dataset, iou_types=("bbox", "segm"), limit=limit,
                            results_json=results_json, **kwargs)
    print(format_metrics(metrics))
    return metrics
