"""The training step, optimizer and callbacks.

``TrainingModel`` wraps the functional training graph (whose outputs include one scalar
per named loss) and owns ``train_step``/``test_step``: the weighted sum of the losses
(LOSS_WEIGHTS, and the cascade stage weights), Matterport's L2 weight decay, global
gradient clipping, and one ``Mean`` tracker per named loss so Keras's progress bar and
History show every loss by name. Under a ``tf.distribute`` strategy the per-replica loss
is divided by the replica count, because gradients are summed across replicas.
"""

import logging
import math
import os
import re
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from mrcnn.roi_heads import loss_output_names, loss_weight


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or infinite."""


def decayed_weights(model):
    """Trainable weights that get L2 decay: all but batch-norm gamma/beta (Matterport)."""
    out = []
    for w in model.trainable_weights:
        name = w.path if hasattr(w, "path") else w.name
        if name.endswith(("gamma", "beta")) or "/gamma" in name or "/beta" in name:
            continue
        out.append(w)
    return out


class TrainingModel(keras.Model):
    """Owns the training loop of a functional Mask R-CNN training graph."""

    def __init__(self, graph, config, **kwargs):
        super().__init__(name="mask_rcnn_training", **kwargs)
        self.net = graph
        self.config = config
        self.loss_names = loss_output_names(config)
        self.loss_weights_ = [loss_weight(config, n) for n in self.loss_names]
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.trackers = [keras.metrics.Mean(name=n) for n in self.loss_names]

    @property
    def metrics(self):
        return [self.total_tracker] + list(self.trackers)

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    def _compute_losses(self, inputs, training):
        outputs = self.net(inputs, training=training)
        named = [tf.cast(outputs[name], tf.float32) for name in self.loss_names]
        total = tf.add_n([w * l for w, l in zip(self.loss_weights_, named)])
        if self.config.WEIGHT_DECAY:
            # Listed at trace time, not cached on self: Keras refuses new tracked state
            # on a built model (fit under a strategy builds it before the first step).
            decayed = decayed_weights(self.net)
            if decayed:
                # Matterport's form: L2 of each weight divided by its size.
                decay = tf.add_n([
                    tf.reduce_sum(tf.square(tf.cast(w, tf.float32))) /
                    tf.cast(tf.size(w), tf.float32) for w in decayed])
                total = total + self.config.WEIGHT_DECAY * decay
        return total, named

    def _update(self, total, named):
        self.total_tracker.update_state(total)
        for tracker, value in zip(self.trackers, named):
            tracker.update_state(value)
        logs = {m.name: m.result() for m in self.metrics}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras 3 averages multi-worker step outputs with strategy.reduce(MEAN,
            # axis=0), which fails on scalars (tensorflow/tensorflow#72388); with a
            # length-1 axis the same reduce returns the scalar mean.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build from the first replica's part of the first batch.

        Under a strategy Keras (3.15) builds the model from the first batch averaged over
        the replicas with strategy.reduce, which fails on bool tensors (gt masks: "AddN
        ... bool") and on dict inputs under MultiWorkerMirroredStrategy (its reduce does
        not walk nested structures), and runs a collective for nothing. Only shapes are
        needed, so hand Keras one replica's tensors instead.
        """
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and data_batch is None and strategy is not None:
            for _, _, it in iterator:
                batch = next(it)
                break
            else:
                batch = None
            if batch is not None:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        inputs = data[0] if isinstance(data, tuple) else data
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            total, named = self._compute_losses(inputs, training=True)
            scaled = total / tf.cast(replicas, tf.float32)
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if replicas > 1 and self.config.GRADIENT_CLIP_NORM and \
                not _optimizer_clips(self.optimizer):
            pairs = self._clip_across_replicas(pairs)
        self.optimizer.apply_gradients(pairs)
        return self._update(total, named)

    def _clip_across_replicas(self, pairs):
        """Global-norm clipping by the norm of the gradient summed over replicas.

        Keras clips each replica's partial gradient before the cross-replica sum, which
        is not what one device computes; make_optimizer therefore leaves clipping off under
        a multi-replica strategy and every replica scales its part by the same factor here,
        min(1, clip / ||sum of parts||), as one device would. Costs one extra all-reduce.
        """
        grads = [g for g, _ in pairs]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in summed])
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            norm = norm / tf.cast(self.optimizer.dynamic_scale, tf.float32)
        clip = float(self.config.GRADIENT_CLIP_NORM)
        factor = clip / tf.maximum(norm, clip)
        return [(g * tf.cast(factor, g.dtype), v) for g, v in pairs]

    def test_step(self, data):
        inputs = data[0] if isinstance(data, tuple) else data
        total, named = self._compute_losses(inputs, training=False)
        return self._update(total, named)


def _multi_worker(strategy):
    """True for a MultiWorkerMirroredStrategy spanning several worker processes."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(spec.get(kind, [])) for kind in ("chief", "worker")) > 1


def _optimizer_clips(optimizer):
    """True when the (possibly loss-scaled) Keras optimizer clips gradients itself."""
    opt = getattr(optimizer, "inner_optimizer", optimizer)
    return any(getattr(opt, a, None) for a in ("global_clipnorm", "clipnorm", "clipvalue"))


def make_optimizer(config, learning_rate, momentum=None):
    """config.OPTIMIZER ("sgd": Matterport's SGD with momentum; "adam") with global-norm
    clipping.

    Call it inside the strategy's scope. Under a multi-replica strategy the optimizer does
    not clip (Keras would clip each replica's part before the sum);
    TrainingModel.train_step clips the summed gradient instead.
    momentum: None -> config.LEARNING_MOMENTUM.
    """
    momentum = config.LEARNING_MOMENTUM if momentum is None else float(momentum)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    clip = config.GRADIENT_CLIP_NORM if replicas == 1 else None
    name = str(getattr(config, "OPTIMIZER", "sgd")).lower()
    if name == "sgd":
        opt = keras.optimizers.SGD(learning_rate=learning_rate,
                                   momentum=momentum, global_clipnorm=clip)
    else:
        # Adam's beta_1 plays momentum's role; weight decay stays the L2 term of the loss.
        opt = keras.optimizers.Adam(learning_rate=learning_rate,
                                    beta_1=momentum, global_clipnorm=clip)
    if config.MIXED_PRECISION == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


class CheckpointCallback(keras.callbacks.Callback):
    """Writes ``checkpoint_path.format(epoch=N)`` at the end of every epoch, atomically and
    in the Keras-2 by-name layout (mrcnn.weights.save_weights_h5). Never writes weights
    that hold a non-finite value. keep_last=K: after each save, deletes the epoch
    checkpoints of this pattern older than the K newest (files of later epochs, and any
    other file such as the best checkpoint, are left alone)."""

    def __init__(self, graph, checkpoint_path, verbose=0, keep_last=None):
        super().__init__()
        _positive_int_arg("keep_last", keep_last)
        self.net = graph
        self.checkpoint_path = checkpoint_path
        self.verbose = verbose
        self.keep_last = keep_last
        self.last_saved = None

    def _epoch_files(self):
        """{epoch: path} of the files matching checkpoint_path in its folder."""
        directory, base = os.path.split(self.checkpoint_path)
        pattern = re.compile("^" + re.escape(base).replace(re.escape("{epoch:04d}"),
                                                           r"(\d+)") + "$")
        found = {}
        for name in os.listdir(directory or "."):
            m = pattern.match(name)
            if m:
                found[int(m.group(1))] = os.path.join(directory, name)
        return found

    def prune(self, epoch):
        """Delete epoch checkpoints up to ``epoch`` (1-based) but the keep_last newest."""
        files = self._epoch_files()
        older = sorted(e for e in files if e <= epoch)
        for e in older[:max(0, len(older) - self.keep_last)]:
            try:
                os.remove(files[e])
            except OSError as err:
                warnings.warn("keep_last: could not delete {}: {}".format(files[e], err))

    def on_train_begin(self, logs=None):
        # A process killed while writing leaves its hidden temporary file (the checkpoint
        # itself is never partial, see weights._write_groups_atomic): remove those of
        # this checkpoint pattern so repeated crashes do not fill the disk.
        directory, base = os.path.split(self.checkpoint_path)
        pattern = re.escape(base).replace(re.escape("{epoch:04d}"), r"\d+")
        stale = re.compile(r"^\." + pattern + r"\..+\.tmp$")
        try:
            names = os.listdir(directory or ".")
        except OSError:
            return
        for name in names:
            if stale.match(name):
                try:
                    os.remove(os.path.join(directory, name))
                    warnings.warn("removed {}, the unfinished checkpoint of an interrupted "
                                  "run".format(os.path.join(directory, name)))
                except OSError:
                    pass

    def on_epoch_end(self, epoch, logs=None):
        from mrcnn.weights import save_weights_h5
        # A non-finite training loss this epoch (NonFiniteLossGuard stopped it): the
        # weights may still be finite (e.g. a loss scaler skipped the step) but are not
        # to be trusted; the previous checkpoint stays the last one.
        bad = sorted(k for k, v in (logs or {}).items() if not k.startswith("val_")
                     and _is_number(v) and not math.isfinite(float(v)))
        if bad:
            warnings.warn("non-finite training loss(es) {} at epoch {}: checkpoint not "
                          "written".format(", ".join(bad), epoch + 1))
            return
        for w in self.net.weights:
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(w))):
                warnings.warn("weights of {} are not finite at epoch {}: checkpoint not "
                              "written".format(w.path, epoch + 1))
                return
        path = self.checkpoint_path.format(epoch=epoch + 1)
        save_weights_h5(self.net, path)
        self.last_saved = path
        if self.keep_last:
            self.prune(epoch + 1)
        if self.verbose:
            print("\nSaved checkpoint {}".format(path))


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss (any named loss) is NaN or inf, naming
    the loss and the step. The last good checkpoint stays in place."""

    def __init__(self, loss_names):
        super().__init__()
        self.loss_names = list(loss_names)
        self.step = 0
        self.epoch = 0
        self.error = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        logs = logs or {}
        bad = [n for n in ["loss"] + self.loss_names
               if n in logs and not math.isfinite(float(logs[n]))]
        if bad:
            # Running means become non-finite as soon as one batch is: name the loss(es).
            named = [n for n in bad if n != "loss"] or bad
            # Global step counted from epoch 0, so it stays right after a resume.
            steps = (self.params or {}).get("steps")
            step = self.epoch * steps + batch + 1 if steps else self.step
            self.error = NonFiniteLossError(
                "non-finite loss at epoch {}, batch {} (global step {}): {}. Training "
                "stopped; no checkpoint was written for this epoch and the last good one "
                "is unchanged (reload it: model.load_weights(model.find_last())). Try a "
                "lower LEARNING_RATE, GRADIENT_CLIP_NORM, or check the data.".format(
                    self.epoch + 1, batch + 1, step,
                    ", ".join("{}={}".format(n, logs[n]) for n in named)))
            self.model.stop_training = True


class LearningRateWarmup(keras.callbacks.Callback):
    """Linear learning-rate warm-up: at optimizer step ``i < steps`` the rate is
    ``learning_rate * (factor + (1 - factor) * i / steps)``, then ``learning_rate``.

    Counts the optimizer's own steps (``optimizer.iterations``), so it restarts with every
    new optimizer (each MaskRCNN.train() call compiles one). Sets the rate before each
    batch only while warming up: later changes (TimeBudget's decay) are left alone.
    """

    def __init__(self, steps, learning_rate, factor=0.001):
        super().__init__()
        if not int(steps) >= 0:
            raise ValueError("LearningRateWarmup: steps must be >= 0, got {!r}".format(steps))
        if not 0 < factor <= 1:
            raise ValueError("LearningRateWarmup: factor must be in (0, 1], got {!r}".format(
                factor))
        self.steps = int(steps)
        self.learning_rate = float(learning_rate)
        self.factor = float(factor)
        self._done = False

    def rate(self, step):
        """Learning rate at optimizer step ``step`` (0-based)."""
        if step >= self.steps:
            return self.learning_rate
        return self.learning_rate * (self.factor + (1.0 - self.factor) * step / self.steps)

    def on_train_batch_begin(self, batch, logs=None):
        if self._done:    # no device-to-host read of the step counter once warmed up
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step <= self.steps:
            self.model.optimizer.learning_rate.assign(self.rate(step))
        else:
            self._done = True


class TimeBudget(keras.callbacks.Callback):
    """Train for a wall-time budget instead of a step count.

    Stops training once ``minutes`` have passed since the callback was made (checked after
    every batch; the epoch's checkpoint is still written) and multiplies the learning rate
    by ``decay`` once a ``decay_at`` fraction of the budget has passed: a short run gains
    most from a final phase at a low learning rate, and a time budget does not know its
    step count in advance. ``decay=1`` keeps the learning rate.
    """

    def __init__(self, minutes, decay_at=0.8, decay=0.1):
        super().__init__()
        if not minutes > 0:
            raise ValueError("TimeBudget: minutes must be > 0, got {!r}".format(minutes))
        if not 0 < decay_at <= 1:
            raise ValueError("TimeBudget: decay_at must be in (0, 1], got {!r}".format(
                decay_at))
        start = time.time()
        self.deadline = start + 60.0 * minutes
        self.decay_time = start + 60.0 * minutes * decay_at
        self.decay = float(decay)
        self.decayed = False

    def expired(self):
        """True once the budget has passed (e.g. to skip a next training phase)."""
        return time.time() > self.deadline

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        if not self.decayed and self.decay != 1.0 and now > self.decay_time:
            lr = self.model.optimizer.learning_rate
            lr.assign(float(lr.numpy()) * self.decay)
            self.decayed = True
        if now > self.deadline:
            self.model.stop_training = True


def _is_number(value):
    """True for Python / numpy / 0-d tensor numbers (Keras log values)."""
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


LAYER_REGEX = {
    # all layers but the backbone
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    # From a specific ResNet stage and up
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}


def frozen_stage_regex(stages):
    """Regex of the backbone layers frozen by BACKBONE_FROZEN_STAGES = ``stages``."""
    if stages <= 0:
        return None
    parts = [r"conv1", r"bn_conv1"]
    for s in range(2, stages + 1):
        parts += [r"res{}.*".format(s), r"bn{}.*".format(s)]
    return "|".join("(" + p + ")" for p in parts)


def set_trainable(model, layer_regex, frozen_regex=None, verbose=0, indent=0):
    """Set ``trainable`` on layers whose name fully matches ``layer_regex``; layers that
    match ``frozen_regex`` stay frozen whatever the regex. Recurses into sub-models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if verbose:
                print("In model: ", layer.name)
            set_trainable(layer, layer_regex, frozen_regex, verbose, indent + 4)
            layer.trainable = any(sub.trainable for sub in layer.layers)
            continue
        if not layer.weights:
            continue
        trainable = bool(re.fullmatch(layer_regex, layer.name))
        if frozen_regex and re.fullmatch(frozen_regex, layer.name):
            trainable = False
        layer.trainable = trainable
        if trainable and verbose:
            print("{}{:20}   ({})".format(" " * indent, layer.name, type(layer).__name__))


def resolve_layers(layers):
    """Map Matterport's layer presets ("heads", "3+", ...) to a regex; pass regexes through."""
    return LAYER_REGEX.get(layers, layers)


# --------------------------------------------------------------------------- validation

# COCOeval statistics that EvaluationCallback logs by default, per IoU type, as
# "val_<bbox|segm>_<stat>": AP@[.50:.95], AP@.50, AP@.75 (mrcnn.evaluate.STAT_NAMES has
# the other nine; pass stats= to log them too).
EVALUATION_STATS = ("AP", "AP50", "AP75")
EVALUATION_IOU_TYPES = ("bbox", "segm")


def evaluation_metric_names(stats=EVALUATION_STATS):
    """The logs keys EvaluationCallback writes: val_bbox_AP, val_bbox_AP50, ..."""
    return tuple("val_{}_{}".format(t, s) for t in EVALUATION_IOU_TYPES for s in stats)


EVALUATION_METRICS = evaluation_metric_names()


def weight_pairs(source, target):
    """(target variable, source variable) for every weight of ``target``'s layers, taken
    from the layer of the same name in ``source`` (nested models expanded). Raises
    ValueError when a layer is missing in ``source`` or a shape differs."""
    from mrcnn.weights import _leaf_layers
    by_name = {layer.name: layer for layer, _ in _leaf_layers(source)}
    pairs = []
    for layer, _ in _leaf_layers(target):
        other = by_name.get(layer.name)
        if other is None or len(other.weights) != len(layer.weights):
            raise ValueError("weight_pairs: layer {!r} of the inference model has no "
                             "counterpart in the training model".format(layer.name))
        for t, s in zip(layer.weights, other.weights):
            if tuple(t.shape) != tuple(s.shape):
                raise ValueError("weight_pairs: {} has shape {} in the inference model, "
                                 "{} in the training model".format(t.path, t.shape, s.shape))
            pairs.append((t, s))
    return pairs


def render_detections(image, result, class_names, inches=4.0):
    """uint8 RGB [h, w, 3] picture of one detect() result drawn over ``image`` (Agg
    canvas, no pyplot state; one fixed colour per class so epochs compare)."""
    import contextlib
    import io
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mrcnn import visualize
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] > 3:
        image = image[:, :, :3]    # extra channels are not drawable
    h, w = image.shape[:2]
    fig = Figure(figsize=(inches, inches * h / max(w, 1)), dpi=100)
    FigureCanvasAgg(fig)
    palette = visualize.random_colors(len(class_names), shuffle=False)
    colors = [palette[int(c) % len(palette)] for c in result["class_ids"]]
    with contextlib.redirect_stdout(io.StringIO()):   # "No instances to display"
        visualize.display_instances(image, result["rois"], result["masks"],
                                    result["class_ids"], class_names, result["scores"],
                                    ax=fig.add_subplot(1, 1, 1), colors=colors)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()


class EvaluationCallback(keras.callbacks.Callback):
    """COCO box and mask AP of a validation Dataset while training, as epoch metrics.

    Every ``every`` epochs (epoch numbers counted from the first epoch of the run, so a
    resumed run keeps the schedule), at the last epoch of ``fit``, and at an epoch after
    which training stops (a time budget) with a finite loss, the callback copies the
    trained weights in memory, by layer name, into ``inference_model`` (a MaskRCNN in
    inference mode, built once by the caller: nothing is rebuilt or read from disk), runs
    mrcnn.evaluate.evaluate_coco on the first ``limit`` ids of ``dataset`` (all: None)
    and writes ``val_bbox_AP``, ``val_bbox_AP50``, ``val_bbox_AP75``, ``val_segm_AP``,
    ``val_segm_AP50``, ``val_segm_AP75`` (``stats`` chooses among mrcnn.evaluate's
    STAT_NAMES) into the epoch's logs. Keras's History, progress bar and TensorBoard see
    them when this callback comes before TensorBoard in the list (MaskRCNN.train puts
    every EvaluationCallback, also one passed in custom_callbacks, first). TensorBoard
    shows them in its "validation" run as ``epoch_bbox_AP``, ``epoch_segm_AP``, ...

    draw_images: the detections on the first that many evaluated images are drawn into
    TensorBoard as images (``log_dir``/evaluation, tags ``detections/image_<id>``); 0
    disables. write_files: False on non-chief workers (they evaluate so that every worker
    takes the same early-stopping decision, but write nothing).
    Per evaluation (epoch, evaluate_coco's dict, seconds including the weight copy and
    the drawing) is appended to ``self.evaluations``.
    """

    def __init__(self, dataset, inference_model, every=1, limit=None, draw_images=3,
                 log_dir=None, stats=EVALUATION_STATS, write_files=True, verbose=1):
        super().__init__()
        if every is None:
            raise ValueError("EvaluationCallback: every must be an integer >= 1")
        _positive_int_arg("EvaluationCallback: every", every)
        _positive_int_arg("EvaluationCallback: limit", limit)
        self.dataset = dataset
        self.inference_model = inference_model
        self.every = every
        ids = [int(i) for i in dataset.image_ids]
        self.image_ids = ids if limit is None else ids[:int(limit)]
        self.draw_images = int(draw_images or 0)
        self.log_dir = log_dir
        self.stats = tuple(stats)
        self.write_files = write_files
        self.verbose = verbose
        self.evaluations = []
        self._pairs = None
        self._writer = None

    def copy_weights(self):
        """Assign the training graph's current weights to the inference model."""
        source = getattr(self.model, "net", self.model)
        if self._pairs is None or self._pairs[0] is not source:
            self._pairs = (source, weight_pairs(source,
                                                self.inference_model.keras_model))
        for target, value in self._pairs[1]:
            target.assign(value)

    def _due(self, epoch, logs):
        if (epoch + 1) % self.every == 0 or epoch + 1 == (self.params or {}).get("epochs"):
            return True
        loss = logs.get("loss", 0.0)
        return bool(getattr(self.model, "stop_training", False)) and _is_number(loss) \
            and math.isfinite(float(loss))

    def evaluate(self):
        """evaluate_coco of the inference model (looked up at call time) -> its dict."""
        from mrcnn import evaluate
        return evaluate.evaluate_coco(self.inference_model, self.dataset,
                                      image_ids=self.image_ids, verbose=0)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self._due(epoch, logs):
            return
        t0 = time.time()
        self.copy_weights()
        metrics = self.evaluate()
        values = {"val_{}_{}".format(t, s): float(metrics[t][s])
                  for t in EVALUATION_IOU_TYPES for s in self.stats}
        logs.update(values)
        if self.write_files and self.log_dir and self.draw_images > 0:
            self._draw(epoch)
        seconds = time.time() - t0     # copy + evaluation + drawing
        self.evaluations.append((epoch + 1, metrics, seconds))
        if self.verbose:
            print("\nEpoch {}: evaluated {} images in {:.1f} s: {}".format(
                epoch + 1, len(self.image_ids), seconds,
                ", ".join("{} {:.4f}".format(k, v) for k, v in values.items())))

    def _draw(self, epoch):
        ids = self.image_ids[:self.draw_images]
        images = [self.dataset.load_image(i) for i in ids]
        results = self.inference_model.detect(images)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "evaluation"))
        with self._writer.as_default():
            for image_id, image, r in zip(ids, images, results):
                picture = render_detections(image, r, self.dataset.class_names)
                tf.summary.image("detections/image_{}".format(image_id), picture[None],
                                 step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def metric_mode(name):
    """"max" for AP/AR-like metric names, "min" for losses; ValueError otherwise."""
    base = name[4:] if name.startswith("val_") else name
    if "loss" in base:
        return "min"
    if re.search(r"(^|_)m?A[PR]", base):
        return "max"
    raise ValueError("keep_best: cannot tell whether {!r} is better high or low; give "
                     "(name, 'max') or (name, 'min')".format(name))


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the best weights by a logged metric, and stops early when it stalls.

    monitor: a logs key (val_segm_AP, val_loss, mrcnn_mask_loss, ...); mode "max", "min"
    or "auto" (metric_mode). At each epoch end where ``monitor`` is logged: an improvement
    (strictly better) writes ``filepath`` atomically (mrcnn.weights.save_weights_h5;
    filepath None: track only) and resets the count, anything else adds one evaluation
    without improvement; with ``patience``, that many in a row stop training, saying why
    (``self.stop_reason``). The state (metric, mode, best, best_epoch, wait, last_epoch)
    goes to the JSON ``state_path`` (atomically, after the weights) and is read back at
    train begin when it names the same metric and mode: a resumed run keeps its best
    value and patience count. write_files: False on non-chief workers, which still take
    the same decisions from the same metric values.
    """

    def __init__(self, monitor, filepath=None, state_path=None, mode="auto",
                 patience=None, graph=None, write_files=True, verbose=1):
        super().__init__()
        self.monitor = monitor
        self.mode = metric_mode(monitor) if mode == "auto" else mode
        if self.mode not in ("max", "min"):
            raise ValueError("BestCheckpoint: mode must be 'max', 'min' or 'auto', got "
                             "{!r}".format(mode))
        _positive_int_arg("BestCheckpoint: patience", patience)
        self.filepath = filepath
        self.state_path = state_path
        self.patience = patience
        self.graph = graph
        self.write_files = write_files
        self.verbose = verbose
        self.best, self.best_epoch, self.wait, self.last_epoch = None, None, 0, None
        self.stop_reason = None

    def state(self):
        return {"metric": self.monitor, "mode": self.mode, "best": self.best,
                "best_epoch": self.best_epoch, "wait": self.wait,
                "last_epoch": self.last_epoch, "best_path": self.filepath}

    def on_train_begin(self, logs=None):
        saved = read_best_state(self.state_path)
        if saved is None:
            return
        if (saved.get("metric"), saved.get("mode")) != (self.monitor, self.mode):
            warnings.warn("{} tracks {} ({}), not {} ({}): starting a new best".format(
                self.state_path, saved.get("metric"), saved.get("mode"), self.monitor,
                self.mode))
            return
        self.best, self.best_epoch = saved.get("best"), saved.get("best_epoch")
        self.wait, self.last_epoch = int(saved.get("wait", 0)), saved.get("last_epoch")

    def improved(self, value):
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs or not _is_number(logs[self.monitor]):
            return      # not evaluated this epoch: not counted
        value = float(logs[self.monitor])
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            if self.filepath and self.write_files:
                from mrcnn.weights import save_weights_h5
                save_weights_h5(self.graph or getattr(self.model, "net", self.model),
                                self.filepath)
                if self.verbose:
                    print("\nEpoch {}: {} improved to {:.5g}, saved {}".format(
                        epoch + 1, self.monitor, value, self.filepath))
        else:
            self.wait += 1
        self.last_epoch = epoch + 1
        if self.state_path and self.write_files:
            from mrcnn.evaluate import _atomic_write_json
            _atomic_write_json(self.state_path, self.state())
        if self.patience and self.wait >= self.patience:
            self._stop(epoch)

    def _stop(self, epoch):
        reason = "Early stopping at epoch {}: {} did not improve for {} evaluation(s)".format(
            epoch + 1, self.monitor, self.wait)
        if self.best is not None:
            reason += " (best {:.5g} at epoch {})".format(self.best, self.best_epoch)
        self.stop_reason = reason
        self.model.stop_training = True
        logging.getLogger("mrcnn").info(self.stop_reason)
        if self.verbose:
            print("\n" + self.stop_reason)


def read_best_state(path):
    """The BestCheckpoint JSON state at ``path``, or None (no file, or unreadable: a
    warning)."""
    import json
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        warnings.warn("ignoring the unreadable best-checkpoint state {}: {}".format(
            path, err))
        return None


def logged_metric_names(config, evaluating=False, stats=EVALUATION_STATS):
    """Every epoch metric MaskRCNN.train logs for ``config``: "loss" and the named
    losses, their "val_" versions when VALIDATION_STEPS, the AP metrics when
    ``evaluating``."""
    names = ["loss"] + list(loss_output_names(config))
    if config.VALIDATION_STEPS:
        names += ["val_" + n for n in names]
    if evaluating:
        names += list(evaluation_metric_names(stats))
    return names


def _positive_int_arg(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError("{} must be an integer >= 1 (or None), got {!r}".format(name, value))


def check_validation_args(config, evaluate_every, evaluate_limit, keep_best, keep_last,
                          early_stopping_patience, evaluating=None):
    """Check MaskRCNN.train's validation arguments; return (monitor, mode) of the metric
    to keep / stop on, or (None, None). ``evaluating`` (default: evaluate_every is set)
    tells whether the AP metrics will be logged (also by a user's EvaluationCallback)."""
    for name, value in (("evaluate_every", evaluate_every), ("evaluate_limit", evaluate_limit),
                        ("keep_last", keep_last),
                        ("early_stopping_patience", early_stopping_patience)):
        _positive_int_arg(name, value)
    evaluating = evaluate_every is not None if evaluating is None else evaluating
    if evaluate_limit is not None and evaluate_every is None:
        raise ValueError("evaluate_limit={} needs evaluate_every".format(evaluate_limit))
    if keep_best is None:
        if early_stopping_patience is not None and not evaluating:
            raise ValueError("early_stopping_patience={} needs evaluate_every (it stops on "
                             "val_segm_AP) or keep_best (the metric to watch)".format(
                                 early_stopping_patience))
        if early_stopping_patience is None:
            return None, None
        return "val_segm_AP", "max"
    if isinstance(keep_best, str):
        keep_best = (keep_best, "auto")
    if not (isinstance(keep_best, (tuple, list)) and len(keep_best) == 2
            and isinstance(keep_best[0], str)):
        raise ValueError("keep_best must be a metric name or (name, 'max'|'min'), got "
                         "{!r}".format(keep_best))
    monitor, mode = keep_best
    known = logged_metric_names(config, evaluating)
    if monitor not in known:
        hint = (" (the AP metrics need evaluate_every)" if monitor.startswith("val_")
                and "AP" in monitor and not evaluating else
                " (val_ losses need config.VALIDATION_STEPS > 0)"
                if monitor.startswith("val_") and "loss" in monitor else "")
        raise ValueError("keep_best={!r} is never logged{}; logged metrics: {}".format(
            monitor, hint, ", ".join(known)))
    if mode not in ("auto", "max", "min"):
        raise ValueError("keep_best mode must be 'max' or 'min', got {!r}".format(mode))
    return monitor, metric_mode(monitor) if mode == "auto" else mode
