"""Keras-native training: the loss-computing model, layer freezing, optimizer and schedule.

``MaskRCNNTrainModel`` is a functional ``keras.Model`` whose ``compute_loss`` sums the five
weighted losses (backend-agnostic, so ``fit`` works on TensorFlow and JAX, with XLA) and
tracks one metric per loss term.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from mrcnn import losses
from mrcnn.config import LOSS_NAMES
from mrcnn.norm import FrozenBatchNormalization
from mrcnn.weights import save_weights_by_name

# Matterport's presets of train(layers=...), with GroupNorm names ("gn...") alongside BN ones.
LAYER_REGEX = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|([bg]n3.*)|(res4.*)|([bg]n4.*)|(res5.*)|([bg]n5.*)"
          r"|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|([bg]n4.*)|(res5.*)|([bg]n5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|([bg]n5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}


class MaskRCNNTrainModel(keras.Model):
    """The training graph plus its loss: ``fit`` needs no ``loss=`` argument.

    Args:
        inputs: dict of input tensors, in the order the data generator yields them.
        outputs: dict of output tensors (``network.build_training_graph``).
        config: the ``Config`` (LOSS_WEIGHTS, WEIGHT_DECAY, OPTIMIZER).
    """

    def __init__(self, inputs: dict, outputs: dict, config, **kwargs):
        # A list keeps the generator's order (Keras would sort a dict's keys).
        super().__init__(inputs=list(inputs.values()), outputs=outputs, **kwargs)
        self.mrcnn_input_names = list(inputs)
        self.config = config
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}

    def loss_terms(self, x, y_pred) -> dict:
        """The five unweighted losses of a batch.

        Args:
            x: the model inputs (dict or list in input order).
            y_pred: the model outputs (dict).

        Returns:
            dict loss name -> scalar tensor.
        """
        if not isinstance(x, dict):
            x = dict(zip(self.mrcnn_input_names, x))
        meta = ops.cast(x["input_image_meta"], "float32")
        active_class_ids = meta[:, 12:]
        return {
            "rpn_class_loss": losses.rpn_class_loss(x["input_rpn_match"],
                                                    y_pred["rpn_class_logits"]),
            "rpn_bbox_loss": losses.rpn_bbox_loss(x["input_rpn_bbox"], x["input_rpn_match"],
                                                  y_pred["rpn_bbox"]),
            "mrcnn_class_loss": losses.mrcnn_class_loss(
                y_pred["target_class_ids"], y_pred["mrcnn_class_logits"], active_class_ids,
                y_pred["rois"]),
            "mrcnn_bbox_loss": losses.mrcnn_bbox_loss(
                y_pred["target_bbox"], y_pred["target_class_ids"], y_pred["mrcnn_bbox"]),
            "mrcnn_mask_loss": losses.mrcnn_mask_loss(
                y_pred["target_mask"],
                y_pred["target_class_ids"][:, :y_pred["target_mask"].shape[1]],
                y_pred["mrcnn_mask"]),
        }

    def weight_decay_loss(self):
        """Matterport's L2 term: WEIGHT_DECAY * mean(w^2) of every trainable kernel and bias.

        Norm parameters (gamma, beta) are excluded. Only used with SGD: AdamW decays in the
        optimizer instead.
        """
        if self.config.OPTIMIZER != "sgd" or not self.config.WEIGHT_DECAY:
            return 0.0
        terms = [ops.mean(ops.square(ops.cast(w, "float32"))) for w in self.trainable_weights
                 if not any(k in w.path for k in ("gamma", "beta"))]
        if not terms:
            return 0.0
        return self.config.WEIGHT_DECAY * ops.sum(ops.stack(terms))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.loss_terms(x, y_pred)
        total = 0.0
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value)
            total = total + self.config.LOSS_WEIGHTS.get(name, 1.0) * value
        return total + self.weight_decay_loss()


def resolve_layer_regex(layers: str) -> str:
    """Map a ``train(layers=...)`` preset to its regex; other strings are regexes already."""
    return LAYER_REGEX.get(layers, layers)


def set_trainable(model: keras.Model, layer_regex: str, verbose: int = 0,
                  indent: int = 0) -> list[str]:
    """Make trainable exactly the layers whose name fully matches ``layer_regex``.

    Nested models (``rpn_model``) are walked: their layers are matched by their own names.
    Layers without weights are skipped. Frozen BatchNorm layers stay frozen.

    Args:
        model: a Keras model.
        layer_regex: regex matched with ``re.fullmatch`` against layer names.
        verbose: print each layer with weights and whether it trains.
        indent: indentation of the printout (nested models).

    Returns:
        Names of the layers set trainable.
    """
    pattern = re.compile(layer_regex)
    trained = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if verbose:
                print(f"{' ' * indent}In model: {layer.name}")
            # The container must be trainable for its inner layers to count.
            layer.trainable = True
            trained += set_trainable(layer, layer_regex, verbose, indent + 4)
            continue
        if not layer.weights:
            continue
        trainable = bool(pattern.fullmatch(layer.name))
        layer.trainable = trainable
        if trainable and layer.trainable:
            trained.append(layer.name)
        if verbose and layer.trainable:
            print(f"{' ' * indent}{layer.name:20}   ({type(layer).__name__})")
    return trained


def _frozen_bn_layers(model: keras.Model) -> list:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += _frozen_bn_layers(layer)
        elif isinstance(layer, FrozenBatchNormalization):
            out.append(layer)
    return out


def _at_initial_values(layer: FrozenBatchNormalization) -> bool:
    """True when the layer is still the identity it is built as (nothing was loaded)."""
    initial = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}
    return all(np.all(w.numpy() == initial[w.name])
               for w in layer.weights if w.name in initial)


# Models already warned by warn_frozen_bn_from_scratch (once per model, not per train()).
_WARNED_FROM_SCRATCH: weakref.WeakSet = weakref.WeakSet()

FROZEN_BN_FROM_SCRATCH = (
    "Training with NORM='frozen_bn' (Matterport's TRAIN_BN=False) from randomly initialized "
    "weights: no weights were loaded into the frozen BatchNorm layers, which therefore "
    "normalize nothing and never learn. This trains, slowly and worse than it could; "
    "to train from scratch set NORM = 'gn' (GroupNorm) in your Config, or load pretrained "
    "weights with load_weights() before train().")


def warn_frozen_bn_from_scratch(model: keras.Model, config) -> bool:
    """Warn (once per model) when frozen-BN layers train from random initialization.

    Pretrained weights set the BatchNorm statistics; when every ``FrozenBatchNormalization``
    layer still holds its initial identity values (gamma 1, beta 0, mean 0, variance 1),
    no weights were loaded and the network is being trained from scratch.

    Args:
        model: the training Keras model.
        config: its Config (NORM).

    Returns:
        True when the warning applies (issued now or before for this model).
    """
    if config.NORM != "frozen_bn":
        return False
    frozen = _frozen_bn_layers(model)
    if not frozen or not all(_at_initial_values(layer) for layer in frozen):
        return False
    if model not in _WARNED_FROM_SCRATCH:
        _WARNED_FROM_SCRATCH.add(model)
        warnings.warn(FROZEN_BN_FROM_SCRATCH, UserWarning, stacklevel=3)
    return True


def build_optimizer(config, learning_rate: float, momentum: float) -> keras.optimizers.Optimizer:
    """Optimizer from Config.OPTIMIZER with Matterport's per-tensor gradient clipping.

    Args:
        config: the ``Config``.
        learning_rate: base learning rate.
        momentum: SGD momentum.

    Returns:
        A Keras optimizer.
    """
    clip = {"clipnorm": config.GRADIENT_CLIP_NORM} if config.GRADIENT_CLIP_NORM else {}
    if config.OPTIMIZER == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=learning_rate,
                                     weight_decay=config.WEIGHT_DECAY, **clip)
        # Decoupled decay on kernels only, like the SGD L2 term.
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        return opt
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, **clip)


class CosineDecayPerEpoch(keras.callbacks.Callback):
    """Cosine decay of the learning rate over the epochs of one ``train()`` call."""

    def __init__(self, base_lr: float, first_epoch: int, last_epoch: int,
                 min_factor: float = 0.0):
        super().__init__()
        self.base_lr, self.first, self.last = base_lr, first_epoch, last_epoch
        self.min_factor = min_factor

    def on_epoch_begin(self, epoch, logs=None):
        span = max(self.last - self.first, 1)
        progress = min(max(epoch - self.first, 0) / span, 1.0)
        factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        self.model.optimizer.learning_rate.assign(self.base_lr * factor)


def schedule_callbacks(config, learning_rate: float, first_epoch: int,
                       last_epoch: int) -> list[keras.callbacks.Callback]:
    """Callbacks implementing Config.LR_SCHEDULE.

    Args:
        config: the ``Config``.
        learning_rate: base learning rate of this ``train()`` call.
        first_epoch, last_epoch: epoch range of the call.

    Returns:
        A list of Keras callbacks (empty for "constant").
    """
    if config.LR_SCHEDULE == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss" if config.VALIDATION_STEPS else "loss",
            factor=config.LR_PLATEAU_FACTOR, patience=config.LR_PLATEAU_PATIENCE,
            min_lr=learning_rate * config.LR_MIN_FACTOR, verbose=1)]
    if config.LR_SCHEDULE == "cosine":
        return [CosineDecayPerEpoch(learning_rate, first_epoch, last_epoch,
                                    config.LR_MIN_FACTOR)]
    return []


class NamedCheckpoint(keras.callbacks.Callback):
    """Save the weights by layer name (Matterport's HDF5 layout) after every epoch.

    Args:
        filepath: pattern with an ``{epoch:04d}`` field (1-based, like Keras).
    """

    def __init__(self, filepath: str):
        super().__init__()
        self.filepath = filepath

    def on_epoch_end(self, epoch, logs=None):
        save_weights_by_name(self.model, self.filepath.format(epoch=epoch + 1))
