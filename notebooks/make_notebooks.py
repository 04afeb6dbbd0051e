"""Write the tutorial notebooks of this folder from the cell lists below.

The .ipynb files are generated, so edit this script and run it again:

    python notebooks/make_notebooks.py            # rewrite every notebook
    python notebooks/make_notebooks.py --check    # exit 1 if a notebook is out of date

Notebooks are stored without outputs; tests/test_notebooks.py executes them in fast mode
(MRCNN_NB_FAST=1, see _settings.py).
"""

import argparse
import os
import sys

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text):
    return ("md", text.strip("\n"))


def code(text):
    return ("code", text.strip("\n"))


SETUP_NOTE = md("""
*Settings.* Sizes and step counts come from `_settings.py` (imported as `S`). By default
they are the real tutorial values; with the environment variable `MRCNN_NB_FAST=1`
(what the test suite sets) they shrink to a smoke test of a minute or two on a CPU, and the
results are then meaningless. `MRCNN_NB_LOGS` moves the log and checkpoint folder.
""")


# --------------------------------------------------------------------------- demo

DEMO = [
    md("""
# Mask R-CNN demo: detect objects and draw them

A trained Mask R-CNN takes an image and returns, for every object it finds, a box, a
class, a confidence score and a pixel mask. This notebook loads a model, runs it on a few
images and draws the result.

The weights used here come from the synthetic *shapes* task (squares, circles and
triangles drawn by `samples/shapes.py`): they need no download and train on a laptop CPU.
Nothing below is specific to shapes; with Matterport's `mask_rcnn_coco.h5` and an 81-class
config the same cells detect people, cars and cups.
"""),
    SETUP_NOTE,
    code("""
%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt

import _settings as S   # puts the repository and samples/ on sys.path
from mrcnn import model as modellib
from mrcnn import utils, visualize
import shapes

print(S.summary())
"""),
    md("""
## Configuration

Every setting of the model lives in a `Config` subclass. We start from the shapes
configuration used for training and change what inference needs: one image per batch
(the batch size is `GPU_COUNT * IMAGES_PER_GPU`). The image size must match the size
the weights were trained at only loosely: Mask R-CNN is fully convolutional up to its
heads, but results are best at the training scale.
"""),
    code("""
class InferenceConfig(shapes.ShapesInferenceConfig):
    IMAGE_MIN_DIM = S.IMAGE_SIZE
    IMAGE_MAX_DIM = S.IMAGE_SIZE

config = InferenceConfig()
config.display()
"""),
    md("""
## Some images to look at

`ShapesDataset` draws its images from a random seed, so this set is the same every run.
The dataset also gives the class names, index 0 being the background (`BG`).
"""),
    code("""
dataset = shapes.ShapesDataset()
dataset.load_shapes(S.SHOW_IMAGES, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1], seed=2024)
dataset.prepare()
class_names = dataset.class_names
images = [dataset.load_image(i) for i in dataset.image_ids]
print("classes:", class_names)
print("images:", [im.shape for im in images])
"""),
    md("""
## Build the model and find weights

`MaskRCNN(mode="inference", ...)` builds the detection graph. Weights are looked up in
this order:

1. the file named by the environment variable `MRCNN_NB_WEIGHTS`;
2. the newest checkpoint that `train_shapes.ipynb` wrote under the logs folder
   (`model.find_last()`);
3. otherwise a short training run right here (a few minutes on a CPU in tutorial mode).
"""),
    code("""
model = modellib.MaskRCNN(mode="inference", config=config, model_dir=S.LOGS)
weights = S.weights_path(model)
print("weights found:", weights)
"""),
    code("""
if weights is None:
    # No checkpoint yet: train the shapes model briefly. See train_shapes.ipynb for the
    # full recipe and an evaluation.
    class QuickTrainConfig(shapes.ShapesConfig):
        IMAGE_MIN_DIM = S.IMAGE_SIZE
        IMAGE_MAX_DIM = S.IMAGE_SIZE
        IMAGES_PER_GPU = S.IMAGES_PER_GPU
        STEPS_PER_EPOCH = S.STEPS_PER_EPOCH
        VALIDATION_STEPS = 0

    train_config = QuickTrainConfig()
    dataset_train, dataset_val = shapes.make_datasets(train_config, S.TRAIN_IMAGES,
                                                      S.VAL_IMAGES)
    trainer = modellib.MaskRCNN(mode="training", config=train_config, model_dir=S.LOGS)
    trainer.train(dataset_train, dataset_val, learning_rate=train_config.LEARNING_RATE,
                  epochs=S.choose(3, 1), layers=S.TRAIN_LAYERS, verbose=1)
    weights = trainer.find_last()
    del trainer

report = model.load_weights(weights, by_name=True, verbose=0)
print(report.summary())
"""),
    md("""
## Detect

`model.detect` takes a list of images (any size: each is resized to the model's input and
the results are mapped back) and returns one dictionary per image:

* `rois`: boxes `[N, (y1, x1, y2, x2)]` in pixels of the original image,
* `class_ids`: `[N]` indices into `class_names`,
* `scores`: `[N]` confidences,
* `masks`: `[H, W, N]` boolean masks at the image's full size.
"""),
    code("""
results = model.detect(images)
for image_id, r in zip(dataset.image_ids, results):
    found = [class_names[c] for c in r["class_ids"]]
    print("image {}: {} detection(s) {}".format(image_id, len(found), found))
r = results[0]
print({key: value.shape for key, value in r.items()})
"""),
    md("""
## Draw the detections

`visualize.display_instances` overlays each mask in its own colour, outlines it, and
writes the class and score at the top-left corner of the dashed box. Given an `ax` it draws
into that subplot, which lets us put several images side by side.

The drawing functions return their matplotlib `Figure`. When such a call ends a cell, a
trailing `;` stops Jupyter from displaying that returned figure a second time.
"""),
    code("""
cols = len(images)
fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 4))
for ax, image, r in zip(np.atleast_1d(axes), images, results):
    visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"], class_names,
                                r["scores"], ax=ax, title="detections")
plt.show()
"""),
    md("""
Next to the ground truth, the differences are easier to judge: `display_differences`
draws the annotations in green and the predictions in red, each prediction captioned
with its score and its IoU with the matched annotation.
"""),
    code("""
image = images[0]
gt_masks, gt_class_ids = dataset.load_mask(dataset.image_ids[0])
gt_boxes = utils.extract_bboxes(gt_masks)
r = results[0]
visualize.display_differences(image, gt_boxes, gt_class_ids, gt_masks,
                              r["rois"], r["class_ids"], r["scores"], r["masks"],
                              class_names, figsize=(6, 6));
"""),
    md("""
## A real photo

The balloon photos of Matterport's tutorial (`../shared/data/balloon`, annotated with the
VGG Image Annotator) are loaded by `samples/balloon.py`. Here we show one photo with its
annotated masks, and the *colour splash* effect of that sample: the picture in grey
except the balloons. When the data folder is missing this section does nothing.
"""),
    code("""
balloon_dir = S.shared("balloon")
if balloon_dir is None:
    print("No balloon data under {}: section skipped.".format(S.SHARED_DATA))
else:
    import balloon
    dataset_balloon = balloon.BalloonDataset()
    dataset_balloon.load_balloon(balloon_dir, "val")
    dataset_balloon.prepare()
    photo_id = dataset_balloon.image_ids[0]
    photo = dataset_balloon.load_image(photo_id)
    photo_masks, photo_class_ids = dataset_balloon.load_mask(photo_id)
    print(dataset_balloon.image_reference(photo_id), photo.shape,
          "{} balloon(s)".format(len(photo_class_ids)))
    visualize.display_instances(photo, utils.extract_bboxes(photo_masks), photo_masks,
                                photo_class_ids, dataset_balloon.class_names,
                                title="annotations", figsize=(8, 8))
    visualize.display_images([photo, balloon.color_splash(photo, photo_masks)],
                             titles=["photo", "colour splash of the annotations"], cols=2)
"""),
    md("""
`detect` accepts this photo as it is, although it is much larger than the shapes model's
input: the model sees it resized and padded to its square input, and the masks come back at
the photo's own size. A shapes model knows nothing about balloons, of course. Set
`MRCNN_NB_BALLOON_WEIGHTS` to weights trained with `python samples/balloon.py train` to see
real balloon detections and their colour splash.
"""),
    code("""
if balloon_dir is not None:
    r = model.detect([photo])[0]
    print("shapes model on the photo: {} detection(s); masks {} for a photo of {}".format(
        len(r["class_ids"]), r["masks"].shape, photo.shape))
    assert r["masks"].shape[:2] == photo.shape[:2]

if balloon_dir is not None and S.BALLOON_WEIGHTS:
    balloon_model = modellib.MaskRCNN(mode="inference",
                                      config=balloon.BalloonInferenceConfig(),
                                      model_dir=S.LOGS)
    balloon_model.load_weights(S.BALLOON_WEIGHTS, by_name=True)
    r = balloon_model.detect([photo])[0]
    visualize.display_instances(photo, r["rois"], r["masks"], r["class_ids"],
                                dataset_balloon.class_names, r["scores"],
                                title="balloon model", figsize=(8, 8))
    visualize.display_images([balloon.color_splash(photo, r["masks"])],
                             titles=["colour splash of the detections"], cols=1)
"""),
]


# --------------------------------------------------------------------------- train_shapes

TRAIN_SHAPES = [
    md("""
# Training Mask R-CNN on shapes

This notebook trains Mask R-CNN from random weights on a toy dataset and evaluates it. The
images are generated on the fly (`samples/shapes.py`): a plain background with a few
squares, circles and triangles of random colour and size. The task is small enough to
learn on a CPU, yet it exercises every part of the model: the region proposal network,
the box classifier and regressor, and the mask head.

The steps are the ones you follow for your own data: write a `Config`, write a `Dataset`,
train, then evaluate with the same tools.
"""),
    SETUP_NOTE,
    code("""
%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt

import _settings as S   # puts the repository and samples/ on sys.path
from mrcnn import model as modellib
from mrcnn import utils, visualize
from mrcnn.data import load_image_gt
from mrcnn.evaluate import evaluate_coco, format_metrics
import shapes

print(S.summary())
"""),
    md("""
## Configuration

`shapes.ShapesConfig` already holds settings sized for this task: small images, small
anchors (8 to 128 pixels, one size per pyramid level), a narrow FPN and few ROIs per image.
Since the network starts from random weights, batch normalisation must learn its
statistics too (`TRAIN_BN = True`). Below we only set the image size and the schedule.
"""),
    code("""
class TrainConfig(shapes.ShapesConfig):
    IMAGE_MIN_DIM = S.IMAGE_SIZE
    IMAGE_MAX_DIM = S.IMAGE_SIZE
    IMAGES_PER_GPU = S.IMAGES_PER_GPU
    STEPS_PER_EPOCH = S.STEPS_PER_EPOCH
    VALIDATION_STEPS = S.VALIDATION_STEPS

config = TrainConfig()
config.display()
"""),
    md("""
## Dataset

A `Dataset` subclass registers its classes with `add_class`, its images with `add_image`,
and implements `load_image` (an RGB array) and `load_mask` (a boolean `[H, W, N]` stack
plus `N` class ids). `prepare()` then assigns the internal ids used everywhere else.
`make_datasets` builds a training and a validation set from different seeds.
"""),
    code("""
dataset_train, dataset_val = shapes.make_datasets(config, S.TRAIN_IMAGES, S.VAL_IMAGES)
print("train: {} images, val: {} images, classes: {}".format(
    len(dataset_train.image_ids), len(dataset_val.image_ids), dataset_train.class_names))
"""),
    md("""
A look at a few training images. `display_top_masks` shows the image next to the masks of
its most frequent classes.
"""),
    code("""
rng = np.random.default_rng(0)
for image_id in rng.choice(dataset_train.image_ids, S.SHOW_IMAGES, replace=False):
    image = dataset_train.load_image(image_id)
    mask, class_ids = dataset_train.load_mask(image_id)
    visualize.display_top_masks(image, mask, class_ids, dataset_train.class_names, limit=3)
"""),
    md("""
## Create the model

In training mode the graph also takes the ground truth as inputs and outputs the five
losses: RPN objectness and box regression, then the classifier's class, box and mask
losses.

We start from random weights. For real photos you would rather start from weights trained
on COCO (or at least ImageNet) and replace only the layers whose shape depends on the
number of classes:

```python
model.load_weights("mask_rcnn_coco.h5", by_name=True,
                   exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
```
"""),
    code("""
model = modellib.MaskRCNN(mode="training", config=config, model_dir=S.LOGS)
print("log directory:", model.log_dir)
"""),
    md("""
## Train

`train` runs until the given epoch number (counted from the start of the run, so calling it
again with a larger number continues). `layers` chooses what is trained: `"heads"` (RPN,
FPN and the three heads), `"3+"`, `"4+"`, `"5+"` (from that ResNet stage up) or `"all"`.
Starting from COCO weights, one usually trains the heads first and then fine-tunes more
layers at a lower learning rate. From random weights everything must learn, so the tutorial
trains `"all"` at once. (In fast mode only the heads are trained, which shortens the
one-off graph compilation of the first step.)

A checkpoint is written after every epoch, and TensorBoard logs go to the same folder.
"""),
    code("""
history = model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                      epochs=S.EPOCHS, layers=S.TRAIN_LAYERS, verbose=1)
checkpoint = model.find_last()
print("last checkpoint:", checkpoint)
"""),
    md("""
## Training curves

`plot_losses` accepts the `History` returned by `train`, or a TensorBoard log folder (for
instance that of an earlier run). Each panel shows one loss, with the validation curve next
to the training one when validation ran.
"""),
    code("""
visualize.plot_losses(history);
"""),
    code("""
# The same curves read back from the TensorBoard event files of this run.
visualize.plot_losses(model.log_dir);
"""),
    md("""
## Detection

For inference we build a second model in inference mode, one image per batch, and load the
last checkpoint. `load_weights` matches layers by name and returns a report of what it
loaded.
"""),
    code("""
class InferenceConfig(TrainConfig):
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1

inference_config = InferenceConfig()
model = modellib.MaskRCNN(mode="inference", config=inference_config, model_dir=S.LOGS)
report = model.load_weights(checkpoint, by_name=True, verbose=0)
print(report.summary())
"""),
    md("""
A random validation image: first its ground truth, as the training code sees it
(`load_image_gt` resizes the image and returns boxes, class ids and full-size masks), then
what the model detects.
"""),
    code("""
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
"""),
    md("""
## Evaluation

Two measures, both on masks:

* **Matterport's mAP@0.5** (`shapes.evaluate_map`): for each image, predictions are matched
  greedily by score to ground truth of the same class with mask IoU ≥ 0.5, the
  precision/recall curve gives an average precision, and the mean over images is reported.
* **COCO metrics** (`mrcnn.evaluate.evaluate_coco`): the same detections scored by
  pycocotools, for boxes (`bbox`) and masks (`segm`): AP averaged over IoU 0.5:0.95, AP50,
  AP75, AP by object size, average recall, and AP per class.

For reference, one run of the tutorial settings (about 20 minutes of training on a busy
2-core CPU) reached mAP@0.5 = 0.69 and COCO mask AP50 = 0.62 on the 50 validation images;
expect similar, not identical, numbers (random initialisation).

Note: the shapes configuration drops detections below 0.7 confidence
(`DETECTION_MIN_CONFIDENCE`). For COCO AP it is usual to keep them all (set it to 0), since
AP rewards a complete ranking.
"""),
    code("""
mAP = shapes.evaluate_map(model, dataset_val, inference_config, limit=S.EVAL_IMAGES)
print("mAP@0.5 over {} validation images: {:.3f}".format(
    min(S.EVAL_IMAGES, len(dataset_val.image_ids)), mAP))
"""),
    code("""
metrics = evaluate_coco(model, dataset_val, limit=S.EVAL_IMAGES, verbose=0)
print(format_metrics(metrics))
"""),
    md("""
The precision/recall curve of the image above, and the IoU between each of its
predictions and each ground-truth instance, explain where its AP comes from.
"""),
    code("""
AP, precisions, recalls, overlaps = utils.compute_ap(
    gt_boxes, gt_class_ids, gt_masks, r["rois"], r["class_ids"], r["scores"], r["masks"])
visualize.plot_precision_recall(AP, precisions, recalls)
if len(r["class_ids"]) and len(gt_class_ids):
    visualize.plot_overlaps(gt_class_ids, r["class_ids"], r["scores"], overlaps,
                            dataset_val.class_names)
else:
    print("No detections (or no ground truth) on this image: nothing to compare.")
"""),
]


# --------------------------------------------------------------------------- inspect_data

INSPECT_DATA = [
    md("""
# Inspecting the training data

Before training, check what the model will actually be fed: how many images and
instances there are, whether masks and boxes line up after resizing and augmentation,
which anchors exist and which of them become positive training targets for the RPN.
Problems found here cost minutes; found after a day of training they cost a day.

The notebook runs on the synthetic shapes, then shows the statistics of the real balloon
and nucleus sets when `../shared/data` is present.
"""),
    SETUP_NOTE,
    code("""
%matplotlib inline
import collections

import numpy as np
import matplotlib.pyplot as plt

import _settings as S   # puts the repository and samples/ on sys.path
from mrcnn import utils, visualize
from mrcnn.augment import iaa
from mrcnn.data import build_dataset, build_rpn_targets, load_image_gt
import shapes

print(S.summary())
"""),
    md("""
## Configuration and dataset
"""),
    code("""
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
"""),
    md("""
## Statistics

Instances per class and per image tell whether some class is rare and how large
`MAX_GT_INSTANCES` (the most instances per training image) must be.
"""),
    code("""
def instance_stats(ds, image_ids):
    \"\"\"Instances per class (Counter of class ids) and per image (list).\"\"\"
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
"""),
    md("""
## Images and masks

A few images next to their masks, grouped by class.
"""),
    code("""
for image_id in dataset.image_ids[:S.SHOW_IMAGES]:
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    visualize.display_top_masks(image, mask, class_ids, dataset.class_names, limit=3)
"""),
    md("""
## Boxes come from the masks

The datasets give masks only; `utils.extract_bboxes` computes each box as the tightest
rectangle around its mask, `(y1, x1, y2, x2)` with `y2`, `x2` one past the last pixel.
So whatever happens to a mask (resizing, augmentation) the box follows it.
"""),
    code("""
image_id = dataset.image_ids[0]
image = dataset.load_image(image_id)
mask, class_ids = dataset.load_mask(image_id)
bbox = utils.extract_bboxes(mask)
print("image", image_id, image.shape, "boxes:\\n", bbox)
visualize.display_instances(image, bbox, mask, class_ids, dataset.class_names,
                            figsize=(5, 5));
"""),
    md("""
## Resizing

Training images are resized to `IMAGE_SHAPE` by `utils.resize_image`. In `"square"` mode
the long side is scaled to `IMAGE_MAX_DIM` and the rest is padded with zeros; `window`
says where the real image sits, `scale` how much it was scaled. The masks go through
`utils.resize_mask` with the same scale and padding. A wide image shows it best: here a
shapes image cropped to half its height.
"""),
    code("""
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
"""),
    md("""
## Mini masks

A full-size mask per instance costs a lot of memory for large images (a 1024×1024 image
with 100 instances needs 100 MB of booleans). With `USE_MINI_MASK`, each mask is cropped to
its box and resized to `MINI_MASK_SHAPE`; `utils.expand_mask` puts it back. The round trip
loses detail on thin parts and sharp corners only, which the IoU below measures.
"""),
    code("""
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
"""),
    md("""
## Augmentation

`train(..., augmentation=...)` takes an imgaug augmenter (import `iaa` from
`mrcnn.augment`, which makes imgaug work with numpy 2). Each image gets one random draw;
the same draw is applied to its masks, but only geometric augmenters (flips, affine
transforms, crops...) touch the masks, so a colour change cannot corrupt them. The
boxes are then recomputed from the augmented masks. Below, the same image before and
after, with its instances drawn: the masks must still cover the shapes.
"""),
    code("""
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
"""),
    md("""
## Anchors

Anchors are the reference boxes the RPN scores and refines. There is one set per FPN level:
level *i* has the stride `BACKBONE_STRIDES[i]` (one feature-map cell per that many pixels)
and the anchor size `RPN_ANCHOR_SCALES[i]`, with one anchor per aspect ratio in
`RPN_ANCHOR_RATIOS` at every cell. `utils.get_anchors` lists them all, level by level, in
pixels of the input image.
"""),
    code("""
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
"""),
    md("""
The anchors of the cell nearest the image centre, one panel per level (one box per aspect
ratio), with the centres of all the level's anchors as white dots. The largest anchors
reach beyond the image: that is expected, the RPN's box deltas and the clipping of
proposals take care of it.
"""),
    code("""
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
"""),
    md("""
## RPN targets

`build_rpn_targets` labels every anchor: *positive* when its IoU with a ground-truth box is
at least `RPN_POSITIVE_IOU` (and the best anchor of each box is always positive),
*negative* below `RPN_NEGATIVE_IOU`, *neutral* otherwise. It then keeps at most
`RPN_TRAIN_ANCHORS_PER_IMAGE` of them, at most half positive. For each positive anchor it
also returns the box deltas that move the anchor onto its ground-truth box, divided by
`RPN_BBOX_STD_DEV`.

Applying those deltas to the positive anchors must give back the ground-truth boxes: a
quick check that targets and anchors agree.
"""),
    code("""
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
"""),
    md("""
## The training batches

`build_dataset` turns a `Dataset` into the `tf.data` pipeline `train` consumes: each batch
is a dictionary keyed by the training model's input names, images molded (resized, mean
pixel subtracted), masks as mini masks, RPN targets computed, everything zero-padded to
fixed sizes.
"""),
    code("""
pipeline = build_dataset(dataset, config, shuffle=False, augmentation=None, seed=0)
batch = next(iter(pipeline))
for name, value in batch.items():
    print("{:20} {:10} {}".format(name, value.dtype.name, tuple(value.shape)))
"""),
    md("""
## Real data

Statistics of the real datasets under `../shared/data`, loaded by the samples'
dataset classes: the balloon photos (VIA polygons, one class) and the DSB2018 nuclei (one
PNG mask per nucleus). These sets are skipped when the folder is missing. Real sets differ
from the shapes in ways that matter for the configuration: image sizes vary, and a nucleus
image may hold hundreds of small instances.
"""),
    code("""
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
"""),
]


# --------------------------------------------------------------------------- inspect_model

INSPECT_MODEL = [
    md("""
# Inspecting the model, stage by stage

Mask R-CNN works in stages:

1. the backbone (ResNet + FPN) computes feature maps at five scales;
2. the RPN scores every anchor and predicts a correction for it; the best corrected
   anchors, after non-maximum suppression, are the *proposals* (layer `ROI`);
3. the box head classifies each proposal and refines its box; the detection layer
   (`mrcnn_detection`) keeps the confident ones, one class each, after per-class NMS;
4. the mask head predicts a small mask for each detection, which is resized into its box.

`model.run_graph(images, [(name, layer name or tensor), ...])` returns the values of
any intermediate layers for an image, so each stage can be looked at on its own. Where it
helps, the notebook recomputes a stage with the numpy functions of `mrcnn.utils` and
compares: a good way to understand what the graph does.
"""),
    SETUP_NOTE,
    code("""
%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt

import _settings as S   # puts the repository and samples/ on sys.path
from mrcnn import model as modellib
from mrcnn import utils, visualize
from mrcnn.data import build_rpn_targets, load_image_gt
import shapes

print(S.summary())
"""),
    md("""
## Model and data

An inference model with the weights of `train_shapes.ipynb` (or `MRCNN_NB_WEIGHTS`). With
no trained weights the notebook still runs, on random weights; the pictures then show an
untrained network.
"""),
    code("""
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
"""),
    md("""
## Detection, end to end

First the whole model: detections next to the ground truth, and the average precision of
this one image.
"""),
    code("""
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
"""),
    md("""
## Stage 1: the region proposal network

### Targets: which anchors should fire?

`build_rpn_targets` (as in training) marks the anchors that overlap a ground-truth box
well. These are what the RPN was taught to score high.
"""),
    code("""
anchors_px = utils.get_anchors(config, image.shape)
target_match, target_bbox = build_rpn_targets(image.shape, anchors_px, gt_class_ids,
                                              gt_boxes, config, rng=np.random.default_rng(0))
positive = np.where(target_match == 1)[0]
print("{} anchors, {} positive targets".format(len(anchors_px), len(positive)))
refined_targets = utils.apply_box_deltas(
    anchors_px[positive], target_bbox[:len(positive)] * config.RPN_BBOX_STD_DEV)
visualize.draw_boxes(image, boxes=anchors_px[positive], refined_boxes=refined_targets,
                     title="positive anchors and their targets", figsize=(6, 6));
"""),
    md("""
### Predictions

Now the network's own view: `rpn_class` holds, per anchor, the probabilities of background
and foreground; `rpn_bbox` the predicted deltas (scaled by `RPN_BBOX_STD_DEV`); `anchors`
the same anchors as above, normalised to [0, 1]; `ROI` the proposals.
"""),
    code("""
rpn = model.run_graph([image], [
    ("rpn_class", "rpn_class"),
    ("rpn_bbox", "rpn_bbox"),
    ("anchors", "anchors"),
    ("proposals", "ROI"),
])
for name, value in rpn.items():
    print("{:10} {:20} min {:+.3f} max {:+.3f}".format(name, str(value.shape),
                                                     value.min(), value.max()))
"""),
    md("""
The ProposalLayer's recipe, redone in numpy: take the `PRE_NMS_LIMIT` anchors with the
highest foreground score, apply their deltas, clip to the image, then non-maximum
suppression keeps at most `POST_NMS_ROIS_INFERENCE` boxes. Everything stays in normalised
coordinates, as in the graph. The anchors are already sorted by score, so NMS gets their
rank as the score: equal scores then keep the order TensorFlow gives them (lower anchor
index first). Up to float rounding the two lists should agree.
"""),
    code("""
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
"""),
    md("""
The best anchors before refinement (dotted) and after (solid), then the top proposals
after NMS, in pixels of the image.
"""),
    code("""
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
"""),
    md("""
## Stage 2: classification and box refinement

For every proposal the box head gives class probabilities (`mrcnn_class`) and one box
correction per class (`mrcnn_bbox`). The detection layer keeps, per proposal, the best
class; drops background and scores under `DETECTION_MIN_CONFIDENCE`; applies the class's
deltas (scaled by `BBOX_STD_DEV`); runs NMS per class; and keeps the
`DETECTION_MAX_INSTANCES` best.
"""),
    code("""
head = model.run_graph([image], [
    ("proposals", "ROI"),
    ("probs", "mrcnn_class"),
    ("deltas", "mrcnn_bbox"),
    ("detections", "mrcnn_detection"),
    ("masks", model.keras_model.outputs[3]),
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
"""),
    code("""
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
"""),
    code("""
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
"""),
    md("""
## Stage 3: masks

The mask head outputs, for each detection, a `MASK_SHAPE` mask per class with values in
[0, 1]; only the mask of the detected class is used. `utils.unmold_mask` thresholds it at
0.5 and resizes it into the detection's box in the image.
"""),
    code("""
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
"""),
    md("""
## Activations

The feature maps themselves: a few channels of the FPN outputs `fpn_p2` (stride 4) to
`fpn_p5` (stride 32), and the distribution of activations at the end of each ResNet stage.
Dead layers (all zeros) or exploding values show up here first.
"""),
    code("""
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
"""),
]


# --------------------------------------------------------------------------- inspect_weights

INSPECT_WEIGHTS = [
    md("""
# Inspecting the weights

A model that does not learn often shows it in its weights: a layer whose values are all
equal (dead, or never loaded), values that grow without bound, or weight distributions
that are still those of the initialiser after training. This notebook lists statistics for
every weight tensor and plots histograms.
"""),
    SETUP_NOTE,
    code("""
%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt

import _settings as S   # puts the repository and samples/ on sys.path
from mrcnn import model as modellib
from mrcnn import visualize
import shapes

print(S.summary())
"""),
    md("""
## Load the model

An inference model with the shapes weights of `train_shapes.ipynb` (or the file named by
`MRCNN_NB_WEIGHTS`); with none, the freshly initialised weights are inspected, which is
also instructive: compare them with trained ones.
"""),
    code("""
class InferenceConfig(shapes.ShapesInferenceConfig):
    IMAGE_MIN_DIM = S.IMAGE_SIZE
    IMAGE_MAX_DIM = S.IMAGE_SIZE

config = InferenceConfig()
model = modellib.MaskRCNN(mode="inference", config=config, model_dir=S.LOGS)
weights = S.weights_path(model)
if weights:
    report = model.load_weights(weights, by_name=True, verbose=0)
    print(report.summary())
else:
    print("No shapes weights found: inspecting the initial random weights.")
"""),
    md("""
## Statistics of every weight

`display_weight_stats` lists each weight with its shape, minimum, maximum and standard
deviation. Suspicious rows are flagged: `*** dead?` when a (non-bias) tensor holds a
single value, `*** Overflow?` when some value exceeds 1000 in magnitude.
"""),
    code("""
rows = visualize.display_weight_stats(model)
flagged = [row[0] for row in rows[1:] if "***" in row[0]]
print("{} weight tensors, {} flagged".format(len(rows) - 1, len(flagged)))
"""),
    md("""
Which layers are flagged? A layer that was never trained keeps its initial constants:
batch-norm gamma 1, beta 0, moving mean 0 and variance 1. After the fast (CI) run, which
trains the heads only, that is true of every batch-norm layer of the backbone; after the
full tutorial run, or with COCO weights, nothing should be flagged.
"""),
    code("""
flagged_layers = sorted({name.split("/")[0] for name in flagged})
print("{} layer(s) with flagged weights{}".format(
    len(flagged_layers), ": " + ", ".join(flagged_layers[:8]) if flagged_layers else ""))
if len(flagged_layers) > 8:
    print("... and {} more".format(len(flagged_layers) - 8))
"""),
    md("""
## Histograms

One row per layer, one histogram per weight tensor (kernel, bias, or batch-norm gamma,
beta, moving mean and variance). A selection: the first convolution, the end of the
backbone, the FPN and RPN, and the three heads.
"""),
    code("""
wanted = ["conv1", "bn_conv1", "res5c_branch2c", "fpn_c5p5", "fpn_p2", "rpn_conv_shared",
          "rpn_class_raw", "rpn_bbox_pred", "mrcnn_class_conv1", "mrcnn_class_logits",
          "mrcnn_bbox_fc", "mrcnn_mask_conv1", "mrcnn_mask"]
if S.FAST:
    wanted = ["conv1", "rpn_class_raw", "mrcnn_class_logits", "mrcnn_mask"]
layers = {layer.name: layer for layer in model.get_trainable_layers()}
selected = [layers[name] for name in wanted if name in layers]
cols = max(len(layer.get_weights()) for layer in selected)
fig, axes = plt.subplots(len(selected), cols, figsize=(3.5 * cols, 2.4 * len(selected)),
                         squeeze=False)
for row, layer in enumerate(selected):
    for col in range(cols):
        ax = axes[row, col]
        if col >= len(layer.weights):
            ax.axis("off")
            continue
        variable, values = layer.weights[col], layer.get_weights()[col]
        ax.hist(values.ravel(), bins=40)
        ax.set_title("{}/{} {}".format(layer.name, variable.name, values.shape), fontsize=8)
        ax.tick_params(labelsize=7)
fig.tight_layout()
plt.show()
"""),
    md("""
## Weight norms across the network

The L2 norm of each kernel, in network order, gives a one-glance summary: the heads trained
from scratch usually stand apart from the backbone.
"""),
    code("""
names, norms = [], []
for layer in model.get_trainable_layers():
    for variable, values in zip(layer.weights, layer.get_weights()):
        if variable.name == "kernel":
            names.append(layer.name)
            norms.append(float(np.linalg.norm(values)))
fig, ax = plt.subplots(figsize=(12, 3))
ax.plot(norms, marker=".", linestyle="none")
ax.set_yscale("log")
ax.set_xlabel("kernel index (network order)")
ax.set_ylabel("L2 norm")
ax.set_title("{} kernels".format(len(norms)))
plt.show()
print("largest norms:", sorted(zip(norms, names), reverse=True)[:3])
"""),
]


NOTEBOOKS = {
    "demo.ipynb": DEMO,
    "train_shapes.ipynb": TRAIN_SHAPES,
    "inspect_data.ipynb": INSPECT_DATA,
    "inspect_model.ipynb": INSPECT_MODEL,
    "inspect_weights.ipynb": INSPECT_WEIGHTS,
}


def build(cells):
    """An nbformat v4 notebook (no outputs) from (kind, source) pairs."""
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        cell = v4.new_markdown_cell(source) if kind == "md" else v4.new_code_cell(source)
        cell["id"] = "cell-{:02d}".format(i)   # stable ids: regenerating changes nothing
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells):
    return nbformat.writes(build(cells)) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="report notebooks that differ from this script; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = os.path.join(HERE, name)
        text = render(cells)
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if args.check and stale:
        print("out of date: {} (run python notebooks/make_notebooks.py)".format(
            ", ".join(stale)))
        return 1
    print("{} notebook(s) {}".format(len(stale), "out of date" if args.check else "written"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
