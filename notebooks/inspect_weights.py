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
# # Inspecting the weights
#
# A model that does not learn often shows it in its weights: a layer whose values are all
# equal (dead, or never loaded), values that grow without bound, or weight distributions
# that are still those of the initialiser after training. This notebook lists statistics for
# every weight tensor and plots histograms.

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
from mrcnn import visualize
import shapes

print(S.summary())


# %% [markdown]
# ## Load the model
#
# An inference model with the shapes weights of `train_shapes.ipynb` (or the file named by
# `MRCNN_NB_WEIGHTS`); with none, the freshly initialised weights are inspected, which is
# also instructive: compare them with trained ones.

# %%
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

# %% [markdown]
# ## Statistics of every weight
#
# `display_weight_stats` lists each weight with its shape, minimum, maximum and standard
# deviation. Suspicious rows are flagged: `*** dead?` when a (non-bias) tensor holds a
# single value, `*** Overflow?` when some value exceeds 1000 in magnitude.

# %%
rows = visualize.display_weight_stats(model)
flagged = [row[0] for row in rows[1:] if "***" in row[0]]
print("{} weight tensors, {} flagged".format(len(rows) - 1, len(flagged)))

# %% [markdown]
# Which layers are flagged? A layer that was never trained keeps its initial constants:
# batch-norm gamma 1, beta 0, moving mean 0 and variance 1. After the fast (CI) run, which
# trains the heads only, that is true of every batch-norm layer of the backbone. After the
# full tutorial run a few batch-norm layers may still be flagged: with TRAIN_BN = False their
# moving statistics never change (the stored run flags three); with COCO weights nothing
# should be.

# %%
flagged_layers = sorted({name.split("/")[0] for name in flagged})
print("{} layer(s) with flagged weights{}".format(
    len(flagged_layers), ": " + ", ".join(flagged_layers[:8]) if flagged_layers else ""))
if len(flagged_layers) > 8:
    print("... and {} more".format(len(flagged_layers) - 8))

# %% [markdown]
# ## Histograms
#
# One row per layer, one histogram per weight tensor (kernel, bias, or batch-norm gamma,
# beta, moving mean and variance). A selection: the first convolution, the end of the
# backbone, the FPN and RPN, and the three heads.

# %%
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

# %% [markdown]
# ## Weight norms across the network
#
# The L2 norm of each kernel, in network order, gives a one-glance summary: the heads trained
# from scratch usually stand apart from the backbone.

# %%
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
