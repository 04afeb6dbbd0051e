"""Tests of mrcnn.weights: Keras-2-layout HDF5 by-name loading, atomic saving, ResNet
name conversion. Reference files are written here with raw h5py, independently of the
module's writer."""
import logging
import os
import time

import h5py
import keras
import numpy as np
import pytest

from mrcnn import weights as W


# ----------------------------------------------------------------------------- helpers
def build_model(n_classes=5):
    """conv1 -> bn_conv1 -> nested rpn_model (rpn_conv_shared, rpn_class_raw,
    rpn_bbox_pred) and a Dense head, all named like Matterport's layers."""
    f_in = keras.Input((None, None, 4), name="input_rpn_feature_map")
    shared = keras.layers.Conv2D(8, 3, padding="same", name="rpn_conv_shared")(f_in)
    cls = keras.layers.Conv2D(6, 1, name="rpn_class_raw")(shared)
    box = keras.layers.Conv2D(12, 1, name="rpn_bbox_pred")(shared)
    rpn = keras.Model(f_in, [cls, box], name="rpn_model")

    img = keras.Input((16, 16, 3), name="input_image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(img)
    x = keras.layers.BatchNormalization(name="bn_conv1")(x)
    c, b = rpn(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(c)
    logits = keras.layers.Dense(n_classes, name="mrcnn_class_logits")(pooled)
    return keras.Model(img, [logits, b], name="tiny")


def layer_values(model, name):
    """{variable name: array} of the (possibly nested) layer ``name``."""
    for layer, _ in W._leaf_layers(model):
        if layer.name == name:
            return {v.name: np.array(v.numpy()) for v in layer.weights}
    raise KeyError(name)


def random_groups(model, seed):
    """{layer: [(var_name, array)]} of random values shaped like the model's layers,
    in layer.weights order; batch-norm variances positive."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer, _ in W._leaf_layers(model):
        ws = []
        for v in layer.weights:
            a = rng.normal(size=tuple(v.shape)).astype(np.float32)
            if v.name == "moving_variance":
                a = np.abs(a) + 0.5
            ws.append((v.name, a))
        out[layer.name] = ws
    return out


def _names_attr(names, as_bytes):
    if as_bytes:
        return np.array([n.encode("utf8") for n in names])
    return list(names)


KERAS1_NAMES = {"kernel": "W", "bias": "b", "moving_mean": "running_mean",
                "moving_variance": "running_std", "gamma": "gamma", "beta": "beta"}


def write_keras2(path, groups, nested=None, model_weights=False, as_bytes=True,
                 weightless=("input_image",), keras1_names=False):
    """Write a Keras-2-layout file with raw h5py.

    groups: {layer: [(var, array)]} as top-level layer groups ('<layer>/<var>:0').
    nested: {submodel: {inner_layer: [(var, array)]}} written as one group per sub-model
        with weight names '<inner_layer>/<var>:0' (how Keras 2 stored Matterport's
        rpn_model).
    keras1_names: top-level weights named as Keras 1 did ('conv1_W:0',
        'bn_conv1_running_std:0'), as in the ImageNet ResNet-50 file Matterport uses.
    """
    nested = nested or {}
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_weights else f
        if model_weights:
            f.attrs["model_config"] = b"{}"
        names = list(weightless) + list(groups) + list(nested)
        root.attrs["layer_names"] = _names_attr(names, as_bytes)
        root.attrs["backend"] = b"tensorflow" if as_bytes else "tensorflow"
        root.attrs["keras_version"] = b"2.1.6" if as_bytes else "2.1.6"
        for name in weightless:
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([])      # what Keras 2 wrote
        for name, ws in groups.items():
            g = root.create_group(name)
            if keras1_names:
                wnames = ["{}_{}:0".format(name, KERAS1_NAMES[v]) for v, _ in ws]
            else:
                wnames = ["{}/{}:0".format(name, v) for v, _ in ws]
            g.attrs["weight_names"] = _names_attr(wnames, as_bytes)
            for wn, (_, a) in zip(wnames, ws):
                g.create_dataset(wn, data=a)
        for sub, inner in nested.items():
            g = root.create_group(sub)
            wnames, arrays = [], []
            for lname, ws in inner.items():
                for v, a in ws:
                    wnames.append("{}/{}:0".format(lname, v))
                    arrays.append(a)
            g.attrs["weight_names"] = _names_attr(wnames, as_bytes)
            for wn, a in zip(wnames, arrays):
                g.create_dataset(wn, data=a)


RPN_LAYERS = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")


def split_rpn(groups):
    """Move the rpn layers of ``groups`` into a Keras-2 'rpn_model' group."""
    flat = {k: v for k, v in groups.items() if k not in RPN_LAYERS}
    return flat, {"rpn_model": {k: groups[k] for k in RPN_LAYERS}}


def assert_layer_equals(model, name, ws):
    got = layer_values(model, name)
    assert set(got) == {v for v, _ in ws}
    for v, a in ws:
        np.testing.assert_array_equal(got[v], a, err_msg="{}/{}".format(name, v))


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("model_weights", [False, True])
@pytest.mark.parametrize("as_bytes", [True, False])
def test_load_by_name_values_flat_and_nested(tmp_path, model_weights, as_bytes):
    model = build_model()
    groups = random_groups(model, seed=1)
    flat, nested = split_rpn(groups)
    path = str(tmp_path / "w.h5")
    write_keras2(path, flat, nested, model_weights=model_weights, as_bytes=as_bytes)

    report = W.load_weights_by_name(model, path)

    assert sorted(report.loaded) == sorted(groups)
    assert report.skipped_not_in_model == []
    assert report.skipped_shape_mismatch == []
    assert report.skipped_excluded == []
    assert report.model_layers_not_in_file == []
    for name, ws in groups.items():
        assert_layer_equals(model, name, ws)
    # The nested layer really changed the sub-model's computation.
    rpn = model.get_layer("rpn_model")
    np.testing.assert_array_equal(rpn.get_layer("rpn_conv_shared").kernel.numpy(),
                                  dict(groups["rpn_conv_shared"])["kernel"])


def test_batchnorm_mapped_by_name_not_position(tmp_path):
    model = build_model()
    groups = random_groups(model, seed=2)
    bn = dict(groups["bn_conv1"])
    # Stored in a scrambled order: a positional loader would put moving_variance in gamma.
    groups["bn_conv1"] = [(k, bn[k]) for k in ("moving_variance", "beta", "gamma",
                                               "moving_mean")]
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)
    W.load_weights_by_name(model, path)
    got = layer_values(model, "bn_conv1")
    for k in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(got[k], bn[k])
    layer = model.get_layer("bn_conv1")
    np.testing.assert_array_equal(layer.gamma.numpy(), bn["gamma"])
    np.testing.assert_array_equal(layer.moving_variance.numpy(), bn["moving_variance"])


def test_keras1_weight_names_load(tmp_path):
    # Matterport's ImageNet file (IMAGENET_RESNET50_URL) names weights 'conv1_W:0',
    # 'bn_conv1_gamma:0', ..., 'bn_conv1_running_std:0' (the variance).
    model = build_model()
    groups = {k: v for k, v in random_groups(model, seed=12).items()
              if k in ("conv1", "bn_conv1")}
    bn = dict(groups["bn_conv1"])
    groups["bn_conv1"] = [(k, bn[k]) for k in ("moving_mean", "moving_variance", "gamma",
                                               "beta")]
    path = str(tmp_path / "k1.h5")
    write_keras2(path, groups, keras1_names=True)
    with h5py.File(path, "r") as f:
        assert "bn_conv1_running_std:0" in f["bn_conv1"]
    report = W.load_weights_by_name(model, path)
    assert sorted(report.loaded) == ["bn_conv1", "conv1"]
    layer = model.get_layer("bn_conv1")
    np.testing.assert_array_equal(layer.moving_variance.numpy(), bn["moving_variance"])
    np.testing.assert_array_equal(layer.gamma.numpy(), bn["gamma"])
    np.testing.assert_array_equal(model.get_layer("conv1").bias.numpy(),
                                  dict(groups["conv1"])["bias"])
    assert [k for k, _ in W.read_weight_groups(path)["bn_conv1"]] == [
        "moving_mean", "moving_variance", "gamma", "beta"]


def test_unknown_weight_names_fall_back_to_keras2_position(tmp_path):
    model = build_model()
    groups = random_groups(model, seed=13)
    path = str(tmp_path / "w.h5")
    write_keras2(path, {"conv1": groups["conv1"]})
    with h5py.File(path, "a") as f:     # rename the weights to something unrecognisable
        f["conv1"].attrs["weight_names"] = np.array([b"conv1/w0:0", b"conv1/w1:0"])
        f["conv1"]["conv1"].move("kernel:0", "w0:0")
        f["conv1"]["conv1"].move("bias:0", "w1:0")
    W.load_weights_by_name(model, path)
    assert_layer_equals(model, "conv1", groups["conv1"])


def test_missing_and_extra_layers_reported(tmp_path):
    model = build_model()
    before = layer_values(model, "mrcnn_class_logits")
    groups = random_groups(model, seed=3)
    del groups["mrcnn_class_logits"]
    groups["res5z_branch2a"] = [("kernel", np.ones((1, 1, 2, 2), np.float32)),
                                ("bias", np.zeros((2,), np.float32))]
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)

    report = W.load_weights_by_name(model, path)

    assert report.skipped_not_in_model == ["res5z_branch2a"]
    assert report.model_layers_not_in_file == ["mrcnn_class_logits"]
    assert "res5z_branch2a" not in report.loaded
    for k, v in layer_values(model, "mrcnn_class_logits").items():
        np.testing.assert_array_equal(v, before[k])
    assert_layer_equals(model, "conv1", groups["conv1"])


def test_shape_mismatch_skips_whole_layer_and_records_shapes(tmp_path):
    model = build_model(n_classes=5)
    before = layer_values(model, "mrcnn_class_logits")
    groups = random_groups(model, seed=4)
    # Kernel shape wrong, bias shape right: the bias must not load either.
    groups["mrcnn_class_logits"] = [("kernel", np.ones((9, 5), np.float32)),
                                    ("bias", np.full((5,), 7.0, np.float32))]
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)

    report = W.load_weights_by_name(model, path)

    assert report.skipped_shape_mismatch == [
        ("mrcnn_class_logits", "mrcnn_class_logits/kernel:0", (9, 5), (6, 5))]
    assert "mrcnn_class_logits" not in report.loaded
    after = layer_values(model, "mrcnn_class_logits")
    np.testing.assert_array_equal(after["kernel"], before["kernel"])
    np.testing.assert_array_equal(after["bias"], before["bias"])
    text = report.summary()
    assert "(9, 5)" in text and "(6, 5)" in text and str(report) == text
    assert_layer_equals(model, "rpn_conv_shared", groups["rpn_conv_shared"])


def test_shape_mismatch_is_logged_even_when_quiet(tmp_path, caplog):
    model = build_model(n_classes=5)
    groups = random_groups(model, seed=4)
    groups["mrcnn_class_logits"] = [("kernel", np.ones((9, 5), np.float32)),
                                    ("bias", np.full((5,), 7.0, np.float32))]
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)
    with caplog.at_level(logging.WARNING, logger="mrcnn.weights"):
        W.load_weights_by_name(model, path, verbose=0)
    assert "mrcnn_class_logits" in caplog.text and "w.h5" in caplog.text


def test_verbose_2_lists_every_loaded_layer(tmp_path, capsys):
    model = build_model()
    groups = random_groups(model, seed=4)
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)
    W.load_weights_by_name(model, path, verbose=2)
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines()
              if line.strip().startswith("loaded ")]
    assert sorted(listed) == sorted(groups)


def test_weight_count_mismatch_is_incompatible(tmp_path):
    model = build_model()
    groups = random_groups(model, seed=5)
    groups["conv1"] = [("kernel", groups["conv1"][0][1])]     # a conv without bias
    before = layer_values(model, "conv1")
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)
    report = W.load_weights_by_name(model, path)
    assert [n for n, _ in report.skipped_incompatible] == ["conv1"]
    np.testing.assert_array_equal(layer_values(model, "conv1")["kernel"], before["kernel"])


def test_exclude_by_name_regex_and_submodel(tmp_path):
    groups = random_groups(build_model(), seed=6)
    flat, nested = split_rpn(groups)
    path = str(tmp_path / "w.h5")
    write_keras2(path, flat, nested)

    # By name (Matterport's balloon list; names absent from the model are harmless).
    model = build_model()
    before = layer_values(model, "mrcnn_class_logits")
    report = W.load_weights_by_name(model, path, exclude=[
        "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
    assert report.skipped_excluded == ["mrcnn_class_logits"]
    np.testing.assert_array_equal(layer_values(model, "mrcnn_class_logits")["kernel"],
                                  before["kernel"])
    assert_layer_equals(model, "conv1", groups["conv1"])

    # By regex, full match.
    model = build_model()
    before = layer_values(model, "rpn_class_raw")
    report = W.load_weights_by_name(model, path, exclude=[r"rpn_.*"])
    assert sorted(report.skipped_excluded) == sorted(RPN_LAYERS)
    np.testing.assert_array_equal(layer_values(model, "rpn_class_raw")["kernel"],
                                  before["kernel"])
    assert_layer_equals(model, "bn_conv1", groups["bn_conv1"])

    # A partial match does not exclude ("rpn" is not the full name).
    report = W.load_weights_by_name(build_model(), path, exclude=["rpn", "conv"])
    assert report.skipped_excluded == []

    # The Keras-2 sub-model group name excludes its inner layers.
    report = W.load_weights_by_name(build_model(), path, exclude="rpn_model")
    assert sorted(report.skipped_excluded) == sorted(RPN_LAYERS)


def test_file_for_another_model_raises(tmp_path):
    model = build_model()
    before = layer_values(model, "conv1")
    other = {"conv1_conv": [("kernel", np.ones((3, 3, 3, 4), np.float32))],
             "fc1000": [("kernel", np.ones((4, 10), np.float32))]}
    path = str(tmp_path / "other.h5")
    write_keras2(path, other)
    with pytest.raises(W.WeightsFileError) as err:
        W.load_weights_by_name(model, path)
    msg = str(err.value)
    assert path in msg and "another backbone" in msg
    assert err.value.report.loaded == []
    assert sorted(err.value.report.skipped_not_in_model) == ["conv1_conv", "fc1000"]
    np.testing.assert_array_equal(layer_values(model, "conv1")["kernel"], before["kernel"])


def test_every_match_mismatching_raises(tmp_path):
    # Same names, other shapes (e.g. the file of another backbone width): nothing loads.
    big = build_model(n_classes=5)
    groups = {k: [(v, np.concatenate([a, a], axis=-1)) for v, a in ws]
              for k, ws in random_groups(big, seed=7).items()}
    path = str(tmp_path / "wide.h5")
    write_keras2(path, groups)
    with pytest.raises(W.WeightsFileError, match="another backbone"):
        W.load_weights_by_name(build_model(), path)


def test_errors_name_the_file(tmp_path):
    model = build_model()
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(FileNotFoundError) as err:
        W.load_weights_by_name(model, missing)
    assert missing in str(err.value)

    text = tmp_path / "notes.h5"
    text.write_text("not an hdf5 file")
    with pytest.raises(W.WeightsFileError) as err:
        W.load_weights_by_name(model, str(text))
    assert str(text) in str(err.value) and "not an HDF5" in str(err.value)

    bare = str(tmp_path / "bare.h5")
    with h5py.File(bare, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(W.WeightsFileError) as err:
        W.load_weights_by_name(model, bare)
    assert bare in str(err.value) and "layer_names" in str(err.value)

    # A truncated file (HDF5 signature intact) names the file too.
    good = tmp_path / "good.h5"
    W.save_weights_h5(model, str(good))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(W.WeightsFileError) as err:
        W.load_weights_by_name(model, str(cut))
    assert str(cut) in str(err.value)

    # A Keras 3 structure-keyed file gets a hint.
    k3 = str(tmp_path / "model.weights.h5")
    model.save_weights(k3)
    with pytest.raises(W.WeightsFileError, match="Keras 3") as err:
        W.load_weights_by_name(model, k3)
    assert k3 in str(err.value)


def test_chunked_layer_names_and_verbose(tmp_path, capsys):
    model = build_model()
    groups = random_groups(model, seed=8)
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)
    with h5py.File(path, "a") as f:     # re-store layer_names in two chunks
        names = list(f.attrs["layer_names"])
        del f.attrs["layer_names"]
        f.attrs["layer_names0"] = np.array(names[:2])
        f.attrs["layer_names1"] = np.array(names[2:])
    report = W.load_weights_by_name(model, path, verbose=1)
    assert sorted(report.loaded) == sorted(groups)
    out = capsys.readouterr().out
    assert "Loaded {} layer(s)".format(len(groups)) in out and path in out


def test_load_accepts_wrapper_with_keras_model(tmp_path):
    model = build_model()
    groups = random_groups(model, seed=9)
    path = str(tmp_path / "w.h5")
    write_keras2(path, groups)

    class Wrapper:
        keras_model = model

    report = W.load_weights_by_name(Wrapper(), path)
    assert len(report.loaded) == len(groups)
    assert_layer_equals(model, "bn_conv1", groups["bn_conv1"])


# ----------------------------------------------------------------------------- saving
def test_save_round_trip_and_layout(tmp_path):
    src = build_model()
    groups = random_groups(src, seed=10)
    for layer, _ in W._leaf_layers(src):
        for v, (_, a) in zip(layer.weights, groups[layer.name]):
            v.assign(a)
    path = str(tmp_path / "saved.h5")
    assert W.save_weights_h5(src, path) == path

    # Layout, read back with raw h5py.
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert sorted(names) == sorted(groups)
        assert "rpn_conv_shared" in names and "rpn_model" not in names  # nested -> top level
        assert f.attrs["backend"] in (b"tensorflow", "tensorflow")
        assert "keras_version" in f.attrs
        bn_names = [n.decode() for n in f["bn_conv1"].attrs["weight_names"]]
        assert bn_names == ["bn_conv1/gamma:0", "bn_conv1/beta:0", "bn_conv1/moving_mean:0",
                            "bn_conv1/moving_variance:0"]
        np.testing.assert_array_equal(f["rpn_conv_shared"]["rpn_conv_shared/kernel:0"][()],
                                      dict(groups["rpn_conv_shared"])["kernel"])

    dst = build_model()
    report = W.load_weights_by_name(dst, path)
    assert sorted(report.loaded) == sorted(groups)
    assert report.model_layers_not_in_file == [] and report.skipped_not_in_model == []
    for a, b in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    for ya, yb in zip(src(x), dst(x)):
        np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))


def test_save_chunks_long_name_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_HDF5_ATTR_LIMIT", 40)     # force chunking of layer_names
    src = build_model()
    path = str(tmp_path / "chunked.h5")
    W.save_weights_h5(src, path)
    with h5py.File(path, "r") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
    monkeypatch.undo()
    dst = build_model()
    report = W.load_weights_by_name(dst, path)
    assert len(report.loaded) == 6
    for a, b in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _fail_on_second_group(monkeypatch):
    real = W._write_layer_group
    calls = []

    def flaky(root, name, weights):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full (simulated)")
        return real(root, name, weights)

    monkeypatch.setattr(W, "_write_layer_group", flaky)


def test_save_is_atomic_new_file(tmp_path, monkeypatch):
    _fail_on_second_group(monkeypatch)
    path = tmp_path / "new.h5"
    with pytest.raises(RuntimeError, match="simulated"):
        W.save_weights_h5(build_model(), str(path))
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_save_is_atomic_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "old.h5"
    W.save_weights_h5(build_model(), str(path))
    old_bytes = path.read_bytes()
    _fail_on_second_group(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        W.save_weights_h5(build_model(), str(path))
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["old.h5"]


def test_saved_file_has_ordinary_permissions(tmp_path):
    # The temporary file is created 0600; the final file must not stay private.
    path = tmp_path / "perm.h5"
    W.save_weights_h5(build_model(), str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
    os.chmod(path, 0o640)                       # a replaced file keeps its mode
    W.save_weights_h5(build_model(), str(path))
    assert (path.stat().st_mode & 0o777) == 0o640


def test_save_rejects_duplicate_names_across_nesting(tmp_path):
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(3, name="fc")(inner_in), name="sub")
    x_in = keras.Input((4,))
    out = keras.layers.Dense(2, name="fc")(inner(x_in))
    with pytest.raises(ValueError, match="'fc'"):
        W.save_weights_h5(keras.Model(x_in, out), str(tmp_path / "dup.h5"))
    assert os.listdir(tmp_path) == []


def test_load_time_of_a_large_file(tmp_path):
    # ~8M parameters (32 MB); a 64M-parameter Matterport file scales linearly. Loose bound:
    # the point is that loading does not do per-element Python work.
    n = 1000
    inp = keras.Input((n,))
    x = inp
    for i in range(8):
        x = keras.layers.Dense(n, name="fc{}".format(i))(x)
    model = keras.Model(inp, x)
    path = str(tmp_path / "big.h5")
    W.save_weights_h5(model, path)
    dst = keras.Model(inp, x)
    t = time.perf_counter()
    report = W.load_weights_by_name(dst, path)
    elapsed = time.perf_counter() - t
    assert len(report.loaded) == 8
    assert elapsed < 20.0, elapsed


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("src, dst", [
    ("conv1_conv", "conv1"), ("conv1_bn", "bn_conv1"),
    ("conv2_block1_0_conv", "res2a_branch1"), ("conv2_block1_0_bn", "bn2a_branch1"),
    ("conv2_block1_1_conv", "res2a_branch2a"), ("conv2_block1_2_bn", "bn2a_branch2b"),
    ("conv3_block4_3_conv", "res3d_branch2c"), ("conv4_block6_3_bn", "bn4f_branch2c"),
    ("conv4_block23_1_conv", "res4w_branch2a"),          # ResNet101 stage 4 ends at 'w'
    ("conv5_block3_2_conv", "res5c_branch2b"), ("predictions", None),
])
def test_resnet_name_mapping(src, dst):
    assert W.keras_applications_resnet_to_matterport_name(src) == dst


@pytest.mark.parametrize("bad", ["post_bn", "conv2_block1_preact_bn", "dense_1",
                                 "conv4_block27_1_conv"])
def test_resnet_name_mapping_rejects(bad):
    with pytest.raises(ValueError, match=bad):
        W.keras_applications_resnet_to_matterport_name(bad)


def _mp_bn(name):
    return keras.layers.BatchNormalization(epsilon=W.MATTERPORT_BN_EPSILON, name=name)


def _mp_block(x, stage, block, filters, stride, shortcut_conv):
    """A Matterport-named bottleneck (same structure as keras.applications' block1)."""
    f1, f2, f3 = filters
    base = "{}{}_branch".format(stage, block)
    y = keras.layers.Conv2D(f1, 1, strides=stride, name="res" + base + "2a")(x)
    y = keras.layers.Activation("relu")(_mp_bn("bn" + base + "2a")(y))
    y = keras.layers.Conv2D(f2, 3, padding="same", name="res" + base + "2b")(y)
    y = keras.layers.Activation("relu")(_mp_bn("bn" + base + "2b")(y))
    y = keras.layers.Conv2D(f3, 1, name="res" + base + "2c")(y)
    y = _mp_bn("bn" + base + "2c")(y)
    if shortcut_conv:
        s = keras.layers.Conv2D(f3, 1, strides=stride, name="res" + base + "1")(x)
        x = _mp_bn("bn" + base + "1")(s)
    return keras.layers.Activation("relu")(keras.layers.Add()([y, x]))


def _mp_stem_res2ab(size=64):
    """Matterport-named stem + res2a + res2b (keras.applications-style 1-pixel pool pad,
    so outputs compare exactly with the source model)."""
    inp = keras.Input((size, size, 3))
    x = keras.layers.ZeroPadding2D(3)(inp)
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1")(x)
    x = keras.layers.Activation("relu")(_mp_bn("bn_conv1")(x))
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.MaxPooling2D(3, strides=2)(x)
    x = _mp_block(x, 2, "a", (64, 64, 256), 1, True)
    x = _mp_block(x, 2, "b", (64, 64, 256), 1, False)
    return keras.Model(inp, x)


@pytest.fixture(scope="module")
def apps_resnet50():
    """Randomly initialised keras.applications ResNet50 (no download) with random
    batch-norm statistics, so epsilon handling and BN order matter."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3),
                                        include_top=False)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype(np.float32))
            # Small variances make the 1e-3 vs 1.001e-5 epsilon difference visible.
            layer.moving_variance.assign(rng.uniform(1e-4, 2.0, n).astype(np.float32))
    return model


def test_convert_keras_applications_resnet50_and_load(tmp_path, apps_resnet50):
    src = apps_resnet50
    path = str(tmp_path / "r50_matterport.h5")
    mapping = W.convert_keras_applications_resnet(src, path)
    assert len(mapping) == 106 and mapping["conv2_block1_0_conv"] == "res2a_branch1"

    dst = _mp_stem_res2ab()
    report = W.load_weights_by_name(dst, path)
    assert report.model_layers_not_in_file == []
    assert len(report.loaded) == 2 + 8 + 6
    assert "res5c_branch2c" in report.skipped_not_in_model
    assert len(report.skipped_not_in_model) == 106 - 16

    # Kernels copied unchanged; gamma rescaled for the epsilon change.
    np.testing.assert_array_equal(dst.get_layer("res2a_branch1").kernel.numpy(),
                                  src.get_layer("conv2_block1_0_conv").kernel.numpy())
    s_bn, d_bn = src.get_layer("conv2_block1_2_bn"), dst.get_layer("bn2a_branch2b")
    var = s_bn.moving_variance.numpy().astype(np.float64)
    expect = s_bn.gamma.numpy() * np.sqrt(var + 1e-3) / np.sqrt(var + 1.001e-5)
    np.testing.assert_allclose(d_bn.gamma.numpy(), expect, rtol=1e-6)
    np.testing.assert_array_equal(d_bn.moving_variance.numpy(), s_bn.moving_variance.numpy())

    # Same function: Matterport-named net (eps 1e-3) == keras.applications (eps 1.001e-5).
    ref = keras.Model(src.input, src.get_layer("conv2_block2_out").output)
    x = np.random.default_rng(1).normal(0, 50, size=(1, 64, 64, 3)).astype(np.float32)
    want = np.asarray(ref(x, training=False))
    got = np.asarray(dst(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    # Without the gamma correction the outputs differ measurably (the test has teeth).
    path2 = str(tmp_path / "r50_raw_gamma.h5")
    W.convert_keras_applications_resnet(src, path2, dst_bn_epsilon=None)
    W.load_weights_by_name(dst, path2)
    raw = np.asarray(dst(x, training=False))
    assert np.abs(raw - want).max() > 1e-2 * np.abs(want).max()


def test_convert_from_keras2_file(tmp_path, apps_resnet50):
    # keras.applications .h5 files are Keras-2 layout: write one with raw h5py.
    keep = ("conv1_conv", "conv1_bn", "conv4_block6_3_bn", "conv5_block3_2_conv")
    groups = {name: [(v.name, np.asarray(v.numpy()))
                     for v in apps_resnet50.get_layer(name).weights] for name in keep}
    src_path = str(tmp_path / "apps.h5")
    write_keras2(src_path, groups, as_bytes=True)
    dst_path = str(tmp_path / "mp.h5")
    mapping = W.convert_keras_applications_resnet(src_path, dst_path, dst_bn_epsilon=None)
    assert mapping == {"conv1_conv": "conv1", "conv1_bn": "bn_conv1",
                       "conv4_block6_3_bn": "bn4f_branch2c",
                       "conv5_block3_2_conv": "res5c_branch2b"}
    read = W.read_weight_groups(dst_path)
    assert sorted(read) == sorted(mapping.values())
    assert [n for n, _ in read["bn4f_branch2c"]] == ["gamma", "beta", "moving_mean",
                                                    "moving_variance"]
    np.testing.assert_array_equal(dict(read["bn4f_branch2c"])["moving_mean"],
                                  apps_resnet50.get_layer("conv4_block6_3_bn")
                                  .moving_mean.numpy())
    np.testing.assert_array_equal(dict(read["res5c_branch2b"])["kernel"],
                                  apps_resnet50.get_layer("conv5_block3_2_conv")
                                  .kernel.numpy())


def test_convert_rejects_non_resnet(tmp_path):
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, name="dense")(inp))
    with pytest.raises(ValueError, match="conv1_conv"):
        W.convert_keras_applications_resnet(model, str(tmp_path / "x.h5"))
    assert os.listdir(tmp_path) == []


def test_converted_resnet50_loads_into_backbone(tmp_path, apps_resnet50):
    backbone = pytest.importorskip("mrcnn.backbone")
    if not hasattr(backbone, "resnet_graph"):
        pytest.skip("mrcnn.backbone.resnet_graph not written yet")
    path = str(tmp_path / "r50.h5")
    W.convert_keras_applications_resnet(apps_resnet50, path)
    inp = keras.Input((64, 64, 3))
    outs = backbone.resnet_graph(inp, "resnet50", stage5=True, train_bn=False)
    model = keras.Model(inp, outs)
    report = W.load_weights_by_name(model, path)
    assert report.model_layers_not_in_file == []
    assert report.skipped_not_in_model == [] and report.skipped_shape_mismatch == []
    assert len(report.loaded) == 106


def test_imagenet_weights_path_rejects_unknown_backbone():
    assert W.IMAGENET_RESNET50_URL.endswith("resnet50_weights_tf_dim_ordering_tf_kernels_"
                                            "notop.h5")
    with pytest.raises(ValueError, match="resnext101"):
        W.imagenet_weights_path("resnext101")
