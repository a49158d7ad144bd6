"""The x3 LR-space student network, in its training (branchy) and deploy (fused) forms.

Graph, with layer names: "lr" (input) -> "stem" Conv2D 3x3 3->C + ReLU -> N blocks ("block_{i}",
or "block_{i}_dw" and "block_{i}_pw" for "repdw") -> "skip" Add(stem output, last block output)
-> "tail" Conv2D 3x3 C->3*s*s (linear) -> "depth_to_space" DepthToSpace(s). With
`ModelConfig.anchor` (ABPN's output anchor): "anchor_row" Concatenate of s copies of the input,
"anchor" Concatenate of s copies of that, and "anchor_add" Add(tail output, anchor) before
depth-to-space.

The deploy form of the default ("mobileone") student holds only Conv2D (bias + fused ReLU), Add and
DepthToSpace layers: 82,683 parameters for C=32, N=8, s=3 (the anchor adds two Concatenates and no
parameter).

`build_student` is also the entry point of the baselines (`ModelConfig.arch` "abpn" and "fsrcnn",
`keras_sr.models.baselines`), so the trainer and the work directory build every arch the same way.
"""
import re

import tf_keras as keras

from keras_sr.configs import BLOCK_TYPES, ModelConfig  # noqa: F401  (BLOCK_TYPES: public here too)
from keras_sr.models.baselines import baseline_config, build_baseline
from keras_sr.models.blocks import MobileOneConv2D, fused_conv
from keras_sr.models.depth_to_space import upscaled_output
from keras_sr.models.online import OnlineMobileOneConv2D

_BLOCK_NAME = re.compile(r"block_(\d+)(_dw|_pw)?")


# Block type -> (normalize, expansion as a multiple of the channels) of its `OnlineMobileOneConv2D`.
# An expansion of 2 beat 4 and 8 (one branch, like SESR) at 2,000 Stage-1 steps (README,
# "Re-parameterization on a CPU budget").
_ONLINE = {"mobileone_online": (True, 0), "mobileone_linear": (False, 0), "mobileone_expand": (False, 2)}


def _block_layers(config, reparameterized, name):
    """Returns the layers of one block, applied in sequence, each ending in ReLU."""
    block_type, channels, num_branches = config.block_type, config.channels, config.num_branches
    online = block_type in _ONLINE
    if block_type == "plain" or (online and reparameterized):
        return [fused_conv(channels, 3, name=name)]
    if online:
        normalize, expansion = _ONLINE[block_type]
        return [OnlineMobileOneConv2D(channels, 3, num_branches=num_branches, normalize=normalize,
                                      expansion=expansion * channels, name=name)]
    if block_type == "repdw":
        # The pointwise stage has no separate 1x1 "scale" branch: its branches already are 1x1.
        convs = [(f"{name}_dw", 3, True, num_branches), (f"{name}_pw", 1, False, num_branches)]
    else:
        convs = [(name, 3, False, 1 if block_type == "repconv" else num_branches)]
    if reparameterized:
        return [fused_conv(channels, size, depthwise=dw, name=n) for n, size, dw, _ in convs]
    return [MobileOneConv2D(channels, size, num_branches=k, depthwise=dw, name=n)
            for n, size, dw, k in convs]


def build_student(config=None, *, reparameterized=False, name="student", **fields):
    """Builds the student network, or the baseline `config.arch` names (a functional `keras.Model`).

    Input: float32 (B, H, W, 3) RGB in [0, 1], any H and W. Output: float32
    (B, scale*H, scale*W, 3), RGB on the [0, 1] scale but not clipped (clip when making pixels).
    With `config.anchor` the output is nearest-neighbour upsampling of the input plus the
    depth-to-space of the tail output (a residual, roughly in [-1, 1]).

    `reparameterize(build_student(...))` and `build_student(..., reparameterized=True)` have the
    same config; training and deploy forms share the names of every layer. A baseline
    (`keras_sr.models.baselines`) has one form whatever `reparameterized` says.

    Args:
        config: a `keras_sr.configs.ModelConfig` (default: the paper's student).
        reparameterized: build the deploy form (every block fused into plain convolutions)
            instead of the training form.
        name: model name.
        **fields: `ModelConfig` fields (arch, block_type, channels, num_blocks, num_branches,
            scale, anchor, shrink_channels) that override `config`'s.

    Returns:
        An uncompiled `keras.Model`.

    Raises:
        ValueError: on an unknown arch or block type, or a non-positive size.
    """
    config = (config or ModelConfig()).replace(**fields)
    if not isinstance(reparameterized, bool):
        raise ValueError(f"reparameterized must be a bool, got {reparameterized!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if config.arch != "student":
        return build_baseline(config, name)
    channels, scale = config.channels, config.scale

    inputs = keras.Input((None, None, 3), name="lr")
    stem = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="stem")(inputs)
    x = stem
    for i in range(config.num_blocks):
        for layer in _block_layers(config, reparameterized, f"block_{i}"):
            x = layer(x)
    x = keras.layers.Add(name="skip")([stem, x])
    x = keras.layers.Conv2D(3 * scale * scale, 3, padding="same", name="tail")(x)
    outputs = upscaled_output(inputs, x, scale, config.anchor)
    return keras.Model(inputs, outputs, name=name)


def student_config(model):
    """Returns `build_student` kwargs that rebuild the graph of `model` (JSON-serializable dict).

    The kwargs are read from the layers, so they survive `from_config` and saving. A graph that
    several kwargs build comes back in one canonical spelling: a one-branch "mobileone" comes back
    as "repconv"; the deploy forms of "mobileone", "repconv" and "plain" (identical graphs) come
    back as `block_type="plain", reparameterized=True`. `num_branches` is left out where the graph
    does not use it. A baseline comes back with its arch (`baselines.baseline_config`); the
    student's kwargs leave arch out (the default).

    Args:
        model: a model built by `build_student` or `reparameterize`.

    Returns:
        dict with keys reparameterized, block_type, channels, num_blocks, scale, anchor, name
        and, for branchy blocks, num_branches (a baseline: arch, and shrink_channels for fsrcnn).

    Raises:
        ValueError: if `model` lacks the student's (or a baseline's) named layers.
    """
    baseline = baseline_config(model)
    if baseline is not None:
        return baseline
    names = {layer.name: layer for layer in model.layers}
    missing = {"stem", "skip", "tail", "depth_to_space"} - names.keys()
    indices = {int(m[1]) for m in map(_BLOCK_NAME.fullmatch, names) if m}
    if missing or indices != set(range(len(indices))) or not indices:
        raise ValueError(f"model {model.name!r} is not a keras_sr student: it lacks the layers "
                         f"{sorted(missing) or 'block_0..block_{N-1}'}")
    first = names.get("block_0") or names["block_0_dw"]
    config = {"reparameterized": not isinstance(first, (MobileOneConv2D, OnlineMobileOneConv2D))}
    if "block_0_dw" in names:
        config["block_type"] = "repdw"
    elif isinstance(first, OnlineMobileOneConv2D):
        config["block_type"] = ("mobileone_online" if first.normalize else
                                "mobileone_expand" if first.expansion else "mobileone_linear")
    elif config["reparameterized"]:
        config["block_type"] = "plain"
    else:
        config["block_type"] = "repconv" if first.num_branches == 1 else "mobileone"
    if not config["reparameterized"] and config["block_type"] != "repconv":
        config["num_branches"] = first.num_branches
    config.update(channels=names["stem"].filters, num_blocks=len(indices),
                  scale=names["depth_to_space"].block_size, anchor="anchor_add" in names,
                  name=model.name)
    return config
