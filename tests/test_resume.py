"""Crash safety: a training process killed with SIGKILL in the middle of an epoch leaves a
complete last checkpoint, and a new process resumes from it with find_last() /
load_weights(), the epoch counter and run directory continuing; a process killed while
writing a checkpoint leaves the previous file intact.

The training subprocess uses a tiny callable backbone (64 px, 3 steps per epoch) and a
callback that sleeps after each step of epoch 2, so the kill lands mid-epoch. Figures
(wall times, file sizes) are printed with pytest -s.
"""

import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.training import CheckpointCallback
from mrcnn.weights import read_weight_groups, save_weights_h5
from samples.shapes import ShapesConfig, ShapesDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
# The machine is shared: importing TensorFlow plus the first trace can take minutes.
DEADLINE = 900


from tiny_models import tiny_shapes_config_class  # noqa: E402


class ResumeConfig(tiny_shapes_config_class()):
    NAME = "resume"


def make_data():
    train = ShapesDataset()
    train.load_shapes(6, 64, 64, seed=11)
    train.prepare()
    val = ShapesDataset()
    val.load_shapes(2, 64, 64, seed=12)
    val.prepare()
    return train, val


def leaf_layers(keras_model):
    """{name: layer} of every weight-bearing layer, nested models expanded."""
    out = {}
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            out.update(leaf_layers(layer))
        elif layer.weights:
            out[layer.name] = layer
    return out


TRAIN_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import keras
from mrcnn import model as modellib
from test_resume import ResumeConfig, make_data

progress = open({progress!r}, "a", buffering=1)


class Progress(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        progress.write("epoch {{}} batch {{}} done\\n".format(self.epoch, batch))
        if self.epoch >= 1:
            time.sleep(5)   # the test kills the process during this sleep


train, val = make_data()
model = modellib.MaskRCNN("training", ResumeConfig(), {logs!r})
progress.write("log_dir {{}}\\n".format(model.log_dir))
model.train(train, val, learning_rate=0.01, epochs=3, layers="heads",
            custom_callbacks=[Progress()], verbose=0)
progress.write("finished\\n")
"""


def wait_for(predicate, proc, what, deadline):
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError("training process exited ({}) before {}:\n{}".format(
                proc.returncode, what, proc.stderr.read()[-3000:]))
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.2)


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A training subprocess SIGKILLed after step 1 of epoch 2 (checkpoint 0001 done)."""
    base = tmp_path_factory.mktemp("resume")
    logs, progress = str(base / "logs"), str(base / "progress.txt")
    os.makedirs(logs)
    script = TRAIN_SCRIPT.format(root=ROOT, tests=TESTS, progress=progress, logs=logs)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = t0 + DEADLINE
    try:
        wait_for(lambda: "epoch 1 batch 0 done" in read_lines(progress), proc,
                 "step 1 of epoch 2", deadline)
        killed_at = time.time() - t0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    lines = read_lines(progress)
    log_dir = [l.split(" ", 1)[1] for l in lines if l.startswith("log_dir ")][0]
    print("\n[resume] killed after {:.0f} s, progress: {}".format(killed_at, lines[1:]))
    return dict(logs=logs, log_dir=log_dir, lines=lines, returncode=proc.returncode)


def test_kill_lands_mid_epoch_two(killed_run):
    assert killed_run["returncode"] == -signal.SIGKILL
    lines = killed_run["lines"]
    assert "finished" not in lines
    done = [l for l in lines if l.endswith(" done")]
    # Epoch 1 complete (3 steps), then exactly one step of epoch 2.
    assert done == ["epoch 0 batch 0 done", "epoch 0 batch 1 done", "epoch 0 batch 2 done",
                    "epoch 1 batch 0 done"], lines


def test_checkpoint_after_kill_is_complete(killed_run):
    """Only checkpoint 0001 exists, under its final name, no temporary file is left, and
    it is a complete HDF5 file holding every weight of the model, all finite."""
    log_dir = killed_run["log_dir"]
    names = sorted(os.listdir(log_dir))
    assert [n for n in names if "mask_rcnn" in n] == ["mask_rcnn_resume_0001.h5"], names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    path = os.path.join(log_dir, "mask_rcnn_resume_0001.h5")
    assert h5py.is_hdf5(path)
    groups = read_weight_groups(path)   # reads every dataset: a truncated file fails here
    assert {"tiny_c1", "fpn_c5p5", "rpn_conv_shared", "mrcnn_mask"} <= set(groups)
    for name, weights in groups.items():
        for wname, value in weights:
            assert value.size and np.all(np.isfinite(value)), (name, wname)
    print("[resume] checkpoint 0001: {} layers, {} bytes".format(len(groups),
                                                               os.path.getsize(path)))


@pytest.fixture(scope="module")
def resumed(killed_run):
    train, val = make_data()
    model = modellib.MaskRCNN("training", ResumeConfig(), killed_run["logs"])
    last = model.find_last()
    model.load_weights(last, by_name=True, verbose=0)
    state = dict(model=model, last=last, epoch=model.epoch, log_dir=model.log_dir,
                 loaded={n: [np.array(w) for w in l.get_weights()]
                         for n, l in leaf_layers(model.keras_model).items()})
    t0 = time.time()
    model.train(train, val, learning_rate=0.01, epochs=2, layers="heads", verbose=0)
    state.update(train_seconds=time.time() - t0, final=model.find_last(),
                 final_epoch=model.epoch)
    print("\n[resume] resumed epoch 2 in {:.0f} s".format(state["train_seconds"]))
    return state


def test_resume_continues_epoch_and_run_directory(killed_run, resumed):
    path1 = os.path.join(killed_run["log_dir"], "mask_rcnn_resume_0001.h5")
    assert resumed["last"] == path1
    assert resumed["epoch"] == 1
    assert resumed["log_dir"] == killed_run["log_dir"]
    path2 = os.path.join(killed_run["log_dir"], "mask_rcnn_resume_0002.h5")
    assert resumed["final"] == path2 and os.path.isfile(path2)
    assert resumed["final_epoch"] == 2
    names = sorted(n for n in os.listdir(killed_run["log_dir"]) if "mask_rcnn" in n)
    assert names == ["mask_rcnn_resume_0001.h5", "mask_rcnn_resume_0002.h5"]
    # Only one run directory: the resumed run did not start a new one.
    runs = [d for d in os.listdir(killed_run["logs"]) if d.startswith("resume")]
    assert runs == [os.path.basename(killed_run["log_dir"])]


def test_resumed_weights_equal_checkpoint(killed_run, resumed):
    """Every layer got exactly the checkpoint's arrays; then epoch 2 trained the heads
    only: the frozen backbone is unchanged in 0002, the heads moved."""
    groups = read_weight_groups(resumed["last"])
    loaded = resumed["loaded"]
    assert set(loaded) == set(groups)
    for name, arrays in loaded.items():
        assert len(arrays) == len(groups[name]), name
        for value, (_, stored) in zip(arrays, groups[name]):
            np.testing.assert_array_equal(value, stored, err_msg=name)
    after = read_weight_groups(resumed["final"])
    np.testing.assert_array_equal(after["tiny_c1"][0][1], groups["tiny_c1"][0][1])
    assert not np.array_equal(after["mrcnn_mask"][0][1], groups["mrcnn_mask"][0][1])


WRITE_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import numpy as np
import keras
from mrcnn import weights

net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="dense_a"),
                        keras.layers.Dense(3, name="dense_b")])
for v in net.weights:
    v.assign(np.ones(v.shape, "float32"))
weights.save_weights_h5(net, {path!r})
print("saved version 1", flush=True)
for v in net.weights:
    v.assign(np.full(v.shape, 2.0, "float32"))
write_group = weights._write_layer_group


def slow_write(*args, **kwargs):
    write_group(*args, **kwargs)
    print("group written", flush=True)
    time.sleep(30)   # killed here, half-way through the new file


weights._write_layer_group = slow_write
weights.save_weights_h5(net, {path!r})
print("saved version 2", flush=True)
"""


def test_kill_during_checkpoint_write_keeps_previous_file(tmp_path):
    """SIGKILL while save_weights_h5 overwrites a checkpoint: the file under the final
    name is still the complete previous version; only a hidden temporary file is left,
    which find_last ignores and the next training run's checkpoint callback removes."""
    run = tmp_path / "shapes20240101T0000"
    run.mkdir()
    path = str(run / "mask_rcnn_shapes_0003.h5")
    proc = subprocess.Popen([sys.executable, "-c", WRITE_SCRIPT.format(root=ROOT, path=path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        lines = []
        deadline = time.time() + DEADLINE
        while "group written" not in lines:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("writer exited: " + proc.stderr.read()[-2000:])
            lines.append(line.strip())
            assert time.time() < deadline
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lines == ["saved version 1", "group written"]
    names = sorted(os.listdir(run))
    temps = [n for n in names if n != "mask_rcnn_shapes_0003.h5"]
    assert len(temps) == 1 and temps[0].startswith(".mask_rcnn_shapes_0003.h5.") \
        and temps[0].endswith(".tmp"), names
    groups = read_weight_groups(path)
    assert sorted(groups) == ["dense_a", "dense_b"]
    for name, weights in groups.items():
        for _, value in weights:
            np.testing.assert_array_equal(value, np.ones_like(value))   # version 1

    class Finder(object):
        config = ShapesConfig()
        model_dir = str(tmp_path)

    assert modellib.MaskRCNN.find_last(Finder()) == path
    # The next run's checkpoint callback clears the leftover before training.
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="dense_a")])
    cb = CheckpointCallback(net, str(run / "mask_rcnn_shapes_{epoch:04d}.h5"))
    with pytest.warns(UserWarning, match="unfinished checkpoint"):
        cb.on_train_begin()
    assert sorted(os.listdir(run)) == ["mask_rcnn_shapes_0003.h5"]
    save_weights_h5(net, str(run / "mask_rcnn_shapes_0004.h5"))
    assert modellib.MaskRCNN.find_last(Finder()) == str(run / "mask_rcnn_shapes_0004.h5")
