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
# # Mask R-CNN demo: detect objects and draw them
#
# A trained Mask R-CNN takes an image and returns, for every object it finds, a box, a
# class, a confidence score and a pixel mask. This notebook loads a model, runs it on a few
# images and draws the result.
#
# The weights used here come from the synthetic *shapes* task (squares, circles and
# triangles drawn by `samples/shapes.py`): they need no download and train on a laptop CPU.
# Nothing below is specific to shapes; with Matterport's `mask_rcnn_coco.h5` and an 81-class
# config the same cells detect people, cars and cups.

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
import shapes

print(S.summary())


# %% [markdown]
# ## Configuration
#
# Every setting of the model lives in a `Config` subclass. We start from the shapes
# configuration used for training and change what inference needs: one image per batch
# (the batch size is `GPU_COUNT * IMAGES_PER_GPU`). The image size must match the size
# the weights were trained at only loosely: Mask R-CNN is fully convolutional up to its
# heads, but results are best at the training scale.

# %%
class InferenceConfig(shapes.ShapesInferenceConfig):
    IMAGE_MIN_DIM = S.IMAGE_SIZE
    IMAGE_MAX_DIM = S.IMAGE_SIZE

config = InferenceConfig()
config.display()

# %% [markdown]
# ## Some images to look at
#
# `ShapesDataset` draws its images from a random seed, so this set is the same every run.
# The dataset also gives the class names, index 0 being the background (`BG`).

# %%
dataset = shapes.ShapesDataset()
dataset.load_shapes(S.SHOW_IMAGES, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1], seed=2024)
dataset.prepare()
class_names = dataset.class_names
images = [dataset.load_image(i) for i in dataset.image_ids]
print("classes:", class_names)
print("images:", [im.shape for im in images])

# %% [markdown]
# ## Build the model and find weights
#
# `MaskRCNN(mode="inference", ...)` builds the detection graph. Weights are looked up in
# this order:
#
# 1. the file named by the environment variable `MRCNN_NB_WEIGHTS`;
# 2. the newest checkpoint that `train_shapes.ipynb` wrote under the logs folder
#    (`model.find_last()`);
# 3. otherwise a short training run right here (a few minutes on a CPU in tutorial mode).

# %%
model = modellib.MaskRCNN(mode="inference", config=config, model_dir=S.LOGS)
weights = S.weights_path(model)
print("weights found:", weights)

# %%
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

# %% [markdown]
# ## Detect
#
# `model.detect` takes a list of images (any size: each is resized to the model's input and
# the results are mapped back) and returns one dictionary per image:
#
# * `rois`: boxes `[N, (y1, x1, y2, x2)]` in pixels of the original image,
# * `class_ids`: `[N]` indices into `class_names`,
# * `scores`: `[N]` confidences,
# * `masks`: `[H, W, N]` boolean masks at the image's full size.

# %%
results = model.detect(images)
for image_id, r in zip(dataset.image_ids, results):
    found = [class_names[c] for c in r["class_ids"]]
    print("image {}: {} detection(s) {}".format(image_id, len(found), found))
r = results[0]
print({key: value.shape for key, value in r.items()})

# %% [markdown]
# ## Draw the detections
#
# `visualize.display_instances` overlays each mask in its own colour, outlines it, and
# writes the class and score at the top-left corner of the dashed box. Given an `ax` it draws
# into that subplot, which lets us put several images side by side.
#
# The drawing functions return their matplotlib `Figure`. When such a call ends a cell, a
# trailing `;` stops Jupyter from displaying that returned figure a second time.

# %%
cols = len(images)
fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 4))
for ax, image, r in zip(np.atleast_1d(axes), images, results):
    visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"], class_names,
                                r["scores"], ax=ax, title="detections")
plt.show()

# %% [markdown]
# Next to the ground truth, the differences are easier to judge: `display_differences`
# draws the annotations in green and the predictions in red, each prediction captioned
# with its score and its IoU with the matched annotation.

# %%
image = images[0]
gt_masks, gt_class_ids = dataset.load_mask(dataset.image_ids[0])
gt_boxes = utils.extract_bboxes(gt_masks)
r = results[0]
visualize.display_differences(image, gt_boxes, gt_class_ids, gt_masks,
                              r["rois"], r["class_ids"], r["scores"], r["masks"],
                              class_names, figsize=(6, 6));

# %% [markdown]
# ## A real photo
#
# The balloon photos of Matterport's tutorial (`../shared/data/balloon`, annotated with the
# VGG Image Annotator) are loaded by `samples/balloon.py`. Here we show one photo with its
# annotated masks, and the *colour splash* effect of that sample: the picture in grey
# except the balloons. When the data folder is missing this section does nothing.

# %%
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

# %% [markdown]
# `detect` accepts this photo as it is, although it is much larger than the shapes model's
# input: the model sees it resized and padded to its square input, and the masks come back at
# the photo's own size. A shapes model knows nothing about balloons, of course. Set
# `MRCNN_NB_BALLOON_WEIGHTS` to weights trained with `python samples/balloon.py train` to see
# real balloon detections and their colour splash.

# %%
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
