"""The x3 LR-space student network, in its training (branchy) and deploy (fused) forms.

Graph, with layer names: "lr" (input) -> "stem" Conv2D 3x3 3->C + ReLU -> N blocks ("block_{i}",
or "block_{i}_dw" and "block_{i}_pw" for "repdw") -> "skip" Add(stem output, last block output)
-> "tail" Conv2D 3x3 C->3*s*s (linear) -> "depth_to_space" DepthToSpace(s).

The deploy form of the default ("mobileone") student holds only Conv2D (bias + fused ReLU), Add and
DepthToSpace layers: 82,683 parameters for C=32, N=8, s=3.
"""
import re

import tf_keras as keras

from keras_sr.models.blocks import MobileOneConv2D, fused_conv, positive_int
from keras_sr.models.depth_to_space import DepthToSpace

# Block type -> what one block is in the training form, and what it fuses into.
BLOCK_TYPES = {
    "mobileone": "num_branches parallel 3x3 conv+BN, a 1x1 conv+BN and an identity BN, summed, "
                 "ReLU (MobileOneConv2D); deploy: one Conv2D 3x3 + ReLU",
    "repconv": "RepVGG: 3x3 conv+BN, 1x1 conv+BN and identity BN, summed, ReLU (MobileOneConv2D "
               "with one branch; num_branches is ignored); deploy: one Conv2D 3x3 + ReLU",
    "repdw": "MobileOne's depthwise-separable block: 'block_{i}_dw' (num_branches depthwise 3x3 "
             "conv+BN, a depthwise 1x1 conv+BN, identity BN, ReLU) then 'block_{i}_pw' "
             "(num_branches 1x1 conv+BN, identity BN, ReLU); deploy: DepthwiseConv2D 3x3 + ReLU, "
             "then Conv2D 1x1 + ReLU",
    "plain": "Conv2D 3x3 + ReLU in both forms (num_branches is ignored)",
}

_BLOCK_NAME = re.compile(r"block_(\d+)(_dw|_pw)?")


def _block_layers(block_type, reparameterized, channels, num_branches, name):
    """Returns the layers of one block, applied in sequence, each ending in ReLU."""
    if block_type == "plain":
        return [fused_conv(channels, 3, name=name)]
    if block_type == "repdw":
        # The pointwise stage has no separate 1x1 "scale" branch: its branches already are 1x1.
        convs = [(f"{name}_dw", 3, True, num_branches), (f"{name}_pw", 1, False, num_branches)]
    else:
        convs = [(name, 3, False, 1 if block_type == "repconv" else num_branches)]
    if reparameterized:
        return [fused_conv(channels, size, depthwise=dw, name=n) for n, size, dw, _ in convs]
    return [MobileOneConv2D(channels, size, num_branches=k, depthwise=dw, name=n)
            for n, size, dw, k in convs]


def build_student(reparameterized=False, block_type="mobileone", channels=32, num_blocks=8,
                  num_branches=4, scale=3, name="student"):
    """Builds the student network (a functional `keras.Model`).

    Input: float32 (B, H, W, 3) RGB in [0, 1], any H and W. Output: float32
    (B, scale*H, scale*W, 3), RGB on the [0, 1] scale but not clipped (clip when making pixels).

    `reparameterize(build_student(...))` and `build_student(reparameterized=True, ...)` have the
    same config; training and deploy forms share the names of every layer.

    Args:
        reparameterized: build the deploy form (every block fused into plain convolutions)
            instead of the training form.
        block_type: one of `BLOCK_TYPES`: "mobileone" (default), "repconv", "repdw" or "plain".
        channels: feature channels C of the stem and every block.
        num_blocks: number N of blocks.
        num_branches: parallel branches k of each "mobileone" / "repdw" re-parameterizable conv.
        scale: upscaling factor s; the tail outputs 3*s*s channels.
        name: model name.

    Returns:
        An uncompiled `keras.Model`.

    Raises:
        ValueError: on an unknown block type or a non-positive size.
    """
    if block_type not in BLOCK_TYPES:
        raise ValueError(f"block_type must be one of {sorted(BLOCK_TYPES)}, got {block_type!r}")
    if not isinstance(reparameterized, bool):
        raise ValueError(f"reparameterized must be a bool, got {reparameterized!r}")
    channels = positive_int(channels, "channels")
    num_blocks = positive_int(num_blocks, "num_blocks")
    num_branches = positive_int(num_branches, "num_branches")
    scale = positive_int(scale, "scale")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")

    inputs = keras.Input((None, None, 3), name="lr")
    stem = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="stem")(inputs)
    x = stem
    for i in range(num_blocks):
        for layer in _block_layers(block_type, reparameterized, channels, num_branches,
                                   f"block_{i}"):
            x = layer(x)
    x = keras.layers.Add(name="skip")([stem, x])
    x = keras.layers.Conv2D(3 * scale * scale, 3, padding="same", name="tail")(x)
    outputs = DepthToSpace(scale, name="depth_to_space")(x)
    return keras.Model(inputs, outputs, name=name)


def student_config(model):
    """Returns `build_student` kwargs that rebuild the graph of `model` (JSON-serializable dict).

    The kwargs are read from the layers, so they survive `from_config` and saving. A graph that
    several kwargs build comes back in one canonical spelling: a one-branch "mobileone" comes back
    as "repconv"; the deploy forms of "mobileone", "repconv" and "plain" (identical graphs) come
    back as `block_type="plain", reparameterized=True`. `num_branches` is left out where the graph
    does not use it.

    Args:
        model: a model built by `build_student` or `reparameterize`.

    Returns:
        dict with keys reparameterized, block_type, channels, num_blocks, scale, name and, for
        branchy blocks, num_branches.

    Raises:
        ValueError: if `model` lacks the student's named layers.
    """
    names = {layer.name: layer for layer in model.layers}
    missing = {"stem", "skip", "tail", "depth_to_space"} - names.keys()
    indices = {int(m[1]) for m in map(_BLOCK_NAME.fullmatch, names) if m}
    if missing or indices != set(range(len(indices))) or not indices:
        raise ValueError(f"model {model.name!r} is not a keras_sr student: it lacks the layers "
                         f"{sorted(missing) or 'block_0..block_{N-1}'}")
    first = names.get("block_0") or names["block_0_dw"]
    config = {"reparameterized": not isinstance(first, MobileOneConv2D)}
    if "block_0_dw" in names:
        config["block_type"] = "repdw"
    elif config["reparameterized"]:
        config["block_type"] = "plain"
    else:
        config["block_type"] = "repconv" if first.num_branches == 1 else "mobileone"
    if not config["reparameterized"] and config["block_type"] != "repconv":
        config["num_branches"] = first.num_branches
    config.update(channels=names["stem"].filters, num_blocks=len(indices),
                  scale=names["depth_to_space"].block_size, name=model.name)
    return config
