"""The MaskRCNN facade and Matterport's import surface (``import mrcnn.model as modellib``).

The graph itself is split along the data flow: ``backbone``, ``fpn``, ``rpn``, ``anchors``,
``proposals``, ``roi_align``, ``box_head``, ``mask_head``, ``detection``,
``detection_targets``, ``losses``; ``network`` wires them and ``training`` holds the
loss-computing model. The data pipeline is in ``data``. This module re-exports the names
Matterport's notebooks and scripts use.
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import warnings
from collections import OrderedDict
from typing import Any, Sequence

import keras
import numpy as np

from mrcnn import utils
from mrcnn.allocator import allocator_callbacks
from mrcnn.anchors import compute_backbone_shapes, pyramid_anchors
from mrcnn.data import (  # noqa: F401  (Matterport's modellib surface)
    DataGenerator,
    build_detection_targets,
    build_rpn_targets,
    compose_image_meta,
    data_generator,
    generate_random_rois,
    load_image_gt,
    mold_image,
    parse_image_meta,
    unmold_image,
)
from mrcnn.detection import DetectionLayer, parse_image_meta_graph  # noqa: F401
from mrcnn.detection_targets import DetectionTargetLayer  # noqa: F401
from mrcnn.network import build_inference_graph, build_training_graph
from mrcnn.ops.device import resolve_jit_compile
from mrcnn.proposals import ProposalLayer  # noqa: F401
from mrcnn.roi_align import PyramidROIAlign  # noqa: F401
from mrcnn.training import (
    LAYER_REGEX,
    MaskRCNNTrainModel,
    NamedCheckpoint,
    build_optimizer,
    resolve_layer_regex,
    schedule_callbacks,
    set_trainable,
)
from mrcnn.weights import (
    is_keras3_weights_file,
    load_weights_by_name,
    save_weights_by_name,
    weighted_layers,
)

CHECKPOINT_PATTERN = re.compile(
    r".*[/\\][\w-]+(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})[/\\]mask\_rcnn\_[\w-]+(\d{4})"
    r"\.(?:weights\.)?h5$")


def tensorboard_callbacks(log_dir: str) -> list:
    """Keras' TensorBoard callback, where it can run.

    It writes its summaries with ``tf.summary``, so on a machine without TensorFlow (the JAX
    GPU machine) it fails at the first epoch; there training goes on without TensorBoard
    logs (checkpoints and the History are unaffected).

    Args:
        log_dir: folder of the run.

    Returns:
        ``[TensorBoard]``, or ``[]`` with a warning when ``tensorflow.summary`` is missing.
    """
    try:
        import tensorflow.summary  # noqa: F401
    except ImportError:
        warnings.warn("TensorFlow is not installed: training without TensorBoard logs.",
                      stacklevel=3)
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

    Attributes:
        keras_model: the underlying ``keras.Model``.
        epoch: last completed epoch (from a loaded checkpoint name or training).
        log_dir, checkpoint_path: where the current run writes.
    """

    def __init__(self, mode: str, config, model_dir: str):
        if mode not in ("training", "inference"):
            raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self.set_log_dir()
        self.keras_model = self.build(mode=mode, config=config)
        self._predictors: dict[int, _Predictor] = {}
        self.anchors = None

    # ----------------------------------------------------------------------------- build
    def build(self, mode: str, config) -> keras.Model:
        """Build the Keras model of ``mode``.

        Args:
            mode: "training" or "inference".
            config: the ``Config``.

        Returns:
            The ``keras.Model`` (a ``MaskRCNNTrainModel`` in training mode).
        """
        previous_policy = keras.config.dtype_policy()
        if config.MIXED_PRECISION:
            keras.config.set_dtype_policy(config.MIXED_PRECISION)
        try:
            if mode == "training":
                inputs, outputs = build_training_graph(config)
                model = MaskRCNNTrainModel(inputs, outputs, config, name="mask_rcnn")
            else:
                inputs, outputs = build_inference_graph(config)
                model = keras.Model(list(inputs.values()), outputs, name="mask_rcnn")
        finally:
            keras.config.set_dtype_policy(previous_policy)
        return model

    # ------------------------------------------------------------------ checkpoints & logs
    def set_log_dir(self, model_path: str | None = None) -> None:
        """Set the log folder and epoch counter; resume them from a checkpoint path.

        A path like ``<model_dir>/shapes20260101T1200/mask_rcnn_shapes_0004.h5``
        sets the log folder to that run and ``epoch`` to 4, so the next ``train`` continues
        at epoch 5 in the same folder.

        Args:
            model_path: checkpoint being loaded, or None for a fresh run.
        """
        self.epoch = 0
        now = datetime.datetime.now()
        if model_path:
            m = CHECKPOINT_PATTERN.match(model_path)
            if m:
                now = datetime.datetime(*map(int, m.groups()[:5]))
                self.epoch = int(m.group(6))
        name = (self.config.NAME or "mrcnn").lower()
        self.log_dir = os.path.join(self.model_dir, f"{name}{now:%Y%m%dT%H%M}")
        self.checkpoint_path = os.path.join(self.log_dir, f"mask_rcnn_{name}_{{epoch:04d}}.h5")

    def find_last(self) -> str:
        """Path of the last checkpoint of the most recent run of this config's NAME.

        Returns:
            Path to a ``mask_rcnn_*.h5`` file.

        Raises:
            FileNotFoundError: no run folder or no checkpoint in any of them.
        """
        name = (self.config.NAME or "mrcnn").lower()
        runs = []
        if os.path.isdir(self.model_dir):
            runs = sorted(d for d in os.listdir(self.model_dir)
                          if d.startswith(name) and os.path.isdir(
                              os.path.join(self.model_dir, d)))
        if not runs:
            raise FileNotFoundError(errno.ENOENT,
                                    f"Could not find a model directory for '{name}' under "
                                    f"{self.model_dir}")
        for run in reversed(runs):
            run_dir = os.path.join(self.model_dir, run)
            checkpoints = sorted(f for f in os.listdir(run_dir)
                                 if f.startswith("mask_rcnn") and f.endswith(".h5"))
            if checkpoints:
                return os.path.join(run_dir, checkpoints[-1])
        raise FileNotFoundError(errno.ENOENT, f"Could not find weight files in {self.model_dir}"
                                f" (runs searched: {', '.join(runs)})")

    def load_weights(self, filepath: str, by_name: bool = False,
                     exclude: Sequence[str] | None = None) -> None:
        """Load weights from our checkpoints or Matterport-format (Keras 2) HDF5 files.

        Layers are matched by name, so a training checkpoint loads into an inference model.

        Args:
            filepath: checkpoint (``mask_rcnn_<name>_<epoch>.h5``), a file written by
                ``save_weights``, or a Matterport/Keras 2 ``.h5`` (mask_rcnn_coco.h5 layout).
                A Keras 3 ``keras_model.save_weights`` file also loads (whole model only).
            by_name: load only the layers present in the file (others keep their values).
                False requires every weighted layer of the model to be in the file.
            exclude: layer names to skip (implies by-name loading for the others).

        Raises:
            FileNotFoundError: no such file.
            ValueError: listing layers whose shapes differ, or missing layers when strict.
        """
        if not os.path.exists(filepath):
            raise FileNotFoundError(f"Weights file not found: {filepath}")
        if is_keras3_weights_file(filepath):
            if by_name or exclude:
                raise ValueError(f"{filepath} is a Keras 3 .weights.h5 file, which stores "
                                 "layers by creation order, not by name: it can only be "
                                 "loaded whole (by_name=False, no exclude). Save with "
                                 "MaskRCNN.save_weights for by-name loading.")
            self.keras_model.load_weights(filepath)
        else:
            strict = not by_name and not exclude
            load_weights_by_name(self.keras_model, filepath, exclude=exclude, strict=strict)
        self.set_log_dir(filepath)

    def save_weights(self, filepath: str) -> None:
        """Save the weights by layer name (Matterport's HDF5 layout; see ``load_weights``).

        Args:
            filepath: destination ``.h5`` file.
        """
        save_weights_by_name(self.keras_model, filepath)

    def get_imagenet_weights(self) -> str:
        """Matterport downloaded ResNet-50 ImageNet weights here; this needs the network.

        Returns:
            The local path of the weights file.

        Raises:
            RuntimeError: when the file cannot be downloaded (no network).
        """
        url = ("https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
               "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
        try:
            return keras.utils.get_file(os.path.basename(url), url, cache_subdir="models",
                                        md5_hash="a268eb855778b3df3c7506639542a6af")
        except Exception as err:  # network errors vary by platform
            raise RuntimeError(f"Could not download the ImageNet weights from {url} ({err}). "
                               "Download the file by hand and pass its path instead.") from err

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
        self.keras_model.compile(
            optimizer=build_optimizer(self.config, learning_rate, momentum),
            jit_compile=resolve_jit_compile(self.config.JIT_COMPILE))
        # Create the optimizer's slot variables now, for the layers just set trainable. On
        # TensorFlow, Keras otherwise creates them inside the first traced train step, and a
        # tf.function that creates variables is traced twice: the first step of every
        # train() call took ~1.6x longer.
        self.keras_model.optimizer.build(self.keras_model.trainable_variables)

    def train(self, train_dataset, val_dataset, learning_rate: float, epochs: int,
              layers: str, augmentation=None, custom_callbacks=None,
              no_augmentation_sources=None) -> keras.callbacks.History:
        """Train the model up to epoch ``epochs``.

        Args:
            train_dataset, val_dataset: prepared ``utils.Dataset`` objects (val may be None).
            learning_rate: learning rate of this stage.
            epochs: the epoch to train up to; stage-wise schedules continue from the last
                completed epoch (``self.epoch``).
            layers: "heads", "3+", "4+", "5+", "all", or a regex over layer names.
            augmentation: an albumentations transform applied to image and masks.
            custom_callbacks: extra Keras callbacks.
            no_augmentation_sources: dataset sources never augmented.

        Returns:
            The Keras ``History``.
        """
        if self.mode != "training":
            raise ValueError("Create the model in training mode to train it.")
        config = self.config
        # The generators' shuffling is seeded from NumPy's global RNG, so that np.random.seed
        # (or keras.utils.set_random_seed) makes the image order reproducible, as with
        # Matterport's np.random.shuffle. (Unseeded, each run drew a fresh OS seed.)
        train_generator = DataGenerator(train_dataset, config, shuffle=True,
                                        augmentation=augmentation,
                                        no_augmentation_sources=no_augmentation_sources,
                                        seed=int(np.random.randint(2**31 - 1)),
                                        steps=config.STEPS_PER_EPOCH)
        val_generator = None
        if val_dataset is not None and config.VALIDATION_STEPS:
            val_generator = DataGenerator(val_dataset, config, shuffle=True,
                                          seed=int(np.random.randint(2**31 - 1)),
                                          steps=config.VALIDATION_STEPS)

        os.makedirs(self.log_dir, exist_ok=True)
        callbacks = [
            *tensorboard_callbacks(self.log_dir),
            NamedCheckpoint(self.checkpoint_path),
            *schedule_callbacks(config, learning_rate, self.epoch, epochs),
            *(custom_callbacks or []),
            *allocator_callbacks(config),
        ]
        print(f"\nStarting at epoch {self.epoch}. LR={learning_rate}\n")
        print(f"Checkpoint Path: {self.checkpoint_path}")
        self.set_trainable(resolve_layer_regex(layers))
        self.compile(learning_rate, config.LEARNING_MOMENTUM)
        history = self.keras_model.fit(
            train_generator,
            initial_epoch=self.epoch,
            epochs=epochs,
            steps_per_epoch=config.STEPS_PER_EPOCH,
            callbacks=callbacks,
            validation_data=val_generator,
            validation_steps=config.VALIDATION_STEPS if val_generator is not None else None,
            verbose=1 if os.environ.get("CI") is None else 2,
        )
        self.epoch = max(self.epoch, epochs)
        return history

    # -------------------------------------------------------------------------- inference
    def mold_inputs(self, images: Sequence[np.ndarray]):
        """Resize and normalize images into a batch the model takes.

        Images of different molded sizes (pad64 mode) are zero-padded bottom/right to the
        largest one; their windows are unchanged.

        Args:
            images: list of [H, W, C] images.

        Returns:
            molded_images [N, h, w, C] float32, image_metas [N, META], windows [N, 4].
        """
        molded, metas, windows, scales = [], [], [], []
        for image in images:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != self.config.IMAGE_CHANNEL_COUNT:
                raise ValueError(f"detect() expects images of shape [H, W, "
                                 f"{self.config.IMAGE_CHANNEL_COUNT}], got {image.shape}")
            resized, window, scale, _padding, _crop = utils.resize_image(
                image, min_dim=self.config.IMAGE_MIN_DIM, min_scale=self.config.IMAGE_MIN_SCALE,
                max_dim=self.config.IMAGE_MAX_DIM, mode=self.config.IMAGE_RESIZE_MODE)
            molded.append(mold_image(resized, self.config))
            windows.append(window)
            scales.append(scale)
        height = max(m.shape[0] for m in molded)
        width = max(m.shape[1] for m in molded)
        if height % 64 or width % 64:
            # "none" mode: the backbone needs sizes divisible by 64.
            height, width = -(-height // 64) * 64, -(-width // 64) * 64
        batch = np.zeros((len(molded), height, width, molded[0].shape[2]), np.float32)
        for i, (image, m, window, scale) in enumerate(zip(images, molded, windows, scales)):
            batch[i, :m.shape[0], :m.shape[1]] = m
            metas.append(compose_image_meta(
                0, np.asarray(image).shape, batch[i].shape, window, scale,
                np.zeros([self.config.NUM_CLASSES], dtype=np.int32)))
        return batch, np.stack(metas), np.stack(windows)

    def unmold_detections(self, detections: np.ndarray, mrcnn_mask: np.ndarray,
                          original_image_shape, image_shape, window):
        """Convert one image's padded detections to original-image boxes and full masks.

        Args:
            detections: [D, (y1, x1, y2, x2, class_id, score)] normalized.
            mrcnn_mask: [D, h, w, num_classes].
            original_image_shape: [H, W, C] before resizing.
            image_shape: [h, w, C] of the molded image.
            window: [4] pixel window of the image inside the molded image.

        Returns:
            boxes [N, 4] int32 pixels, class_ids [N] int32, scores [N], masks bool [H, W, N].
        """
        zero_ix = np.where(detections[:, 4] == 0)[0]
        n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
        boxes = detections[:n, :4]
        class_ids = detections[:n, 4].astype(np.int32)
        scores = detections[:n, 5]
        masks = mrcnn_mask[np.arange(n), :, :, class_ids]

        # Boxes are normalized to the molded image: map them to the window, then to the
        # original image.
        wy1, wx1, wy2, wx2 = utils.norm_boxes(np.asarray(window), image_shape[:2])
        shift = np.array([wy1, wx1, wy1, wx1])
        scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
        boxes = utils.denorm_boxes((boxes - shift) / scale, original_image_shape[:2])

        keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
        boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]
        full = [utils.unmold_mask(masks[i], boxes[i], original_image_shape)
                for i in range(len(boxes))]
        full_masks = (np.stack(full, axis=-1) if full else
                      np.zeros(tuple(original_image_shape[:2]) + (0,), dtype=bool))
        return boxes, class_ids, scores, full_masks

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
            images: list of [H, W, 3] images (uint8 RGB).
            verbose: print inputs and outputs like Matterport's ``log``.

        Returns:
            One dict per image: rois [N, (y1, x1, y2, x2)] int32 pixels, class_ids [N],
            scores [N], masks bool [H, W, N], all in original image coordinates.
        """
        if self.mode != "inference":
            raise ValueError("Create the model in inference mode to detect.")
        if verbose:
            print(f"Processing {len(images)} images")
            for image in images:
                log("image", image)
        molded_images, image_metas, windows = self.mold_inputs(images)
        if verbose:
            log("molded_images", molded_images)
            log("image_metas", image_metas)
        return self._detect_molded(images, molded_images, image_metas, windows)

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
        """Detect on images already molded (e.g. from ``load_image_gt`` + ``mold_image``).

        Args:
            molded_images: [N, h, w, C] molded images.
            image_metas: [N, META] their metas (original shape and window are read there).
            verbose: print inputs.

        Returns:
            One dict per image like ``detect`` (coordinates of the original image described
            by each meta).
        """
        if verbose:
            log("molded_images", molded_images)
            log("image_metas", image_metas)
        meta = parse_image_meta(np.asarray(image_metas))
        originals = [np.zeros(tuple(int(v) for v in shape), np.uint8)
                     for shape in meta["original_image_shape"]]
        return self._detect_molded(originals, np.asarray(molded_images, np.float32),
                                   np.asarray(image_metas, np.float32), meta["window"])

    def get_anchors(self, image_shape) -> np.ndarray:
        """Normalized anchors for a molded image shape (pixel copy kept in ``self.anchors``).

        Args:
            image_shape: (H, W[, C]).

        Returns:
            [A, 4] normalized anchors.
        """
        self.anchors = np.array(pyramid_anchors(self.config, image_shape, normalized=False))
        return np.array(pyramid_anchors(self.config, image_shape))

    def run_graph(self, images: Sequence[np.ndarray], outputs, image_metas=None) -> OrderedDict:
        """Run the model up to chosen intermediate tensors, for inspection.

        Args:
            images: list of images (molded here like ``detect``).
            outputs: list of (name, tensor) pairs where tensor is a Keras tensor of
                ``keras_model`` (e.g. ``model.keras_model.get_layer("ROI").output``) or the
                name of a layer or of a model output.
            image_metas: unused (kept for Matterport's signature).

        Returns:
            OrderedDict name -> NumPy array [len(images), ...].
        """
        model = self.keras_model
        named = OrderedDict()
        for name, tensor in outputs:
            if isinstance(tensor, str):
                if isinstance(model.output, dict) and tensor in model.output:
                    tensor = model.output[tensor]
                else:
                    tensor = model.get_layer(tensor).output
            named[name] = tensor
        sub = keras.Model(model.inputs, list(named.values()))
        molded_images, metas, _ = self.mold_inputs(images)
        chunks = self._run_batches(molded_images, metas, model=sub)
        # A functional model with one output returns that tensor, not a list of one: without
        # this, c[0] below would take the first image of each chunk instead of the output.
        chunks = [c if isinstance(c, (list, tuple)) else [c] for c in chunks]
        result = OrderedDict()
        for i, name in enumerate(named):
            result[name] = np.concatenate([np.asarray(c[i]) for c in chunks], axis=0)
            log(name, result[name])
        return result
