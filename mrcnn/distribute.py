"""Devices and processes: the tf.distribute strategy a MaskRCNN runs under, the per-worker
input pipelines of multi-worker training, which process writes logs and checkpoints, a
barrier, and Keras's global precision policy.

MaskRCNN picks ``default_strategy`` when it is given none; docs/distributed.md describes
the setups (one GPU, MirroredStrategy over GPU_COUNT GPUs, MultiWorkerMirroredStrategy
from TF_CONFIG).
"""

import json
import logging
import os

import keras
import tensorflow as tf

logger = logging.getLogger("mrcnn")


def tf_config_tasks():
    """Number of chief + worker tasks in the TF_CONFIG environment variable (0 if unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as err:
        raise ValueError("TF_CONFIG is not a JSON object with a 'cluster': {}".format(err))
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def num_workers(strategy):
    """Worker processes taking part in ``strategy`` (1 for single-process strategies)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(kind, [])) for kind in ("chief", "worker")))


def is_chief(strategy):
    """True in the process that writes logs and checkpoints: the 'chief' task, or worker
    0 when the cluster has no chief, or any single-process run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or num_workers(strategy) == 1:
        return True
    spec = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, resolver.task_id
    if "chief" in spec:
        return task_type == "chief"
    return task_type == "worker" and int(task_id or 0) == 0


def barrier(strategy):
    """Block until every replica of ``strategy`` gets here (one scalar all-reduce)."""
    ones = strategy.run(tf.function(lambda: tf.constant(1.0)))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None))


def per_worker_dataset(strategy, data, dataset, config, global_batch, kwargs):
    """strategy.distribute_datasets_from_function over data.build_dataset pipelines with
    per-replica batches; the returned object carries a ``skip_counter`` like
    build_dataset's result (one counter for this worker's pipeline)."""
    counter = data.SkipCounter()

    def fn(context):
        return data.build_dataset(
            dataset, config, batch_size=context.get_per_replica_batch_size(global_batch),
            skip_counter=counter, **kwargs)

    distributed = strategy.distribute_datasets_from_function(fn)
    try:
        distributed.skip_counter = counter
    except AttributeError:
        pass
    return distributed


_MULTI_WORKER_STRATEGY = []


def default_strategy(config, mode="training"):
    """The strategy used when MaskRCNN gets none.

    Training: TF_CONFIG naming a cluster of several tasks -> MultiWorkerMirroredStrategy
    (all local GPUs, or the CPU, of each worker; one instance per process, reused);
    GPU_COUNT > 1 -> MirroredStrategy over the first GPU_COUNT GPUs; else the default
    (no-op) strategy. Inference: the default strategy (detect() runs on one device; a
    worker that evaluates after multi-worker training must not join a new collective).
    """
    if mode != "training":
        return tf.distribute.get_strategy()
    if tf_config_tasks() > 1:
        if not _MULTI_WORKER_STRATEGY:
            _MULTI_WORKER_STRATEGY.append(tf.distribute.MultiWorkerMirroredStrategy())
        return _MULTI_WORKER_STRATEGY[0]
    if config.GPU_COUNT > 1:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus[:config.GPU_COUNT]]
        if len(devices) < config.GPU_COUNT:
            raise ValueError("GPU_COUNT = {} but only {} GPU(s) are visible".format(
                config.GPU_COUNT, len(devices)))
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def set_precision_policy(config):
    """Apply config.MIXED_PRECISION as Keras's global dtype policy before building.

    The policy is global in Keras: every MaskRCNN sets it (None -> "float32"), so a
    float32 model built after a mixed one is float32 again. Box, anchor, ROI and loss
    layers keep float32 whatever the policy (see mrcnn.rpn and mrcnn.roi_heads).
    """
    policy = config.MIXED_PRECISION or "float32"
    if policy == "mixed_float16" and not tf.config.list_logical_devices("GPU"):
        logger.warning("MIXED_PRECISION = 'mixed_float16' without a GPU: float16 maths is "
                       "very slow on CPUs; use 'mixed_bfloat16' (CPUs with AMX) or float32")
    keras.mixed_precision.set_global_policy(policy)
