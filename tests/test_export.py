"""Tests of mrcnn.export and its command line (mrcnn.cli): a SavedModel reloaded with
tf.saved_model.load reproduces MaskRCNN.detect(). The graph molding and unmolding it uses
are tested against the numpy ones in test_preprocess.py."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import cli
from mrcnn import export as E
from mrcnn import utils
from mrcnn.config import Config

from test_preprocess import scene  # noqa: E402
from tiny_models import small_resnet_config_class  # noqa: E402


class ExportConfig(small_resnet_config_class()):
    NAME = "export_test"
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "square"


def cfg(**overrides):
    return type("C", (ExportConfig,), overrides)()


# ----------------------------------------------------------------------------- settings
def test_crop_mode_and_bad_mask_mode_refused():
    with pytest.raises(E.ExportError, match="IMAGE_RESIZE_MODE"):
        E.ServingModule(None, cfg(IMAGE_RESIZE_MODE="crop"))
    with pytest.raises(E.ExportError, match="masks"):
        E.ServingModule(None, cfg(), masks="medium")


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def model():
    from mrcnn.model import MaskRCNN
    keras.utils.set_random_seed(11)
    return MaskRCNN("inference", cfg(), model_dir="/tmp/mrcnn_export_test_logs")


# Same-size pairs (a SavedModel call takes one size per batch): no resize, padding
# only, and an exact 2x upscale, so the molded images are bit-identical to detect()'s.
PAIRS = [(64, 64), (48, 64), (32, 32)]


def detect_and_serve(model, call):
    results = []
    for k, (h, w) in enumerate(PAIRS):
        images = [scene(10 * k, h, w), scene(10 * k + 1, h, w)]
        ref = model.detect(images)
        out = {key: v.numpy() for key, v in call(tf.constant(np.stack(images))).items()}
        results.append((images, ref, out))
    return results


def assert_matches_detect(results, full_masks):
    total = 0
    for images, ref, out in results:
        for b, r in enumerate(ref):
            n = int(out["num_detections"][b])
            assert n == len(r["class_ids"])
            total += n
            np.testing.assert_allclose(out["boxes"][b, :n], r["rois"], atol=1e-4, rtol=0)
            np.testing.assert_array_equal(out["class_ids"][b, :n], r["class_ids"])
            np.testing.assert_allclose(out["scores"][b, :n], r["scores"], atol=1e-4, rtol=0)
            if full_masks:
                got = np.transpose(out["masks"][b, :n], (1, 2, 0))
            else:
                got = np.stack([utils.unmold_mask(out["masks"][b, i], out["boxes"][b, i],
                                                  images[b].shape) for i in range(n)],
                               axis=-1) if n else np.zeros(images[b].shape[:2] + (0,), bool)
            assert got.shape == r["masks"].shape
            for i in range(n):
                a, c = got[..., i], r["masks"][..., i]
                union = (a | c).sum()
                iou = (a & c).sum() / union if union else 1.0
                assert iou >= 0.99, (b, i, iou)
    assert total > 0, "no detections to compare"


def test_saved_model_reload_matches_detect(model, tmp_path):
    path = str(tmp_path / "serving" / "1")
    assert model.export(path, masks="full") == path
    assert os.listdir(tmp_path / "serving") == ["1"]         # no temporary left behind
    info = json.load(open(os.path.join(path, "assets.extra", "mrcnn_config.json")))
    assert info["masks"] == "full" and info["config"]["NUM_CLASSES"] == 3

    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    spec = fn.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    assert set(fn.structured_outputs) == set(E.SERVING_KEYS)
    assert_matches_detect(detect_and_serve(model, lambda x: fn(images=x)), full_masks=True)

    # An existing export is never overwritten, whatever the mask mode.
    before = sorted(os.listdir(path))
    with pytest.raises(E.ExportError, match="already exists") as err:
        model.export(path)
    assert path in str(err.value)
    assert sorted(os.listdir(path)) == before


def test_small_masks_module_matches_detect(model):
    module = E.ServingModule(model.keras_model, model.config, masks="small")
    results = detect_and_serve(model, module.serve)
    assert results[0][2]["masks"].shape[2:] == tuple(model.config.MASK_SHAPE)
    assert_matches_detect(results, full_masks=False)


def test_export_refuses_training_mode(tmp_path):
    class Fake:
        mode = "training"
    with pytest.raises(E.ExportError, match="inference"):
        E.export_saved_model(Fake(), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_cli(model, tmp_path, capsys):
    weights = str(tmp_path / "w.h5")
    model.save_weights(weights)
    lines = ["from mrcnn.config import Config", "", "", "class CliConfig(Config):"]
    # The attributes set by ExportConfig and its test bases (everything above Config).
    bases = ExportConfig.__mro__[:ExportConfig.__mro__.index(Config)]
    attrs = {}
    for klass in reversed(bases):
        attrs.update({k: v for k, v in vars(klass).items() if k.isupper()})
    lines += ["    {} = {!r}".format(k, v) for k, v in attrs.items()]
    cfg_file = tmp_path / "cli_config.py"
    cfg_file.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "cli_export")
    argv = ["--weights", weights, "--config", "{}:CliConfig".format(cfg_file), "--out", out]
    assert cli.main(["export"] + argv) == 0
    assert "SavedModel written" in capsys.readouterr().out
    loaded = tf.saved_model.load(out)
    # The exported variables hold the weight file's values, i.e. the fixture's weights.
    exported = [v.numpy() for v in loaded.model_variables]
    ours = [keras.ops.convert_to_numpy(v) for v in model.keras_model.variables]
    assert len(exported) == len(ours)
    for a, b in zip(exported, ours):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit):
        cli.main(["export"] + argv)        # --out exists now
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export"] + argv[:-1] + [out + "_2", "--masks", "medium"])
    assert "--masks" in capsys.readouterr().err and not os.path.exists(out + "_2")
    with pytest.raises(ValueError, match="module:ClassName"):
        cli.load_config_class("no_colon_here")


def test_python_m_mrcnn_export_and_python_m_mrcnn_export_module(tmp_path):
    # ``python -m mrcnn export`` is the command; ``python -m mrcnn.export`` runs the same.
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for argv in (["-m", "mrcnn", "export", "--help"], ["-m", "mrcnn.export", "--help"]):
        out = subprocess.run([sys.executable] + argv, capture_output=True, text=True,
                             cwd=root, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "python -m mrcnn export" in out.stdout and "--weights" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mrcnn"], capture_output=True, text=True,
                         cwd=root, timeout=300)
    assert out.returncode == 2 and "export" in out.stdout
