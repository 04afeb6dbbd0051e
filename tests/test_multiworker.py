"""Two worker processes under MultiWorkerMirroredStrategy (TF_CONFIG on local ports) train
a tiny model for one epoch; each calls find_last() the moment train() returns. The chief
is made slow to write its checkpoint: without the barrier after saving, the other worker
returned first and found nothing (issue 19, a race seen in one of two runs)."""
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_SAVE_S = 6.0


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def worker(logs):
    """One worker: train one epoch, then report what find_last() sees at once."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, ROOT)
    import time

    from mrcnn import model as modellib
    from mrcnn import training
    from mrcnn.distribute import is_chief
    from samples.shapes import ShapesDataset
    from tiny_models import tiny_shapes_config_class

    save = training.CheckpointCallback.on_epoch_end

    def slow_save(self, epoch, logs=None):
        time.sleep(SLOW_SAVE_S)           # the chief's disk is slow today
        return save(self, epoch, logs)

    training.CheckpointCallback.on_epoch_end = slow_save
    config = type("MW", (tiny_shapes_config_class(),), {"STEPS_PER_EPOCH": 2,
                                                         "IMAGES_PER_GPU": 1})()
    train = ShapesDataset()
    train.load_shapes(8, 64, 64, seed=0)
    train.prepare()
    model = modellib.MaskRCNN("training", config, logs)
    model.train(train, train, learning_rate=0.01, epochs=1, layers="all", verbose=0)
    try:
        found = os.path.basename(model.find_last())
    except FileNotFoundError as e:
        found = "FileNotFoundError: {}".format(e)
    print(json.dumps({"chief": is_chief(model.strategy), "found": found}), flush=True)


@pytest.mark.slow
def test_every_worker_leaves_train_after_the_chief_checkpoint(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": ["127.0.0.1:{}".format(p) for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(tmp_path / "logs")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
    assert sorted(r["chief"] for r in reports) == [False, True]
    for r in reports:
        assert r["found"] == "mask_rcnn_tiny_shapes_0001.h5", r


if __name__ == "__main__":
    worker(sys.argv[1])
