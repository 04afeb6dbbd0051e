"""Keras-2-layout HDF5 weight files: load by layer name (with a report) and save atomically.

Matterport's ``mask_rcnn_coco.h5`` and the Keras-2 ImageNet ResNet files use the legacy
Keras-2 layout, which Keras 3 only reads through ``load_weights(by_name=True,
skip_mismatch=True)`` with warnings and no account of what loaded. This module reads and
writes that layout directly with h5py, for any ``keras.Model``:

    file root (or its ``model_weights`` group, in full-model files)
      attrs: layer_names = [layer, ...]      (bytes or str; may be chunked as
                                              layer_names0, layer_names1, ... when large)
             backend, keras_version
      <layer>/                               one group per layer
        attrs: weight_names = ["<layer>/kernel:0", "<layer>/bias:0", ...]
        <layer>/kernel:0                     one dataset per weight, at the path given by
                                             its weight name inside the group

A Keras-2 nested sub-model (Matterport's ``rpn_model``) is one group whose weight names
start with the inner layers' names (``rpn_conv_shared/kernel:0``); the loader maps those to
the nested layers by that prefix. Layers are matched by name at every nesting depth.

Public names: ``load_weights_by_name``, ``LoadReport``, ``save_weights_h5``,
``read_weight_groups``, ``convert_keras_applications_resnet``,
``keras_applications_resnet_to_matterport_name``, ``imagenet_weights_path``,
``download_imagenet_resnet50``, ``adapt_input_kernel``,
``IMAGENET_RESNET50_URL``, ``WeightsFileError``.
"""

import dataclasses
import errno
import logging
import os
import re
import tempfile

import h5py
import numpy as np

logger = logging.getLogger(__name__)

# Matterport's MaskRCNN.get_imagenet_weights file: the Keras-2 era ResNet-50 without the
# classifier, whose layer names (conv1, bn_conv1, res2a_branch2a, ...) are Matterport's.
IMAGENET_RESNET50_URL = ("https://github.com/fchollet/deep-learning-models/releases/download/"
                         "v0.2/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
IMAGENET_RESNET50_MD5 = "a268eb855778b3df3c7506639542a6af"
# keras.applications files (names conv1_conv, conv2_block1_1_conv, ...): converted on use.
KERAS_APPLICATIONS_RESNET_URL = ("https://storage.googleapis.com/tensorflow/"
                                 "keras-applications/resnet/{}_weights_tf_dim_ordering_tf_"
                                 "kernels_notop.h5")
KERAS_APPLICATIONS_RESNET_NOTOP_MD5 = {
    "resnet50": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet101": "88cf7a10940856eca736dc7b7e228a21",
}
# Batch-norm epsilons: keras.applications ResNet uses 1.001e-5; Matterport's BatchNorm
# (a keras BatchNormalization with default arguments) uses Keras' default 1e-3.
KERAS_APPLICATIONS_BN_EPSILON = 1.001e-5
MATTERPORT_BN_EPSILON = 1e-3

# HDF5 object headers hold at most 64 KiB of attributes; longer lists are chunked.
_HDF5_ATTR_LIMIT = 64512

__all__ = [
    "LoadReport", "WeightsFileError", "load_weights_by_name", "save_weights_h5",
    "read_weight_groups", "convert_keras_applications_resnet",
    "keras_applications_resnet_to_matterport_name", "imagenet_weights_path",
    "download_imagenet_resnet50", "adapt_input_kernel",
    "IMAGENET_RESNET50_URL", "IMAGENET_RESNET50_MD5",
]


class WeightsFileError(ValueError):
    """A weight file is unreadable, not Keras-2 layout, or does not fit the model.

    ``report`` holds the LoadReport when the error comes from a load that matched nothing.
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class LoadReport:
    """What ``load_weights_by_name`` did, layer by layer (names are Keras layer names).

    loaded: layers whose every weight was assigned from the file.
    skipped_not_in_model: file layers (with weights) that no model layer is named after.
    skipped_excluded: file layers matching a model layer but excluded by ``exclude``.
    skipped_shape_mismatch: (layer, weight_name, file_shape, model_shape), one per
        mismatching weight; such a layer is left untouched.
    skipped_incompatible: (layer, reason) for layers whose weight count differs from the
        file's (e.g. a conv with / without bias); left untouched.
    model_layers_not_in_file: model layers with weights that the file does not mention.
    adapted_channels: (layer, weight_name, file_shape, model_shape) for image-input conv
        kernels loaded into a model with another IMAGE_CHANNEL_COUNT (see
        adapt_input_kernel); such layers are also in ``loaded``.
    """
    filepath: str = ""
    loaded: list = dataclasses.field(default_factory=list)
    skipped_not_in_model: list = dataclasses.field(default_factory=list)
    skipped_excluded: list = dataclasses.field(default_factory=list)
    skipped_shape_mismatch: list = dataclasses.field(default_factory=list)
    skipped_incompatible: list = dataclasses.field(default_factory=list)
    model_layers_not_in_file: list = dataclasses.field(default_factory=list)
    adapted_channels: list = dataclasses.field(default_factory=list)

    def summary(self):
        """A human-readable multi-line account of the load."""
        lines = ["Loaded {} layer(s) from {}".format(len(self.loaded), self.filepath)]

        def names(items, limit=12):
            items = list(items)
            more = "" if len(items) <= limit else ", ... ({} more)".format(len(items) - limit)
            return ", ".join(items[:limit]) + more

        for layer, weight, fshape, mshape in self.adapted_channels:
            lines.append("  {} {}: {}-channel file kernel adapted to {} input channels "
                         "(mrcnn.weights.adapt_input_kernel)".format(
                             layer, weight, fshape[2], mshape[2]))
        if self.skipped_excluded:
            lines.append("  excluded ({}): {}".format(len(self.skipped_excluded),
                                                      names(self.skipped_excluded)))
        if self.skipped_shape_mismatch:
            lines.append("  shape mismatch ({} weight(s), layers left untouched):".format(
                len(self.skipped_shape_mismatch)))
            for layer, weight, fshape, mshape in self.skipped_shape_mismatch:
                lines.append("    {} {}: file {} vs model {}".format(
                    layer, weight, tuple(fshape), tuple(mshape)))
        if self.skipped_incompatible:
            lines.append("  incompatible ({}), left untouched:".format(
                len(self.skipped_incompatible)))
            for layer, reason in self.skipped_incompatible:
                lines.append("    {}: {}".format(layer, reason))
        if self.skipped_not_in_model:
            lines.append("  in file but not in model ({}): {}".format(
                len(self.skipped_not_in_model), names(self.skipped_not_in_model)))
        if self.model_layers_not_in_file:
            lines.append("  model layers not in file ({}): {}".format(
                len(self.model_layers_not_in_file), names(self.model_layers_not_in_file)))
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


# ---------------------------------------------------------------------------- reading
def _decode(value):
    """bytes / np.bytes_ / str -> str."""
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _read_name_list(attrs, name):
    """A list-of-names attribute as a list of str, or None when absent.

    h5py 3 returns fixed-length byte strings (Keras 2 files) as an 'S' array of bytes and
    variable-length strings as an object array of str; a scalar comes back alone. Lists
    too large for one HDF5 attribute are stored as ``name0``, ``name1``, ...
    """
    if name in attrs:
        chunks = [attrs[name]]
    elif name + "0" in attrs:
        chunks, k = [], 0
        while "{}{}".format(name, k) in attrs:
            chunks.append(attrs["{}{}".format(name, k)])
            k += 1
    else:
        return None
    out = []
    for chunk in chunks:
        arr = np.asarray(chunk)
        out.extend(_decode(v) for v in arr.reshape(-1))
    return out


def _check_file(filepath):
    filepath = os.fspath(filepath)
    if not os.path.exists(filepath):
        raise FileNotFoundError(errno.ENOENT, "weight file not found", filepath)
    if os.path.isdir(filepath):
        raise WeightsFileError("{}: is a directory, not an HDF5 weight file".format(filepath))
    if not h5py.is_hdf5(filepath):
        hint = ""
        if filepath.endswith(".keras"):
            hint = " (a Keras 3 .keras archive: use keras.models.load_model)"
        raise WeightsFileError("{}: not an HDF5 file{}".format(filepath, hint))
    return filepath


def _open_h5(filepath):
    """h5py.File for reading; a truncated or corrupt file gets an error naming it."""
    try:
        return h5py.File(filepath, "r")
    except OSError as err:
        raise WeightsFileError("{}: cannot open the HDF5 file (truncated or corrupt?): "
                               "{}".format(filepath, err)) from err


def _weights_root(f, filepath):
    """The group holding ``layer_names``: the file root or its ``model_weights`` group."""
    if _read_name_list(f.attrs, "layer_names") is not None:
        return f
    if "model_weights" in f and isinstance(f["model_weights"], h5py.Group) and \
            _read_name_list(f["model_weights"].attrs, "layer_names") is not None:
        return f["model_weights"]
    hint = ""
    if "layers" in f and "vars" in f:
        hint = (" It looks like a Keras 3 '.weights.h5' file (keyed by model structure, not "
                "layer name): load it with keras_model.load_weights().")
    raise WeightsFileError(
        "{}: HDF5 file has no 'layer_names' attribute (neither at the root nor in a "
        "'model_weights' group), so it is not a Keras-2-layout weight file.{}".format(
            filepath, hint))


def _weight_suffix(weight_name):
    """'rpn_conv_shared/kernel:0' -> 'kernel' (the variable's own name)."""
    return re.sub(r":\d+$", "", weight_name.split("/")[-1])


# Keras 1 named weights '<layer>_W:0', '<layer>_running_std:0', ... (no slash). The
# Keras-2-era ImageNet ResNet-50 file Matterport uses (IMAGENET_RESNET50_URL) is such a
# file. Keras 1's running_std held the variance, so it maps to moving_variance unchanged.
_KERAS1_ALIASES = {"W": "kernel", "b": "bias", "running_mean": "moving_mean",
                   "running_std": "moving_variance"}


def _file_weight_key(weight_name, layer_name):
    """Canonical variable name of a file weight: 'kernel', 'gamma', 'moving_variance'..."""
    s = _weight_suffix(weight_name)
    if "/" not in weight_name and s.startswith(layer_name + "_"):
        s = s[len(layer_name) + 1:]
        s = _KERAS1_ALIASES.get(s, s)
    return s


@dataclasses.dataclass
class _FileUnit:
    """The weights of one layer in the file: group name and weight names inside it."""
    layer: str
    group: str
    weight_names: list


def _file_units(root, filepath, leaf_names):
    """Split the file's layer groups into per-layer units.

    A group named after a model leaf layer is one unit. Otherwise, when its weight names
    start with other names (a Keras-2 nested model such as rpn_model holding
    'rpn_conv_shared/kernel:0'), it is split by that first name component, each part
    being the weights of the inner layer of that name.
    """
    layer_names = _read_name_list(root.attrs, "layer_names")
    units = []
    for gname in layer_names:
        if gname not in root or not isinstance(root[gname], h5py.Group):
            continue    # Keras 2 lists weightless layers too; some writers omit their groups
        wnames = _read_name_list(root[gname].attrs, "weight_names") or []
        if not wnames:
            continue
        for wn in wnames:
            if wn not in root[gname] or not isinstance(root[gname][wn], h5py.Dataset):
                raise WeightsFileError("{}: layer group '{}' lists weight '{}' but holds no "
                                       "such dataset (corrupt file?)".format(filepath, gname,
                                                                             wn))
        prefixes = [wn.split("/")[0] if "/" in wn else gname for wn in wnames]
        if gname in leaf_names or all(p == gname for p in prefixes):
            units.append(_FileUnit(gname, gname, list(wnames)))
            continue
        by_prefix = {}
        for p, wn in zip(prefixes, wnames):
            by_prefix.setdefault(p, []).append(wn)
        for p, wns in by_prefix.items():
            units.append(_FileUnit(p, gname, wns))
    return units


def read_weight_groups(filepath):
    """Read a whole Keras-2-layout file into memory.

    Returns an ordered dict {layer_name: [(weight_name, np.ndarray), ...]} with nested
    model groups split into their inner layers (see module docstring); weight names are
    the variable names without layer prefix or ':0' ('kernel', 'gamma', ...).
    Raises FileNotFoundError / WeightsFileError naming the file.
    """
    filepath = _check_file(filepath)
    out = {}
    with _open_h5(filepath) as f:
        root = _weights_root(f, filepath)
        for unit in _file_units(root, filepath, leaf_names=set()):
            if unit.layer in out:
                continue
            g = root[unit.group]
            out[unit.layer] = [(_file_weight_key(wn, unit.layer), np.asarray(g[wn][()]))
                               for wn in unit.weight_names]
    return out


# ---------------------------------------------------------------------------- model side
def _as_keras_model(model):
    # Accept Matterport-style wrappers (MaskRCNN) that hold the graph in .keras_model.
    return getattr(model, "keras_model", model)


def _leaf_layers(model):
    """All weight-bearing non-model layers, recursing into nested keras.Model layers.

    Returns a list of (layer, container_name_or_None), each layer object once, in model
    order. A nested Model is a container, never a leaf: its layers are walked instead.
    """
    import keras

    seen, out = set(), []

    def walk(layer, container):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            for sub in layer.layers:
                walk(sub, layer.name)
        elif layer.weights:
            out.append((layer, container))

    model = _as_keras_model(model)
    for layer in model.layers:
        walk(layer, None)
    return out


def _compile_patterns(exclude):
    if exclude is None:
        return []
    if isinstance(exclude, str):
        exclude = [exclude]
    pats = []
    for e in exclude:
        try:
            pats.append((e, re.compile(e)))
        except re.error as err:
            raise ValueError("exclude: {!r} is not a layer name or valid regex: {}".format(
                e, err)) from None
    return pats


def _excluded(name, patterns):
    return any(name == raw or pat.fullmatch(name) for raw, pat in patterns)


def _match_weights(unit, layer):
    """Pair the unit's file weight names with the layer's variables.

    By variable name ('gamma' <-> gamma, Keras-1 names included) when the names are unique
    on both sides and agree, so batch-norm order never matters. Otherwise by position, file
    order against layer.weights, which is Keras 2's own rule (trainable then
    non-trainable, i.e. gamma, beta, moving_mean, moving_variance for batch norm); shapes
    are still checked. Returns (pairs, None) with pairs a list of (weight_name, variable),
    or (None, reason) when the weight counts differ.
    """
    variables = list(layer.weights)
    fnames = [_file_weight_key(wn, unit.layer) for wn in unit.weight_names]
    mnames = [_weight_suffix(v.name) for v in variables]
    if len(fnames) != len(mnames):
        return None, "file has {} weight(s) {}, model layer has {} {}".format(
            len(fnames), fnames, len(mnames), mnames)
    if len(set(fnames)) == len(fnames) == len(set(mnames)) and set(fnames) == set(mnames):
        by_name = {_weight_suffix(v.name): v for v in variables}
        return [(wn, by_name[s]) for wn, s in zip(unit.weight_names, fnames)], None
    return list(zip(unit.weight_names, variables)), None


def load_weights_by_name(model, filepath, exclude=None, verbose=0):
    """Load a Keras-2-layout HDF5 weight file into ``model`` by layer name.

    model: any keras.Model (or an object with a ``keras_model`` attribute). Layers are
        matched by name at every nesting depth, so the layers of a nested sub-model (e.g.
        rpn_model's rpn_conv_shared) load from either their own top-level group or from a
        Keras-2 group of the sub-model. When several model layers share a name, all get
        the weights.
    filepath: .h5 file, weights-only or full-model (``model_weights`` group).
    exclude: layer names or regexes (full match) to skip, e.g. Matterport's
        ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]. A pattern
        matching a Keras-2 sub-model group name (e.g. "rpn_model") excludes its layers.
    verbose: 0 silent, 1 print the summary, 2 also list the loaded layers.

    Every weight's shape is checked before anything is assigned; a layer with any
    mismatch is skipped whole and left untouched, except the image-input convolution
    (IMAGE_INPUT_CONVS) of a model with IMAGE_CHANNEL_COUNT != 3 loading an RGB file: its
    kernel is adapted by ``adapt_input_kernel`` and listed in ``report.adapted_channels``. A non-numeric weight (string, opaque
    bytes) raises WeightsFileError naming the file, weight and layer, before any assignment. All values are read from the file before
    the first assignment, so a read error never leaves a layer half loaded.
    Returns a LoadReport. Raises FileNotFoundError / WeightsFileError naming the file when
    it is missing, not HDF5, not Keras-2 layout, or when no layer at all could be loaded
    (a file for another model or backbone).
    """
    filepath = _check_file(filepath)
    patterns = _compile_patterns(exclude)
    leaves = _leaf_layers(model)
    by_name = {}
    for layer, _ in leaves:
        by_name.setdefault(layer.name, []).append(layer)

    report = LoadReport(filepath=filepath)
    with _open_h5(filepath) as f:
        root = _weights_root(f, filepath)
        units = _file_units(root, filepath, set(by_name))
        # 1. Decide, per file layer, what happens; check every shape. Nothing assigned yet.
        plan, in_file = _plan_load(root, units, by_name, patterns, report, filepath)
        # 2. Read every value (a failing read aborts before any assignment).
        values = _read_planned_values(root, plan, filepath)

    report.model_layers_not_in_file = sorted(set(by_name) - in_file)
    if not plan:
        raise _nothing_loaded_error(report, filepath)

    # 3. Assign.
    for (unit, _), layer_values in zip(plan, values):
        for var, value in layer_values:
            var.assign(value)
        report.loaded.append(unit.layer)
    _announce_load(report, verbose, filepath)
    return report


def _plan_load(root, units, by_name, patterns, report, filepath):
    """Which file layers to load: (plan [(unit, [(weight_name, variable)])], names of
    the file's layers). Layers skipped are recorded in ``report``; nothing is assigned."""
    plan, in_file = [], set()
    for unit in units:
        if unit.layer in in_file:
            continue    # the same layer twice (e.g. flat group and sub-model group)
        in_file.add(unit.layer)
        if unit.layer not in by_name:
            report.skipped_not_in_model.append(unit.layer)
            continue
        if _excluded(unit.layer, patterns) or (
                unit.group != unit.layer and _excluded(unit.group, patterns)):
            report.skipped_excluded.append(unit.layer)
            continue
        layer_pairs, mismatches, reason = _check_unit_weights(
            root[unit.group], unit, by_name[unit.layer], filepath)
        adapted = [m for m in mismatches if _channels_adaptable(*m)]
        if reason is not None:
            report.skipped_incompatible.append((unit.layer, reason))
        elif len(adapted) < len(mismatches):
            report.skipped_shape_mismatch.extend(mismatches)
        else:
            report.adapted_channels.extend(adapted)
            plan.append((unit, layer_pairs))
    return plan, in_file


# Convolutions that read the image itself: the only kernels whose input-channel count
# follows IMAGE_CHANNEL_COUNT (every backbone names its stem convolution conv1).
IMAGE_INPUT_CONVS = ("conv1",)


def _channels_adaptable(layer, weight_name, fshape, mshape):
    """True for an image-input conv kernel that differs from the file only in its number
    of input channels (the file's being RGB)."""
    return (layer in IMAGE_INPUT_CONVS and len(fshape) == 4 and len(mshape) == 4 and
            fshape[2] == 3 and fshape[:2] == mshape[:2] and fshape[3] == mshape[3])


def adapt_input_kernel(kernel, channels):
    """An RGB convolution kernel for an image of ``channels`` planes.

    kernel: [kh, kw, 3, filters] trained on RGB images (planes in R, G, B order, mean
    subtracted). Returns [kh, kw, channels, filters] float32:
      * channels > 3: the first three planes keep the RGB kernels unchanged, and every
        extra plane gets the mean of the RGB kernels divided by the number of extra
        planes, so the extra planes together start as heavy as one colour plane. An
        extra plane equal to its MEAN_PIXEL (0 after mean subtraction) therefore leaves
        the RGB response exactly as it was, and gradients reach the new planes at once.
      * channels < 3: each plane gets the sum of the RGB kernels divided by ``channels``;
        for one plane (grayscale) the response to a gray image equals the RGB model's
        response to that image replicated into R, G and B.
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError("adapt_input_kernel: kernel must be [kh, kw, 3, filters], got "
                         "{}".format(kernel.shape))
    channels = int(channels)
    if channels < 1:
        raise ValueError("adapt_input_kernel: channels must be >= 1, got {}".format(
            channels))
    if channels == 3:
        return kernel
    if channels < 3:
        plane = kernel.sum(axis=2, keepdims=True) / channels
        return np.repeat(plane, channels, axis=2)
    extra = kernel.mean(axis=2, keepdims=True) / (channels - 3)
    return np.concatenate([kernel, np.repeat(extra, channels - 3, axis=2)], axis=2)


def _check_unit_weights(group, unit, layers, filepath):
    """Pair one file layer's weights with every model layer of that name, checking types
    and shapes. Returns (pairs, shape mismatches, reason): reason is not None when the
    weight counts differ. Raises WeightsFileError for a non-numeric weight."""
    layer_pairs, mismatches, reason = [], [], None
    for layer in layers:
        pairs, reason = _match_weights(unit, layer)
        if pairs is None:
            break
        for wn, var in pairs:
            kind = group[wn].dtype.kind
            if kind not in "biuf":
                # Strings, opaque bytes, objects: never a weight, and assigning
                # them would fail half-way with numpy's message.
                raise WeightsFileError(
                    "{}: weight '{}' of layer '{}' is not numeric (HDF5 dtype {}); "
                    "nothing was loaded".format(filepath, wn, unit.layer,
                                                group[wn].dtype))
            fshape, mshape = tuple(group[wn].shape), tuple(var.shape)
            if fshape != mshape:
                mismatches.append((unit.layer, wn, fshape, mshape))
        layer_pairs.extend(pairs)
    return layer_pairs, mismatches, reason


def _read_planned_values(root, plan, filepath):
    """Every planned value as [[(variable, array)] per layer], read before any assignment."""
    values = []
    for unit, pairs in plan:
        group = root[unit.group]
        try:
            values.append([(var, _fit_to(group[wn][()], var)) for wn, var in pairs])
        except Exception as err:
            raise WeightsFileError("{}: cannot read weights of layer '{}': {}".format(
                filepath, unit.layer, err)) from err
    return values


def _fit_to(value, var):
    """The file's value, its input channels adapted when _plan_load allowed that."""
    if tuple(value.shape) != tuple(var.shape):
        return adapt_input_kernel(value, var.shape[2])
    return value


def _nothing_loaded_error(report, filepath):
    """The WeightsFileError for a file of which no layer could be loaded."""
    why = "no layer of {} matches the model: is it for another backbone/model?".format(
        filepath)
    if report.skipped_excluded or report.skipped_shape_mismatch or \
            report.skipped_incompatible:
        why = ("no layer of {} could be loaded into the model (every matching layer was "
               "excluded or has other shapes): is it for another backbone/model?".format(
                   filepath))
    return WeightsFileError(why + "\n" + report.summary(), report=report)


def _announce_load(report, verbose, filepath):
    """Print the report as ``verbose`` asks; when quiet, still warn of shape mismatches."""
    if verbose:
        print(report.summary())
        if verbose > 1:
            for name in report.loaded:
                print("    loaded", name)
    if report.adapted_channels and not verbose:
        logger.warning("%s: %s", filepath, "; ".join(
            "{} kernel adapted from 3 to {} input channels".format(layer, mshape[2])
            for layer, _, _, mshape in report.adapted_channels))
    if report.skipped_shape_mismatch and not verbose:
        # Matterport raised here; these layers keep their initial values, so say so
        # even when quiet (a new class count without exclude=[...] lands here).
        mismatched = sorted({m[0] for m in report.skipped_shape_mismatch})
        logger.warning("%s: %d layer(s) not loaded, shapes differ from the model: %s",
                       filepath, len(mismatched), ", ".join(mismatched))


# ---------------------------------------------------------------------------- writing
def _write_name_list(attrs, name, names):
    """Store a list of names as fixed-length bytes (Keras 2 style), chunked if too large."""
    data = np.array([n.encode("utf8") for n in names], dtype=bytes) if names \
        else np.zeros((0,), dtype="S1")
    if data.nbytes <= _HDF5_ATTR_LIMIT:
        attrs[name] = data
        return
    n_chunks = int(np.ceil(data.nbytes / _HDF5_ATTR_LIMIT))
    while True:
        chunks = np.array_split(data, n_chunks)
        if all(c.nbytes <= _HDF5_ATTR_LIMIT for c in chunks):
            break
        n_chunks += 1
    for k, chunk in enumerate(chunks):
        attrs["{}{}".format(name, k)] = chunk


def _write_layer_group(root, layer_name, weights):
    """One layer group: weight_names attribute and one dataset per (name, array)."""
    g = root.create_group(layer_name)
    _write_name_list(g.attrs, "weight_names", [wn for wn, _ in weights])
    for wn, value in weights:
        g.create_dataset(wn, data=value)


def _new_file_mode(filepath):
    """Mode of the file being replaced, else 0666 minus the process umask."""
    try:
        return os.stat(filepath).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_groups_atomic(filepath, groups):
    """Write {layer: [(weight_name, array)]} as a Keras-2-layout file, atomically.

    The file is written under a temporary name in the destination directory, flushed and
    fsynced, then renamed over ``filepath`` (os.replace is atomic on POSIX and Windows), so
    readers see the old file or the complete new one, never a truncated file. The
    temporary file is removed on any failure.
    """
    import keras

    filepath = os.fspath(filepath)
    directory = os.path.dirname(os.path.abspath(filepath))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "directory of the weight file does not exist",
                                directory)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(filepath) + ".",
                               suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            _write_name_list(f.attrs, "layer_names", list(groups))
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = str(keras.__version__).encode("utf8")
            for layer_name, weights in groups.items():
                _write_layer_group(f, layer_name, weights)
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp, _new_file_mode(filepath))
        os.replace(tmp, filepath)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    # Persist the rename itself (best effort: not every platform can fsync a directory).
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return filepath


def _layer_weight_names(layer):
    """Keras-2 style names '<layer>/<var>:0', made unique when a layer reuses a name."""
    names = ["{}/{}:0".format(layer.name, _weight_suffix(v.name)) for v in layer.weights]
    if len(set(names)) == len(names):
        return names
    # A composite layer with several 'kernel's: keep the variable path inside the layer;
    # the loader then pairs these by position (layer.weights order, as written).
    names = []
    for i, v in enumerate(layer.weights):
        path = str(getattr(v, "path", v.name))
        if path.startswith(layer.name + "/"):
            path = path[len(layer.name) + 1:]
        names.append("{}/{}_{}:0".format(layer.name, i, path.replace(":", "_")))
    return names


def save_weights_h5(model, filepath):
    """Save ``model``'s weights in the Keras-2 layout, atomically (see module docstring).

    Root attributes layer_names, backend="tensorflow", keras_version; one group per layer
    with weights, datasets named '<layer>/<var>:0' in layer.weights order (Keras-2 order:
    gamma, beta, moving_mean, moving_variance for batch norm).

    Choice for nested sub-models (e.g. rpn_model): each inner layer is written as its own
    top-level group under its own layer name, not as one sub-model group as Keras 2 did.
    A reload by name then finds every layer directly whatever the nesting of the model
    that reads the file. Weightless layers are not listed. Two different layers with the
    same name (possible across nesting levels) raise ValueError, as one file cannot hold
    both under one name.
    Returns filepath.
    """
    groups = {}
    for layer, _ in _leaf_layers(model):
        if layer.name in groups:
            raise ValueError("save_weights_h5: two different layers are named '{}'; names "
                             "must be unique across nested models".format(layer.name))
        names = _layer_weight_names(layer)
        groups[layer.name] = [(wn, np.asarray(v.numpy()))
                              for wn, v in zip(names, layer.weights)]
    if not groups:
        raise ValueError("save_weights_h5: the model has no weights to save")
    return _write_groups_atomic(filepath, groups)


# ---------------------------------------------------------------------------- conversion
_APPS_BLOCK = re.compile(r"conv([2-5])_block(\d+)_([0-3])_(conv|bn)$")
_APPS_CLASSIFIER = ("predictions", "probs", "fc1000")


def keras_applications_resnet_to_matterport_name(name):
    """Map one keras.applications ResNet (v1) layer name to Matterport's.

    conv1_conv -> conv1, conv1_bn -> bn_conv1,
    conv{s}_block{i}_{j}_conv -> res{s}{letter}_branch{2a|2b|2c} for j = 1, 2, 3 and
    res{s}{letter}_branch1 for j = 0 (the projection shortcut); bn likewise with the
    'bn' prefix (bn2a_branch2a). Block i = 1, 2, ... -> letter a, b, ... (ResNet101
    stage 4: a..w). Returns None for the ImageNet classifier ("predictions").
    Raises ValueError for anything else (ResNetV2 pre-activation layers, ResNet152's
    blocks beyond 'z', non-ResNet names).
    """
    if name == "conv1_conv":
        return "conv1"
    if name == "conv1_bn":
        return "bn_conv1"
    if name in _APPS_CLASSIFIER:
        return None
    m = _APPS_BLOCK.match(name)
    if m is None:
        if name == "post_bn" or name.endswith("_preact_bn"):
            raise ValueError("layer {!r}: a ResNetV2 (pre-activation) weight set; Matterport's "
                             "backbone is ResNet v1".format(name))
        raise ValueError("layer {!r} is not a keras.applications ResNet v1 layer".format(name))
    stage, block, branch, kind = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if not 1 <= block <= 26:
        raise ValueError("layer {!r}: block {} has no Matterport letter name (a..z)".format(
            name, block))
    letter = chr(ord("a") + block - 1)
    suffix = "branch1" if branch == 0 else "branch2" + "abc"[branch - 1]
    prefix = "res" if kind == "conv" else "bn"
    return "{}{}{}_{}".format(prefix, stage, letter, suffix)


def convert_keras_applications_resnet(source, dst_path, dst_bn_epsilon=MATTERPORT_BN_EPSILON,
                                      src_bn_epsilon=KERAS_APPLICATIONS_BN_EPSILON):
    """Rename a keras.applications ResNet50/ResNet101 weight set to Matterport's names.

    source: a keras.Model built by keras.applications.ResNet50/ResNet101 (any
        include_top), or the path of its Keras-2-layout .h5 weight file (e.g. Keras'
        resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5).
    dst_path: output .h5 file (Keras-2 layout, written atomically), loadable with
        load_weights_by_name into a Matterport-named backbone.
    dst_bn_epsilon / src_bn_epsilon: keras.applications batch norms use eps 1.001e-5,
        Matterport's use Keras' default 1e-3. Each gamma is multiplied by
        sqrt(var + dst_eps) / sqrt(var + src_eps) so that a batch norm with dst_eps and
        the same moving statistics computes exactly the source layer's function at
        inference (frozen BN, Matterport's default). Pass dst_bn_epsilon=None to copy
        gamma unchanged.

    Both use biased convolutions (use_bias=True), so kernels and biases copy one to one.
    The classifier ("predictions") is dropped. Returns {source_name: matterport_name}.
    """
    src_groups, src_desc = _resnet_source_groups(source)
    mapping, groups = {}, {}
    for name, weights in src_groups.items():
        try:
            dst = keras_applications_resnet_to_matterport_name(name)
        except ValueError as err:
            raise ValueError("{}: {}".format(src_desc, err)) from None
        if dst is None:
            continue
        weights = dict(weights)
        if dst.startswith("bn"):
            out = _converted_batch_norm(weights, name, src_desc, dst_bn_epsilon,
                                        src_bn_epsilon)
        else:
            if set(weights) != {"kernel", "bias"}:
                raise ValueError("{}: conv {!r} has weights {}, expected kernel and bias".format(
                    src_desc, name, sorted(weights)))
            out = [("kernel", weights["kernel"]), ("bias", weights["bias"])]
        mapping[name] = dst
        groups[dst] = [("{}/{}:0".format(dst, wn), value) for wn, value in out]
    _write_groups_atomic(dst_path, groups)
    return mapping


def _resnet_source_groups(source):
    """({layer: [(variable name, array)]}, description for messages) of a
    keras.applications ResNet given as a model or a weight file path."""
    if isinstance(source, (str, os.PathLike)):
        src_groups = read_weight_groups(source)
        src_desc = os.fspath(source)
    else:
        src_groups = {layer.name: [(_weight_suffix(v.name), np.asarray(v.numpy()))
                                   for v in layer.weights]
                      for layer, _ in _leaf_layers(source)}
        src_desc = "model {!r}".format(getattr(source, "name", source))
    if "conv1_conv" not in src_groups:
        raise ValueError("{}: no 'conv1_conv' layer; not a keras.applications ResNet weight "
                         "set".format(src_desc))
    return src_groups, src_desc


def _converted_batch_norm(weights, name, src_desc, dst_bn_epsilon, src_bn_epsilon):
    """One batch norm's {variable: array} -> Keras-2 ordered [(name, array)], gamma
    rescaled for the destination epsilon (see convert_keras_applications_resnet)."""
    missing = {"gamma", "beta", "moving_mean", "moving_variance"} - set(weights)
    if missing:
        raise ValueError("{}: batch norm {!r} lacks {}".format(src_desc, name,
                                                               sorted(missing)))
    gamma = weights["gamma"].astype(np.float64)
    var = weights["moving_variance"].astype(np.float64)
    if dst_bn_epsilon is not None:
        gamma = gamma * np.sqrt(var + dst_bn_epsilon) / np.sqrt(var + src_bn_epsilon)
    # Keras-2 batch-norm order.
    return [("gamma", gamma.astype(weights["gamma"].dtype)),
            ("beta", weights["beta"]),
            ("moving_mean", weights["moving_mean"]),
            ("moving_variance", weights["moving_variance"])]


def imagenet_weights_path(backbone="resnet50"):
    """Download (once, into ~/.keras/models) ImageNet weights with Matterport's layer names.

    resnet50: the Keras-2 era notop file Matterport's get_imagenet_weights uses
    (IMAGENET_RESNET50_URL), already in Matterport names. resnet101: keras.applications'
    notop file, converted once by convert_keras_applications_resnet to a cached
    'resnet101_imagenet_matterport_names.h5'. Returns the local path.
    Needs network access on first use; never called by the tests.
    """
    import keras

    if backbone == "resnet50":
        return keras.utils.get_file(
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", IMAGENET_RESNET50_URL,
            cache_subdir="models", file_hash=IMAGENET_RESNET50_MD5, hash_algorithm="md5")
    if backbone == "resnet101":
        fname = "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"
        src = keras.utils.get_file(
            fname, KERAS_APPLICATIONS_RESNET_URL.format("resnet101"), cache_subdir="models",
            file_hash=KERAS_APPLICATIONS_RESNET_NOTOP_MD5["resnet101"], hash_algorithm="md5")
        dst = os.path.join(os.path.dirname(src), "resnet101_imagenet_matterport_names.h5")
        if not os.path.exists(dst):
            convert_keras_applications_resnet(src, dst)
        return dst
    raise ValueError("imagenet_weights_path: no ImageNet weights for backbone {!r} (have "
                     "'resnet50', 'resnet101')".format(backbone))


def download_imagenet_resnet50():
    """Matterport's MaskRCNN.get_imagenet_weights: imagenet_weights_path("resnet50")."""
    return imagenet_weights_path("resnet50")
