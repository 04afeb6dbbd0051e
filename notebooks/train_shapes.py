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
# # Training Mask R-CNN on shapes
#
# This notebook trains Mask R-CNN from random weights on a toy dataset and evaluates it. The
# images are generated on the fly (`samples/shapes.py`): a plain background with a few
# squares, circles and triangles of random colour and size. The task is small enough to
# learn on a CPU, yet it exercises every part of the model: the region proposal network,
# the box classifier and regressor, and the mask head.
#
# The steps are the ones you follow for your own data: write a `Config`, write a `Dataset`,
# train, then evaluate with the same tools.

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
from mrcnn.data import load_image_gt
from mrcnn.evaluate import evaluate_coco, format_metrics
import shapes

print(S.summary())


# %% [markdown]
# ## Configuration
#
# `shapes.ShapesConfig` already holds settings sized for this task: small images, small
# anchors (8 to 128 pixels, one size per pyramid level), a narrow FPN and few ROIs per image.
# Since the network starts from random weights, batch normalisation must learn its
# statistics too (`TRAIN_BN = True`). Below we only set the image size and the schedule.

# %%
class TrainConfig(shapes.ShapesConfig):
    IMAGE_MIN_DIM = S.IMAGE_SIZE
    IMAGE_MAX_DIM = S.IMAGE_SIZE
    IMAGES_PER_GPU = S.IMAGES_PER_GPU
    STEPS_PER_EPOCH = S.STEPS_PER_EPOCH
    VALIDATION_STEPS = S.VALIDATION_STEPS

config = TrainConfig()
config.display()

# %% [markdown]
# ## Dataset
#
# A `Dataset` subclass registers its classes with `add_class`, its images with `add_image`,
# and implements `load_image` (an RGB array) and `load_mask` (a boolean `[H, W, N]` stack
# plus `N` class ids). `prepare()` then assigns the internal ids used everywhere else.
# `make_datasets` builds a training and a validation set from different seeds.

# %%
dataset_train, dataset_val = shapes.make_datasets(config, S.TRAIN_IMAGES, S.VAL_IMAGES)
print("train: {} images, val: {} images, classes: {}".format(
    len(dataset_train.image_ids), len(dataset_val.image_ids), dataset_train.class_names))

# %% [markdown]
# A look at a few training images. `display_top_masks` shows the image next to the masks of
# its most frequent classes.

# %%
rng = np.random.default_rng(0)
for image_id in rng.choice(dataset_train.image_ids, S.SHOW_IMAGES, replace=False):
    image = dataset_train.load_image(image_id)
    mask, class_ids = dataset_train.load_mask(image_id)
    visualize.display_top_masks(image, mask, class_ids, dataset_train.class_names, limit=3)

# %% [markdown]
# ## Create the model
#
# In training mode the graph also takes the ground truth as inputs and outputs the five
# losses: RPN objectness and box regression, then the classifier's class, box and mask
# losses.
#
# We start from random weights. For real photos you would rather start from weights trained
# on COCO (or at least ImageNet) and replace only the layers whose shape depends on the
# number of classes:
#
# ```python
# model.load_weights("mask_rcnn_coco.h5", by_name=True,
#                    exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
# ```

# %%
model = modellib.MaskRCNN(mode="training", config=config, model_dir=S.LOGS)
print("log directory:", model.log_dir)

# %% [markdown]
# ## Train
#
# `train` runs until the given epoch number (counted from the start of the run, so calling it
# again with a larger number continues). `layers` chooses what is trained: `"heads"` (RPN,
# FPN and the three heads), `"3+"`, `"4+"`, `"5+"` (from that ResNet stage up) or `"all"`.
# Starting from COCO weights, one usually trains the heads first and then fine-tunes more
# layers at a lower learning rate. From random weights everything must learn, so the tutorial
# trains `"all"` at once. (In fast mode only the heads are trained, which shortens the
# one-off graph compilation of the first step.)
#
# A checkpoint is written after every epoch, and TensorBoard logs go to the same folder.

# %%
history = model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                      epochs=S.EPOCHS, layers=S.TRAIN_LAYERS, verbose=1)
checkpoint = model.find_last()
print("last checkpoint:", checkpoint)

# %% [markdown]
# ## Training curves
#
# `plot_losses` accepts the `History` returned by `train`, or a TensorBoard log folder (for
# instance that of an earlier run). Each panel shows one loss, with the validation curve next
# to the training one when validation ran.

# %%
visualize.plot_losses(history);

# %%
# The same curves read back from the TensorBoard event files of this run.
visualize.plot_losses(model.log_dir);


# %% [markdown]
# ## Detection
#
# For inference we build a second model in inference mode, one image per batch, and load the
# last checkpoint. `load_weights` matches layers by name and returns a report of what it
# loaded.

# %%
class InferenceConfig(TrainConfig):
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1

inference_config = InferenceConfig()
model = modellib.MaskRCNN(mode="inference", config=inference_config, model_dir=S.LOGS)
report = model.load_weights(checkpoint, by_name=True, verbose=0)
print(report.summary())

# %% [markdown]
# A random validation image: first its ground truth, as the training code sees it
# (`load_image_gt` resizes the image and returns boxes, class ids and full-size masks), then
# what the model detects.

# %%
image_id = int(np.random.default_rng(1).choice(dataset_val.image_ids))
image, image_meta, gt_class_ids, gt_boxes, gt_masks = load_image_gt(
    dataset_val, inference_config, image_id, use_mini_mask=False)
print(dataset_val.image_reference(image_id))

fig, axes = plt.subplots(1, 2, figsize=(10, 5))
visualize.display_instances(image, gt_boxes, gt_masks, gt_class_ids,
                            dataset_val.class_names, ax=axes[0], title="ground truth")
r = model.detect([image])[0]
visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"],
                            dataset_val.class_names, r["scores"], ax=axes[1],
                            title="detections")
plt.show()

# %% [markdown]
# ## Evaluation
#
# Two measures, both on masks:
#
# * **Matterport's mAP@0.5** (`shapes.evaluate_map`): for each image, predictions are matched
#   greedily by score to ground truth of the same class with mask IoU ≥ 0.5, the
#   precision/recall curve gives an average precision, and the mean over images is reported.
# * **COCO metrics** (`mrcnn.evaluate.evaluate_coco`): the same detections scored by
#   pycocotools, for boxes (`bbox`) and masks (`segm`): AP averaged over IoU 0.5:0.95, AP50,
#   AP75, AP by object size, average recall, and AP per class.
#
# For reference, the stored run of the tutorial settings (12 minutes of training on a quiet
# 2-core CPU) reached mAP@0.5 = 0.78 and COCO mask AP50 = 0.72 on the 50 validation images,
# and another run of the same command 0.89; expect similar, not identical, numbers (random
# initialisation).
#
# Note: the shapes configuration drops detections below 0.7 confidence
# (`DETECTION_MIN_CONFIDENCE`). For COCO AP it is usual to keep them all (set it to 0), since
# AP rewards a complete ranking.

# %%
mAP = shapes.evaluate_map(model, dataset_val, inference_config, limit=S.EVAL_IMAGES)
print("mAP@0.5 over {} validation images: {:.3f}".format(
    min(S.EVAL_IMAGES, len(dataset_val.image_ids)), mAP))

# %%
metrics = evaluate_coco(model, dataset_val, limit=S.EVAL_IMAGES, verbose=0)
print(format_metrics(metrics))

# %% [markdown]
# The precision/recall curve of the image above, and the IoU between each of its
# predictions and each ground-truth instance, explain where its AP comes from.

# %%
AP, precisions, recalls, overlaps = utils.compute_ap(
    gt_boxes, gt_class_ids, gt_masks, r["rois"], r["class_ids"], r["scores"], r["masks"])
visualize.plot_precision_recall(AP, precisions, recalls)
if len(r["class_ids"]) and len(gt_class_ids):
    visualize.plot_overlaps(gt_class_ids, r["class_ids"], r["scores"], overlaps,
                            dataset_val.class_names)
else:
    print("No detections (or no ground truth) on this image: nothing to compare.")
