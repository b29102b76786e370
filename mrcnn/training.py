"""Keras-native training: the loss-computing model, layer freezing, optimizer and schedule.

``MaskRCNNTrainModel`` is a functional ``keras.Model`` whose ``compute_loss`` sums the five
weighted losses (backend-agnostic, so ``fit`` works on TensorFlow and JAX, with XLA) and
tracks one metric per loss term.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import weakref

import h5py
import keras
import numpy as np
from keras import ops

from mrcnn import losses
from mrcnn.config import LOSS_NAMES
from mrcnn.inputs import IMAGE_META, RPN_BBOX, RPN_MATCH
from mrcnn.layer_config import PlainConfigMixin
from mrcnn.norm import FrozenBatchNormalization
from mrcnn.ops.distribute import ClipAfterAllReduce, loss_replicas, replica_sum, step_output
from mrcnn.transform import parse_image_meta_graph
from mrcnn.weights import (STATE_GROUP, layer_arrays, named_read_errors, nonfinite_layers,
                           open_weights_file, save_weights_by_name)

# Matterport's presets of train(layers=...), with GroupNorm names ("gn...") alongside BN ones.
LAYER_REGEX = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|([bg]n3.*)|(res4.*)|([bg]n4.*)|(res5.*)|([bg]n5.*)"
          r"|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|([bg]n4.*)|(res5.*)|([bg]n5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|([bg]n5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskRCNNTrainModel(PlainConfigMixin, keras.Model):
    """The training graph plus its loss: ``fit`` needs no ``loss=`` argument.

    Args:
        inputs: dict of input tensors, in the order the data generator yields them (or
            their list, with ``input_names``).
        outputs: dict of output tensors (``network.build_training_graph``).
        name: the model name.
        config: the ``Config`` to read LOSS_WEIGHTS, WEIGHT_DECAY and OPTIMIZER from, or
            those as keyword arguments ``loss_weights=`` etc. (``.keras`` reloading).
    """

    CONFIG_KEYS = ("LOSS_WEIGHTS", "WEIGHT_DECAY", "OPTIMIZER")

    # Keras revives a functional subclass from its config only when __init__ takes
    # (inputs, outputs, name): the rest goes through **kwargs.
    def __init__(self, inputs, outputs, name=None, **kwargs):
        input_names = kwargs.pop("input_names", None)
        kwargs = self._take_config(kwargs.pop("config", None), kwargs)
        if isinstance(inputs, dict):
            input_names, inputs = list(inputs), list(inputs.values())
        # A list keeps the generator's order (Keras would sort a dict's keys).
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.mrcnn_input_names = list(input_names)
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        # Keras' own "loss" tracker averages what compute_loss returns: a replica's share
        # under tf.distribute. This one tracks the global loss, logged as "loss".
        self.global_loss = keras.metrics.Mean(name="global_loss")

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
        meta = ops.cast(x[IMAGE_META], "float32")
        active_class_ids = parse_image_meta_graph(meta)["active_class_ids"]
        return {
            "rpn_class_loss": losses.rpn_class_loss(x[RPN_MATCH],
                                                    y_pred["rpn_class_logits"]),
            "rpn_bbox_loss": losses.rpn_bbox_loss(x[RPN_BBOX], x[RPN_MATCH],
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

    def get_config(self):
        base = super().get_config()
        base.update(input_names=self.mrcnn_input_names)
        return base

    def use_config(self, config) -> None:
        """Read LOSS_WEIGHTS, WEIGHT_DECAY and OPTIMIZER from ``config`` again.

        ``MaskRCNN.train`` calls it when a training call's Config differs from the one the
        model was built with (the from-scratch recipe sets OPTIMIZER), before compiling.
        """
        self._take_config(config, {})

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TensorFlow trainer, under tf.distribute, averages the first batch over the
        # replicas to build the model symbolically: that fails on the bool mask input and
        # costs a batch. MaskRCNN builds the model and its optimizer before fit.
        if self.built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Under tf.distribute each replica returns its share of the global loss (Keras sums
        # the replicas' gradients): the loss terms are shares already (``losses``) and the
        # weight decay is split. The metrics get the global values (the sum of the shares,
        # one all-reduce), so that every replica, and every worker, logs the same numbers.
        replicas = loss_replicas()
        terms = self.loss_terms(x, y_pred)
        shares = ops.stack(list(terms.values()))
        weights = ops.convert_to_tensor([self.config.LOSS_WEIGHTS.get(name, 1.0)
                                         for name in terms], "float32")
        totals = replica_sum(shares)
        for name, value in zip(terms, ops.unstack(totals)):
            self.loss_trackers[name].update_state(value)
        # A model with a NaN/inf weight reports a NaN loss, so that StopOnNonFinite stops it
        # at the next step even when the losses themselves stay finite (a ReLU turns NaN
        # features into zeros: one NaN pixel once left conv1 all NaN under a finite loss).
        # One reduction per weight: negligible next to the step.
        finite = ops.all(ops.stack([ops.all(ops.isfinite(w)) for w in self.weights]))
        extra = self.weight_decay_loss() + ops.where(finite, 0.0, float("nan"))
        self.global_loss.update_state(ops.sum(weights * totals) + extra)
        return ops.sum(weights * shares) + extra / replicas

    def compute_metrics(self, x, y, y_pred, sample_weight=None) -> dict:
        """The logs of a step: "loss" is the global loss (the same on every replica)."""
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        logs["loss"] = logs.pop(self.global_loss.name)
        return {name: step_output(value) for name, value in logs.items()}


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


def build_optimizer(config, learning_rate: float, momentum: float,
                    distributed: bool = False) -> keras.optimizers.Optimizer:
    """Optimizer from Config.OPTIMIZER with Matterport's per-tensor gradient clipping.

    Args:
        config: the ``Config``.
        learning_rate: base learning rate.
        momentum: SGD momentum.
        distributed: the optimizer serves a data-parallel model: clip the gradients after
            summing the replicas' parts (``ops.distribute.ClipAfterAllReduce``).

    Returns:
        A Keras optimizer.
    """
    clip = {"clipnorm": config.GRADIENT_CLIP_NORM} if config.GRADIENT_CLIP_NORM else {}
    base = keras.optimizers.AdamW if config.OPTIMIZER == "adamw" else keras.optimizers.SGD
    if distributed:
        base = type(base.__name__, (ClipAfterAllReduce, base), {})
    if config.OPTIMIZER == "adamw":
        opt = base(learning_rate=learning_rate, weight_decay=config.WEIGHT_DECAY, **clip)
        # Decoupled decay on kernels only, like the SGD L2 term.
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        return opt
    return base(learning_rate=learning_rate, momentum=momentum, **clip)


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite loss or weight (see ``StopOnNonFinite``)."""


NONFINITE_CAUSES = (
    "Likely causes: a learning rate too high for this model and batch (lower "
    "LEARNING_RATE, e.g. 10x, or set GRADIENT_CLIP_NORM), or non-finite input pixels "
    "(NaN/inf in what load_image returns). No checkpoint with non-finite weights is "
    "written; resume from the last one with load_weights(model.find_last()).")


def nonfinite_message(what: str, epoch: int, step: int | None, bad_layers=()) -> str:
    """The one message of a NaN stop: where (1-based epoch and step), what, likely causes."""
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else " (end)")
    layers = ""
    if bad_layers:
        shown = ", ".join(list(bad_layers)[:8]) + (", ..." if len(bad_layers) > 8 else "")
        layers = f" Layers with non-finite weights: {shown}."
    return f"Training stopped at {where}: {what}.{layers} {NONFINITE_CAUSES}"


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or infinite, with one message.

    The loss includes a NaN term when any weight is non-finite (see
    ``MaskRCNNTrainModel.compute_loss``), so NaN weights stop training too.

    Raises:
        NonFiniteError: from ``fit``, naming the epoch and step.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(loss)):
            return
        self.model.stop_training = True
        bad = nonfinite_layers(layer_arrays(self.model))
        raise NonFiniteError(nonfinite_message(f"the loss is {float(loss)}", self._epoch + 1,
                                               batch + 1, bad))


class CosineDecayPerEpoch(keras.callbacks.Callback):
    """Cosine decay of the learning rate over the epochs of one training stage.

    The stage runs from ``first_epoch`` to ``last_epoch`` (a ``train()`` call); a resumed
    stage keeps the first epoch of the interrupted one, so the learning rate of each epoch
    is the same as in an uninterrupted run.
    """

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


class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` whose counters survive a resume (``state``/``restore``)."""

    KEYS = ("best", "wait", "cooldown_counter")

    def __init__(self, restore: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self._restore = restore

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # resets the counters
        if self._restore:
            for key in self.KEYS:
                setattr(self, key, self._restore[key])

    def state(self) -> dict:
        """The counters, JSON-ready."""
        values = {key: getattr(self, key) for key in self.KEYS}
        return {key: None if v is None else float(v) for key, v in values.items()}


class LinearWarmup(keras.callbacks.Callback):
    """Linear learning-rate warm-up over the first ``steps`` optimizer steps of a run.

    Multiplies the rate the schedule set for the epoch by ``start + (1 - start) * t / steps``
    at optimizer step ``t``. The step is the optimizer's own counter, so a resumed run
    (which restores the optimizer) continues the ramp exactly, and a later ``train()`` stage
    of the same model does not warm up again. At the end of each epoch the schedule's rate is
    put back before later callbacks (ReduceLROnPlateau, the checkpoint) read it; it must
    therefore come after a per-epoch schedule and before those in the callback list.
    """

    def __init__(self, steps: int, start_factor: float = 0.001):
        super().__init__()
        self.steps, self.start = int(steps), float(start_factor)
        self._target: float | None = None

    def _factor(self) -> float | None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step >= self.steps:
            return None
        return self.start + (1.0 - self.start) * step / self.steps

    def on_epoch_begin(self, epoch, logs=None):
        self._target = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_begin(self, batch, logs=None):
        if self._target is None:
            return  # warm-up over for this epoch: no read of the optimizer's step
        factor = self._factor()
        if factor is not None:
            self.model.optimizer.learning_rate.assign(self._target * factor)
        else:
            self.model.optimizer.learning_rate.assign(self._target)
            self._target = None  # warm-up over: leave the rate to the schedule

    def on_epoch_end(self, epoch, logs=None):
        if self._target is not None:
            self.model.optimizer.learning_rate.assign(self._target)


def schedule_callbacks(config, learning_rate: float, first_epoch: int, last_epoch: int,
                       plateau_state: dict | None = None) -> list[keras.callbacks.Callback]:
    """Callbacks implementing Config.LR_SCHEDULE.

    Args:
        config: the ``Config``.
        learning_rate: base learning rate of this ``train()`` call.
        first_epoch, last_epoch: epoch range of the training stage (a resumed stage keeps
            its first epoch).
        plateau_state: counters of a resumed "plateau" schedule.

    Returns:
        A list of Keras callbacks (empty for "constant" without warm-up), in the order they
        must run: the per-epoch schedule, the warm-up, then the plateau.
    """
    warmup = ([LinearWarmup(config.LR_WARMUP_STEPS, config.LR_WARMUP_FACTOR)]
              if config.LR_WARMUP_STEPS else [])
    if config.LR_SCHEDULE == "plateau":
        return warmup + [ResumablePlateau(
            restore=plateau_state,
            monitor="val_loss" if config.VALIDATION_STEPS else "loss",
            factor=config.LR_PLATEAU_FACTOR, patience=config.LR_PLATEAU_PATIENCE,
            min_lr=learning_rate * config.LR_MIN_FACTOR, verbose=1)]
    if config.LR_SCHEDULE == "cosine":
        return [CosineDecayPerEpoch(learning_rate, first_epoch, last_epoch,
                                    config.LR_MIN_FACTOR)] + warmup
    return warmup


# ------------------------------------------------------------------ checkpoints and resume

def _extra_variables(model: keras.Model) -> list:
    """Variables that are not weights but shape training: the random samplers' seed states."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.non_trainable_variables
            if id(v) not in weights and "seed_generator" in v.path]


def write_training_state(f: h5py.File, model: keras.Model, epoch: int, stage: dict,
                         callbacks=()) -> None:
    """Store what an exact resume needs in the ``training_state`` group of a checkpoint.

    Args:
        f: the checkpoint file being written.
        model: the training model (its optimizer is built).
        epoch: completed epoch (1-based, the checkpoint's number).
        stage: the ``train()`` call (learning_rate, epochs, layers, first_epoch, seeds...).
        callbacks: callbacks with a ``state()`` (the plateau schedule).
    """
    group = f.create_group(STATE_GROUP)
    group.attrs["epoch"] = int(epoch)
    group.attrs["stage"] = json.dumps(stage)
    group.attrs["callbacks"] = json.dumps(
        {type(cb).__name__: cb.state() for cb in callbacks if hasattr(cb, "state")})
    for name, variables in (("optimizer", model.optimizer.variables),
                            ("model", _extra_variables(model))):
        sub = group.create_group(name)
        for i, v in enumerate(variables):
            # v.numpy(): a scalar tf.distribute variable's __array__ returns no array.
            data = sub.create_dataset(f"{i:05d}", data=np.asarray(v.numpy()))
            data.attrs["path"] = v.path


def read_training_state(filepath: str) -> dict | None:
    """The training state of a checkpoint, or None (Matterport files, ``save_weights``).

    Returns:
        dict with epoch, stage (dict), callbacks (dict), optimizer and model (lists of
        (path, array)).
    """
    with open_weights_file(filepath) as f, named_read_errors(filepath):
        if STATE_GROUP not in f:
            return None
        group = f[STATE_GROUP]
        state = {"epoch": int(group.attrs["epoch"]), "stage": json.loads(group.attrs["stage"]),
                 "callbacks": json.loads(group.attrs.get("callbacks", "{}"))}
        for name in ("optimizer", "model"):
            state[name] = [(group[name][key].attrs["path"], np.asarray(group[name][key]))
                           for key in sorted(group[name])]
    return state


def restore_training_state(model: keras.Model, state: dict, filepath: str) -> None:
    """Assign a checkpoint's optimizer and sampler state to a compiled model.

    Raises:
        ValueError: naming the file, when the variables do not match (another optimizer
            or another set of trainable layers).
    """
    for name, variables in (("optimizer", model.optimizer.variables),
                            ("model", _extra_variables(model))):
        stored = state[name]
        mismatch = len(stored) != len(variables) or any(
            tuple(v.shape) != a.shape for v, (_, a) in zip(variables, stored))
        if mismatch:
            raise ValueError(f"{filepath}: its {name} state ({len(stored)} variables) does not "
                             f"match the model's ({len(variables)}); was it written with "
                             "another optimizer or other trainable layers?")
        for v, (_, array) in zip(variables, stored):
            v.assign(array)


class NamedCheckpoint(keras.callbacks.Callback):
    """Save the weights by layer name (Matterport's HDF5 layout) after every epoch.

    The file also holds the training state (``write_training_state``) when ``stage`` is
    given. It is never written with non-finite weights: that raises ``NonFiniteError``.

    Args:
        filepath: pattern with an ``{epoch:04d}`` field (1-based, like Keras).
        stage: the ``train()`` call, stored for an exact resume.
        state_callbacks: callbacks whose ``state()`` is stored too.
        write: False on the non-chief processes of a multi-machine run: they check the
            weights (every process stops on NaN) but only the chief writes the file.
    """

    def __init__(self, filepath: str, stage: dict | None = None, state_callbacks=(),
                 write: bool = True):
        super().__init__()
        self.filepath = filepath
        self.stage = stage
        self.state_callbacks = list(state_callbacks)
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        arrays = layer_arrays(self.model)
        bad = nonfinite_layers(arrays)
        if bad:
            self.model.stop_training = True
            raise NonFiniteError(nonfinite_message("non-finite weights", epoch + 1, None, bad))
        if not self.write:
            return
        extra = None
        if self.stage is not None:
            def extra(f):
                write_training_state(f, self.model, epoch + 1, self.stage,
                                     self.state_callbacks)
        # Never over an existing file: train() refuses such a run up front; this catches
        # a file that appeared since (another process writing the same run).
        save_weights_by_name(self.model, self.filepath.format(epoch=epoch + 1), arrays,
                             write_extra=extra, overwrite=False)
