"""The training step, optimizer and callbacks.

``TrainingModel`` wraps the functional training graph (whose outputs include one scalar
per named loss) and owns ``train_step``/``test_step``: the weighted sum of the losses
(LOSS_WEIGHTS, and the cascade stage weights), Matterport's L2 weight decay, global
gradient clipping, and one ``Mean`` tracker per named loss so Keras's progress bar and
History show every loss by name. Under a ``tf.distribute`` strategy the per-replica loss
is divided by the replica count, because gradients are summed across replicas.
"""

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
    that hold a non-finite value."""

    def __init__(self, graph, checkpoint_path, verbose=0):
        super().__init__()
        self.net = graph
        self.checkpoint_path = checkpoint_path
        self.verbose = verbose
        self.last_saved = None

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
