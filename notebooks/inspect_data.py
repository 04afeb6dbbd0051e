# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Inspecting the training data
#
# Before training, check what the model will actually be fed: how many images and
# instances there are, whether masks and boxes line up after resizing and augmentation,
# which anchors exist and which of them become positive training targets for the RPN.
# Problems found here cost minutes; found after a day of training they cost a day.
#
# The notebook runs on the synthetic shapes, then shows the statistics of the real balloon
# and nucleus sets when `../shared/data` is present.

# %% [markdown]
# *Settings.* Sizes and step counts come from `_settings.py` (imported as `S`). By default
# they are the real tutorial values; with the environment variable `MRCNN_NB_FAST=1`
# (what the test suite sets) they shrink to a smoke test of a minute or two on a CPU, and the
# results are then meaningless. `MRCNN_NB_LOGS` moves the log and checkpoint folder.

# %%
# %matplotlib inline
import collections

import numpy as np
import matplotlib.pyplot as plt

import _settings as S   # puts the repository and samples/ on sys.path
from mrcnn import utils, visualize
from mrcnn.augment import iaa
from mrcnn.data import build_dataset, build_rpn_targets, load_image_gt
import shapes

print(S.summary())


# %% [markdown]
# ## Configuration and dataset

# %%
class DataConfig(shapes.ShapesConfig):
    IMAGE_MIN_DIM = S.IMAGE_SIZE
    IMAGE_MAX_DIM = S.IMAGE_SIZE
    IMAGES_PER_GPU = S.IMAGES_PER_GPU

config = DataConfig()
dataset = shapes.ShapesDataset()
dataset.load_shapes(S.STATS_IMAGES, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1], seed=7)
dataset.prepare()
print("Image count: {}".format(len(dataset.image_ids)))
print("Class count: {}".format(dataset.num_classes))
for i, name in enumerate(dataset.class_names):
    print("{:3}. {}".format(i, name))


# %% [markdown]
# ## Statistics
#
# Instances per class and per image tell whether some class is rare and how large
# `MAX_GT_INSTANCES` (the most instances per training image) must be.

# %%
def instance_stats(ds, image_ids):
    """Instances per class (Counter of class ids) and per image (list)."""
    per_class, per_image = collections.Counter(), []
    for image_id in image_ids:
        _, class_ids = ds.load_mask(image_id)
        per_class.update(int(c) for c in class_ids)
        per_image.append(len(class_ids))
    return per_class, per_image

per_class, per_image = instance_stats(dataset, dataset.image_ids)
for class_id in range(1, dataset.num_classes):
    print("{:10} {:5} instances".format(dataset.class_names[class_id], per_class[class_id]))
print("instances per image: min {}, mean {:.2f}, max {} (MAX_GT_INSTANCES = {})".format(
    min(per_image), np.mean(per_image), max(per_image), config.MAX_GT_INSTANCES))

fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].bar(dataset.class_names[1:], [per_class[c] for c in range(1, dataset.num_classes)])
axes[0].set_title("instances per class")
axes[1].hist(per_image, bins=np.arange(0, max(per_image) + 2) - 0.5)
axes[1].set_title("instances per image")
plt.show()

# %% [markdown]
# ## Images and masks
#
# A few images next to their masks, grouped by class.

# %%
for image_id in dataset.image_ids[:S.SHOW_IMAGES]:
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    visualize.display_top_masks(image, mask, class_ids, dataset.class_names, limit=3)

# %% [markdown]
# ## Boxes come from the masks
#
# The datasets give masks only; `utils.extract_bboxes` computes each box as the tightest
# rectangle around its mask, `(y1, x1, y2, x2)` with `y2`, `x2` one past the last pixel.
# So whatever happens to a mask (resizing, augmentation) the box follows it.

# %%
image_id = dataset.image_ids[0]
image = dataset.load_image(image_id)
mask, class_ids = dataset.load_mask(image_id)
bbox = utils.extract_bboxes(mask)
print("image", image_id, image.shape, "boxes:\n", bbox)
visualize.display_instances(image, bbox, mask, class_ids, dataset.class_names,
                            figsize=(5, 5));

# %% [markdown]
# ## Resizing
#
# Training images are resized to `IMAGE_SHAPE` by `utils.resize_image`. In `"square"` mode
# the long side is scaled to `IMAGE_MAX_DIM` and the rest is padded with zeros; `window`
# says where the real image sits, `scale` how much it was scaled. The masks go through
# `utils.resize_mask` with the same scale and padding. A wide image shows it best: here a
# shapes image cropped to half its height.

# %%
wide = image[: image.shape[0] // 2]
wide_mask = mask[: image.shape[0] // 2]
keep = wide_mask.any(axis=(0, 1))
wide_mask, wide_ids = wide_mask[:, :, keep], class_ids[keep]
resized, window, scale, padding, crop = utils.resize_image(
    wide, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
    mode=config.IMAGE_RESIZE_MODE)
resized_mask = utils.resize_mask(wide_mask, scale, padding, crop)
print("original:", wide.shape, "resized:", resized.shape)
print("window:", window, "scale:", scale, "padding:", padding)
visualize.display_instances(resized, utils.extract_bboxes(resized_mask), resized_mask,
                            wide_ids, dataset.class_names, figsize=(5, 5),
                            title="resized and padded");

# %% [markdown]
# ## Mini masks
#
# A full-size mask per instance costs a lot of memory for large images (a 1024×1024 image
# with 100 instances needs 100 MB of booleans). With `USE_MINI_MASK`, each mask is cropped to
# its box and resized to `MINI_MASK_SHAPE`; `utils.expand_mask` puts it back. The round trip
# loses detail on thin parts and sharp corners only, which the IoU below measures.

# %%
# An image with a circle or a triangle: squares survive the round trip exactly.
image_id = next((i for i in dataset.image_ids
                 if set(dataset.load_mask(i)[1].tolist()) - {1}), dataset.image_ids[0])
image, image_meta, gt_class_ids, gt_boxes, gt_masks = load_image_gt(
    dataset, config, image_id, use_mini_mask=False)
mini = utils.minimize_mask(gt_boxes, gt_masks, config.MINI_MASK_SHAPE)
expanded = utils.expand_mask(gt_boxes, mini, image.shape)
print("full masks:", gt_masks.shape, "mini masks:", mini.shape)
for i, class_id in enumerate(gt_class_ids):
    a, b = gt_masks[:, :, i], expanded[:, :, i]
    iou = np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)
    print("{:10} mask IoU after the round trip: {:.3f}".format(
        dataset.class_names[class_id], iou))
visualize.display_images([mini[:, :, i].astype(np.float32) for i in range(mini.shape[-1])]
                         + [expanded.any(axis=-1).astype(np.float32)],
                         titles=["mini {}".format(i) for i in range(mini.shape[-1])]
                         + ["expanded"], cmap="gray", cols=mini.shape[-1] + 1,
                         figsize=(3 * (mini.shape[-1] + 1), 3));

# %% [markdown]
# ## Augmentation
#
# `train(..., augmentation=...)` takes an imgaug augmenter (import `iaa` from
# `mrcnn.augment`, which makes imgaug work with numpy 2). Each image gets one random draw;
# the same draw is applied to its masks, but only geometric augmenters (flips, affine
# transforms, crops...) touch the masks, so a colour change cannot corrupt them. The
# boxes are then recomputed from the augmented masks. Below, the same image before and
# after, with its instances drawn: the masks must still cover the shapes.

# %%
augmentation = iaa.Sequential([
    iaa.Fliplr(0.5),
    iaa.Affine(rotate=(-30, 30), scale=(0.8, 1.2)),
    iaa.Multiply((0.7, 1.3)),
])
rng = np.random.default_rng(3)
before = load_image_gt(dataset, config, image_id, use_mini_mask=False)
after = load_image_gt(dataset, config, image_id, augmentation=augmentation,
                      use_mini_mask=False, rng=rng)
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, (img, _, ids, boxes, masks), title in zip(axes, [before, after],
                                                   ["original", "augmented"]):
    visualize.display_instances(img, boxes, masks, ids, dataset.class_names, ax=ax,
                                title=title)
plt.show()
print("instances before: {}, after: {}".format(len(before[2]), len(after[2])))

# %% [markdown]
# ## Anchors
#
# Anchors are the reference boxes the RPN scores and refines. There is one set per FPN level:
# level *i* has the stride `BACKBONE_STRIDES[i]` (one feature-map cell per that many pixels)
# and the anchor size `RPN_ANCHOR_SCALES[i]`, with one anchor per aspect ratio in
# `RPN_ANCHOR_RATIOS` at every cell. `utils.get_anchors` lists them all, level by level, in
# pixels of the input image.

# %%
anchors = utils.get_anchors(config, config.IMAGE_SHAPE)
backbone_shapes = utils.compute_backbone_shapes(config, config.IMAGE_SHAPE)
ratios = len(config.RPN_ANCHOR_RATIOS)
level_counts = [int(h * w * ratios) for h, w in backbone_shapes]
level_starts = np.cumsum([0] + level_counts)
print("Anchors: {} in total".format(len(anchors)))
print("Scales: {}, ratios: {}".format(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS))
for level, ((h, w), count) in enumerate(zip(backbone_shapes, level_counts)):
    print("level {}: feature map {}x{}, stride {:3}, anchor size {:4}: {:6} anchors".format(
        level, h, w, config.BACKBONE_STRIDES[level], config.RPN_ANCHOR_SCALES[level], count))
assert sum(level_counts) == len(anchors)

# %% [markdown]
# The anchors of the cell nearest the image centre, one panel per level (one box per aspect
# ratio), with the centres of all the level's anchors as white dots. The largest anchors
# reach beyond the image: that is expected, the RPN's box deltas and the clipping of
# proposals take care of it.

# %%
fig, axes = plt.subplots(1, len(backbone_shapes), figsize=(3.2 * len(backbone_shapes), 3.6))
for level, ax in enumerate(axes):
    rows, cols = backbone_shapes[level]
    first = level_starts[level] + ((rows // 2) * cols + cols // 2) * ratios
    visualize.draw_boxes(image, boxes=anchors[first:first + ratios],
                         visibilities=[2] * ratios, ax=ax,
                         title="P{}: size {}, stride {}".format(
                             level + 2, config.RPN_ANCHOR_SCALES[level],
                             config.BACKBONE_STRIDES[level]))
    level_anchors = anchors[level_starts[level]:level_starts[level + 1]]
    centres = (level_anchors[:, :2] + level_anchors[:, 2:]) / 2
    ax.plot(centres[:, 1], centres[:, 0], ".", color="white", markersize=2)
plt.show()

# %% [markdown]
# ## RPN targets
#
# `build_rpn_targets` labels every anchor: *positive* when its IoU with a ground-truth box is
# at least `RPN_POSITIVE_IOU` (and the best anchor of each box is always positive),
# *negative* below `RPN_NEGATIVE_IOU`, *neutral* otherwise. It then keeps at most
# `RPN_TRAIN_ANCHORS_PER_IMAGE` of them, at most half positive. For each positive anchor it
# also returns the box deltas that move the anchor onto its ground-truth box, divided by
# `RPN_BBOX_STD_DEV`.
#
# Applying those deltas to the positive anchors must give back the ground-truth boxes: a
# quick check that targets and anchors agree.

# %%
rpn_match, rpn_bbox = build_rpn_targets(image.shape, anchors, gt_class_ids, gt_boxes,
                                        config, rng=np.random.default_rng(0))
positive = np.where(rpn_match == 1)[0]
negative = np.where(rpn_match == -1)[0]
print("positive anchors: {}, negative: {}, neutral: {}".format(
    len(positive), len(negative), int(np.sum(rpn_match == 0))))
for level in range(len(level_counts)):
    in_level = (positive >= level_starts[level]) & (positive < level_starts[level + 1])
    print("  level {}: {} positive".format(level, int(in_level.sum())))

deltas = rpn_bbox[:len(positive)] * config.RPN_BBOX_STD_DEV
refined = utils.apply_box_deltas(anchors[positive], deltas)
overlaps = utils.compute_overlaps(refined, gt_boxes)
print("IoU of each refined anchor with its nearest ground-truth box: min {:.4f}".format(
    overlaps.max(axis=1).min() if len(positive) else float("nan")))
visualize.draw_boxes(image, boxes=anchors[positive], refined_boxes=refined,
                     title="positive anchors (dotted) and their targets", figsize=(6, 6));

# %% [markdown]
# ## The training batches
#
# `build_dataset` turns a `Dataset` into the `tf.data` pipeline `train` consumes: each batch
# is a dictionary keyed by the training model's input names, images molded (resized, mean
# pixel subtracted), masks as mini masks, everything zero-padded to fixed sizes. The RPN
# targets are not in it: the training graph computes them from the GT boxes, by the rules
# above (set `RPN_TARGETS_IN_GRAPH = False` to compute them here instead).

# %%
pipeline = build_dataset(dataset, config, shuffle=False, augmentation=None, seed=0)
batch = next(iter(pipeline))
for name, value in batch.items():
    print("{:20} {:10} {}".format(name, value.dtype.name, tuple(value.shape)))

# %% [markdown]
# ## Real data
#
# Statistics of the real datasets under `../shared/data`, loaded by the samples'
# dataset classes: the balloon photos (VIA polygons, one class) and the DSB2018 nuclei (one
# PNG mask per nucleus). These sets are skipped when the folder is missing. Real sets differ
# from the shapes in ways that matter for the configuration: image sizes vary, and a nucleus
# image may hold hundreds of small instances.

# %%
real_sets = []
if S.shared("balloon"):
    import balloon
    ds = balloon.BalloonDataset()
    ds.load_balloon(S.shared("balloon"), "train")
    ds.prepare()
    real_sets.append(("balloon", ds))
if S.shared("dsb2018"):
    import nucleus
    ds = nucleus.NucleusDataset()
    ds.load_nucleus(S.shared("dsb2018"), "val")
    ds.prepare()
    real_sets.append(("nucleus", ds))
if not real_sets:
    print("No real data under {}: section skipped.".format(S.SHARED_DATA))

for name, ds in real_sets:
    ids = ds.image_ids[:S.REAL_IMAGES]
    per_class, per_image = instance_stats(ds, ids)
    sizes = [(ds.image_info[i].get("height"), ds.image_info[i].get("width")) for i in ids]
    print("{}: {} images in the subset, statistics over the first {}".format(
        name, len(ds.image_ids), len(ids)))
    print("  classes: {}".format(ds.class_names))
    print("  instances per image: min {}, mean {:.1f}, max {}".format(
        min(per_image), np.mean(per_image), max(per_image)))
    print("  image sizes (h, w): {}".format(sorted(set(sizes))))
    image_id = ids[int(np.argmax(per_image))]
    image = ds.load_image(image_id)
    mask, class_ids = ds.load_mask(image_id)
    visualize.display_top_masks(image, mask, class_ids, ds.class_names, limit=1)
