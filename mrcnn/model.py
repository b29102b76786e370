"""The MaskRCNN facade and Matterport's import surface (``import mrcnn.model as modellib``).

The graph itself is split along the data flow: ``backbone``, ``fpn``, ``rpn``, ``anchors``,
``proposals``, ``roi_align``, ``box_head``, ``mask_head``, ``detection``,
``detection_targets``, ``losses``; ``network`` wires them and ``training`` holds the
loss-computing model. The data pipeline is in ``data``; ``layer_steps`` gives Matterport's
tensor names their meaning for ``ancestor``. This module re-exports the names Matterport's
notebooks and scripts use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import warnings
from collections import OrderedDict
from typing import Any, Sequence

import keras
import numpy as np

from mrcnn import presets, runs, transform, utils  # noqa: F401  (modellib.utils: Matterport)
from mrcnn.allocator import allocator_callbacks
from mrcnn.augment import check_augmentation
from mrcnn.anchors import compute_backbone_shapes, pyramid_anchors
from mrcnn.data import (  # noqa: F401  (Matterport's modellib surface)
    DataGenerator,
    build_rpn_targets,
    compose_image_meta,
    load_image_gt,
    mold_image,
    parse_image_meta,
    unmold_image,
)
from mrcnn.detection import DetectionLayer, parse_image_meta_graph  # noqa: F401
from mrcnn.detection_targets import DetectionTargetLayer  # noqa: F401
from mrcnn.errors import InputError
from mrcnn.export import export_saved_model
from mrcnn.factory import build_parts
from mrcnn.inspection import (  # noqa: F401  (Matterport's modellib surface)
    build_detection_targets,
    data_generator,
    generate_random_rois,
)
from mrcnn.layer_steps import LayerStep, find_step, step_outputs, step_value
from mrcnn.network import build_inference_graph, build_training_graph
from mrcnn.ops.device import describe_devices, resolve_jit_compile
from mrcnn.ops.distribute import make_distribution
from mrcnn.proposals import ProposalLayer  # noqa: F401
from mrcnn.roi_align import PyramidROIAlign  # noqa: F401
from mrcnn.training import (
    LAYER_REGEX,
    MaskRCNNTrainModel,
    NamedCheckpoint,
    NonFiniteError,  # noqa: F401  (raised by train(); importable from here)
    StopOnNonFinite,
    build_optimizer,
    read_training_state,
    resolve_layer_regex,
    restore_training_state,
    schedule_callbacks,
    set_trainable,
    warn_frozen_bn_from_scratch,
)
from mrcnn.weights import (
    is_keras3_weights_file,
    load_weights_by_name,
    nonfinite_datasets,
    nonfinite_file_message,
    save_weights_by_name,
    weighted_layers,
)

def tensorboard_callbacks(log_dir: str) -> list:
    """Keras' TensorBoard callback, where it can run.

    It writes its summaries with ``tf.summary``, whose implementation comes with the
    ``tensorboard`` package (TensorFlow no longer installs it). Without either (the JAX GPU
    machine has no TensorFlow) it would fail at the first epoch; training then goes on
    without TensorBoard logs (checkpoints and the History are unaffected).

    Args:
        log_dir: folder of the run.

    Returns:
        ``[TensorBoard]``, or ``[]`` with a warning when TensorFlow or TensorBoard is missing.
    """
    try:
        import tensorflow.summary  # noqa: F401
    except ImportError:
        warnings.warn("TensorFlow is not installed: training without TensorBoard logs.",
                      stacklevel=3)
        return []
    if importlib.util.find_spec("tensorboard") is None:
        warnings.warn("TensorBoard is not installed (pip install tensorboard, or mrcnn's "
                      "'tensorflow' extra): training without TensorBoard logs.", stacklevel=3)
        return []
    return [keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False)]


def log(text: str, array: Any = None) -> None:
    """Print a message, and for an array its shape, min, max and dtype (Matterport's helper).

    Args:
        text: label.
        array: optional NumPy array (or tensor).
    """
    if array is not None:
        array = np.asarray(array)
        text = text.ljust(25)
        if array.size:
            text += (f"shape: {str(array.shape):20}  min: {array.min():10.5f}  "
                     f"max: {array.max():10.5f}  {array.dtype}")
        else:
            text += f"shape: {str(array.shape):20}  min: {'':10}  max: {'':10}  {array.dtype}"
    print(text)


class _Predictor:
    """Runs a Keras model forward, compiled once per input shape.

    TensorFlow: a ``tf.function`` (XLA when ``jit``) that retraces for each new shape with
    static shapes (Keras' own predict relaxes shapes to None on retrace, which the
    static-shape layers cannot use). JAX: ``jax.jit`` over ``stateless_call``.
    """

    def __init__(self, model: keras.Model, jit: bool):
        self.model = model
        self.jit = jit
        self._fn = None

    def _build(self):
        backend = keras.backend.backend()
        model = self.model
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.function(lambda inputs: model(inputs, training=False),
                               jit_compile=self.jit)
        if backend == "jax":
            import jax

            def run(trainable, non_trainable, inputs):
                outputs, _ = model.stateless_call(trainable, non_trainable, inputs,
                                                  training=False)
                return outputs

            fn = jax.jit(run) if self.jit else run
            return lambda inputs: fn([v.value for v in model.trainable_variables],
                                     [v.value for v in model.non_trainable_variables], inputs)
        return lambda inputs: model(inputs, training=False)

    def __call__(self, inputs: list[np.ndarray]):
        if self._fn is None:
            self._fn = self._build()
        outputs = self._fn(list(inputs))
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


class MaskRCNN:
    """Mask R-CNN model: Matterport's interface on a Keras 3 static-shape graph.

    Args:
        mode: "training" or "inference".
        config: a ``Config`` subclass instance.
        model_dir: folder for training logs and checkpoints.
        backbone, fpn, rpn_head, box_head, mask_head: parts replacing the ones built from
            ``config`` (``mrcnn.factory``); each follows its contract in docs/components.md.

    Attributes:
        keras_model: the underlying ``keras.Model``.
        parts: the ``factory.Parts`` the graph is built from.
        epoch: last completed epoch (from a loaded checkpoint name or training).
        log_dir, checkpoint_path: where the current run writes.
        distribution: the data-parallel setup of a training model
            (``ops.distribute.Distribution``: Config.GPU_COUNT > 1, a ``TF_CONFIG`` cluster,
            several JAX processes, or a ``tf.distribute`` scope entered by the caller), or
            None on one device.
    """

    def __init__(self, mode: str, config, model_dir: str, *, backbone=None, fpn=None,
                 rpn_head=None, box_head=None, mask_head=None):
        if mode not in ("training", "inference"):
            raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        # The Config is unpacked into the parts here, once; a part passed in replaces its
        # default, which is then not built.
        self.parts = build_parts(config, backbone=backbone, fpn=fpn, rpn_head=rpn_head,
                                 box_head=box_head, mask_head=mask_head)
        # Only training is data-parallel: detect() runs its batches on one device.
        self.distribution = make_distribution(config.GPU_COUNT) if mode == "training" else None
        self.set_log_dir()
        with self._distributed():
            self.keras_model = self.build(mode=mode, config=config)
        self._predictors: dict[int, _Predictor] = {}
        self.anchors = None
        # What load_weights() filled (layer names), and whether the current run trains with
        # the from-scratch recipe (decided at its first train(); None: not yet).
        self.loaded_layers: set[str] = set()
        self._from_scratch_run: bool | None = None
        # The Config as given, and the copy with the recipe that train() put in self.config.
        self._user_config, self._recipe_config = config, None
        self._recipe_message: str | None = None

    def _distributed(self):
        """The data-parallel scope (variables mirrored, batches split), or a no-op."""
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()

    # ----------------------------------------------------------------------------- build
    def build(self, mode: str, config) -> keras.Model:
        """Build the Keras model of ``mode``.

        Args:
            mode: "training" or "inference".
            config: the ``Config``.

        Returns:
            The ``keras.Model`` (a ``MaskRCNNTrainModel`` in training mode), built with this
            model's parts (``self.parts``) when ``config`` is its own Config.
        """
        parts = getattr(self, "parts", None) if config is self.config else None
        previous_policy = keras.config.dtype_policy()
        if config.MIXED_PRECISION:
            keras.config.set_dtype_policy(config.MIXED_PRECISION)
        try:
            if mode == "training":
                inputs, outputs = build_training_graph(config, parts)
                model = MaskRCNNTrainModel(inputs, outputs, name="mask_rcnn", config=config)
            else:
                inputs, outputs = build_inference_graph(config, parts)
                model = keras.Model(list(inputs.values()), outputs, name="mask_rcnn")
        finally:
            keras.config.set_dtype_policy(previous_policy)
        return model

    # ------------------------------------------------------------------ checkpoints & logs
    def set_log_dir(self, model_path: str | None = None) -> None:
        """Set the log folder and epoch counter; resume them from a checkpoint of this run.

        Resuming is for the same run only: ``<model_dir>/<name><timestamp>/
        mask_rcnn_<name>_0004.h5`` (a run folder of this config's NAME directly under
        ``model_dir``) sets the log folder to that run and ``epoch`` to 4, so the next
        ``train`` continues at epoch 5 in the same folder. Any other path, or None, starts
        a new run at epoch 0 (fine-tuning) in a new folder, which ``train`` creates (with a
        suffix ``_2``, ``_3``... if another run took the name in the same second).

        Args:
            model_path: checkpoint being loaded, or None for a fresh run.
        """
        self.epoch = 0
        name = runs.run_name(self.config.NAME)
        resumed = runs.resumable_checkpoint(model_path, self.model_dir, name) if model_path \
            else None
        # The checkpoint whose training state (optimizer, schedule) train() picks up.
        self._resume_path = model_path if resumed else None
        if resumed:
            self.log_dir, self.epoch = resumed
        else:
            self.log_dir = runs.new_run_folder(self.model_dir, name)
        self._run_claimed = bool(resumed)
        self._set_checkpoint_path()

    def _claim_run_folder(self) -> None:
        """Create the folder of a fresh run (a suffixed one if another run took its name)."""
        if not self._run_claimed:
            self.log_dir = runs.claim_run_folder(self.log_dir)
            self._run_claimed = True
            self._set_checkpoint_path()

    def _set_checkpoint_path(self) -> None:
        name = runs.run_name(self.config.NAME)
        self.checkpoint_path = os.path.join(self.log_dir, f"mask_rcnn_{name}_{{epoch:04d}}.h5")

    def find_last(self) -> str:
        """Path of the last sound checkpoint of the most recent run of this config's NAME.

        Run folders match NAME exactly and are ordered by their timestamp; checkpoints
        written with non-finite weights or unreadable are skipped (``runs.find_last``).

        Returns:
            Path to a ``mask_rcnn_*.h5`` file.

        Raises:
            FileNotFoundError: no run folder or no usable checkpoint in any of them.
        """
        return runs.find_last(self.model_dir, self.config.NAME)

    def load_weights(self, filepath: str, by_name: bool = False,
                     exclude: Sequence[str] | None = None) -> str | None:
        """Load weights from our checkpoints or Matterport-format (Keras 2) HDF5 files.

        Layers are matched by name, so a training checkpoint loads into an inference model.
        Loading a checkpoint of this run family (see ``set_log_dir``) without ``exclude``
        resumes it (epoch, folder, and at the next ``train`` the optimizer and schedule);
        anything else starts a new run at epoch 0 (fine-tuning).

        Besides a path, ``filepath`` takes Matterport's keywords (``mrcnn.presets``):
        "coco" (``./mask_rcnn_coco.h5``, downloaded when missing: needs network),
        "imagenet" (``get_imagenet_weights``; always loaded by name: the file holds the
        backbone only), "last" (``find_last``) and "none" (nothing is loaded). The model
        records what it loaded (``loaded_layers``): ``train`` applies the from-scratch
        recipe when no backbone layer was loaded (Config.FROM_SCRATCH_RECIPE).

        Args:
            filepath: checkpoint (``mask_rcnn_<name>_<epoch>.h5``), a file written by
                ``save_weights``, or a Matterport/Keras 2 ``.h5`` (mask_rcnn_coco.h5 layout).
                A Keras 3 ``keras_model.save_weights`` file also loads (whole model only).
                Or one of the keywords above (any case).
            by_name: load only the layers present in the file (others keep their values).
                False requires every weighted layer of the model to be in the file.
            exclude: layer names to skip (implies by-name loading for the others), e.g.
                ``presets.HEAD_LAYERS`` for COCO weights on a dataset with other classes.

        Returns:
            The path loaded, or None for "none".

        Raises:
            FileNotFoundError: no such file, or "last" finds no checkpoint.
            RuntimeError (``mrcnn.download.DownloadError``): "coco" or "imagenet" could not
                be downloaded.
            ValueError: naming the file: unreadable or corrupted (a failed checksum names
                the layer), layers whose shapes differ, or missing layers when strict;
                NaN/inf weights (``InputError``, naming the layers; nothing is loaded).
        """
        if presets.is_keyword(filepath):
            by_name = by_name or filepath.lower() == "imagenet"
            filepath = presets.resolve_weights(self, filepath)
            if filepath is None:
                return None
        if not os.path.exists(filepath):
            raise FileNotFoundError(f"Weights file not found: {filepath}")
        if is_keras3_weights_file(filepath):
            if by_name or exclude:
                raise ValueError(f"{filepath} is a Keras 3 .weights.h5 file, which stores "
                                 "layers by creation order, not by name: it can only be "
                                 "loaded whole (by_name=False, no exclude). Save with "
                                 "MaskRCNN.save_weights for by-name loading.")
            bad = nonfinite_datasets(filepath)  # checked before anything is assigned
            if bad:
                raise InputError(nonfinite_file_message(filepath, bad))
            try:
                self.keras_model.load_weights(filepath)
            except (OSError, RuntimeError) as err:
                raise InputError(f"Cannot read {filepath}: {err}") from err
            loaded = list(weighted_layers(self.keras_model))
        else:
            strict = not by_name and not exclude
            loaded = load_weights_by_name(self.keras_model, filepath, exclude=exclude,
                                          strict=strict)
        self.loaded_layers.update(loaded)
        # A partial load (exclude=) is fine-tuning, never a resume.
        self.set_log_dir(None if exclude else filepath)
        # A new (or resumed) run: its first train() decides on the recipe, and says so.
        self._from_scratch_run, self._recipe_message = None, None
        return filepath

    def save_weights(self, filepath: str) -> None:
        """Save the weights by layer name (Matterport's HDF5 layout; see ``load_weights``).

        Args:
            filepath: destination ``.h5`` file.
        """
        save_weights_by_name(self.keras_model, filepath)

    def export(self, path: str, image_size: Sequence[int] | None = None,
               batch_size: int | None = None, overwrite: bool = False) -> str:
        """Export the inference model as a TensorFlow SavedModel for serving.

        Its ``serve`` signature takes uint8 images [B, H, W, C] of ``image_size`` and
        returns boxes (pixels), class_ids, scores, masks (mask-head resolution, one per
        detection) and num_detections; molding and anchors are inside the graph, so a client
        needs only TensorFlow (``tf.saved_model.load(path).serve(images)``). See
        ``mrcnn.export``.

        Args:
            path: output folder.
            image_size: (height, width), multiples of 64 (default: Config.IMAGE_SHAPE).
            batch_size: fixed batch size, or None for any.
            overwrite: replace an earlier export at ``path``; by default a non-empty
                folder there is an error and is left as it is.

        Returns:
            ``path``.

        Raises:
            FileExistsError: ``path`` holds files (and ``overwrite`` is False, or they are
                not a SavedModel).
        """
        if self.mode != "inference":
            raise ValueError("Create the model in inference mode to export it.")
        return export_saved_model(self.keras_model, self.config, path, image_size, batch_size,
                                  overwrite=overwrite)

    def get_imagenet_weights(self) -> str:
        """Matterport downloaded ResNet-50 ImageNet weights here; this needs the network.

        Returns:
            The local path of the weights file.

        Raises:
            RuntimeError (``mrcnn.download.DownloadError``): the file cannot be downloaded
                (no network); the message names the URL and where to place the file.
        """
        return presets.imagenet_weights_path()

    # --------------------------------------------------------------------------- training
    def set_trainable(self, layer_regex: str, keras_model: keras.Model | None = None,
                      indent: int = 0, verbose: int = 1) -> list[str]:
        """Make trainable the layers whose names fully match ``layer_regex`` (others frozen).

        Returns:
            Names of the trainable layers.
        """
        return set_trainable(keras_model or self.keras_model, layer_regex, verbose, indent)

    def get_trainable_layers(self) -> list:
        """Layers with weights, nested models flattened (Matterport's helper)."""
        return list(weighted_layers(self.keras_model).values())

    def compile(self, learning_rate: float, momentum: float) -> None:
        """Compile the training model with Config's optimizer; the loss is built in."""
        jit = resolve_jit_compile(self.config.JIT_COMPILE)
        if jit and self.distribution and not self.distribution.xla_step:
            if self.config.JIT_COMPILE is True:
                warnings.warn(
                    f"{type(self.config).__name__}.JIT_COMPILE = True is not applied under "
                    "tf.distribute: Keras would compile all replicas' step as one XLA "
                    "cluster, which cannot use variables on several devices. The step runs "
                    "as a TensorFlow graph.", UserWarning, stacklevel=2)
            jit = False
        with self._distributed():  # the optimizer's variables are mirrored too
            self.keras_model.compile(
                optimizer=build_optimizer(self.config, learning_rate, momentum,
                                          distributed=self.distribution is not None),
                jit_compile=jit)
            # Create the optimizer's slot variables now, for the layers just set trainable.
            # On TensorFlow, Keras otherwise creates them inside the first traced train
            # step, and a tf.function that creates variables is traced twice: the first
            # step of every train() call took ~1.6x longer.
            self.keras_model.optimizer.build(self.keras_model.trainable_variables)

    def train(self, train_dataset, val_dataset, learning_rate: float, epochs: int,
              layers: str, augmentation=None, custom_callbacks=None,
              no_augmentation_sources=None) -> keras.callbacks.History:
        """Train the model up to epoch ``epochs``.

        A run from random weights (no ``load_weights``, or none that filled the backbone)
        trains with the from-scratch recipe (``mrcnn.presets.FROM_SCRATCH``: AdamW at 0.002,
        a 50-step warm-up, plateau schedule) in the settings the Config leaves at their
        defaults, and says so in one line; ``Config.FROM_SCRATCH_RECIPE = "off"`` turns it
        off. ``self.config`` then holds the Config that trained (the run's config.json).

        Args:
            train_dataset, val_dataset: prepared ``utils.Dataset`` objects (val may be None).
            learning_rate: learning rate of this stage. With the from-scratch recipe, the
                Config's own LEARNING_RATE (``learning_rate=config.LEARNING_RATE``) stands
                for the recipe's rate; any other value is used as given.
            epochs: the epoch to train up to; stage-wise schedules continue from the last
                completed epoch (``self.epoch``).
            layers: "heads", "3+", "4+", "5+", "all", or a regex over layer names.
            augmentation: an albumentations transform, or an imgaug augmenter applied with
                Matterport's semantics (``mrcnn.augment``), to the image and masks.
                Anything else raises a TypeError before any image is loaded.
            custom_callbacks: extra Keras callbacks.
            no_augmentation_sources: dataset sources never augmented.

        Returns:
            The Keras ``History``.
        """
        if self.mode != "training":
            raise ValueError("Create the model in training mode to train it.")
        check_augmentation(augmentation, "train(augmentation=...)")
        if epochs <= self.epoch:
            if self._resume_path is not None:
                # Matterport's stage-wise scripts rerun every stage on resume: the stages
                # the resumed run has finished are skipped.
                print(f"Skipping train(epochs={epochs}): the run resumed from "
                      f"{self._resume_path} is at epoch {self.epoch} already.")
                history = keras.callbacks.History()
                history.epoch = []
                return history
            raise ValueError(
                f"train(epochs={epochs}) would train nothing: the model is at epoch "
                f"{self.epoch}. `epochs` is the epoch to train up to (Matterport's "
                f"convention), not a number of epochs: pass epochs={self.epoch + 2} to "
                "train 2 more. (Loading another run's checkpoint, or loading with exclude=, "
                "starts a new run at epoch 0.)")
        self._refuse_existing_checkpoints(epochs)
        config, learning_rate, from_scratch = self._training_config(learning_rate, layers)
        layer_regex = resolve_layer_regex(layers)
        stage = {"learning_rate": float(learning_rate), "epochs": int(epochs),
                 "layers": layer_regex, "optimizer": config.OPTIMIZER,
                 "schedule": config.LR_SCHEDULE}
        if from_scratch:
            # Marks the checkpoints of a recipe run, so that resuming one keeps the recipe.
            stage["from_scratch"] = True
        state = self._resume_state(stage)
        # The generators' shuffling is seeded from NumPy's global RNG, so that np.random.seed
        # (or keras.utils.set_random_seed) makes the image order reproducible, as with
        # Matterport's np.random.shuffle. (Unseeded, each run drew a fresh OS seed.) A
        # resumed stage reuses its seeds and skips the epochs done, so the order is the same
        # as in an uninterrupted run.
        has_val = val_dataset is not None and bool(config.VALIDATION_STEPS)
        seeds = [int(np.random.randint(2**31 - 1)),
                 int(np.random.randint(2**31 - 1)) if has_val else None]
        first_epoch = self.epoch
        if state is not None:
            first_epoch, seeds = state["stage"]["first_epoch"], state["stage"]["seeds"]
        stage.update(first_epoch=first_epoch, seeds=seeds)
        dist = self.distribution
        # A JAX process feeds its own part of the global batch (other images: its own
        # seeds); a tf.distribute worker feeds the global batch and keeps its part.
        batch_size, offset = config.BATCH_SIZE, 0
        if dist is not None and dist.per_process_input:
            batch_size, offset = config.BATCH_SIZE // dist.process_count, dist.process_index
        train_generator = DataGenerator(train_dataset, config, shuffle=True,
                                        augmentation=augmentation,
                                        no_augmentation_sources=no_augmentation_sources,
                                        seed=seeds[0] + offset, steps=config.STEPS_PER_EPOCH,
                                        batch_size=batch_size)
        val_generator = None
        if has_val:
            val_generator = DataGenerator(val_dataset, config, shuffle=True,
                                          seed=seeds[1] + offset,
                                          steps=config.VALIDATION_STEPS, batch_size=batch_size)
        for generator in (train_generator, val_generator):
            for _ in range(self.epoch - first_epoch if generator is not None else 0):
                generator.on_epoch_end()

        chief = dist is None or dist.is_chief
        if chief:
            self._claim_run_folder()
            runs.write_run_info(self.log_dir, config, self.epoch)
        else:
            # The other processes of a multi-machine run write nothing to the run folder.
            self.log_dir = tempfile.mkdtemp(prefix=f"mrcnn_worker{dist.process_index}_")
            self._set_checkpoint_path()
        schedule = schedule_callbacks(
            config, learning_rate, first_epoch, epochs,
            plateau_state=(state or {}).get("callbacks", {}).get("ResumablePlateau"))
        callbacks = [
            StopOnNonFinite(),
            *(tensorboard_callbacks(self.log_dir) if chief else []),
            # The schedule updates before the checkpoint stores its state.
            *schedule,
            NamedCheckpoint(self.checkpoint_path, stage, schedule, write=chief),
            *(custom_callbacks or []),
            *allocator_callbacks(config),
        ]
        how = f"resuming {self._resume_path}" if state is not None else "new stage"
        print(f"\nStarting at epoch {self.epoch} ({how}). LR={learning_rate}\n")
        print(f"Checkpoint Path: {self.checkpoint_path}")
        print(f"Devices: {describe_devices()}")
        self.set_trainable(layer_regex)
        warn_frozen_bn_from_scratch(self.keras_model, config)
        self.compile(learning_rate, config.LEARNING_MOMENTUM)
        if state is not None:
            restore_training_state(self.keras_model, state, self._resume_path)
        with self._distributed():
            history = self._fit(train_generator, val_generator, epochs, callbacks)
        self.epoch = max(self.epoch, epochs)
        self._resume_path = None
        return history

    def _refuse_existing_checkpoints(self, epochs: int) -> None:
        """A run never writes over its checkpoints: refuse a train() that would.

        Loading an earlier checkpoint of a finished run resumes that run, whose later
        epochs are on disk already; training those epochs again would replace them.
        """
        if not self._run_claimed:
            return  # a fresh run: its folder is created (claimed) by train()
        taken = [path for epoch in range(self.epoch + 1, epochs + 1)
                 if os.path.exists(path := self.checkpoint_path.format(epoch=epoch))]
        if taken:
            raise FileExistsError(
                f"train(epochs={epochs}) would write over {taken[0]}: the run in "
                f"{self.log_dir} was resumed at epoch {self.epoch} and already has "
                f"{len(taken)} later checkpoint(s). Checkpoints are never overwritten. To "
                "continue that run, load its last checkpoint (model.load_weights("
                "model.find_last())); to train from these weights as a new run (epoch 0, a "
                "new folder), call model.set_log_dir() after load_weights; to train those "
                "epochs again in this run, move its later checkpoints away first.")

    def _fit(self, train_generator, val_generator, epochs: int,
             callbacks: list) -> keras.callbacks.History:
        config = self.config
        return self.keras_model.fit(
            train_generator,
            initial_epoch=self.epoch,
            epochs=epochs,
            steps_per_epoch=config.STEPS_PER_EPOCH,
            # The generator shuffles the images itself, from its seed. Keras' shuffle would
            # also permute the batches of each epoch with Python's global `random`, which
            # a resumed run cannot replay.
            shuffle=False,
            callbacks=callbacks,
            validation_data=val_generator,
            validation_steps=config.VALIDATION_STEPS if val_generator is not None else None,
            # One line per epoch when stdout is a file or a pipe: the progress bar would
            # write its backspaces there for every step.
            verbose=1 if sys.stdout.isatty() and os.environ.get("CI") is None else 2,
        )

    def _training_config(self, learning_rate: float, layers: str):
        """The Config and learning rate of a ``train()`` call: the user's Config, or a copy
        with the from-scratch recipe when the run starts from random weights.

        Whether the run starts from random weights is decided at its first ``train()``
        (``presets.starts_from_random_weights``: no backbone layer loaded, or a resumed
        checkpoint of a recipe run) and holds for its later stages, until ``load_weights``.
        The Config used becomes ``self.config``; the one given stays the base of later
        calls.

        Returns:
            (config, learning_rate, whether the recipe applies).
        """
        user = self._user_config if self.config is self._recipe_config else self.config
        self._user_config = user
        if self._from_scratch_run is None:
            resumed = presets.checkpoint_stage(self._resume_path) if self._resume_path \
                else None
            self._from_scratch_run = presets.starts_from_random_weights(
                self.loaded_layers, weighted_layers(self.keras_model), resumed)
        config, from_scratch = user, False
        if self._from_scratch_run and getattr(user, "FROM_SCRATCH_RECIPE", "auto") == "auto":
            config, learning_rate, message = presets.apply_from_scratch(
                user, learning_rate, layers)
            from_scratch = True
            if message != self._recipe_message:  # once per run, not per stage
                print(message)
                self._recipe_message = message
        self.config = self._recipe_config = config
        if isinstance(self.keras_model, MaskRCNNTrainModel):
            self.keras_model.use_config(config)  # its loss reads OPTIMIZER
        return config, learning_rate, from_scratch

    def _resume_state(self, stage: dict) -> dict | None:
        """The resumed checkpoint's training state when this ``train()`` continues its stage.

        The same stage means the same learning_rate, epochs, layers, optimizer and schedule
        as the interrupted call; another call is a new stage (fresh optimizer, schedule from
        the current epoch), as in an uninterrupted stage-wise run.
        """
        if self._resume_path is None:
            return None
        state = read_training_state(self._resume_path)
        if state is None or state["epoch"] != self.epoch:
            return None
        if any(state["stage"].get(key) != value for key, value in stage.items()):
            print(f"{self._resume_path} was written by another training stage "
                  f"({state['stage']}): this one starts with a fresh optimizer and schedule.")
            return None
        return state

    # -------------------------------------------------------------------------- inference
    def mold_inputs(self, images: Sequence[np.ndarray]):
        """Resize and normalize images into a batch the model takes.

        Images of different molded sizes (pad64 / none modes) are zero-padded bottom/right
        to the largest one (their windows are unchanged, their metas give the padded
        shape). ``detect`` does not use this padded batch: it runs each molded shape as
        its own batch (``transform.resize_inputs`` / ``mold_batch``), so an image gets the
        same detections in any company.

        Args:
            images: list of [H, W, C] images.

        Returns:
            molded_images [N, h, w, C] float32, image_metas [N, META], windows [N, 4].
        """
        return transform.mold_inputs(images, self.config)

    def unmold_detections(self, detections: np.ndarray, mrcnn_mask: np.ndarray,
                          original_image_shape, image_shape, window):
        """Convert one image's padded detections to original-image boxes and full masks.

        See ``transform.unmold_detections`` (masks are pasted with OpenCV, onto the boxes
        before rounding unless ``Config.MASK_PASTE = "integer"``).

        Args:
            detections: [D, (y1, x1, y2, x2, class_id, score)] normalized.
            mrcnn_mask: [D, h, w, num_classes].
            original_image_shape: [H, W, C] before resizing.
            image_shape: [h, w, C] of the molded image.
            window: [4] pixel window of the image inside the molded image.

        Returns:
            boxes [N, 4] int32 pixels, class_ids [N] int32, scores [N], masks bool [H, W, N].
        """
        return transform.unmold_detections(
            detections, mrcnn_mask, original_image_shape, image_shape, window,
            subpixel=self.config.MASK_PASTE == "subpixel")

    def _predictor(self, model: keras.Model) -> _Predictor:
        key = id(model)
        if key not in self._predictors:
            self._predictors[key] = _Predictor(
                model, resolve_jit_compile(self.config.JIT_COMPILE))
        return self._predictors[key]

    def _run_batches(self, molded_images: np.ndarray, image_metas: np.ndarray,
                     model: keras.Model | None = None) -> list[dict]:
        """Run the inference model in chunks of BATCH_SIZE (last chunk padded)."""
        model = model or self.keras_model
        # Only the main model's compiled function is cached; run_graph sub-models are
        # built per call.
        predictor = (self._predictor(model) if model is self.keras_model
                     else _Predictor(model, resolve_jit_compile(self.config.JIT_COMPILE)))
        bs = self.config.BATCH_SIZE
        chunks = []
        for start in range(0, len(molded_images), bs):
            images = molded_images[start:start + bs]
            metas = image_metas[start:start + bs]
            count = len(images)
            if count < bs:  # keep one compiled batch size
                images = np.concatenate([images, np.repeat(images[-1:], bs - count, 0)])
                metas = np.concatenate([metas, np.repeat(metas[-1:], bs - count, 0)])
            out = predictor([images, metas])
            chunks.append(keras.tree.map_structure(lambda a: a[:count], out))
        return chunks

    def detect(self, images: Sequence[np.ndarray], verbose: int = 0) -> list[dict]:
        """Detect instances in images of any size and number.

        Args:
            images: list of [H, W, 3] images (uint8 RGB). Other pixel types are converted
                as training converts them (``dataset.as_model_image``: floats in [0, 1]
                x 255, uint16 scaled to 0..255, ...); NaN/inf pixels, empty images and
                other channel counts are refused naming the image's index.
            verbose: print inputs and outputs like Matterport's ``log``.

        Returns:
            One dict per image: rois [N, (y1, x1, y2, x2)] int32 pixels, class_ids [N],
            scores [N], masks bool [H, W, N], all in original image coordinates. As in
            Matterport, ``self.anchors`` then holds the pixel anchors of the (last) molded
            image shape. No images give ``[]``.

        Raises:
            InputError: an image that cannot be converted (see ``images``).
        """
        if self.mode != "inference":
            raise ValueError("Create the model in inference mode to detect.")
        if len(images) == 0:
            return []
        if verbose:
            print(f"Processing {len(images)} images")
            for image in images:
                log("image", image)
        # Each molded shape runs as its own batch: padding an image to a larger batch
        # shape would change what the model sees (and so its detections).
        resized, image_metas, windows = transform.resize_inputs(images, self.config)
        shapes = image_metas[:, transform.META_SLICES["image_shape"]]
        results: list[dict] = [{}] * len(images)
        for group in transform.group_by_shape(shapes):
            molded_images = transform.mold_batch([resized[i] for i in group],
                                                 shapes[group[0]], self.config)
            if verbose:
                log("molded_images", molded_images)
                log("image_metas", image_metas[group])
            found = self._detect_molded([images[i] for i in group], molded_images,
                                        image_metas[group], windows[group])
            for i, result in zip(group, found):
                results[i] = result
        if len(images):
            # Matterport's detect() left the (pixel) anchors of the molded shape in
            # self.anchors; its notebooks pass them to build_rpn_targets. Once, for the
            # last shape, not per shape group.
            self.get_anchors(molded_images.shape[1:])
        return results

    def _detect_molded(self, images, molded_images, image_metas, windows) -> list[dict]:
        results = []
        for chunk_index, out in enumerate(self._run_batches(molded_images, image_metas)):
            for j in range(len(out["mrcnn_detection"])):
                i = chunk_index * self.config.BATCH_SIZE + j
                rois, class_ids, scores, masks = self.unmold_detections(
                    out["mrcnn_detection"][j], out["mrcnn_mask"][j], np.asarray(images[i]).shape,
                    molded_images[i].shape, windows[i])
                results.append({"rois": rois, "class_ids": class_ids, "scores": scores,
                                "masks": masks})
        return results

    def detect_molded(self, molded_images: np.ndarray, image_metas: np.ndarray,
                      verbose: int = 0) -> list[dict]:
        """Detect on images already molded, in the molded images' coordinates (Matterport).

        Unlike ``detect``, the results are NOT mapped back to the original image: boxes
        are pixels of the molded image and masks have its size [h, w, N], as in
        Matterport's ``detect_molded`` (whose window is the whole molded image). That is
        the frame of ``load_image_gt``'s image and ground truth, so its boxes and masks
        compare with them directly (``utils.compute_ap``, ``visualize.display_differences``).
        The detections are still clipped to each meta's window, as in ``detect``. Like
        ``detect``, it leaves the molded shape's pixel anchors in ``self.anchors``.

        Args:
            molded_images: [N, h, w, C] molded images (e.g. ``mold_image`` of
                ``load_image_gt``'s image), all of one shape.
            image_metas: [N, META] their metas (the window is read there).
            verbose: print inputs.

        Returns:
            One dict per image: rois [N, (y1, x1, y2, x2)] int32 pixels of the molded
            image, class_ids [N], scores [N], masks bool [h, w, N].
        """
        molded_images = np.asarray(molded_images, np.float32)
        image_metas = np.asarray(image_metas, np.float32)
        if molded_images.ndim != 4 or image_metas.ndim != 2 \
                or len(molded_images) != len(image_metas):
            raise ValueError(
                "detect_molded() takes molded_images [N, h, w, C] and image_metas [N, META] "
                f"of the same N, got shapes {molded_images.shape} and {image_metas.shape} "
                "(add the batch axis: images[np.newaxis], metas[np.newaxis]).")
        if verbose:
            log("molded_images", molded_images)
            log("image_metas", image_metas)
        h, w = molded_images.shape[1:3]
        whole = np.array([[0, 0, h, w]] * len(molded_images), np.int32)
        results = self._detect_molded(list(molded_images), molded_images, image_metas, whole)
        self.get_anchors(molded_images.shape[1:])
        return results

    def get_anchors(self, image_shape) -> np.ndarray:
        """Normalized anchors for a molded image shape (pixel copy kept in ``self.anchors``).

        Args:
            image_shape: (H, W[, C]).

        Returns:
            [A, 4] normalized anchors.
        """
        self.anchors = np.array(pyramid_anchors(self.config, image_shape, normalized=False))
        return np.array(pyramid_anchors(self.config, image_shape))

    def ancestor(self, tensor, name, checked=None) -> LayerStep | None:
        """A named tensor inside a layer that ``tensor`` depends on (Matterport's notebooks).

        Matterport searched the TF graph for a tensor name; Keras 3 has no such graph, so
        the layers declare Matterport's names (``MATTERPORT_TENSORS``). The proposal layer
        (``ROI``) has ``ROI/pre_nms_anchors:0``, ``ROI/refined_anchors:0``,
        ``ROI/refined_anchors_clipped:0`` [B, K, 4] normalized (K = PRE_NMS_LIMIT best
        anchors), ``ROI/top_anchors:0`` / ``:1`` (their scores and anchor indices
        [B, K]) and the kept indices of NMS under all three of its TF names
        (``ROI/rpn_non_max_suppression:0``, ``.../NonMaxSuppressionV2:0``,
        ``.../NonMaxSuppressionV3:0``): indices into the K clipped boxes of image 0, 1-D,
        best first, no padding. Names match as in Matterport (``"ROI/..."`` also finds a
        layer Keras renamed ``ROI_1``).

        Args:
            tensor: a Keras tensor of ``keras_model`` to search from (the layer making it
                counts), e.g. ``model.keras_model.get_layer("ROI").output``.
            name: the tensor name (or a compiled regex, as Matterport allowed).
            checked: unused (Matterport's recursion state).

        Returns:
            A handle for ``run_graph``'s outputs, or None for a name no layer upstream of
            ``tensor`` has (Matterport's notebooks try the NMS names in turn).
        """
        return find_step(tensor, name)

    def run_graph(self, images: Sequence[np.ndarray], outputs, image_metas=None) -> OrderedDict:
        """Run the model up to chosen intermediate tensors, for inspection.

        Args:
            images: list of images (molded here like ``detect``).
            outputs: list of (name, tensor) pairs where tensor is a Keras tensor of
                ``keras_model`` (e.g. ``model.keras_model.get_layer("ROI").output``), the
                name of a layer or of a model output, or a handle from ``ancestor``.
            image_metas: unused (kept for Matterport's signature).

        Returns:
            OrderedDict name -> NumPy array [len(images), ...] (an ``ancestor`` handle of
            NMS indices: 1-D, image 0's).

        Raises:
            ValueError: an output is None (e.g. an ``ancestor`` name that did not resolve).
        """
        model = self.keras_model
        named = OrderedDict()
        for name, tensor in outputs:
            if tensor is None:
                raise ValueError(f"run_graph: output {name!r} is None (an ancestor() name "
                                 "that did not resolve?).")
            if isinstance(tensor, str):
                if isinstance(model.output, dict) and tensor in model.output:
                    tensor = model.output[tensor]
                else:
                    tensor = model.get_layer(tensor).output
            named[name] = tensor
        # Each output becomes a group of sub-model outputs: [tensor], or a handle's
        # [value] / [value, valid mask] recomputed from its layer's inputs.
        steps = [t for t in named.values() if isinstance(t, LayerStep)]
        step_groups = iter(step_outputs(steps))
        groups = [next(step_groups) if isinstance(t, LayerStep) else [t]
                  for t in named.values()]
        sub = keras.Model(model.inputs, [t for group in groups for t in group])
        molded_images, metas, _ = self.mold_inputs(images)
        chunks = self._run_batches(molded_images, metas, model=sub)
        # A functional model with one output returns that tensor, not a list of one: without
        # this, c[0] below would take the first image of each chunk instead of the output.
        chunks = [c if isinstance(c, (list, tuple)) else [c] for c in chunks]
        result = OrderedDict()
        start = 0
        for (name, tensor), group in zip(named.items(), groups):
            parts = [c[start:start + len(group)] for c in chunks]
            start += len(group)
            if isinstance(tensor, LayerStep):
                result[name] = step_value(tensor, parts)
            else:
                result[name] = np.concatenate([np.asarray(p[0]) for p in parts], axis=0)
            log(name, result[name])
        return result
