"""Normalization layers: frozen BatchNorm, BatchNorm and GroupNorm behind one factory.

Config.NORM picks the kind for the whole network. The layer names follow Matterport
(``bn_conv1``, ``bn2a_branch2a``, ``mrcnn_class_bn1``, ...); with GroupNorm the ``bn`` in the
name becomes ``gn`` (``gn_conv1``, ``mrcnn_mask_gn1``) so that a GroupNorm layer is never
confused with (or loaded from) a BatchNorm one.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from mrcnn.ops.distribute import loss_replicas, replica_sum


@keras.saving.register_keras_serializable(package="mrcnn")
class FrozenBatchNormalization(layers.BatchNormalization):
    """BatchNorm that always runs in inference mode and is never trained.

    Matterport's ``TRAIN_BN = False``: with small batches the batch statistics are too noisy,
    so the layer is a fixed per-channel affine map (moving mean/variance, gamma, beta). It
    stays frozen whatever ``train(layers=...)`` asks for.
    """

    def __init__(self, **kwargs):
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)

    @property
    def trainable(self) -> bool:
        return False

    @trainable.setter
    def trainable(self, value: bool) -> None:
        # Ignore: the point of this layer is that nothing unfreezes it. Keras' own
        # constructor sets the attribute, so the setter must exist.
        self._trainable = False

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


@keras.saving.register_keras_serializable(package="mrcnn")
class SyncBatchNormalization(layers.BatchNormalization):
    """Trainable BatchNorm whose training statistics are those of the global batch.

    Under ``tf.distribute`` each replica sees only its IMAGES_PER_GPU images; this layer
    all-reduces [sum(d), sum(d^2), count] per channel, d = x - moving mean (one all-reduce
    of their concatenation, through ``ops.distribute.replica_sum``), and takes the mean and
    variance of the global batch from them, so that N replicas x B images normalize (and
    update the moving statistics) as 1 device x N*B images. The gradient flows through the
    sums. Keras' ``BatchNormalization(synchronized=True)`` makes three all-reduces per layer
    and is refused on other backends (a model saved with it would not load on JAX).

    Elsewhere (one device; JAX, whose SPMD program sees the global batch) it is Keras'
    ``BatchNormalization``: same weights, names and config, so its checkpoints load into
    either.
    """

    def _moments(self, inputs, mask):
        if loss_replicas() == 1:  # one device, or JAX's SPMD program: the batch is global
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        channels = [1] * len(inputs.shape)
        channels[self.axis] = -1
        # Sums of x - moving_mean (a constant): the one-pass variance E[d^2] - E[d]^2 then
        # cancels less than with raw x once the moving mean has come near the batch mean.
        shift = ops.stop_gradient(ops.cast(self.moving_mean, inputs.dtype))
        x = inputs - ops.reshape(shift, channels)
        if mask is None:
            shape = ops.shape(x)
            count = ops.convert_to_tensor(1.0, x.dtype)
            for axis in axes:
                count = count * ops.cast(shape[axis], x.dtype)
        else:
            weights = ops.cast(ops.expand_dims(mask, -1), x.dtype)
            x = x * weights
            count = ops.sum(weights)
        stats = replica_sum(ops.concatenate([
            ops.sum(x, axes), ops.sum(ops.square(x), axes), ops.reshape(count, (1,))]),
            gradient=True)
        size = shift.shape[0]
        total = ops.maximum(stats[-1], 1.0)
        mean = stats[:size] / total
        variance = ops.maximum(stats[size:2 * size] / total - ops.square(mean), 0.0)
        return mean + shift, variance


def norm_name(name: str, norm: str) -> str:
    """Return the layer name for ``norm``: Matterport's ``bn`` names become ``gn`` for GroupNorm.

    Args:
        name: Matterport name of the BatchNorm layer, e.g. "bn2a_branch2a" or "mrcnn_mask_bn1".
        norm: "frozen_bn", "bn" or "gn".

    Returns:
        The name to give the layer.
    """
    if norm != "gn":
        return name
    if name.startswith("bn"):
        return "gn" + name[2:]
    return name.replace("_bn", "_gn")


def norm_layer(norm: str, name: str, gn_groups: int = 32,
               zero_init: bool = False) -> layers.Layer:
    """Build the normalization layer for ``norm``.

    Args:
        norm: "frozen_bn", "bn" or "gn" (Config.NORM).
        name: Matterport BatchNorm name of the layer (renamed for GroupNorm, see ``norm_name``).
        gn_groups: groups of GroupNorm (Config.GN_GROUPS).
        zero_init: start gamma at 0 (trainable kinds only). Used on the last norm of each
            residual block so that a network trained from scratch starts as near-identity
            blocks, which keeps early gradients sane (Goyal et al., 2017; the GN paper).

    Returns:
        A Keras layer.
    """
    gamma_init = "zeros" if zero_init else "ones"
    if norm == "frozen_bn":
        return FrozenBatchNormalization(name=name)
    if norm == "bn":
        return SyncBatchNormalization(name=name, gamma_initializer=gamma_init)
    if norm == "gn":
        return layers.GroupNormalization(groups=gn_groups, name=norm_name(name, norm),
                                         gamma_initializer=gamma_init)
    raise ValueError(f"Config.NORM = {norm!r} is invalid: expected 'frozen_bn', 'bn' or 'gn'.")
