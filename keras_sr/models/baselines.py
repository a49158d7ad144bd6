"""Published x3 baselines as plain-conv graphs: ABPN and FSRCNN, built from a `ModelConfig`.

`build_student(ModelConfig.for_arch("abpn"))` (or "fsrcnn") builds them; they train, quantize and
export through the student's path (Stages 1-3, `keras_sr.quant.build_qat_model`,
`keras_sr.export.tflite_lib.convert_qat`). They have one form: every layer is a Conv2D with bias
and a fused ReLU (linear for "tail"), so `reparameterize` returns an equal copy. Input float32
(B, H, W, 3) RGB in [0, 1], any H and W; output (B, s*H, s*W, 3) on the [0, 1] scale, unclipped
(the QAT model's pinned [0, 1] output grid is the clip, as for the student: a clip layer would put
float ops into the int8 graph, tfmot_qat.md section 3). Weights start at Keras' defaults.

ABPN (Du et al., 2021, "Anchor-based Plain Net for Mobile Image Super-Resolution"; layer list as
in its official code, NJU-Jet/SR_Mobile_Quantization `solvers/networks/base7.py`), C = channels,
N = num_blocks:

    "stem" 3x3 3->C + ReLU, "body_{i}" N x 3x3 C->C + ReLU, "pre_tail" 3x3 C->3s² + ReLU,
    "tail" 3x3 3s²->3s² (linear), the anchor added ("anchor_row", "anchor", "anchor_add"),
    "depth_to_space"

At the paper's C = 28, N = 4, s = 3: 42,539 parameters (the official "42.54K") and 42,345 MACs
per LR pixel (9.76 GMAC at 640x360). Differences from the official code: input and output in
[0, 1] instead of [0, 255] (the project's convention, tfmot_qat.md section 14) and no clip layer
in the float model, whose loss sees the unclipped output. `ModelConfig.anchor=False` drops the
anchor (an ablation).

FSRCNN (Dong et al., 2016, "Accelerating the Super-Resolution Convolutional Neural Network"),
d = channels, s = shrink_channels, m = num_blocks:

    "stem" 5x5 3->d, "shrink" 1x1 d->s, "map_{i}" m x 3x3 s->s, "expand" 1x1 s->d (each + ReLU),
    "tail" kxk d->3s² (linear), "depth_to_space" (and the anchor if `ModelConfig.anchor`)

Choices against the paper:
- RGB in and out (3 input channels, 3 output channels) like every model of the project; the
  paper works on Y.
- ReLU where the paper has PReLU. tfmot's 8-bit registry has no PReLU, and a PReLU cannot be the
  fused activation of a conv: each conv would need its own int8 output and a separate int8 PRELU
  op whose rounding the QAT graph does not emulate, breaking the bit-exact fully-int8 export.
- The 9x9 stride-s deconvolution is its sub-pixel equivalent (Shi et al., 2016): an LR conv to
  3s² channels plus depth-to-space. HR pixel s*h + i of a "SAME" deconvolution only sees LR
  pixels h - r .. h + r (`subpixel_kernel_size`: r = 1 for s = 3), so a 3x3 LR conv whose 27
  output channels hold the 9 phases of the 9x9 kernel computes it exactly (a test checks this
  against `tf.nn.conv2d_transpose`): the same 9 * 9 * d * 3 weights, and 3s² biases instead of 3.
At the paper's d = 56, s = 12, m = 4 and x3: 24,535 parameters and 24,336 MACs per LR pixel.
"""
import re

import tf_keras as keras

from keras_sr.models.depth_to_space import upscaled_output

# FSRCNN's deconvolution kernel size (the paper's, at every scale).
FSRCNN_DECONV_SIZE = 9
# A layer that only this architecture has, and the name of its repeated convs.
_MARKERS = {"abpn": "pre_tail", "fsrcnn": "shrink"}
_REPEATED = {"abpn": re.compile(r"body_(\d+)"), "fsrcnn": re.compile(r"map_(\d+)")}


def subpixel_kernel_size(deconv_size, scale):
    """Side of the LR conv that computes a "SAME" deconvolution of this size and stride exactly.

    HR pixel s*h + i (i < s) of `tf.nn.conv2d_transpose(..., strides=s, padding="SAME")` with a
    k x k kernel sums LR pixels h + t for t in [ceil((i + p - k + 1) / s), floor((i + p) / s)],
    p = (k - s) // 2; the radius r = (k + s - 2) // (2s) covers every i. 2r + 1: 3 for k = 9,
    s = 3 (5 for s = 2, 9 for s = 1: a plain conv).
    """
    return 2 * ((deconv_size + scale - 2) // (2 * scale)) + 1


def _conv(filters, size, name, activation="relu"):
    return keras.layers.Conv2D(filters, size, padding="same", activation=activation, name=name)


def build_baseline(config, name):
    """Builds `config.arch` ("abpn" or "fsrcnn") as a functional `keras.Model` (see the module).

    Args:
        config: a `keras_sr.configs.ModelConfig` with a baseline arch.
        name: model name.

    Raises:
        ValueError: `config.arch` is not a baseline.
    """
    if config.arch not in _MARKERS:
        raise ValueError(f"arch {config.arch!r} is not a baseline; baselines: {sorted(_MARKERS)}")
    scale, outputs = config.scale, 3 * config.scale ** 2
    inputs = keras.Input((None, None, 3), name="lr")
    if config.arch == "abpn":
        x = _conv(config.channels, 3, "stem")(inputs)
        for i in range(config.num_blocks):
            x = _conv(config.channels, 3, f"body_{i}")(x)
        x = _conv(outputs, 3, "pre_tail")(x)
        tail_size = 3
    else:
        x = _conv(config.channels, 5, "stem")(inputs)
        x = _conv(config.shrink_channels, 1, "shrink")(x)
        for i in range(config.num_blocks):
            x = _conv(config.shrink_channels, 3, f"map_{i}")(x)
        x = _conv(config.channels, 1, "expand")(x)
        tail_size = subpixel_kernel_size(FSRCNN_DECONV_SIZE, scale)
    x = _conv(outputs, tail_size, "tail", activation=None)(x)
    return keras.Model(inputs, upscaled_output(inputs, x, scale, config.anchor), name=name)


def baseline_config(model):
    """`build_student` kwargs that rebuild a baseline `model`, read from its layers; None if
    `model` is not a baseline (it lacks every architecture's marker layer).

    Raises:
        ValueError: `model` has a baseline's marker layer but not the rest of its layers.
    """
    names = {layer.name: layer for layer in model.layers}
    arch = next((arch for arch, marker in _MARKERS.items() if marker in names), None)
    if arch is None:
        return None
    indices = {int(m[1]) for m in map(_REPEATED[arch].fullmatch, names) if m}
    required = {"stem", "tail", "depth_to_space"} | ({"expand"} if arch == "fsrcnn" else set())
    missing = required - names.keys()
    if missing or not indices or indices != set(range(len(indices))):
        raise ValueError(f"model {model.name!r} is not a keras_sr {arch} network: it lacks the "
                         f"layers {sorted(missing) or _REPEATED[arch].pattern}")
    config = {"arch": arch, "block_type": "plain", "reparameterized": True,
              "channels": names["stem"].filters, "num_blocks": len(indices),
              "scale": names["depth_to_space"].block_size, "anchor": "anchor_add" in names,
              "name": model.name}
    if arch == "fsrcnn":
        config["shrink_channels"] = names["shrink"].filters
    return config
