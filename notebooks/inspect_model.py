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
# # Inspecting the model, stage by stage
#
# Mask R-CNN works in stages:
#
# 1. the backbone (ResNet + FPN) computes feature maps at five scales;
# 2. the RPN scores every anchor and predicts a correction for it; the best corrected
#    anchors, after non-maximum suppression, are the *proposals* (layer `ROI`);
# 3. the box head classifies each proposal and refines its box; the detection layer
#    (`mrcnn_detection`) keeps the confident ones, one class each, after per-class NMS;
# 4. the mask head predicts a small mask for each detection, which is resized into its box.
#
# `model.run_graph(images, [(name, layer name or tensor), ...])` returns the values of
# any intermediate layers for an image, so each stage can be looked at on its own. Where it
# helps, the notebook recomputes a stage with the numpy functions of `mrcnn.utils` and
# compares: a good way to understand what the graph does.

# %% [markdown]
# *Settings.* Sizes and step counts come from `_settings.py` (imported as `S`). By default
# they are the real tutorial values; with the environment variable `MRCNN_NB_FAST=1`
# (what the test suite sets) they shrink to a smoke test of a minute or two on a CPU, and the
# results are then meaningless. `MRCNN_NB_LOGS` moves the log and checkpoint folder.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt

import _settings as S   # puts the repository and samples/ on sys.path
from mrcnn import model as modellib
from mrcnn import utils, visualize
from mrcnn.data import build_rpn_targets, load_image_gt
import shapes

print(S.summary())


# %% [markdown]
# ## Model and data
#
# An inference model with the weights of `train_shapes.ipynb` (or `MRCNN_NB_WEIGHTS`). With
# no trained weights the notebook still runs, on random weights; the pictures then show an
# untrained network.

# %%
class InferenceConfig(shapes.ShapesInferenceConfig):
    IMAGE_MIN_DIM = S.IMAGE_SIZE
    IMAGE_MAX_DIM = S.IMAGE_SIZE

config = InferenceConfig()
dataset = shapes.ShapesDataset()
dataset.load_shapes(S.SHOW_IMAGES, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1], seed=99)
dataset.prepare()

model = modellib.MaskRCNN(mode="inference", config=config, model_dir=S.LOGS)
weights = S.weights_path(model)
if weights:
    print(model.load_weights(weights, by_name=True, verbose=0).summary())
else:
    print("No shapes weights found: using random weights (run train_shapes.ipynb first).")

# %% [markdown]
# ## Detection, end to end
#
# First the whole model: detections next to the ground truth, and the average precision of
# this one image.

# %%
image_id = dataset.image_ids[0]
image, image_meta, gt_class_ids, gt_boxes, gt_masks = load_image_gt(
    dataset, config, image_id, use_mini_mask=False)
print(dataset.image_reference(image_id), image.shape)
r = model.detect([image])[0]

fig, axes = plt.subplots(1, 2, figsize=(10, 5))
visualize.display_instances(image, gt_boxes, gt_masks, gt_class_ids, dataset.class_names,
                            ax=axes[0], title="ground truth")
visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"],
                            dataset.class_names, r["scores"], ax=axes[1],
                            title="detections")
plt.show()
AP, precisions, recalls, overlaps = utils.compute_ap(
    gt_boxes, gt_class_ids, gt_masks, r["rois"], r["class_ids"], r["scores"], r["masks"])
print("AP@0.5 of this image: {:.3f}".format(AP))

# %% [markdown]
# ## Stage 1: the region proposal network
#
# ### Targets: which anchors should fire?
#
# `build_rpn_targets` (as in training) marks the anchors that overlap a ground-truth box
# well. These are what the RPN was taught to score high.

# %%
anchors_px = utils.get_anchors(config, image.shape)
target_match, target_bbox = build_rpn_targets(image.shape, anchors_px, gt_class_ids,
                                              gt_boxes, config, rng=np.random.default_rng(0))
positive = np.where(target_match == 1)[0]
print("{} anchors, {} positive targets".format(len(anchors_px), len(positive)))
refined_targets = utils.apply_box_deltas(
    anchors_px[positive], target_bbox[:len(positive)] * config.RPN_BBOX_STD_DEV)
visualize.draw_boxes(image, boxes=anchors_px[positive], refined_boxes=refined_targets,
                     title="positive anchors and their targets", figsize=(6, 6));

# %% [markdown]
# ### Predictions
#
# Now the network's own view: `rpn_class` holds, per anchor, the probabilities of background
# and foreground; `rpn_bbox` the predicted deltas (scaled by `RPN_BBOX_STD_DEV`); `anchors`
# the same anchors as above, normalised to [0, 1]; `ROI` the proposals.

# %%
rpn = model.run_graph([image], [
    ("rpn_class", "rpn_class"),
    ("rpn_bbox", "rpn_bbox"),
    ("anchors", "anchors"),
    ("proposals", "ROI"),
])
for name, value in rpn.items():
    print("{:10} {:20} min {:+.3f} max {:+.3f}".format(name, str(value.shape),
                                                     value.min(), value.max()))

# %% [markdown]
# The ProposalLayer's recipe, redone in numpy: take the `PRE_NMS_LIMIT` anchors with the
# highest foreground score, apply their deltas, clip to the image, then non-maximum
# suppression keeps at most `POST_NMS_ROIS_INFERENCE` boxes. Everything stays in normalised
# coordinates, as in the graph. The anchors are already sorted by score, so NMS gets their
# rank as the score: equal scores then keep the order TensorFlow gives them (lower anchor
# index first). Up to float rounding the two lists should agree.

# %%
h, w = image.shape[:2]
scores = rpn["rpn_class"][0, :, 1]
anchors = rpn["anchors"][0]
order = np.argsort(-scores, kind="stable")[:config.PRE_NMS_LIMIT_INFERENCE]
deltas = rpn["rpn_bbox"][0, order] * config.RPN_BBOX_STD_DEV
refined_anchors = np.clip(utils.apply_box_deltas(anchors[order], deltas), 0.0, 1.0)
rank = -np.arange(len(order), dtype=np.float64)   # best first, ties by anchor index
keep = utils.non_max_suppression(refined_anchors, rank, config.RPN_NMS_THRESHOLD)
numpy_proposals = refined_anchors[keep[:config.POST_NMS_ROIS_INFERENCE]]

graph_proposals = utils.trim_zeros(rpn["proposals"][0])
n = min(len(numpy_proposals), len(graph_proposals))
# Compared as sets: near-equal scores may be ordered differently by the two sorts.
found = np.array([np.any(np.all(np.abs(graph_proposals - p) < 1e-3, axis=1))
                  for p in numpy_proposals[:n]])
print("proposals: graph {}, numpy {}; of the first {} numpy proposals {} are graph "
      "proposals (to 1e-3)".format(len(graph_proposals), len(numpy_proposals), n,
                                   int(found.sum())))

# %% [markdown]
# The best anchors before refinement (dotted) and after (solid), then the top proposals
# after NMS, in pixels of the image.

# %%
top = order[:S.choose(20, 10)]
visualize.draw_boxes(image,
                     boxes=utils.denorm_boxes(anchors[top], (h, w)),
                     refined_boxes=utils.denorm_boxes(refined_anchors[:len(top)], (h, w)),
                     title="top anchors: before and after the RPN deltas", figsize=(6, 6))
proposals_px = utils.denorm_boxes(graph_proposals, (h, w))
visualize.draw_boxes(image, refined_boxes=proposals_px[:S.choose(50, 10)],
                     title="top proposals (after NMS)", figsize=(6, 6))
print("recall of the ground truth by the proposals at IoU 0.5: {:.2f}".format(
    utils.compute_recall(proposals_px, gt_boxes, 0.5)[0]))

# %% [markdown]
# ## Stage 2: classification and box refinement
#
# For every proposal the box head gives class probabilities (`mrcnn_class`) and one box
# correction per class (`mrcnn_bbox`). The detection layer keeps, per proposal, the best
# class; drops background and scores under `DETECTION_MIN_CONFIDENCE`; applies the class's
# deltas (scaled by `BBOX_STD_DEV`); runs NMS per class; and keeps the
# `DETECTION_MAX_INSTANCES` best.

# %%
head = model.run_graph([image], [
    ("proposals", "ROI"),
    ("probs", "mrcnn_class"),
    ("deltas", "mrcnn_bbox"),
    ("detections", "mrcnn_detection"),
    ("masks", model.keras_model.output["mrcnn_mask"]),
])
for name, value in head.items():
    print("{:10} {}".format(name, value.shape))

proposals = head["proposals"][0]
valid = np.any(proposals != 0, axis=1)           # skip the zero padding
class_ids = np.argmax(head["probs"][0], axis=1)
class_scores = head["probs"][0][np.arange(len(class_ids)), class_ids]
names = np.array(dataset.class_names)
print("proposals by predicted class:",
      {str(k): int(v) for k, v in zip(*np.unique(names[class_ids[valid]],
                                                 return_counts=True))})

# %%
# The detection layer's steps in numpy.
per_class_deltas = head["deltas"][0][np.arange(len(class_ids)), class_ids]
refined = np.clip(utils.apply_box_deltas(proposals, per_class_deltas * config.BBOX_STD_DEV),
                  0.0, 1.0)
keep = np.where(valid & (class_ids > 0) & (class_scores >= config.DETECTION_MIN_CONFIDENCE))[0]
print("{} proposals pass the class and confidence filter".format(len(keep)))
kept = []
for c in np.unique(class_ids[keep]):
    ix = keep[class_ids[keep] == c]
    nms = utils.non_max_suppression(refined[ix], class_scores[ix],
                                    config.DETECTION_NMS_THRESHOLD)
    kept.extend(ix[nms])
kept = np.array(sorted(kept, key=lambda i: -class_scores[i])[:config.DETECTION_MAX_INSTANCES],
                dtype=int)

detections = head["detections"][0]
detections = detections[detections[:, 4] > 0]   # rows (y1, x1, y2, x2, class_id, score)
# Match each of the layer's detections to a numpy one of the same class and box.
# (Ties between equal scores may be broken differently, so compare as sets.)
reproduced = sum(
    any(class_ids[i] == int(d[4]) and np.all(np.abs(refined[i] - d[:4]) < 1e-3) for i in kept)
    for d in detections)
print("numpy: {} detections, detection layer: {}; {} of the layer's reproduced".format(
    len(kept), len(detections), reproduced))

# %%
if len(kept):
    visualize.draw_boxes(
        image, boxes=utils.denorm_boxes(proposals[kept], (h, w)),
        refined_boxes=utils.denorm_boxes(refined[kept], (h, w)),
        captions=["{} {:.2f}".format(dataset.class_names[class_ids[i]], class_scores[i])
                  for i in kept],
        visibilities=[2] * len(kept),
        title="kept proposals (dotted) and refined boxes", figsize=(6, 6))
else:
    print("No proposal passed the filters (an untrained model?).")

# %% [markdown]
# ## Stage 3: masks
#
# The mask head outputs, for each detection, a `MASK_SHAPE` mask per class with values in
# [0, 1]; only the mask of the detected class is used. `utils.unmold_mask` thresholds it at
# 0.5 and resizes it into the detection's box in the image.

# %%
det_boxes = utils.denorm_boxes(detections[:, :4], (h, w))
det_class_ids = detections[:, 4].astype(int)
small_masks = np.array([head["masks"][0, i, :, :, c] for i, c in enumerate(det_class_ids)])
print("small masks:", small_masks.shape)
if len(small_masks):
    show = min(len(small_masks), S.SHOW_IMAGES)
    visualize.display_images(list(small_masks[:show]),
                             titles=[dataset.class_names[c] for c in det_class_ids[:show]],
                             cmap="Blues", cols=show, figsize=(3 * show, 3))
    full_masks = np.stack([utils.unmold_mask(m, b, image.shape)
                           for m, b in zip(small_masks, det_boxes)], axis=-1)
    visualize.display_instances(image, det_boxes, full_masks, det_class_ids,
                                dataset.class_names, detections[:, 5], figsize=(6, 6),
                                title="masks pasted into their boxes")
    # model.detect does the same (and drops boxes clipped to zero area).
    if full_masks.shape == r["masks"].shape:
        print("same masks as model.detect:", bool(np.array_equal(full_masks, r["masks"])))
else:
    print("No detections, so no masks.")

# %% [markdown]
# ## Activations
#
# The feature maps themselves: a few channels of the FPN outputs `fpn_p2` (stride 4) to
# `fpn_p5` (stride 32), and the distribution of activations at the end of each ResNet stage.
# Dead layers (all zeros) or exploding values show up here first.

# %%
activations = model.run_graph([image], [
    ("input_image", "input_image"),
    ("res2c_out", "res2c_out"),
    ("res3d_out", "res3d_out"),
    ("res4f_out", "res4f_out"),
    ("res5c_out", "res5c_out"),
    ("fpn_p2", "fpn_p2"),
    ("fpn_p3", "fpn_p3"),
    ("fpn_p4", "fpn_p4"),
    ("fpn_p5", "fpn_p5"),
])
levels = ["fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5"]
visualize.display_images([activations[k][0, :, :, 0] for k in levels],
                         titles=["{} {}".format(k, activations[k].shape[1:3]) for k in levels],
                         cols=4, cmap="viridis", figsize=(12, 3))
stages = ["res2c_out", "res3d_out", "res4f_out", "res5c_out"]
fig, axes = plt.subplots(1, 4, figsize=(14, 3))
for ax, k in zip(axes, stages):
    ax.hist(activations[k].ravel(), bins=50)
    ax.set_title(k)
plt.show()
