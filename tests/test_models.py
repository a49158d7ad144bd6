"""Student network: exact re-parameterization, deploy graph, serialization and argument checks;
the baselines ABPN and FSRCNN: layer lists, parameter counts, forward values, configs."""
import itertools
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from keras_sr import configs, workdir
from keras_sr.common import fileio
from keras_sr.models import baselines
from keras_sr.models import (
    BLOCK_TYPES,
    MobileOneConv2D,
    OnlineMobileOneConv2D,
    build_student,
    fused_conv,
    reparameterize,
    student_config,
)

# float32 rounding of a fused vs a branchy forward pass stays far below this (about 4e-7 measured);
# a folding error (a wrong mean, variance, epsilon, channel order or centre tap) is far above it.
FUSED_ATOL = 1e-5


def randomize_batch_norms(model, seed=0):
    """Sets every BN's gamma, beta, moving mean and (positive) moving variance to random values.

    At Keras' defaults (mean 0, variance 1, gamma 1, beta 0) a fold that mishandles the statistics
    would still pass. Gammas are kept below 1 so that activations stay O(1) through the summed
    branches and the absolute tolerance means the same thing for every depth.
    """
    rng = np.random.default_rng(seed)
    bns = [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]
    for bn in bns:
        n = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.2, 0.6, n) * rng.choice([-1.0, 1.0], n))
        bn.beta.assign(rng.normal(0.0, 0.1, n))
        bn.moving_mean.assign(rng.normal(0.0, 0.3, n))
        bn.moving_variance.assign(rng.uniform(0.3, 3.0, n))
    return len(bns)


def randomize_online_scales(model, seed=1):
    """Sets every branch scale of the online blocks to random values of either sign."""
    rng = np.random.default_rng(seed)
    scales = [v for m in (model, *model.submodules) if isinstance(m, OnlineMobileOneConv2D)
              for v in m.trainable_weights if "scale" in v.name]
    for v in scales:
        v.assign(rng.uniform(0.2, 0.6, v.shape) * rng.choice([-1.0, 1.0], v.shape))
    return len(scales)


def random_images(shape=(1, 12, 12, 3), seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("filters, in_channels, kernel_size, num_branches, depthwise", [
    (8, 8, 3, 4, False),   # MobileOne: k 3x3, 1x1, identity
    (8, 8, 3, 1, False),   # RepVGG
    (12, 8, 3, 2, False),  # in != out: no identity branch
    (8, 8, 5, 2, False),   # 1x1 on the centre tap of a 5x5
    (8, 8, 1, 3, False),   # pointwise: no scale branch
    (8, 8, 3, 3, True),    # depthwise, multiplier layout c * k + j
    (8, 8, 1, 2, True),
])
def test_layer_fuses_exactly(filters, in_channels, kernel_size, num_branches, depthwise):
    layer = MobileOneConv2D(filters, kernel_size, num_branches=num_branches, depthwise=depthwise,
                            activation=None)  # linear, so no ReLU hides negative errors
    x = np.random.default_rng(1).normal(0.0, 1.0, (2, 7, 9, in_channels)).astype(np.float32)
    layer(x)
    identity = in_channels == filters
    assert randomize_batch_norms(layer) == 1 + (kernel_size > 1) + identity

    kernel, bias = layer.fused_weights()
    assert kernel.dtype == bias.dtype == np.float64
    fused = fused_conv(filters, kernel_size, depthwise=depthwise, activation=None)
    fused.build(x.shape)
    fused.set_weights([kernel, bias])
    expected = layer(x, training=False).numpy()
    assert np.abs(expected).max() > 0.1
    error = np.abs(fused(x).numpy() - expected).max()
    assert error < FUSED_ATOL, f"fused vs branchy max abs error {error:.3g} >= {FUSED_ATOL}"

    per_out = 1 if depthwise else in_channels
    branch_params = num_branches * (kernel_size**2 * per_out + 2) * filters
    scale_params = (per_out + 2) * filters if kernel_size > 1 else 0
    assert layer.count_params() - sum(np.prod(w.shape) for w in layer.non_trainable_weights) == (
        branch_params + scale_params + 2 * filters * identity)


@pytest.mark.parametrize("depthwise", [False, True])
def test_training_forward_is_separate_branches(depthwise):
    """With batch statistics, the grouped conv + BN equals k separately normalized branches."""
    k, c = 3, 6
    layer = MobileOneConv2D(c, 3, num_branches=k, depthwise=depthwise, activation=None)
    x = tf.constant(np.random.default_rng(2).normal(0.0, 1.0, (4, 5, 6, c)), tf.float32)
    layer(x)
    randomize_batch_norms(layer)

    def batch_norm(z, bn, channels):
        mean, variance = tf.nn.moments(z, axes=[0, 1, 2])
        gamma, beta = (tf.gather(v, channels) for v in (bn.gamma, bn.beta))
        return (z - mean) * tf.math.rsqrt(variance + bn.epsilon) * gamma + beta

    kernel = (layer.conv_kxk.depthwise_kernel if depthwise else layer.conv_kxk.kernel).numpy()
    expected = 0.0
    for j in range(k):
        if depthwise:
            z = tf.nn.depthwise_conv2d(x, kernel[..., j:j + 1], [1, 1, 1, 1], "SAME")
            channels = np.arange(c) * k + j
        else:
            channels = np.arange(c) + j * c
            z = tf.nn.conv2d(x, kernel[..., channels], 1, "SAME")
        expected += batch_norm(z, layer.bn_kxk, channels)
    expected += batch_norm(layer.conv_scale(x), layer.bn_scale, np.arange(c))
    expected += batch_norm(x, layer.bn_identity, np.arange(c))
    np.testing.assert_allclose(layer(x, training=True), expected, atol=1e-5)


@pytest.mark.parametrize("filters, in_channels, kernel_size, num_branches, normalize, expansion", [
    (8, 8, 3, 4, True, 0),    # k 3x3, 1x1, identity
    (8, 8, 3, 1, True, 0),    # RepVGG-like
    (12, 8, 3, 2, True, 0),   # in != out: no identity branch
    (8, 8, 5, 2, True, 0),    # 1x1 on the centre tap of a 5x5
    (8, 8, 1, 3, True, 0),    # pointwise: no 1x1 branch
    (8, 8, 3, 4, False, 0),   # no BN: a bias
    (12, 8, 3, 2, False, 0),
    (8, 8, 3, 4, False, 16),  # each branch a product (expansion 16)
    (12, 8, 3, 2, False, 5),
    (8, 8, 5, 1, True, 3),
])
def test_online_layer_fuses_exactly(filters, in_channels, kernel_size, num_branches, normalize,
                                    expansion):
    layer = OnlineMobileOneConv2D(filters, kernel_size, num_branches=num_branches, activation=None,
                                  normalize=normalize, expansion=expansion)
    x = np.random.default_rng(1).normal(0.0, 1.0, (2, 7, 9, in_channels)).astype(np.float32)
    layer(x)
    assert randomize_batch_norms(layer) == int(normalize)
    if not normalize:
        layer.bias.assign(np.random.default_rng(3).normal(0.0, 0.5, filters))
    assert randomize_online_scales(layer) == 1 + (kernel_size > 1) + (in_channels == filters)
    expected = layer(x, training=False).numpy()
    kernel, bias = layer.fused_weights()
    assert kernel.shape == (kernel_size, kernel_size, in_channels, filters)
    fused = fused_conv(filters, kernel_size, activation=None)
    fused.build(x.shape)
    fused.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    error = np.abs(fused(x).numpy() - expected).max()
    assert error < FUSED_ATOL * max(1.0, np.abs(expected).max()), error


def test_online_training_forward_is_the_sum_of_separate_branches():
    """One conv of the merged kernel equals the scaled branch convs summed (before the BN)."""
    layer = OnlineMobileOneConv2D(8, 3, num_branches=3, activation=None)
    x = np.random.default_rng(2).normal(0.0, 1.0, (2, 6, 7, 8)).astype(np.float32)
    layer(x)
    # The branches start different (identical ones would stay identical in training).
    kernels = layer.kernel_kxk.numpy()
    assert min(np.abs(kernels[0] - kernels[j]).max() for j in (1, 2)) > 0.1
    randomize_online_scales(layer)
    conv = lambda k: tf.nn.conv2d(x, k, 1, "SAME").numpy()  # noqa: E731
    branches = sum(conv(layer.kernel_kxk[j] * layer.scale_kxk[j]) for j in range(3))
    branches += conv((layer.kernel_1x1 * layer.scale_1x1)[None, None])
    branches += x * layer.scale_identity.numpy()
    merged = tf.nn.conv2d(x, layer.merged_kernel(), 1, "SAME").numpy()
    np.testing.assert_allclose(merged, branches, atol=1e-5)
    # Every branch's own kernel and scale gets a gradient through the merged kernel.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_fused_kernel_moment_recovers_the_merged_kernels_gradient():
    """Branch gradients are s_j * g: the estimate returns g (power 1) and g^2 (power 2) exactly."""
    layer = OnlineMobileOneConv2D(8, 3, num_branches=3, activation=None, normalize=False)
    x = np.random.default_rng(4).normal(0.0, 1.0, (2, 6, 7, 8)).astype(np.float32)
    layer(x)
    randomize_online_scales(layer)
    with tf.GradientTape(persistent=True) as tape:
        merged = layer.merged_kernel()
        tape.watch(merged)
        out = tf.nn.conv2d(x, merged, 1, "SAME") + layer.bias
        loss = tf.reduce_sum(tf.sin(3.0 * out))
    g_merged = tape.gradient(loss, merged).numpy()
    g_kxk, g_1x1 = (tape.gradient(loss, v).numpy() for v in (layer.kernel_kxk, layer.kernel_1x1))
    for power in (1, 2):
        estimate = layer.fused_kernel_moment(g_kxk ** power, g_1x1 ** power, power)
        np.testing.assert_allclose(estimate, g_merged ** power, rtol=1e-4,
                                   atol=1e-6 * np.abs(g_merged ** power).max())
    with pytest.raises(ValueError, match="only for the linear form"):
        OnlineMobileOneConv2D(8, 3, normalize=True).fused_kernel_moment(g_kxk, g_1x1, 1)
    with pytest.raises(ValueError, match="only for the linear form"):
        OnlineMobileOneConv2D(8, 3, normalize=False, expansion=4).fused_kernel_moment(
            g_kxk, g_1x1, 1)


def test_expanded_branches_are_the_two_convs_in_sequence():
    """With expansion, branch j is a 3x3 conv to e channels then a 1x1 conv back, multiplied out;
    at the start each branch product has the variance of the unexpanded branch's Glorot kernel."""
    layer = OnlineMobileOneConv2D(8, 3, num_branches=2, activation=None, normalize=False,
                                  expansion=48)
    unexpanded = OnlineMobileOneConv2D(8, 3, num_branches=2, activation=None, normalize=False)
    x = np.random.default_rng(5).normal(0.0, 1.0, (2, 6, 7, 8)).astype(np.float32)
    layer(x)
    unexpanded(x)
    randomize_online_scales(layer)
    layer.bias.assign(np.random.default_rng(6).normal(0.0, 0.5, 8))
    conv = lambda t, k: tf.nn.conv2d(t, k, 1, "SAME")  # noqa: E731
    expected = sum(conv(conv(x, layer.kernel_kxk[j]), layer.projection_kxk[j][None, None])
                   * layer.scale_kxk[j] for j in range(2))
    expected += conv(x, (layer.kernel_1x1 * layer.scale_1x1)[None, None])
    expected += x * layer.scale_identity + layer.bias
    np.testing.assert_allclose(layer(x, training=True).numpy(), expected.numpy(), atol=1e-5)
    products = np.einsum("jhwie,jeo->jhwio", layer.kernel_kxk.numpy(), layer.projection_kxk.numpy())
    ratio = products.var() / unexpanded.kernel_kxk.numpy().var()
    assert 0.8 < ratio < 1.25, ratio
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == 7 and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("block_type, channels, num_blocks, num_branches", [
    ("mobileone", 32, 8, 4),
    ("mobileone", 8, 2, 1),
    ("mobileone", 12, 3, 2),
    ("repconv", 8, 3, 4),
    ("repdw", 8, 2, 3),
    ("repdw", 16, 3, 1),
    ("plain", 8, 2, 4),
    ("mobileone_online", 32, 8, 4),
    ("mobileone_online", 8, 3, 1),
    ("mobileone_online", 12, 2, 3),
    ("mobileone_linear", 32, 8, 4),
    ("mobileone_linear", 8, 2, 2),
    ("mobileone_expand", 32, 8, 4),
    ("mobileone_expand", 8, 3, 1),
])
def test_student_fuses_exactly(block_type, channels, num_blocks, num_branches):
    _assert_student_fuses(block_type=block_type, channels=channels, num_blocks=num_blocks,
                          num_branches=num_branches)


@pytest.mark.parametrize("block_type", ["mobileone", "mobileone_linear", "mobileone_expand",
                                        "plain"])
def test_anchored_student_fuses_exactly(block_type):
    _assert_student_fuses(block_type=block_type, channels=8, num_blocks=2, num_branches=2,
                          anchor=True)


def nearest_upsampling(x, scale=3):
    return np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)


def _assert_student_fuses(**kwargs):
    model = build_student(**kwargs)
    randomize_batch_norms(model)
    online = kwargs["block_type"] in ("mobileone_online", "mobileone_linear", "mobileone_expand")
    assert randomize_online_scales(model) == (3 * kwargs["num_blocks"] if online else 0)
    fused = reparameterize(model)
    assert fused.get_config() == build_student(reparameterized=True, **kwargs).get_config()
    assert not any(isinstance(m, keras.layers.BatchNormalization) for m in fused.submodules)

    x = random_images()
    expected = model(x, training=False).numpy()
    assert expected.shape == (1, 36, 36, 3)
    # What the blocks compute must be visible, not only the anchor (nearest-neighbour upsampling).
    residual = expected - nearest_upsampling(x) if kwargs.get("anchor") else expected
    assert np.abs(residual).max() > 0.05
    error = np.abs(fused(x).numpy() - expected).max()
    assert error < FUSED_ATOL, f"fused vs branchy max abs error {error:.3g} >= {FUSED_ATOL}"


@pytest.mark.parametrize("block_type", sorted(BLOCK_TYPES))
def test_anchor_is_nearest_neighbour_upsampling(block_type):
    """With a zero tail the anchored student outputs exactly the input, upsampled by repetition."""
    model = build_student(block_type=block_type, channels=8, num_blocks=2, num_branches=2,
                          anchor=True)
    randomize_batch_norms(model)
    tail = model.get_layer("tail")
    tail.set_weights([np.zeros_like(w) for w in tail.get_weights()])
    x = random_images((2, 5, 7, 3))
    expected = nearest_upsampling(x)
    # HR pixel (3h + i, 3w + j) of every channel is LR pixel (h, w): depth-to-space's channel order.
    assert expected[1, 3 * 4 + 2, 3 * 6 + 1, 2] == x[1, 4, 6, 2]
    for form in (model, reparameterize(model)):
        np.testing.assert_array_equal(form(x, training=False).numpy(), expected)
    for w in model.weights:
        w.assign(tf.zeros_like(w))
    np.testing.assert_array_equal(model(x, training=False).numpy(), expected)


def test_anchor_adds_no_parameter_and_round_trips():
    plain = build_student(reparameterized=True)
    anchored = build_student(reparameterized=True, anchor=True)
    assert anchored.count_params() == plain.count_params() == 82_683
    assert {type(layer).__name__ for layer in anchored.layers} == {
        "InputLayer", "Conv2D", "Add", "Concatenate", "DepthToSpace"}
    for block_type in ("mobileone", "plain"):
        for anchor in (False, True):
            model = build_student(block_type=block_type, channels=8, num_blocks=2, anchor=anchor)
            for form in (model, reparameterize(model)):
                kwargs = json.loads(json.dumps(student_config(form)))
                assert kwargs["anchor"] is anchor
                assert build_student(**kwargs).get_config() == form.get_config()
    # A config.json written before the field existed loads without the anchor.
    stored = configs.TrainConfig(model=configs.ModelConfig(block_type="plain")).to_dict()
    del stored["model"]["anchor"]
    assert configs.TrainConfig.from_dict(stored).model == configs.ModelConfig(block_type="plain")
    assert not configs.TrainConfig.from_dict(stored).model.anchor


def test_default_deploy_graph():
    model = build_student(reparameterized=True)
    assert model.count_params() == 82_683
    assert {type(layer).__name__ for layer in model.layers} == {
        "InputLayer", "Conv2D", "Add", "DepthToSpace"}
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.name for layer in convs] == ["stem"] + [f"block_{i}" for i in range(8)] + ["tail"]
    assert [layer.activation.__name__ for layer in convs] == ["relu"] * 9 + ["linear"]
    skip, = [layer for layer in model.get_config()["layers"] if layer["name"] == "skip"]
    assert {inbound[0] for inbound in skip["inbound_nodes"][0]} == {"stem", "block_7"}
    # Any H and W: the output is the tail's channels rearranged x3.
    x = random_images((2, 5, 7, 3))
    tail = keras.Model(model.input, model.get_layer("tail").output)(x)
    np.testing.assert_array_equal(model(x), tf.nn.depth_to_space(tail, 3))


def test_reparameterize_never_edits_its_input():
    model = build_student(num_blocks=2, channels=8)
    randomize_batch_norms(model)
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    fused = reparameterize(model)
    assert fused is not model
    assert model.get_config() == config
    after = model.get_weights()
    assert len(after) == len(before)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # The copies are independent variables: changing the fused model leaves the input alone.
    fused.get_layer("stem").kernel.assign_add(tf.ones_like(fused.get_layer("stem").kernel))
    np.testing.assert_array_equal(model.get_layer("stem").kernel.numpy(), before[0])


def test_reparameterize_deploy_model_returns_equal_copy():
    model = build_student(reparameterized=True, num_blocks=2, channels=8)
    again = reparameterize(model)
    assert again.get_config() == model.get_config()
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = random_images()
    np.testing.assert_array_equal(again(x), model(x))


@pytest.mark.parametrize("block_type", sorted(BLOCK_TYPES))
def test_config_round_trip(block_type):
    model = build_student(block_type=block_type, channels=8, num_blocks=2, num_branches=2)
    randomize_batch_norms(model)
    x = random_images()
    expected = model(x, training=False).numpy()

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(x, training=False), expected)

    for form in (model, reparameterize(model)):
        kwargs = json.loads(json.dumps(student_config(form)))
        assert kwargs["reparameterized"] == (form is not model or block_type == "plain")
        assert build_student(**kwargs).get_config() == form.get_config()


def test_checkpoint_restores_into_a_fresh_build(tmp_path):
    model = build_student(channels=8, num_blocks=2, num_branches=3)
    randomize_batch_norms(model)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = build_student(channels=8, num_blocks=2, num_branches=3)
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    x = random_images()
    np.testing.assert_array_equal(fresh(x, training=False), model(x, training=False))


def test_layer_config_round_trip():
    layer = MobileOneConv2D(8, 3, num_branches=3, depthwise=True, name="block_0_dw")
    config = layer.get_config()
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(again) is MobileOneConv2D
    assert again.get_config() == config
    assert config["activation"] == "relu" and config["num_branches"] == 3 and config["depthwise"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_type="mobilenet"), "block_type must be one of"),
    (dict(channels=0), "channels must be a positive int"),
    (dict(num_blocks=2.0), "num_blocks must be a positive int"),
    (dict(num_branches=-1), "num_branches must be a positive int"),
    (dict(scale=True), "scale must be a positive int"),
    (dict(anchor=1), "anchor must be a bool"),
    (dict(arch="edsr"), "arch must be one of"),
    (dict(arch="abpn"), "arch 'abpn' is plain convolutions: it needs block_type 'plain'"),
    (dict(arch="fsrcnn", block_type="plain", shrink_channels=0),
     "shrink_channels must be a positive int"),
    (dict(reparameterized="yes"), "reparameterized must be a bool"),
    (dict(name=""), "name must be a non-empty str"),
])
def test_build_student_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_student(**kwargs)


def test_bad_layer_and_model_arguments_raise():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        MobileOneConv2D(8, 2)
    with pytest.raises(ValueError, match="filters == input channels"):
        MobileOneConv2D(16, 3, depthwise=True)(np.zeros((1, 4, 4, 8), np.float32))
    with pytest.raises(ValueError, match="needs a built layer"):
        MobileOneConv2D(8).fused_weights()

    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="needs a functional tf_keras Model"):
        reparameterize(Subclassed())
    inputs = keras.Input((None, None, 3))
    not_student = keras.Model(inputs, keras.layers.Conv2D(3, 3, name="stem")(inputs))
    with pytest.raises(ValueError, match="is not a keras_sr student"):
        student_config(not_student)


# ----------------------------------------------------------------------------------------------
# The baselines.

# (name, kernel size, filters, activation) of every conv, in graph order, at the papers' sizes.
BASELINE_CONVS = {
    # ABPN, as its official code (NJU-Jet/SR_Mobile_Quantization, solvers/networks/base7.py).
    "abpn": ([("stem", 3, 28, "relu")] + [(f"body_{i}", 3, 28, "relu") for i in range(4)]
             + [("pre_tail", 3, 27, "relu"), ("tail", 3, 27, "linear")]),
    # FSRCNN (d, s, m) = (56, 12, 4) on RGB, ReLU for PReLU, the 9x9 deconvolution as a 3x3 conv
    # to 27 channels + depth-to-space.
    "fsrcnn": ([("stem", 5, 56, "relu"), ("shrink", 1, 12, "relu")]
               + [(f"map_{i}", 3, 12, "relu") for i in range(4)]
               + [("expand", 1, 56, "relu"), ("tail", 3, 27, "linear")]),
}
# ABPN: the official "42.54K". FSRCNN: the paper's RGB network with a 9x9 deconvolution 56->3 has
# 24,511 (+ 172 PReLU slopes: the 24.68K of the ETDS table); the sub-pixel tail has the same
# 9 * 9 * 56 * 3 weights and 27 biases instead of 3.
BASELINE_PARAMETERS = {"abpn": 42_539, "fsrcnn": 24_535}


def _randomize_biases(model, seed=3):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape))


def _reference_forward(model, x, convs, anchor, scale=3):
    """The layer list applied with tf.nn ops and the model's weights (plus the input repeated
    s * s times along channels, as ABPN's code adds it)."""
    h = x
    for name, _, _, activation in convs:
        kernel, bias = model.get_layer(name).get_weights()
        h = tf.nn.conv2d(h, kernel, 1, "SAME") + bias
        h = tf.nn.relu(h) if activation == "relu" else h
    if anchor:
        h = h + np.tile(x, (1, 1, 1, scale * scale))
    return tf.nn.depth_to_space(h, scale).numpy()


@pytest.mark.parametrize("arch", sorted(BASELINE_CONVS))
def test_baselines_at_their_papers_sizes(arch):
    model = build_student(configs.ModelConfig.for_arch(arch))
    assert model.count_params() == BASELINE_PARAMETERS[arch]
    convs = [layer for layer in model.layers if layer.weights]
    assert [(c.name, c.kernel_size[0], c.filters, c.activation.__name__) for c in convs] == (
        BASELINE_CONVS[arch])
    assert all(type(c) is keras.layers.Conv2D and c.padding == "same" and c.use_bias
               and c.kernel_size[0] == c.kernel_size[1] for c in convs)
    # A chain: each conv reads the one before it (the first reads the input).
    assert [c.inbound_nodes[0].inbound_layers.name for c in convs] == (
        ["lr"] + [c.name for c in convs[:-1]])
    anchored = arch == "abpn"
    assert {type(layer).__name__ for layer in model.layers} == (
        {"InputLayer", "Conv2D", "DepthToSpace"} | ({"Concatenate", "Add"} if anchored else set()))
    _randomize_biases(model)
    x = random_images((2, 5, 7, 3))
    expected = _reference_forward(model, x, BASELINE_CONVS[arch], anchored)
    assert expected.shape == (2, 15, 21, 3)
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("arch, anchor", [("abpn", True), ("abpn", False), ("fsrcnn", False),
                                          ("fsrcnn", True)])
def test_baseline_with_zero_weights_is_its_anchor(arch, anchor):
    """All weights 0: nearest-neighbour upsampling with the anchor (ABPN's), else 0."""
    model = build_student(configs.ModelConfig.for_arch(arch, anchor=anchor))
    for w in model.weights:
        w.assign(tf.zeros_like(w))
    x = random_images((2, 5, 7, 3))
    expected = nearest_upsampling(x) if anchor else np.zeros((2, 15, 21, 3), np.float32)
    np.testing.assert_array_equal(model(x).numpy(), expected)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fsrcnn_tail_computes_the_papers_deconvolution(scale):
    """A 9x9 stride-s "SAME" deconvolution d->3 equals FSRCNN's tail (an LR conv d->3s², kernel
    `subpixel_kernel_size`, holding the deconvolution kernel's s² phases) + depth-to-space."""
    rng = np.random.default_rng(scale)
    d, size = 6, baselines.FSRCNN_DECONV_SIZE
    deconv_kernel = rng.normal(0.0, 1.0, (size, size, 3, d)).astype(np.float32)  # (h, w, out, in)
    deconv_bias = rng.normal(0.0, 1.0, 3).astype(np.float32)
    features = rng.normal(0.0, 1.0, (2, 5, 7, d)).astype(np.float32)
    deconv = tf.nn.conv2d_transpose(features, deconv_kernel, (2, 5 * scale, 7 * scale, 3), scale,
                                    "SAME") + deconv_bias

    k = baselines.subpixel_kernel_size(size, scale)
    assert k == {2: 5, 3: 3, 4: 3}[scale]
    # HR pixel s*h + i reads LR pixel h + t - r with deconvolution tap i + p - s (t - r).
    r, p = k // 2, (size - scale) // 2
    kernel = np.zeros((k, k, d, 3 * scale * scale), np.float32)
    for ty, tx, iy, ix in itertools.product(range(k), range(k), range(scale), range(scale)):
        ky, kx = iy + p - scale * (ty - r), ix + p - scale * (tx - r)
        if 0 <= ky < size and 0 <= kx < size:
            phase = (iy * scale + ix) * 3
            kernel[ty, tx, :, phase:phase + 3] = deconv_kernel[ky, kx].T
    model = build_student(configs.ModelConfig.for_arch("fsrcnn", channels=d, scale=scale))
    tail = model.get_layer("tail")
    assert tail.kernel.shape == kernel.shape
    tail.set_weights([kernel, np.tile(deconv_bias, scale * scale)])
    np.testing.assert_allclose(tf.nn.depth_to_space(tail(features), scale).numpy(), deconv.numpy(),
                               atol=1e-4)


@pytest.mark.parametrize("arch, anchor", [("abpn", True), ("abpn", False), ("fsrcnn", False),
                                          ("fsrcnn", True)])
def test_baseline_config_round_trip_and_reparameterize(arch, anchor):
    sizes = {"shrink_channels": 5} if arch == "fsrcnn" else {}
    config = configs.ModelConfig.for_arch(arch, channels=8, num_blocks=2, anchor=anchor, **sizes)
    model = build_student(config)
    _randomize_biases(model)
    kwargs = json.loads(json.dumps(student_config(model)))
    assert kwargs.pop("reparameterized") is True and kwargs.pop("name") == "student"
    assert configs.ModelConfig(**kwargs) == config  # every field the graph has, read back
    assert build_student(**kwargs).get_config() == model.get_config()
    assert build_student(config, reparameterized=True).get_config() == model.get_config()
    # Already plain: reparameterize is the identity rebuild.
    fused = reparameterize(model)
    assert fused is not model and fused.get_config() == model.get_config()
    for a, b in zip(fused.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = random_images()
    np.testing.assert_array_equal(fused(x).numpy(), model(x).numpy())


def test_model_config_of_every_arch_round_trips_and_old_configs_load(tmp_path):
    for arch in configs.ARCHS:
        config = configs.TrainConfig(model=configs.ModelConfig.for_arch(arch))
        again = configs.TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config and again.model.arch == arch
    assert configs.ModelConfig.for_arch("student") == configs.ModelConfig()
    assert configs.ModelConfig.for_arch("abpn").anchor and not configs.ModelConfig.for_arch(
        "fsrcnn").anchor
    # A config.json written before `arch` and `shrink_channels` existed is the student's.
    stored = configs.TrainConfig(model=configs.ModelConfig(block_type="repdw")).to_dict()
    del stored["model"]["arch"], stored["model"]["shrink_channels"]
    fileio.write_json(str(tmp_path / workdir.CONFIG), stored)
    model = workdir.read_config(str(tmp_path)).model
    assert model == configs.ModelConfig(block_type="repdw") and model.arch == "student"
    with pytest.raises(ValueError, match="arch must be one of"):
        configs.ModelConfig.for_arch("edsr")
    # The baselines have no multi-branch form to fuse.
    with pytest.raises(ValueError, match="fuse_at needs Stage 1 or 2 and a block type"):
        configs.TrainConfig(model=configs.ModelConfig.for_arch("abpn"), fuse_at=0.5)


def test_student_config_rejects_a_broken_baseline():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(12, 1, name="shrink")(keras.layers.Conv2D(8, 5, name="stem")(inputs))
    with pytest.raises(ValueError, match="is not a keras_sr fsrcnn network"):
        student_config(keras.Model(inputs, x))
