"""mrcnn.norm.SyncBatchNormalization outside a multi-replica step: Keras' BatchNorm.

Its global statistics under tf.distribute are checked against single-device training in
tests/test_distribute.py (2 replicas x 2 images vs 1 device x 4 images).
"""

from __future__ import annotations

import keras
import numpy as np

from mrcnn.norm import FrozenBatchNormalization, SyncBatchNormalization, norm_layer
from mrcnn.weights import load_weights_by_name, save_weights_by_name


def test_trains_on_the_batch_statistics_on_one_device():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 5, 5, 8)).astype("float32")
    layer = SyncBatchNormalization(momentum=0.9, epsilon=1e-3)
    y = np.asarray(layer(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), 0.9 + 0.1 * var, rtol=1e-5)


def test_bn_layers_save_and_load_as_keras_batchnorm(tmp_path):
    """NORM="bn" builds the registered subclass; a .keras file revives it with its weights,
    and its checkpoints (by layer name) load into Keras' own BatchNormalization and into
    frozen BatchNorm."""
    layer = norm_layer("bn", "bn_conv1", zero_init=True)
    assert isinstance(layer, SyncBatchNormalization) and layer.name == "bn_conv1"
    inputs = keras.Input((3, 3, 4))
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(size=4).astype("float32") for _ in range(3)]
                      + [rng.uniform(0.5, 2, 4).astype("float32")])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("bn_conv1")) is SyncBatchNormalization
    save_weights_by_name(model, str(tmp_path / "m.h5"))
    others = [loaded]
    for kind in (keras.layers.BatchNormalization, FrozenBatchNormalization):
        others.append(keras.Model(inputs, kind(name="bn_conv1")(inputs)))
        load_weights_by_name(others[-1], str(tmp_path / "m.h5"), strict=True)
    x = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    for other in others:
        np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0),
                                   atol=1e-6)
