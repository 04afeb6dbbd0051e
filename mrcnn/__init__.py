"""mrcnn: Mask R-CNN and Cascade Mask R-CNN for TensorFlow 2 / Keras 3."""

import numpy as _np

__version__ = "0.1.0"


def _numpy_aliases_for_imgaug():
    """numpy 2 removed ``np.sctypes`` and ``np.complex``, which imgaug 0.4.0 reads (sctypes
    at import, complex in its blend / frequency-noise modules). Define them, only where
    missing, on the first import of any mrcnn module, so mrcnn.augment and a user's own
    ``import imgaug`` after it both work. A numpy that still has them is left untouched."""
    if not hasattr(_np, "sctypes"):
        _np.sctypes = {
            "int": [_np.int8, _np.int16, _np.int32, _np.int64],
            "uint": [_np.uint8, _np.uint16, _np.uint32, _np.uint64],
            "float": [_np.float16, _np.float32, _np.float64, _np.longdouble],
            "complex": [_np.complex64, _np.complex128, _np.clongdouble],
            "others": [bool, object, bytes, str, _np.void],
        }
    if not hasattr(_np, "complex"):
        _np.complex = complex


_numpy_aliases_for_imgaug()
