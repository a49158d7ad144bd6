"""Training losses on [0, 1] RGB images: L1, Charbonnier, DCT L1 and confidence-weighted KD.

Every loss takes float NHWC tensors of shape (B, H, W, 3) with values in [0, 1] (other float
dtypes, e.g. float16 under mixed precision, are cast to float32 first) and returns a float32 scalar:
the plain mean over every element of the batch it is given. Under `tf.distribute` that is the mean
over the replica's local batch; the trainer divides it by the number of replicas before the
gradients are summed across replicas. All losses trace inside `tf.function`, also with unknown
(None) batch, height and width.

The trainer uses one entry point, `make_loss(config, with_teacher)` with a
`keras_sr.configs.LossConfig` (the weights and constants of every term). It returns a
`CompositeLoss`, called as `loss(y_hat, batch) -> (total, terms)` with `batch` a dict from
`keras_sr.data.make_train_dataset`.
"""
import math

import tensorflow as tf

from keras_sr.configs import LossConfig


def _as_float32(x):
    return tf.cast(x, tf.float32)


def _check_same_shape(a, b, what):
    # Broadcasting would silently turn an output/target size mismatch into a wrong loss; catch it at
    # trace time (static shapes) rather than train on it.
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(f"{what}: shapes {a.shape} and {b.shape} differ; both must be "
                         "(B, H, W, 3)")


def l1(y_hat, y):
    """Mean absolute error, mean(|y_hat - y|) over all elements.

    Args:
        y_hat: (B, H, W, 3) network output in [0, 1] (unclipped values are fine).
        y: (B, H, W, 3) target in [0, 1].

    Returns:
        float32 scalar, the mean over batch, pixels and channels.
    """
    y_hat, y = _as_float32(y_hat), _as_float32(y)
    _check_same_shape(y_hat, y, "l1")
    return tf.reduce_mean(tf.abs(y_hat - y))


def charbonnier(y_hat, y, eps=1e-3):
    """Charbonnier loss mean(sqrt((y_hat - y)^2 + eps^2)), eps^2 inside the square root.

    A differentiable L1: it equals eps where y_hat == y (so its minimum is eps, not 0) and tends to
    |y_hat - y| for errors much larger than eps.

    Args:
        y_hat: (B, H, W, 3) network output in [0, 1].
        y: (B, H, W, 3) target in [0, 1].
        eps: positive smoothing constant in [0, 1] intensity units (1e-3 is about 1/4 of a level).

    Returns:
        float32 scalar, the mean over batch, pixels and channels.
    """
    y_hat, y = _as_float32(y_hat), _as_float32(y)
    _check_same_shape(y_hat, y, "charbonnier")
    return tf.reduce_mean(tf.sqrt(tf.square(y_hat - y) + eps * eps))


def dct_matrix(n):
    """Orthonormal DCT-II matrix C of size (n, n): C[k, i] = a(k) cos(pi (2i + 1) k / (2n)).

    a(0) = sqrt(1 / n) and a(k) = sqrt(2 / n) for k > 0, so C @ C.T = I and `C @ v` is the
    orthonormal DCT-II of a length-n vector v (scipy's `dct(v, norm="ortho")`).

    Built from TensorFlow ops so that `n` may be a Python int (static shape) or a scalar int tensor
    (dynamic shape, e.g. `tf.shape(x)[1]`). Inside `tf.function` a static `n` makes every input a
    constant, so graph optimisation folds the matrix into one constant per traced shape.

    Args:
        n: length of the transform, a positive Python int or scalar integer tensor.

    Returns:
        float32 tensor of shape (n, n); rows are frequencies k, columns are sample positions i.
    """
    n64 = tf.cast(n, tf.int64)
    k = tf.range(n64)[:, tf.newaxis]
    i = tf.range(n64)[tf.newaxis, :]
    # Reducing (2i + 1) k modulo 4n in integers keeps the float32 angle in [0, 2 pi): a direct
    # float32 angle grows to about pi * n and loses digits of the cosine for n in the hundreds.
    phase = tf.math.floormod((2 * i + 1) * k, 4 * n64)
    n_f = tf.cast(n64, tf.float32)
    angle = tf.cast(phase, tf.float32) * (math.pi / 2.0) / n_f
    scale = tf.where(k == 0, tf.sqrt(1.0 / n_f), tf.sqrt(2.0 / n_f))
    return scale * tf.cos(angle)


def _dim(x, axis):
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def dct2d(x):
    """Orthonormal 2-D DCT-II over the full height and width of every channel.

    Separable: the size-H DCT matrix multiplies along H and the size-W one along W, i.e. for each
    image b and channel c, X[b, :, :, c] = C_H @ x[b, :, :, c] @ C_W.T. The transform is
    orthonormal, so it keeps sums of squares (Parseval). On Ampere and newer GPUs TensorFlow runs
    these float32 matmuls in TF32 by default (about 1e-3 relative error), ample for a loss.

    Args:
        x: float (B, H, W, C) tensor; H and W may be unknown when traced.

    Returns:
        float32 (B, H, W, C) coefficients; [:, k, l, :] is vertical frequency k, horizontal l.
    """
    x = _as_float32(x)
    c_h = dct_matrix(_dim(x, 1))
    c_w = dct_matrix(_dim(x, 2))
    x = tf.einsum("kh,bhwc->bkwc", c_h, x)
    return tf.einsum("lw,bkwc->bklc", c_w, x)


def dct_l1(y_hat, y):
    """L1 between orthonormal 2-D DCT-II coefficients, mean(|DCT(y_hat) - DCT(y)|).

    The DCT is taken per image and channel over the full H x W (see `dct2d`). Being linear, it is
    applied once to the difference y_hat - y, which equals transforming both images.

    Args:
        y_hat: (B, H, W, 3) network output in [0, 1].
        y: (B, H, W, 3) target in [0, 1].

    Returns:
        float32 scalar, the mean over batch, frequencies and channels.
    """
    y_hat, y = _as_float32(y_hat), _as_float32(y)
    _check_same_shape(y_hat, y, "dct_l1")
    return tf.reduce_mean(tf.abs(dct2d(y_hat - y)))


def kd_weights(teacher, y, gamma, w_min, w_max):
    """Teacher confidence w(p) = clip(exp(-gamma e(p)), w_min, w_max), e(p) = mean_c |t - y|.

    The weights are constants for the optimiser (wrapped in `tf.stop_gradient`): they only say how
    much to trust the teacher at each pixel and are not themselves trained.

    Args:
        teacher: (B, H, W, 3) teacher output t in [0, 1].
        y: (B, H, W, 3) ground-truth HR image in [0, 1].
        gamma: non-negative sharpness; e = 1 / gamma gives exp(-1) before clipping.
        w_min: lower clip, the weight of pixels where the teacher is far off.
        w_max: upper clip, the weight where the teacher is exact (exp(0) = 1 before clipping).

    Returns:
        float32 (B, H, W) weights in [w_min, w_max].
    """
    teacher, y = _as_float32(teacher), _as_float32(y)
    _check_same_shape(teacher, y, "kd_weights")
    error = tf.reduce_mean(tf.abs(teacher - y), axis=-1)
    return tf.stop_gradient(tf.clip_by_value(tf.exp(-gamma * error), w_min, w_max))


def confidence_kd(y_hat, teacher, y, gamma, w_min, w_max):
    """Confidence-weighted distillation L_KD = mean_p w(p) * mean_c |y_hat(p) - t(p)|.

    w(p) comes from `kd_weights` (no gradient flows into it); the per-pixel distance to the teacher
    is the mean over the 3 channels, and the outer mean runs over all pixels of all images in the
    batch. With w == 1 everywhere this is exactly `l1(y_hat, teacher)`.

    Args:
        y_hat: (B, H, W, 3) student output in [0, 1].
        teacher: (B, H, W, 3) teacher output t in [0, 1].
        y: (B, H, W, 3) ground-truth HR image in [0, 1] (used only for the weights).
        gamma, w_min, w_max: see `kd_weights`.

    Returns:
        float32 scalar.
    """
    y_hat, teacher = _as_float32(y_hat), _as_float32(teacher)
    _check_same_shape(y_hat, teacher, "confidence_kd")
    weights = kd_weights(teacher, y, gamma, w_min, w_max)
    distance = tf.reduce_mean(tf.abs(y_hat - teacher), axis=-1)
    return tf.reduce_mean(weights * distance)


class CompositeLoss:
    """Weighted sum of the losses in this module, every term also reported on its own for logging.

    Args:
        config: a `keras_sr.configs.LossConfig`.
    """

    def __init__(self, config):
        self.config = config

    def compute(self, y_hat, hr, teacher=None):
        """Returns the weighted total and the unweighted terms.

        Args:
            y_hat: (B, H, W, 3) student output in [0, 1].
            hr: (B, H, W, 3) ground truth in [0, 1].
            teacher: optional (B, H, W, 3) teacher output in [0, 1]; without it there is no KD term.

        Returns:
            (total, terms): total is a float32 scalar, the sum of weight * term; terms maps each
            computed term's name ("l1", "charbonnier", "dct", "kd") to its unweighted float32
            scalar. All are means over the local batch.
        """
        cfg = self.config
        terms, weights = {}, {}
        if cfg.l1_weight:
            terms["l1"], weights["l1"] = l1(y_hat, hr), cfg.l1_weight
        if cfg.charbonnier_weight:
            terms["charbonnier"] = charbonnier(y_hat, hr, cfg.eps)
            weights["charbonnier"] = cfg.charbonnier_weight
        if cfg.dct_weight:
            terms["dct"], weights["dct"] = dct_l1(y_hat, hr), cfg.dct_weight
        if cfg.kd_weight and teacher is not None:
            terms["kd"] = confidence_kd(y_hat, teacher, hr, cfg.gamma, cfg.w_min, cfg.w_max)
            weights["kd"] = cfg.kd_weight
        total = tf.add_n([weights[name] * term for name, term in terms.items()])
        return total, terms

    def __call__(self, y_hat, batch):
        """`compute` on a batch dict {"lr", "hr", optional "teacher"}; returns (total, terms).

        Stricter than `compute`: with the KD term on, a batch without "teacher" is an error rather
        than a silent Charbonnier + DCT step (`make_loss(..., with_teacher=False)` turns KD off).
        """
        needed = ("hr", "teacher") if self.config.uses_teacher else ("hr",)
        missing = [key for key in needed if key not in batch]
        if missing:
            raise KeyError(f"loss needs the batch keys {missing} (kd_weight="
                           f"{self.config.kd_weight}); the batch has keys {sorted(batch)}")
        return self.compute(y_hat, batch["hr"], batch.get("teacher"))


def make_loss(config, with_teacher=True):
    """The training loss of a `keras_sr.configs.LossConfig`.

    Args:
        config: a `LossConfig` (Stage 1: `LossConfig.l1_only()`; Stages 2 and 3: the Stage-2 loss).
        with_teacher: whether batches carry "teacher" images. False drops the KD term (Stage 2
            without teacher records runs Charbonnier + DCT only).

    Returns:
        A `CompositeLoss`, called as `loss(y_hat, batch) -> (total, terms)`.
    """
    if not isinstance(config, LossConfig):
        raise ValueError(f"make_loss needs a keras_sr.configs.LossConfig, got {config!r}")
    if not with_teacher and config.uses_teacher:
        config = config.replace(kd_weight=0.0)
    return CompositeLoss(config)
