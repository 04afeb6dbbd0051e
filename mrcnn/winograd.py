"""3x3 convolutions by Winograd's minimal filtering, F(4x4, 3x3), in TensorFlow ops.

A stride-1 "same" 3x3 convolution computed on overlapping 6x6 input tiles, each giving a
4x4 output tile: 36 multiplications per tile and channel pair instead of 144 (Lavin &
Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). TensorFlow's CPU
kernels (oneDNN) run the direct algorithm near the machine's peak, so fewer
multiplications is the remaining float32 lever; cuDNN already chooses Winograd itself on
GPUs. The input/output transforms cost memory traffic, so it pays on large maps with
enough channels only: on the 2-core CPU the FPN's P2 conv at 1024² (256x256x256 -> 256)
went from 0.36 to 0.18 s forward and 1.14 to 0.51 s forward + backward; below 64x64
maps or 128 channels it is slower (benchmarks/bench_winograd.py).

Results equal ``tf.nn.conv2d(x, kernel, 1, "SAME")`` to float32 rounding (relative error
about 1e-5: the transforms have entries up to 8 and 1/24).
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from mrcnn.config import cpu_flags

# F(4, 3) with interpolation points 0, 1, -1, 2, -2 and infinity: y = A^T [(G g) * (B^T d)]
# for a 6-sample input d and 3-tap filter g (correlation, as tf.nn.conv2d).
_BT = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)

OUT_TILE = 4     # output tile side
IN_TILE = 6      # input tile side (OUT_TILE + 3 - 1)
# Maps smaller than this (height * width) take the direct kernel: there the transforms
# cost more than the multiplications saved (measured: 32x32 and 16x16 slower, 64x64 faster).
MIN_WINOGRAD_AREA = 64 * 64
# Nor do convs with fewer input channels: the transforms grow with C, the saved
# multiplications with C * F (measured: 64 -> 64 on 256x256 1.1x slower forward, 1.2x
# forward + backward; 128 -> 128 on 64x64 and 128x128 0.8-0.9x / 0.7-0.9x).
MIN_WINOGRAD_CHANNELS = 128
# In mixed bfloat16 on a CPU without AMX, oneDNN's bf16 convs run about twice the float32
# ones, so Winograd (computed in float32 from the bf16 inputs) pays on larger convs only:
# 128x128 maps and 256 channels (measured, forward + backward: FPN P2 at 1024 px 0.71 ->
# 0.52 s, RPN P2 1.44 -> 0.89 s; 64x64 maps or 128 channels slower).
MIN_WINOGRAD_AREA_BF16 = 128 * 128
MIN_WINOGRAD_CHANNELS_BF16 = 256
# Forward only (inference), the bf16 direct kernel wins unless the conv also has many
# filters (measured at 1024 px: 256 -> 256 on 256x256 0.175 -> 0.197 s, on 128x128
# 0.044 -> 0.049 s, slower; 256 -> 512 0.349 -> 0.303 s and 0.087 -> 0.081 s, faster).
MIN_WINOGRAD_FILTERS_BF16_FORWARD = 512


def winograd_conv3x3(x, kernel):
    """Stride-1 "same" 3x3 convolution of x by kernel, by Winograd F(4x4, 3x3).

    x: float32 [N, H, W, C] (H, W may be dynamic; C static). kernel: float32 [3, 3, C, F]
    (the Conv2D kernel layout). Returns float32 [N, H, W, F], equal to
    ``tf.nn.conv2d(x, kernel, 1, "SAME")`` up to float32 rounding. Differentiable in x and
    kernel (all steps are linear TF ops).
    """
    c = x.shape[-1]
    f = kernel.shape[-1]
    shape = tf.shape(x)
    n, h, w = shape[0], shape[1], shape[2]
    tiles_h = (h + OUT_TILE - 1) // OUT_TILE
    tiles_w = (w + OUT_TILE - 1) // OUT_TILE
    # "same" pads one pixel each side; the bottom/right pad also completes the last tile.
    x = tf.pad(x, [[0, 0], [1, tiles_h * OUT_TILE + 1 - h], [1, tiles_w * OUT_TILE + 1 - w],
                   [0, 0]])
    v = _transformed_tiles(x)                                     # [36, T, C]
    at2 = tf.constant(np.kron(_AT, _AT), tf.float32)              # [16, 36]
    g = tf.constant(_G, tf.float32)
    u = tf.reshape(tf.einsum("ik,jl,klcf->ijcf", g, g, kernel),
                   [IN_TILE * IN_TILE, c, f])                     # [36, C, F]
    m = tf.matmul(v, u)                                           # [36, T, F]
    y = tf.matmul(at2, tf.reshape(m, [IN_TILE * IN_TILE, -1]))    # [16, T * F]
    y = tf.reshape(y, [OUT_TILE, OUT_TILE, n, tiles_h, tiles_w, f])
    y = tf.transpose(y, [2, 3, 0, 4, 1, 5])
    y = tf.reshape(y, [n, tiles_h * OUT_TILE, tiles_w * OUT_TILE, f])
    return y[:, :h, :w]


# Input and output transforms of a 2-D tile are Kronecker products of the 1-D ones.
_BT2 = np.kron(_BT, _BT)                                          # [36 (ij), 36 (kl)]


def _tiles_by_conv(x):
    """B^T d B of every 6x6 tile (stride 4) of padded x [N, Hp, Wp, C] -> [36, T, C],
    T = N * tiles_h * tiles_w, as one stride-4 6x6 conv with 36 filters (filter kl ->
    channel ij holds BT2[ij, kl]) over every channel plane as a one-channel image."""
    shape = tf.shape(x)
    planes = tf.reshape(tf.transpose(x, [3, 0, 1, 2]), [-1, shape[1], shape[2], 1])
    filters = tf.constant(_BT2.T.reshape(IN_TILE, IN_TILE, 1, -1), tf.float32)
    v = tf.nn.conv2d(planes, filters, OUT_TILE, "VALID")          # [C * N, th, tw, 36]
    return tf.transpose(tf.reshape(v, [x.shape[-1], -1, IN_TILE * IN_TILE]), [2, 1, 0])


def _tiles_gradient(dv, x_shape):
    """Gradient of the tile transform: dv [36, T, C] (d loss / d transformed tiles) ->
    d loss / d x [N, Hp, Wp, C], x_shape = (N, Hp, Wp) of the padded input, Hp = 4 th + 2.

    Each tile's 6x6 gradient is BT2^T dv (one matmul); tiles overlap by 2 pixels, so
    these are summed back in place: rows 0-3 of tile t start block t, rows 4-5 add to
    the start of block t + 1 (likewise for columns). Pads and adds only: no scatter."""
    n, hp, wp = x_shape[0], x_shape[1], x_shape[2]
    th, tw = (hp - 2) // OUT_TILE, (wp - 2) // OUT_TILE
    c = dv.shape[-1]
    g = tf.matmul(tf.constant(_BT2.T, tf.float32), tf.reshape(dv, [IN_TILE * IN_TILE, -1]))
    g = tf.reshape(g, [IN_TILE, IN_TILE, n, th, tw, c])      # [row, col, N, th, tw, C]
    no_pad = [0, 0]
    # Rows: block t = rows 0-3 of tile t + rows 4-5 of tile t - 1 (at block rows 0-1).
    g = (tf.pad(g[:OUT_TILE], [no_pad, no_pad, no_pad, [0, 1], no_pad, no_pad]) +
         tf.pad(g[OUT_TILE:], [[0, 2], no_pad, no_pad, [1, 0], no_pad, no_pad]))
    # Columns, the same on axes 1 and 4.
    g = (tf.pad(g[:, :OUT_TILE], [no_pad, no_pad, no_pad, no_pad, [0, 1], no_pad]) +
         tf.pad(g[:, OUT_TILE:], [no_pad, [0, 2], no_pad, no_pad, [1, 0], no_pad]))
    g = tf.transpose(g, [2, 3, 0, 4, 1, 5])                 # [N, th + 1, 4, tw + 1, 4, C]
    g = tf.reshape(g, [n, OUT_TILE * (th + 1), OUT_TILE * (tw + 1), c])
    return g[:, :hp, :wp]


@tf.custom_gradient
def _transformed_tiles(x):
    """Transformed input tiles [36, T, C] of padded x: forward by the conv (faster than
    extract_patches + matmul: P2 at 1024 px 0.22 -> 0.18 s), gradient by _tiles_gradient
    (the conv's own, a one-channel transposed conv, is slower; so is extract_patches',
    a scatter: P2 at 1024 px forward + backward 0.70 / 0.52 / 0.49 s)."""
    def grad(dv):
        return _tiles_gradient(dv, tf.shape(x))
    return _tiles_by_conv(x), grad


def conv3x3_same(x, kernel, direct, min_area=None, min_channels=None):
    """winograd_conv3x3 on maps of at least ``min_area`` pixels (default
    MIN_WINOGRAD_AREA) and at least ``min_channels`` input channels (default
    MIN_WINOGRAD_CHANNELS), else ``direct(x, kernel)``. Decided in Python for static
    shapes, by tf.cond for dynamic ones (the inference function takes any image size).
    bfloat16 x and kernel are computed in float32 and the result cast back."""
    min_area = MIN_WINOGRAD_AREA if min_area is None else min_area
    min_channels = MIN_WINOGRAD_CHANNELS if min_channels is None else min_channels
    if x.shape[-1] < min_channels:
        return direct(x, kernel)

    def by_winograd():
        y = winograd_conv3x3(tf.cast(x, tf.float32), tf.cast(kernel, tf.float32))
        return tf.cast(y, x.dtype)

    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None:
        return by_winograd() if h * w >= min_area else direct(x, kernel)
    shape = tf.shape(x)
    return tf.cond(shape[1] * shape[2] >= min_area, by_winograd, lambda: direct(x, kernel))


@functools.lru_cache(maxsize=None)
def cpu_has_amx(cpuinfo="/proc/cpuinfo"):
    """True if this machine's CPU has AMX bfloat16 tiles (the Linux ``cpuinfo`` flag
    ``amx_bf16``); False if it has not or the flags cannot be read. With AMX, oneDNN's
    bfloat16 convolutions outrun any float32 algorithm."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def resolve_winograd(setting):
    """Config.CONV3X3_WINOGRAD -> bool. "auto": on unless TensorFlow sees a GPU (cuDNN
    picks Winograd or FFT itself there, faster than these TF ops)."""
    if setting == "auto":
        return not tf.config.list_logical_devices("GPU")
    return bool(setting)


@keras.saving.register_keras_serializable(package="mrcnn")
class Conv3x3(keras.layers.Conv2D):
    """A 3x3, stride-1, "same" Conv2D that computes by Winograd F(4x4, 3x3) when
    ``winograd`` is true and the map is large enough: float32 inputs from MIN_WINOGRAD_AREA
    pixels and MIN_WINOGRAD_CHANNELS channels; bfloat16 inputs (mixed precision) from
    MIN_WINOGRAD_AREA_BF16 and MIN_WINOGRAD_CHANNELS_BF16, on CPUs without AMX only, and
    when called with a falsy ``training`` (inference) only with at least
    MIN_WINOGRAD_FILTERS_BF16_FORWARD filters. Otherwise (and for float16) the ordinary
    kernel.

    Same variables (kernel [3, 3, C, F], bias [F]), names and outputs as
    ``Conv2D(filters, 3, padding="same")``, so weight files load either way.
    """

    def __init__(self, filters, kernel_size=3, winograd=False, **kwargs):
        for key, value in (("strides", 1), ("padding", "same"), ("dilation_rate", 1)):
            given = kwargs.pop(key, value)
            if given not in (value, (value, value), [value, value]):
                raise ValueError("Conv3x3 {}: {}={!r} unsupported (only {!r})".format(
                    kwargs.get("name"), key, given, value))
        if kernel_size not in (3, (3, 3), [3, 3]):
            raise ValueError("Conv3x3 {}: kernel_size must be 3, got {!r}".format(
                kwargs.get("name"), kernel_size))
        super().__init__(filters, 3, padding="same", **kwargs)
        self.winograd = bool(winograd)

    def call(self, inputs, training=None):
        if self.data_format != "channels_last":
            return super().call(inputs)
        outputs = self._conv(inputs, self.kernel, forward_only=not training)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def convolution_op(self, inputs, kernel):
        return self._conv(inputs, kernel, forward_only=False)

    def _conv(self, inputs, kernel, forward_only):
        # forward_only: no gradient will be taken (training is falsy), which changes the
        # bfloat16 rule only.
        direct = super().convolution_op
        if not self.winograd:
            return direct(inputs, kernel)
        if inputs.dtype == tf.float32 and kernel.dtype == tf.float32:
            return conv3x3_same(inputs, kernel, direct)
        if inputs.dtype == tf.bfloat16 and not cpu_has_amx():
            if forward_only and self.filters < MIN_WINOGRAD_FILTERS_BF16_FORWARD:
                return direct(inputs, kernel)
            return conv3x3_same(inputs, kernel, direct, MIN_WINOGRAD_AREA_BF16,
                                MIN_WINOGRAD_CHANNELS_BF16)
        return direct(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        config["winograd"] = self.winograd
        return config


def conv2d(filters, kernel_size, winograd=False, strides=1, padding="valid", groups=1,
           **kwargs):
    """The library's convolution factory: a plain ``keras.layers.Conv2D``, or, when
    ``winograd`` (CONV3X3_WINOGRAD resolved by resolve_winograd) and the conv is a stride-1
    3x3 "same" conv without groups, a Conv3x3 that picks Winograd where it pays. Both have
    the same variables and names, so weight files load either way; the backbone, FPN and
    RPN build their convolutions here and read as plain Keras."""
    if winograd and kernel_size in (3, (3, 3)) and strides in (1, (1, 1)) and \
            padding == "same" and groups == 1:
        return Conv3x3(filters, winograd=True, **kwargs)
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                               groups=groups, **kwargs)
