"""MaskRCNN: Matterport's model API on TensorFlow 2 / Keras 3.

    model = MaskRCNN(mode="training", config=config, model_dir="logs")
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=10, layers="heads")
    model = MaskRCNN(mode="inference", config=config, model_dir="logs")
    model.load_weights(model.find_last(), by_name=True)
    r = model.detect([image])[0]   # rois, class_ids, scores, masks

The graph is assembled in mrcnn.graph, trained by mrcnn.training, fed by mrcnn.data; this
module ties them together and re-exports the model-level names Matterport's users import
from ``mrcnn.model``.
"""

import datetime
import logging
import os
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

from mrcnn import utils  # noqa: F401  (also modellib.utils, as Matterport)
from mrcnn.config import Config
from mrcnn.graph import build_graph, output_names
from mrcnn.distribute import (barrier, default_strategy, is_chief, num_workers,
                              per_worker_dataset, set_precision_policy)
from mrcnn.preprocess import (check_images, mold_inputs, parse_image_meta,  # noqa: F401
                              parse_image_meta_graph, unmold_detections)
from mrcnn.roi_heads import loss_output_names
from mrcnn.rpn import get_anchors, numpy_anchors
from mrcnn.training import (BestCheckpoint, CheckpointCallback, EvaluationCallback,
                            LearningRateWarmup, NonFiniteLossError, NonFiniteLossGuard,
                            TrainingModel, check_validation_args, frozen_stage_regex,
                            make_optimizer, resolve_layers, set_trainable)

# Matterport's module-level names of model.py (load_image_gt, data_generator, the four
# graph layers, the box and loss graph functions, ...): one facade, mrcnn.compat.
from mrcnn.compat import *  # noqa: F401,F403,E402

logger = logging.getLogger("mrcnn")


class MaskRCNN(object):
    """Mask R-CNN (or Cascade Mask R-CNN when config.CASCADE) with Matterport's API.

    mode: "training" or "inference". config: a Config instance. model_dir: directory for
    training logs and checkpoints. strategy: an optional tf.distribute strategy; by default
    GPU_COUNT > 1 uses MirroredStrategy over the visible GPUs.
    """

    def __init__(self, mode, config, model_dir, strategy=None):
        if mode not in ("training", "inference"):
            raise ValueError("mode must be 'training' or 'inference', got {!r}".format(mode))
        if not isinstance(config, Config):
            raise TypeError("config must be an mrcnn.config.Config instance")
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self.epoch = 0
        self.strategy = strategy or default_strategy(config, mode)
        set_precision_policy(config)
        self.set_log_dir()
        with self.strategy.scope():
            self.keras_model = self.build(mode=mode, config=config)
        self._trainer = None
        self._detect_fn = None

    # ------------------------------------------------------------------ graph
    def build(self, mode, config):
        """Build the Keras functional model (Matterport's build)."""
        return build_graph(mode, config)

    @property
    def output_names(self):
        """Names of keras_model's outputs (it returns a dict of them)."""
        return output_names(self.mode, self.config)

    def get_anchors(self, image_shape):
        """Normalised anchors [A, 4] for a molded image shape (Matterport's get_anchors).
        Also keeps them in pixels as ``self.anchors`` (Matterport's notebooks read it)."""
        self.anchors = get_anchors(self.config, image_shape)
        return numpy_anchors(self.config, image_shape)

    # ------------------------------------------------------------------ weights
    def find_last(self):
        """Path of the last checkpoint of the newest run of this config's NAME.

        Raises FileNotFoundError naming model_dir when there is none.
        """
        name = self.config.NAME.lower() if self.config.NAME else ""
        dir_names = sorted(d for d in next(os.walk(self.model_dir))[1]
                           if d.startswith(name)) if os.path.isdir(self.model_dir) else []
        if not dir_names:
            raise FileNotFoundError(
                "Could not find model directory under {}".format(self.model_dir))
        # Newest run first; skip runs that never wrote a checkpoint.
        for dir_name in reversed(dir_names):
            d = os.path.join(self.model_dir, dir_name)
            # The best checkpoint (train(keep_best=...)) is not an epoch: find_best.
            checkpoints = sorted(f for f in os.listdir(d)
                                 if f.startswith("mask_rcnn") and f.endswith(".h5")
                                 and not f.endswith("_best.h5"))
            if checkpoints:
                return os.path.join(d, checkpoints[-1])
        raise FileNotFoundError("Could not find weight files in {}".format(
            os.path.join(self.model_dir, dir_names[-1])))

    def find_best(self):
        """Path of ``mask_rcnn_<name>_best.h5`` (written by train(keep_best=...)) of the
        newest run of this config's NAME that has one.

        Raises FileNotFoundError naming model_dir and the newest run folder when none has.
        """
        name = self.config.NAME.lower() if self.config.NAME else ""
        dir_names = sorted(d for d in next(os.walk(self.model_dir))[1]
                           if d.startswith(name)) if os.path.isdir(self.model_dir) else []
        best = "mask_rcnn_{}_best.h5".format(name or "mrcnn")
        for dir_name in reversed(dir_names):
            path = os.path.join(self.model_dir, dir_name, best)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(
            "No best checkpoint {} in the runs of '{}' under {}{}: train with "
            "keep_best=... first".format(
                best, name, self.model_dir,
                " (newest run: {})".format(os.path.join(self.model_dir, dir_names[-1]))
                if dir_names else ""))

    def load_weights(self, filepath, by_name=False, exclude=None, verbose=1):
        """Load weights from a Keras-2-layout .h5 file (Matterport's files, our
        checkpoints) by layer name; returns the load report.

        by_name is accepted for Matterport compatibility: loading is always by name, which
        also covers files of the same topology. exclude: layer names or regexes to skip.
        """
        from mrcnn.weights import load_weights_by_name
        report = load_weights_by_name(self.keras_model, filepath, exclude=exclude,
                                      verbose=verbose)
        self.set_log_dir(filepath)
        return report

    def save_weights(self, filepath):
        """Write all weights by layer name, atomically (Keras-2 HDF5 layout)."""
        from mrcnn.weights import save_weights_h5
        save_weights_h5(self.keras_model, filepath)

    def get_imagenet_weights(self):
        """Download the ImageNet-trained ResNet-50 weights (Keras-2 layout) and return the
        local path. Needs the internet."""
        from mrcnn.weights import download_imagenet_resnet50
        return download_imagenet_resnet50()

    # ------------------------------------------------------------------ training
    def set_log_dir(self, model_path=None):
        """Set the run directory and epoch counter; from a checkpoint path, continue its
        run and epoch numbering (Matterport's behaviour)."""
        self.epoch = 0
        now = datetime.datetime.now()
        if model_path:
            regex = (r".*[/\\][\w-]+(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})[/\\]mask\_rcnn\_"
                     r"[\w-]+(\d{4})\.h5")
            m = re.match(regex, str(model_path).replace(os.sep, "/"))
            if m:
                now = datetime.datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)),
                                        int(m.group(4)), int(m.group(5)))
                # The file's epoch number is 1-based: training continues after it.
                self.epoch = int(m.group(6))
        name = self.config.NAME.lower() if self.config.NAME else "mrcnn"
        self.log_dir = os.path.join(self.model_dir, "{}{:%Y%m%dT%H%M}".format(name, now))
        self.checkpoint_path = os.path.join(
            self.log_dir, "mask_rcnn_{}_*epoch*.h5".format(name)).replace(
            "*epoch*", "{epoch:04d}")

    def set_trainable(self, layer_regex, keras_model=None, indent=0, verbose=1):
        """Make layers whose names match ``layer_regex`` trainable, the rest frozen.
        Backbone stages frozen by BACKBONE_FROZEN_STAGES stay frozen."""
        model = keras_model or self.keras_model
        set_trainable(model, layer_regex,
                      frozen_stage_regex(self.config.BACKBONE_FROZEN_STAGES),
                      verbose=verbose > 0, indent=indent)

    def compile(self, learning_rate, momentum=None):
        """Create the training wrapper with a fresh optimizer (needed after any change of
        trainable layers). momentum: None -> config.LEARNING_MOMENTUM."""
        if self.mode != "training":
            raise RuntimeError("compile() needs a model built in 'training' mode")
        with self.strategy.scope():
            self._trainer = TrainingModel(self.keras_model, self.config)
            self._trainer.compile(optimizer=make_optimizer(self.config, learning_rate,
                                                           momentum),
                                  jit_compile=False)
        return self._trainer

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
              augmentation=None, custom_callbacks=None, no_augmentation_sources=None,
              on_error="raise", verbose=1, evaluate_every=None, evaluate_limit=None,
              keep_best=None, keep_last=None, early_stopping_patience=None):
        """Train until epoch ``epochs`` (cumulative, as in Matterport).

        layers: "heads", "3+", "4+", "5+", "all" or a regex of layer names.
        augmentation: an imgaug augmenter (mrcnn.augment.iaa) applied to images and masks.
        on_error: "raise" stops at a broken image naming it; "skip" warns, skips it and
        reports the count at the end of each epoch.
        evaluate_every=N: COCO evaluation of val_dataset every N epochs and at the last
        (mrcnn.training.EvaluationCallback on an inference model built once), logging
        val_bbox_AP, val_bbox_AP50, val_bbox_AP75, val_segm_AP, val_segm_AP50,
        val_segm_AP75; evaluate_limit: only the first that many validation ids.
        keep_best: a logged metric name (mode auto: max for AP, min for losses) or
        (name, "max"|"min"); its best epoch's weights go to mask_rcnn_<name>_best.h5 in
        the run folder (find_best()), its state to mask_rcnn_<name>_best.json (read back
        when training resumes in that folder). keep_last=K: keep only the K newest epoch
        checkpoints. early_stopping_patience=P: stop after P evaluations of the keep_best
        metric (default val_segm_AP) without improvement.
        Returns the Keras History (or None when there was nothing to do).
        """
        from mrcnn import workers
        # The input pipelines' worker processes end with train(), however it ends.
        with workers.closing_scope():
            return self._train(
                train_dataset, val_dataset, learning_rate, epochs, layers, augmentation,
                custom_callbacks, no_augmentation_sources, on_error, verbose,
                evaluate_every, evaluate_limit, keep_best, keep_last,
                early_stopping_patience)

    def _train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
               augmentation, custom_callbacks, no_augmentation_sources, on_error, verbose,
               evaluate_every, evaluate_limit, keep_best, keep_last,
               early_stopping_patience):
        """train()'s work, inside its closing scope."""
        if self.mode != "training":
            raise RuntimeError("Create the model in training mode to train it")
        from mrcnn import data
        for name, ds in (("train_dataset", train_dataset), ("val_dataset", val_dataset)):
            data.check_dataset(ds, name)
        custom = list(custom_callbacks or [])
        user_evals = [c for c in custom if isinstance(c, EvaluationCallback)]
        monitor = check_validation_args(self.config, evaluate_every, evaluate_limit,
                                        keep_best, keep_last, early_stopping_patience,
                                        evaluating=evaluate_every is not None or
                                        bool(user_evals))
        if self.epoch >= epochs:
            logger.info("Already at epoch %d >= %d: nothing to train", self.epoch, epochs)
            return None

        layer_regex = resolve_layers(layers)
        strategy = self.strategy
        train_ds, val_ds = self._input_pipelines(
            data, (train_dataset, dict(shuffle=True, augmentation=augmentation,
                                       no_augmentation_sources=no_augmentation_sources,
                                       on_error=on_error,
                                       repeat_factor_threshold=self.config
                                       .REPEAT_FACTOR_THRESHOLD)),
            # Keras makes a new validation iterator every epoch: see build_dataset.
            (val_dataset, dict(shuffle=True, on_error=on_error, autotune=False)))
        if is_chief(strategy) and not os.path.exists(self.log_dir):
            os.makedirs(self.log_dir)
        guard = NonFiniteLossGuard(loss_output_names(self.config))
        # Evaluation first: the metrics it adds must reach TensorBoard, History, progbar.
        validation = self._validation_callbacks(
            val_dataset, evaluate_every, evaluate_limit, monitor,
            keep_best is not None, early_stopping_patience, verbose)
        callbacks = [guard] + user_evals + validation + self._train_callbacks(
            data, (train_ds, val_ds), learning_rate, verbose, keep_last) + [
            c for c in custom if c not in user_evals]

        if verbose:
            print("\nStarting at epoch {}. LR={}\n".format(self.epoch, learning_rate))
            print("Checkpoint Path: {}".format(self.checkpoint_path))
        self.set_trainable(layer_regex, verbose=verbose - 1)
        trainer = self.compile(learning_rate)
        pipelines = (train_ds, val_ds)
        if strategy.num_replicas_in_sync > 1 and num_workers(strategy) == 1:
            # Each global batch is split into IMAGES_PER_GPU images per replica.
            train_ds = strategy.experimental_distribute_dataset(train_ds)
            val_ds = strategy.experimental_distribute_dataset(val_ds)
        try:
            history = self._fit(trainer, train_ds, val_ds, epochs, callbacks, verbose)
        except tf.errors.OpError as err:
            # Put the broken image's own error (naming its id and path) on top.
            original = data.pipeline_error(err, *pipelines)
            if original is not None:
                raise original from None
            raise
        if guard.error is not None:
            raise guard.error
        # Epochs actually run (a callback may stop training early).
        done = history.epoch[-1] + 1 if history is not None and history.epoch else epochs
        self.epoch = max(self.epoch, done)
        self._wait_for_chief_checkpoint(done)
        return history

    def _wait_for_chief_checkpoint(self, epoch):
        """Multi-worker: leave train() only once the chief has written the checkpoint of
        ``epoch`` (it does so before its fit() returns), so a worker's next find_last()
        finds it; a worker that cannot see it (no shared model_dir) is told why."""
        if num_workers(self.strategy) <= 1:
            return
        barrier(self.strategy)
        if is_chief(self.strategy):
            return
        try:
            found = self.find_last()
        except FileNotFoundError:
            found = None
        want = "_{:04d}.h5".format(epoch)
        if found is None or not found.endswith(want):
            message = ("this worker cannot see the chief's checkpoint of epoch {} under "
                       "model_dir {} (newest here: {}): the chief writes every checkpoint; "
                       "give all workers the same model_dir on shared storage to read "
                       "them".format(epoch, os.path.abspath(self.model_dir), found))
            logger.warning(message)
            warnings.warn(message)

    def _input_pipelines(self, data, *datasets):
        """The tf.data pipelines of (dataset, build_dataset kwargs) pairs, batched for
        self.strategy: IMAGES_PER_GPU images on every replica (GPU_COUNT only picks the
        default strategy; an explicit or multi-worker strategy sets the replica count)."""
        strategy = self.strategy
        global_batch = self.config.IMAGES_PER_GPU * strategy.num_replicas_in_sync
        if num_workers(strategy) > 1:
            # One input pipeline per worker, each shuffling independently and yielding
            # per-replica batches: no worker loads images that another one uses.
            return [per_worker_dataset(strategy, data, dataset, self.config, global_batch,
                                       kwargs) for dataset, kwargs in datasets]
        return [data.build_dataset(dataset, self.config, batch_size=global_batch, **kwargs)
                for dataset, kwargs in datasets]

    def _validation_callbacks(self, val_dataset, evaluate_every, evaluate_limit, monitor,
                              save_best, patience, verbose):
        """EvaluationCallback (evaluate_every) then BestCheckpoint (keep_best or
        patience). Every worker evaluates and decides (the same stop everywhere); only
        the chief writes."""
        chief = is_chief(self.strategy)
        callbacks = []
        if evaluate_every is not None:
            callbacks.append(EvaluationCallback(
                val_dataset, self._evaluation_model(), every=evaluate_every,
                limit=evaluate_limit, log_dir=self.log_dir, write_files=chief,
                verbose=verbose))
        if monitor[0] is not None:
            best_path = self.checkpoint_path.replace("{epoch:04d}", "best")
            callbacks.append(BestCheckpoint(
                monitor[0], best_path if save_best else None,
                os.path.splitext(best_path)[0] + ".json", mode=monitor[1],
                patience=patience, graph=self.keras_model, write_files=chief,
                verbose=verbose))
        return callbacks

    def _evaluation_model(self):
        """The inference MaskRCNN that train(evaluate_every=...) evaluates: built once
        per object (the training config on one replica); EvaluationCallback copies the
        trained weights into it in memory."""
        if getattr(self, "_eval_model", None) is None:
            import copy
            config = copy.deepcopy(self.config)
            config.GPU_COUNT, config.BATCH_SIZE = 1, config.IMAGES_PER_GPU
            self._eval_model = MaskRCNN("inference", config, self.model_dir)
        return self._eval_model

    def _train_callbacks(self, data, pipelines, learning_rate, verbose, keep_last=None):
        """TensorBoard and checkpoints (chief only), skip reports, LR warm-up."""
        callbacks = []
        if is_chief(self.strategy):
            # Other workers hold the same (mirrored) weights: only the chief writes.
            callbacks += [
                keras.callbacks.TensorBoard(log_dir=self.log_dir, histogram_freq=0,
                                            write_graph=False),
                CheckpointCallback(self.keras_model, self.checkpoint_path, verbose=verbose,
                                   keep_last=keep_last),
            ]
        callbacks += data.skip_report_callbacks(*pipelines)
        if self.config.LEARNING_RATE_WARMUP_STEPS:
            callbacks.append(LearningRateWarmup(self.config.LEARNING_RATE_WARMUP_STEPS,
                                                learning_rate,
                                                self.config.LEARNING_RATE_WARMUP_FACTOR))
        return callbacks

    def _fit(self, trainer, train_ds, val_ds, epochs, callbacks, verbose):
        return trainer.fit(
            train_ds, initial_epoch=self.epoch, epochs=epochs,
            steps_per_epoch=self.config.STEPS_PER_EPOCH, callbacks=callbacks, shuffle=False,
            validation_data=val_ds if self.config.VALIDATION_STEPS else None,
            validation_steps=self.config.VALIDATION_STEPS or None, verbose=verbose)

    # ------------------------------------------------------------------ inference
    def _inference_fn(self):
        """One traced function for every image size and batch size (no retracing)."""
        if self._detect_fn is None:
            model = self.keras_model
            c = self.config

            @tf.function(input_signature=[
                tf.TensorSpec([None, None, None, c.IMAGE_CHANNEL_COUNT], tf.float32),
                tf.TensorSpec([None, c.IMAGE_META_SIZE], tf.float32)])
            def detect_fn(images, metas):
                outputs = model([images, metas], training=False)
                return outputs["detections"], outputs["mrcnn_mask"]

            self._detect_fn = detect_fn
        return self._detect_fn

    def mold_inputs(self, images):
        """Matterport's mold_inputs: (molded_images, image_metas, windows)."""
        c = self.config
        return mold_inputs(check_images(images, c.IMAGE_CHANNEL_COUNT, c.IMAGE_BIT_DEPTH), c)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window):
        """Matterport's unmold_detections (see mrcnn.preprocess.unmold_detections)."""
        return unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape,
                                 window)

    def detect(self, images, verbose=0, tile=None, overlap=None, masks="full"):
        """Detect instances in any number of images.

        images: list of images [H, W, 3] (uint8; grayscale, RGBA, uint16 and float are
        converted, see mrcnn.preprocess.check_images). Returns one dict per image: rois
        [N, 4] (y1, x1, y2, x2 pixels of the original image), class_ids [N], scores [N],
        masks [H, W, N] bool.

        The one detection path: mold_inputs -> detect_molded(to_original=True), which runs
        the network and unmolds into each image's own pixels.

        tile: None (each image resized into the model, as above) or a window side, a
        multiple of 64: large images are cut into overlapping tile x tile windows fed at
        scale 1, and the detections merged (mrcnn.tiling.detect_tiled; overlap defaults
        to tile // 4). masks (with tile): "full" (as above), "crops" (a list of bool
        masks the size of each roi) or "rle" (pycocotools RLE dicts) for huge images.
        """
        if self.mode != "inference":
            raise RuntimeError("Create the model in inference mode to detect")
        images = check_images(images, self.config.IMAGE_CHANNEL_COUNT,
                              self.config.IMAGE_BIT_DEPTH)
        if tile is not None:
            from mrcnn.tiling import detect_tiled
            return [detect_tiled(self, image, tile=tile, overlap=overlap, masks=masks,
                                 verbose=verbose) for image in images]
        if masks != "full" or overlap is not None:
            raise ValueError("overlap and masks={!r} need tile= (tiled detection)".format(
                masks))
        if verbose:
            print("Processing {} images".format(len(images)))
        results = []
        bs = self.config.BATCH_SIZE
        for start in range(0, len(images), bs):
            molded, metas, _ = mold_inputs(images[start:start + bs], self.config)
            results += self.detect_molded(molded, metas, to_original=True)
        return results

    def detect_molded(self, molded_images, image_metas, verbose=0, to_original=False):
        """Detect on images already molded (Matterport's detect_molded; e.g. images from
        load_image_gt + mold_image, or mold_inputs' output).

        molded_images: [N, h, w, C] float32, image_metas [N, META].
        to_original: False (Matterport): boxes and masks in the coordinates of the molded
        images, and each dict also holds the meta's "window". True: unmolded into each
        meta's original image (its original_image_shape and window), as detect() returns.
        Returns one dict per image: rois, class_ids, scores, masks (as detect()).
        """
        if self.mode != "inference":
            raise RuntimeError("Create the model in inference mode to detect")
        molded_images = np.asarray(molded_images, np.float32)
        image_metas = np.asarray(image_metas, np.float32)
        if verbose:
            print("Processing {} molded images".format(len(molded_images)))
        meta = parse_image_meta(image_metas)
        detections, masks = self._inference_fn()(tf.constant(molded_images),
                                                 tf.constant(image_metas))
        detections, masks = detections.numpy(), masks.numpy()
        frame = molded_images.shape[1:]
        results = []
        for i in range(len(molded_images)):
            if to_original:
                original, window = meta["original_image_shape"][i], meta["window"][i]
            else:
                original, window = frame, [0, 0, frame[0], frame[1]]
            rois, class_ids, scores, full_masks = unmold_detections(
                detections[i], masks[i], original, frame, window)
            result = {"rois": rois, "class_ids": class_ids, "scores": scores,
                      "masks": full_masks}
            if not to_original:
                result["window"] = meta["window"][i]
            results.append(result)
        return results

    # ------------------------------------------------------------------ inspection
    def ancestor(self, tensor, name, checked=None):
        """Find the output of the layer whose name fully matches ``name`` (a regex) among
        the layers that produce ``tensor`` (a KerasTensor of keras_model); None if absent.

        checked: optional list that receives the names of the layers visited. Each layer
        is visited once (ResNet's shortcuts would otherwise make the walk exponential),
        iteratively, so deep backbones cannot exhaust Python's recursion limit.
        """
        checked = checked if checked is not None else []
        seen = set(checked)
        stack = [tensor]
        while stack:
            t = stack.pop()
            history = getattr(t, "_keras_history", None)
            if history is None:
                continue
            layer = history.operation if hasattr(history, "operation") else history[0]
            if re.fullmatch(name, layer.name):
                return t
            if layer.name in seen:
                continue
            seen.add(layer.name)
            checked.append(layer.name)
            nodes = list(getattr(layer, "_inbound_nodes", []))
            # A layer called several times (rpn_model): follow the call that made ``t``.
            index = getattr(history, "node_index", None)
            if index is not None and 0 <= index < len(nodes):
                nodes = [nodes[index]]
            parents = [p for node in nodes for p in node.input_tensors]
            stack.extend(reversed(parents))   # depth first, first input first
        return None

    def find_trainable_layer(self, layer):
        """Matterport compatibility: Matterport unwrapped TimeDistributed layers here to
        reach the layer that holds the weights. This graph has no such wrappers, so the
        layer itself is returned; kept for scripts that call it."""
        return layer

    def get_trainable_layers(self):
        """Layers that have weights, sub-models expanded."""
        out = []
        for layer in self.keras_model.layers:
            if isinstance(layer, keras.Model):
                out += [sub for sub in layer.layers if sub.weights]
            elif layer.weights:
                out.append(layer)
        return out

    def run_graph(self, images, outputs, image_metas=None):
        """Run the graph on images and return the named intermediate tensors.

        outputs: list of (name, tensor-or-layer-name) pairs, where the second element is a
        KerasTensor of keras_model or the name of a layer. images: a list of images as
        given to detect(), or, with image_metas, already molded images [B, H, W, C] (as
        Matterport). Returns an OrderedDict of numpy arrays. Example:
            model.run_graph([image], [("proposals", "ROI"), ("p2", "fpn_p2")])
        """
        from collections import OrderedDict
        model = self.keras_model
        tensors = []
        for name, t in outputs:
            if t is None:
                # Typically Matterport's model.ancestor(..., "ROI/pre_nms_anchors:0"):
                # Keras 3 keeps no TF op names, so that lookup finds nothing.
                raise ValueError(
                    "run_graph: output {!r} is None. Keras 3 graphs have no TF op names "
                    "(such as 'ROI/pre_nms_anchors:0'); give a layer name or a layer's "
                    "output (model.ancestor() matches layer names)".format(name))
            if isinstance(t, str):
                # The mask head's last conv runs on ROIs folded into the batch; its
                # [B, N, h, w, C] result (Matterport's "mrcnn_mask") is the unflatten
                # layer, padded back to one slot per detection at inference.
                if t == "mrcnn_mask":
                    names = {layer.name for layer in model.layers}
                    t = ("mrcnn_mask_slots" if "mrcnn_mask_slots" in names
                         else "mrcnn_mask_unflatten")
                t = model.get_layer(t).output
            tensors.append(t)
        sub = keras.Model(model.inputs, tensors)
        if self.mode == "inference":
            if image_metas is None:
                molded, metas, _ = self.mold_inputs(images)
            else:
                # As Matterport: with metas given, the images are already molded.
                molded = np.asarray(images, np.float32)
                metas = np.asarray(image_metas, np.float32)
            values = sub([tf.constant(molded), tf.constant(metas)], training=False)
        else:
            values = sub(images, training=False)
        if not isinstance(values, (list, tuple)):
            values = [values]
        result = OrderedDict()
        for (name, _), v in zip(outputs, values):
            result[name] = keras.ops.convert_to_numpy(v)
        return result

    # ------------------------------------------------------------------ serving
    def export(self, path, masks="small", format=None, opset=None, class_names=None):
        """Write a SavedModel for TF Serving (see mrcnn.export): its serving_default
        signature takes uint8 images [B, H, W, C] and returns boxes (original pixels),
        class_ids, scores, num_detections and masks ("small": MASK_SHAPE probabilities
        per box; "full": bool [B, D, H, W]). Refuses an existing path. Returns path.

        format: "saved_model", "onnx" (tf2onnx, opset ``opset`` or
        mrcnn.export.ONNX_OPSET) or "tflite" (builtin ops only, masks="small"); None
        picks it from the path's suffix (.onnx, .tflite, else a SavedModel directory).
        Same inputs and outputs in every format (docs/serving.md). class_names: stored
        with the config JSON for ``python -m mrcnn detect``."""
        from mrcnn.export import ONNX_OPSET, export_model
        return export_model(self, path, format=format, masks=masks,
                            opset=ONNX_OPSET if opset is None else opset,
                            class_names=class_names)


__all__ = ["MaskRCNN", "NonFiniteLossError", "compose_image_meta", "parse_image_meta",
           "parse_image_meta_graph", "mold_image", "unmold_image", "compute_backbone_shapes"]
