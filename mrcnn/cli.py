"""The command line: ``python -m mrcnn <command> ...``.

    python -m mrcnn export --weights mask_rcnn_shapes_0008.h5 \\
        --config samples/shapes.py:ShapesInferenceConfig --out export/1 [--masks full]

Commands:
  export   write a SavedModel for TF Serving from a weight file and a Config class
           (mrcnn.export; ``python -m mrcnn.export ...`` is the same command)

Training, evaluation and detection on a dataset are the samples' command lines
(samples/coco.py, balloon.py, nucleus.py, shapes.py). TensorFlow and the model are
imported only when a command runs, so ``--help`` is quick.
"""

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile


def load_config_class(spec):
    """'package.module:ClassName' or 'path/to/file.py:ClassName' -> the class."""
    if ":" not in spec:
        raise ValueError("--config must look like module:ClassName or file.py:ClassName, "
                         "got {!r}".format(spec))
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") or os.sep in where:
        if not os.path.isfile(where):
            raise FileNotFoundError("--config: no file {}".format(where))
        mod_name = "_mrcnn_cli_config_" + os.path.splitext(os.path.basename(where))[0]
        spec_ = importlib.util.spec_from_file_location(mod_name, where)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module
        spec_.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, name):
        raise ValueError("--config: {} has no class {}".format(where, name))
    return getattr(module, name)


def _add_export_parser(commands):
    parser = commands.add_parser(
        "export", help="write a SavedModel for TF Serving",
        description="Export Mask R-CNN weights as a SavedModel for TF Serving.")
    parser.add_argument("--weights", required=True, help="Keras-2-layout .h5 weight file")
    parser.add_argument("--config", required=True,
                        help="Config class: package.module:ClassName or file.py:ClassName")
    parser.add_argument("--out", required=True, help="new directory for the SavedModel")
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
    from mrcnn.export import MASK_MODES, SERVING_KEYS, export_saved_model
    from mrcnn.model import MaskRCNN

    if args.masks not in MASK_MODES:
        parser.error("--masks must be one of {}, got {!r}".format(MASK_MODES, args.masks))
    if os.path.lexists(args.out):
        parser.error("--out {} already exists: refusing to overwrite it".format(args.out))
    cls = load_config_class(args.config)
    if not (isinstance(cls, type) and issubclass(cls, Config)):
        parser.error("--config {} is not a mrcnn.config.Config subclass".format(args.config))
    config = cls()
    # Export runs on one device whatever GPU_COUNT says.
    model = MaskRCNN("inference", config, model_dir=tempfile.gettempdir(),
                     strategy=tf.distribute.get_strategy())
    report = model.load_weights(args.weights, by_name=True, verbose=0)
    print(report.summary() if hasattr(report, "summary") else report)
    export_saved_model(model, args.out, masks=args.masks)
    print("SavedModel written to {} (signature serving_default: uint8 images [B, H, W, {}] "
          "-> {}; masks={})".format(args.out, config.IMAGE_CHANNEL_COUNT,
                                    ", ".join(SERVING_KEYS), args.masks))
    return 0


def main(argv=None):
    """Parse ``argv`` (default sys.argv[1:]) and run the command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mrcnn",
                                     description="Mask R-CNN command-line tools.")
    commands = parser.add_subparsers(dest="command", metavar="command")
    subparsers = {"export": _add_export_parser(commands)}
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args, subparsers[args.command])
