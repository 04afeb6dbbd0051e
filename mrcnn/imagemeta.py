"""Temporary alias of mrcnn.preprocess, for the modules that still import the image-meta
helpers from here (graph.py, roi_heads.py). Delete this file once they import from
mrcnn.preprocess."""

from mrcnn.preprocess import (compose_image_meta, mold_image,  # noqa: F401
                              parse_image_meta, parse_image_meta_graph, unmold_image)
