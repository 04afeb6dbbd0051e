"""How long does loading a COCO-sized Matterport weight file by name take?

Writes, with raw h5py in a temporary directory, a file laid out as Matterport's
mask_rcnn_coco.h5 is (Keras-2 weights-only HDF5: root ``layer_names``, one group per
layer with ``weight_names`` '<layer>/<var>:0', the three RPN layers inside one
``rpn_model`` group), holding random values shaped for the COCO model (81 classes,
ResNet-101 + FPN, about 64 M parameters). Then times MaskRCNN.load_weights(by_name=True)
into an inference model. Target: under 10 s.

    python benchmarks/bench_load_weights.py [--repeat 3] [--keep FILE]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RPN_LAYERS = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")


def coco_config():
    from mrcnn.config import Config

    class CocoConfig(Config):
        """Matterport's samples/coco settings that fix the weight shapes."""
        NAME = "coco"
        IMAGES_PER_GPU = 1
        NUM_CLASSES = 81
        BACKBONE = "resnet101"

    return CocoConfig()


def write_matterport_layout(model, path, seed=0):
    """Random weights shaped like ``model``'s, written as Matterport's file is.

    Returns (parameter count, layer groups written)."""
    import h5py
    import numpy as np
    from mrcnn import weights as W

    rng = np.random.default_rng(seed)
    top, nested = {}, {}
    count = 0
    for layer, _ in W._leaf_layers(model):
        ws = []
        for v in layer.weights:
            shape = tuple(int(d) for d in v.shape)
            a = rng.standard_normal(shape, dtype=np.float32) * 0.01
            if v.name == "moving_variance":
                a = np.abs(a) + 1.0
            ws.append(("{}/{}:0".format(layer.name, v.name), a))
            count += a.size
        (nested if layer.name in RPN_LAYERS else top)[layer.name] = ws
    with h5py.File(path, "w") as f:
        names = list(top) + ["rpn_model"]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for name, ws in top.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([wn.encode() for wn, _ in ws])
            for wn, a in ws:
                g.create_dataset(wn, data=a)
        g = f.create_group("rpn_model")
        inner = [w for name in RPN_LAYERS for w in nested[name]]
        g.attrs["weight_names"] = np.array([wn.encode() for wn, _ in inner])
        for wn, a in inner:
            g.create_dataset(wn, data=a)
    return count, len(top) + 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed loads (default 3)")
    parser.add_argument("--keep", default=None, help="keep the written file here")
    args = parser.parse_args(argv)

    import numpy as np
    import keras
    from mrcnn.model import MaskRCNN

    config = coco_config()
    t = time.perf_counter()
    model = MaskRCNN("inference", config, model_dir=tempfile.gettempdir())
    build_s = time.perf_counter() - t
    params = model.keras_model.count_params()

    tmp = tempfile.mkdtemp(prefix="mrcnn_bench_load_")
    path = os.path.join(tmp, "mask_rcnn_coco_layout.h5")
    try:
        t = time.perf_counter()
        written, groups = write_matterport_layout(model.keras_model, path)
        write_s = time.perf_counter() - t
        size_mb = os.path.getsize(path) / 2 ** 20

        times, report = [], None
        for _ in range(max(1, args.repeat)):
            t = time.perf_counter()
            report = model.load_weights(path, by_name=True, verbose=0)
            times.append(time.perf_counter() - t)

        # The values really arrived: a backbone, an RPN (nested group) and a head layer.
        import h5py
        with h5py.File(path, "r") as f:
            checks = {
                "res4w_branch2c": f["res4w_branch2c"]["res4w_branch2c/kernel:0"][()],
                "rpn_conv_shared": f["rpn_model"]["rpn_conv_shared/kernel:0"][()],
                "mrcnn_mask": f["mrcnn_mask"]["mrcnn_mask/kernel:0"][()],
            }
        for name, ref in checks.items():
            got = keras.ops.convert_to_numpy(model.keras_model.get_layer(name).weights[0]
                                             if name != "rpn_conv_shared" else
                                             model.keras_model.get_layer("rpn_model")
                                             .get_layer(name).weights[0])
            assert np.array_equal(got, ref), name
        if args.keep:
            shutil.copy(path, args.keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("COCO-sized Matterport-layout file (81 classes, ResNet-101 + FPN)")
    print("  model parameters          {:,} ({:.1f} M); build {:.1f} s".format(
        params, params / 1e6, build_s))
    print("  file: {:.0f} MiB, {} layer groups (rpn_model nested), {:,} values; written in "
          "{:.1f} s".format(size_mb, groups, written, write_s))
    print("  layers loaded {}, skipped {}".format(
        len(report.loaded), len(report.skipped_not_in_model) +
        len(report.skipped_shape_mismatch) + len(report.skipped_incompatible)))
    print("  load_weights by name: first {:.2f} s, best {:.2f} s over {} runs "
          "(target < 10 s)".format(times[0], min(times), len(times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
