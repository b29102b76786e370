"""MaskRCNN.train runs exactly STEPS_PER_EPOCH steps in every epoch.

Keras 3 keeps one iterator over a PyDataset across epochs; when the generator's length and
``steps_per_epoch`` differ, epochs silently run short ("Your input ran out of data"). The
training generator's length is therefore STEPS_PER_EPOCH.
"""

from __future__ import annotations

import keras
import numpy as np

import mrcnn.model as modellib
from mrcnn.data import DataGenerator
from tests.tiny import TinyFastConfig, shapes_dataset


class StepConfig(TinyFastConfig):
    NAME = "steps"
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 1


class CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_epoch: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


def test_generator_length_follows_steps_and_wraps():
    config = StepConfig()
    dataset = shapes_dataset(3)
    generator = DataGenerator(dataset, config, shuffle=False, steps=5)
    assert len(generator) == 5
    # 3 images in batches of 2: batch 4 starts at image 8 -> wraps to 8 % 3 = 2, then 0.
    np.testing.assert_array_equal(generator.batch_image_ids(4),
                                  np.asarray(dataset.image_ids)[[2, 0]])
    assert len(DataGenerator(dataset, config, shuffle=False)) == 2


def test_every_epoch_runs_steps_per_epoch(tmp_path):
    # 6 images in batches of 2 = 3 batches per pass, 2 steps per epoch: before the fix,
    # Keras ran 2, 1, 2 steps in epochs 1, 2, 3.
    counter = CountBatches()
    model = modellib.MaskRCNN("training", StepConfig(), str(tmp_path))
    model.train(shapes_dataset(6), shapes_dataset(2, seed=1), learning_rate=1e-3, epochs=3,
                layers="all", custom_callbacks=[counter])
    assert counter.per_epoch == [2, 2, 2]
