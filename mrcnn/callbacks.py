"""Callbacks of the ``mrcnn`` command for ``MaskRCNN.train(..., custom_callbacks=[...])``.

``RunRecord`` writes a json record (the classes, the data, the settings) into the run folder.

``EvaluationCallback`` runs after each epoch's checkpoint is written: it copies the weights
into an inference model, scores a fixed subset of the validation images with pycocotools
(``mrcnn.evaluation.evaluate_dataset``), and

- appends a row to ``results.csv`` in the run folder (epoch, losses, AP/AP50/AP75/AR100 of
  masks and boxes),
- writes the same numbers, and every few epochs pictures of predicted masks, to TensorBoard
  (``<run>/evaluation``) when TensorFlow and TensorBoard are installed,
- keeps ``mask_rcnn_<name>_last.h5`` and ``mask_rcnn_<name>_best.h5`` (by ``metric``,
  default mask AP) beside the epoch checkpoints; with ``keep_epochs=False`` only the newest
  epoch checkpoint stays (what ``--weights last`` resumes from).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from typing import Any

import keras
import numpy as np

from mrcnn.evaluation import (
    COLUMNS,
    RESULTS_FILE,
    draw_detections,
    evaluate_dataset,
    summary_row,
    summary_writer,
)
from mrcnn.paths import replacing


class RunRecord(keras.callbacks.Callback):
    """Writes ``record`` as ``<run folder>/<filename>`` when training starts there (a
    resumed run keeps the record it has).

    Args:
        mrcnn_model: the training ``MaskRCNN``.
        filename: the file's name in the run folder.
        record: JSON-ready values.
    """

    def __init__(self, mrcnn_model: Any, filename: str, record: dict[str, Any]):
        super().__init__()
        self.mrcnn_model = mrcnn_model
        self.filename = filename
        self.record = record

    def on_train_begin(self, logs=None):
        path = os.path.join(self.mrcnn_model.log_dir, self.filename)
        if os.path.exists(path):
            return
        with replacing(path) as f:
            json.dump(self.record, f, indent=1)


class EvaluationCallback(keras.callbacks.Callback):
    """COCO AP on validation images after every epoch; ``results.csv``, TensorBoard, best/last.

    Pass it to ``MaskRCNN.train(..., custom_callbacks=[callback])``: it runs after the
    epoch's checkpoint is written.

    Args:
        mrcnn_model: the training ``MaskRCNN`` (for its config, run folder and checkpoint
            names).
        dataset: the prepared validation dataset.
        images: how many of its images to score (a fixed, seeded subset; 0 or None: all).
        metric: the column that picks ``best`` (see ``COLUMNS``), higher is better.
        every: evaluate every ``every`` epochs (and always at the last one).
        pictures: validation images drawn with their predicted masks in TensorBoard.
        picture_every: draw them every ``picture_every`` evaluated epochs.
        keep_epochs: keep every epoch's checkpoint; False deletes the previous epoch's
            once the new one is written (the newest stays: resuming needs it).
        inference_config: the config of the scoring model (default: the training config,
            one image per batch; "crop" resizing becomes "pad64").
        verbose: 1: progress line and a summary line per epoch.
    """

    def __init__(self, mrcnn_model: Any, dataset: Any, images: int | None = 50,
                 metric: str = "segm_AP", every: int = 1, pictures: int = 3,
                 picture_every: int = 5, keep_epochs: bool = False,
                 inference_config: Any = None, verbose: int = 1):
        super().__init__()
        if metric not in COLUMNS:
            raise ValueError(f"EvaluationCallback: metric {metric!r} is not one of {COLUMNS}")
        self.mrcnn_model = mrcnn_model
        self.dataset = dataset
        ids = np.asarray(dataset.image_ids)
        if images and images < len(ids):
            ids = np.sort(np.random.default_rng(0).choice(ids, size=images, replace=False))
        self.image_ids = [int(i) for i in ids]
        self.metric = metric
        self.every = max(1, int(every))
        self.pictures = pictures
        self.picture_every = max(1, int(picture_every))
        self.keep_epochs = keep_epochs
        self.inference_config = inference_config
        self.verbose = verbose
        self._inference = None
        self._writer = None
        self.best: float | None = None
        self._evaluated = 0

    # ------------------------------------------------------------------ files of the run
    @property
    def log_dir(self) -> str:
        return self.mrcnn_model.log_dir

    def checkpoint(self, epoch: int | str) -> str:
        """Path of the checkpoint of ``epoch`` (1-based), or of "last" / "best"."""
        pattern = self.mrcnn_model.checkpoint_path
        if isinstance(epoch, str):
            return pattern.replace("{epoch:04d}", epoch)
        return pattern.format(epoch=epoch)

    def read_results(self) -> list[dict[str, str]]:
        """The rows of the run's ``results.csv`` so far ([] when there is none)."""
        path = os.path.join(self.log_dir, RESULTS_FILE)
        if not os.path.isfile(path):
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def on_train_begin(self, logs=None):
        # A resumed run continues its best score from its results.csv.
        epoch = self.mrcnn_model.epoch
        values = [float(r[self.metric]) for r in self.read_results()
                  if int(r["epoch"]) <= epoch and r.get(self.metric) not in (None, "")]
        self.best = max(values) if values else None

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1  # Keras counts from 0, checkpoints from 1
        last = number == self.params.get("epochs", number)
        if number % self.every and not last:
            return
        scores = self.evaluate(number)
        row = {"epoch": number, **{k: round(float(v), 5) for k, v in (logs or {}).items()
                                   if np.isscalar(v)}, **summary_row(scores)}
        self.write_row(row)
        self.log_tensorboard(number, row, scores)
        self.keep_checkpoints(number, row[self.metric])
        if self.verbose:
            print(f"\nEpoch {number}: " + "  ".join(f"{k} {row[k]:.4f}" for k in COLUMNS),
                  flush=True)

    # ------------------------------------------------------------------------ the steps
    def inference_model(self):
        """The scoring model (built on first use), with the training model's weights."""
        from mrcnn import model as modellib
        from mrcnn.weights import weighted_layers

        if self._inference is None:
            config = self.inference_config or eval_config(self.mrcnn_model.config)
            self._inference = modellib.MaskRCNN("inference", config,
                                                self.mrcnn_model.model_dir)
        source = weighted_layers(self.mrcnn_model.keras_model)
        for name, layer in weighted_layers(self._inference.keras_model).items():
            if name in source:
                layer.set_weights(source[name].get_weights())
        return self._inference

    def evaluate(self, number: int) -> dict[str, Any]:
        """Score the validation subset with the current weights."""
        return evaluate_dataset(self.inference_model(), self.dataset, self.image_ids,
                                verbose=self.verbose, label=f"AP epoch {number}")

    def write_row(self, row: dict[str, Any]) -> None:
        """Append ``row`` to results.csv (a new header when the columns change)."""
        path = os.path.join(self.log_dir, RESULTS_FILE)
        rows = self.read_results()
        fields = list(rows[0].keys()) if rows else []
        if not rows or set(row) - set(fields):
            fields = list(dict.fromkeys([*fields, *row]))
            rows.append({k: row.get(k, "") for k in fields})
            with replacing(path, newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            return
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=fields).writerow({k: row.get(k, "") for k in fields})

    def log_tensorboard(self, number: int, row: dict[str, Any], scores: dict) -> None:
        """Scalars every evaluated epoch; pictures every ``picture_every``."""
        if self._writer is None:
            self._writer = summary_writer(os.path.join(self.log_dir, "evaluation")) or False
        if not self._writer:
            return
        import tensorflow as tf

        self._evaluated += 1
        with self._writer.as_default():
            for key in COLUMNS:
                tf.summary.scalar(key.replace("_", "/", 1), row[key], step=number)
            if self.pictures and (self._evaluated - 1) % self.picture_every == 0:
                model = self.inference_model()
                for k, image_id in enumerate(self.image_ids[:self.pictures]):
                    image = self.dataset.load_image(image_id)
                    drawn = draw_detections(image, model.detect([image], verbose=0)[0])
                    tf.summary.image(f"predictions/{k}", drawn[None], step=number)
        self._writer.flush()

    def keep_checkpoints(self, number: int, value: float) -> None:
        """``last`` and, when ``value`` beats the best so far, ``best``; drop the previous
        epoch's checkpoint unless ``keep_epochs``."""
        path = self.checkpoint(number)
        if not os.path.isfile(path):
            return  # a process that writes no checkpoints
        _replace_with(path, self.checkpoint("last"))
        if self.best is None or value > self.best:
            self.best = value
            _replace_with(path, self.checkpoint("best"))
        previous = self.checkpoint(number - 1)
        if not self.keep_epochs and number > 1 and os.path.isfile(previous):
            os.remove(previous)


def _replace_with(source: str, target: str) -> None:
    """Make ``target`` a copy of ``source`` atomically (a hard link where possible)."""
    tmp = target + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def eval_config(config: Any) -> Any:
    """The training config for scoring: one image per batch, whole images ("crop" resizing
    becomes "pad64"), every detection ranked (DETECTION_MIN_CONFIDENCE 0)."""
    attrs: dict[str, Any] = {"GPU_COUNT": 1, "IMAGES_PER_GPU": 1,
                             # COCO's AP ranks every detection, as Matterport's COCO
                             # evaluation did.
                             "DETECTION_MIN_CONFIDENCE": 0.0}
    if config.IMAGE_RESIZE_MODE == "crop":
        attrs["IMAGE_RESIZE_MODE"] = "pad64"
    # Instance attributes (set after construction) are carried over too.
    attrs.update({k: v for k, v in vars(config).items()
                  if k.isupper() and k not in attrs and k not in DERIVED})
    return type(type(config).__name__, (type(config),), attrs)()


# Attributes Config computes in __init__ from others.
DERIVED = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE", "NORM")
