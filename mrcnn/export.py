"""Export an inference model for serving: a TensorFlow SavedModel, images in, detections out.

The serving function holds the molding (mean subtraction, image meta, anchors: the
AnchorsLayer makes them constants of the traced graph) and the box conversion to pixels, so
a client needs only TensorFlow: ``tf.saved_model.load(path).serve(images)``. It is built from
``keras.ops`` and exported with ``keras.export.ExportArchive``, which on the JAX backend
converts it with ``jax2tf`` (TensorFlow must be installed to export, not to build or train).

Images must already have the export size (``image_size``): resizing arbitrary images is the
client's part (``utils.resize_image`` does it as ``detect`` would). Masks come out at the
mask head's resolution, one per detection for its class, as ``detect`` has them before
``utils.unmold_mask`` pastes them into the image (onto ``boxes_float``, the boxes before
rounding, for ``detect()``'s sub-pixel masks; see ``Config.MASK_PASTE``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import keras
import numpy as np
from keras import ops

from mrcnn.data import compose_image_meta

SERVING_OUTPUTS = ("boxes", "boxes_float", "class_ids", "scores", "masks", "num_detections")


def serving_size(config, image_size=None) -> tuple[int, int]:
    """The (height, width) a model is exported for.

    Args:
        config: the ``Config``.
        image_size: (height, width), or None for the training shape (IMAGE_SHAPE).

    Returns:
        (height, width), both divisible by 64.

    Raises:
        ValueError: a size the backbone cannot take.
    """
    h, w = (int(s) for s in (image_size if image_size is not None else config.IMAGE_SHAPE[:2]))
    if h % 64 or w % 64 or h <= 0 or w <= 0:
        raise ValueError(f"export: image_size {(h, w)} must be positive multiples of 64 "
                         "(the backbone halves the size 6 times).")
    return h, w


def serving_function(model: keras.Model, config, image_size: tuple[int, int]):
    """The serving computation: uint8 images [B, H, W, C] -> dict of detections.

    Args:
        model: the inference ``keras.Model`` (inputs: molded images, image metas).
        config: the ``Config`` (MEAN_PIXEL, NUM_CLASSES, channel count).
        image_size: (H, W) of the images served.

    Returns:
        A function of a [B, H, W, C] uint8 tensor returning ``SERVING_OUTPUTS``: boxes
        [B, D, (y1, x1, y2, x2)] int32 pixels, boxes_float [B, D, 4] float32 the same
        before rounding (what ``detect()`` pastes masks onto), class_ids [B, D] int32,
        scores [B, D] float32, masks [B, D, mh, mw] float32 probabilities of each box's class, and
        num_detections [B] int32 (rows past it are zero padding), D =
        DETECTION_MAX_INSTANCES.
    """
    h, w = image_size
    channels = config.IMAGE_CHANNEL_COUNT
    shape = (h, w, channels)
    # The whole image is the window and nothing is resized: scale 1.
    meta = compose_image_meta(0, shape, shape, (0, 0, h, w), 1.0,
                              np.zeros([config.NUM_CLASSES], dtype=np.int32))
    meta = np.asarray(meta, np.float32)
    mean = np.asarray(config.MEAN_PIXEL, np.float32)
    # Matterport's denorm_boxes: pixels = round(normalized * (size - 1) + (0, 0, 1, 1)).
    scale = np.array([h - 1, w - 1, h - 1, w - 1], np.float32)
    shift = np.array([0, 0, 1, 1], np.float32)

    def serve(images):
        molded = ops.cast(images, "float32") - mean
        batch = ops.shape(molded)[0]
        metas = ops.broadcast_to(ops.convert_to_tensor(meta)[None], (batch, meta.shape[0]))
        outputs = model([molded, metas], training=False)
        detections = ops.cast(outputs["mrcnn_detection"], "float32")
        class_ids = ops.cast(detections[..., 4], "int32")
        boxes_float = detections[..., :4] * scale + shift
        boxes = ops.cast(ops.round(boxes_float), "int32")
        # detect() keeps the rows before the first empty one.
        empty = ops.cast(class_ids == 0, "int32")
        num = ops.sum(ops.cast(ops.cumsum(empty, axis=1) == 0, "int32"), axis=1)
        mask = ops.cast(outputs["mrcnn_mask"], "float32")  # [B, D, mh, mw, C]
        masks = ops.take_along_axis(mask, class_ids[:, :, None, None, None], axis=4)[..., 0]
        return {"boxes": boxes, "boxes_float": boxes_float, "class_ids": class_ids,
                "scores": detections[..., 5], "masks": masks, "num_detections": num}

    return serve


def export_saved_model(model: keras.Model, config, path: str, image_size=None,
                       batch_size: int | None = None, overwrite: bool = False) -> str:
    """Write a SavedModel whose ``serve`` signature maps uint8 images to detections.

    The export is written to a temporary folder beside ``path`` and renamed into place when
    complete, so ``path`` never holds half an export, and an existing one is never merged
    into or replaced unless asked.

    Args:
        model: the inference ``keras.Model``.
        config: the ``Config``.
        path: output folder (absent or empty, or an earlier export with ``overwrite``).
        image_size: (height, width) served (default: IMAGE_SHAPE).
        batch_size: a fixed batch size, or None for any.
        overwrite: replace an earlier SavedModel at ``path``.

    Returns:
        ``path``.

    Raises:
        FileExistsError: ``path`` is a file or a non-empty folder and ``overwrite`` is
            False, or it holds something other than a SavedModel (never replaced).
    """
    path = os.path.abspath(os.fspath(path))
    replace = _check_export_target(path, overwrite)
    h, w = serving_size(config, image_size)
    archive = keras.export.ExportArchive()
    if keras.backend.backend() != "tensorflow":
        # JAX: the archive converts the endpoint with jax2tf over the tracked variables. On
        # TensorFlow the endpoint tracks them itself, and tracking the model would also
        # save its default signature, which cannot be traced (image size unknown).
        archive.track(model)
        warnings.warn("Exporting from JAX embeds StableHLO that TensorFlow must be able to "
                      "read: with jax 0.10.2 and TensorFlow 2.21 the SavedModel is written "
                      "but fails to run (StableHLO v1.15 vs v1.13.7). Check it with "
                      "tf.saved_model.load, or export from the TensorFlow backend.",
                      stacklevel=3)
    archive.add_endpoint(
        name="serve", fn=serving_function(model, config, (h, w)),
        input_signature=[keras.InputSpec(shape=(batch_size, h, w, config.IMAGE_CHANNEL_COUNT),
                                         dtype="uint8")])
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=parent)
    try:
        archive.write_out(tmp, verbose=False)
        if replace:
            old = tmp + ".old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            try:
                os.rename(tmp, path)  # onto nothing or an empty folder only
            except OSError as err:
                raise FileExistsError(f"export: {path} was filled by something else while "
                                      "exporting; it was left as it is") from err
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return path


def _check_export_target(path: str, overwrite: bool) -> bool:
    """Whether an earlier export at ``path`` is to be replaced; refuse anything else there."""
    if not os.path.lexists(path):
        return False
    if not os.path.isdir(path) or os.path.islink(path):
        raise FileExistsError(f"export: {path} exists and is not a folder; choose another path")
    if not os.listdir(path):
        return False
    if not overwrite:
        raise FileExistsError(f"export: {path} is not empty (an earlier export?); it is never "
                              "replaced by accident: pass overwrite=True to replace it, or "
                              "choose another path")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise FileExistsError(f"export: {path} holds files but no saved_model.pb; overwrite="
                              "True replaces an earlier export only: choose another path")
    return True
