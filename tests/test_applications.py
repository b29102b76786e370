"""keras.applications backbones (built with weights=None: no download) and Keras' ResNet
names mapped to Matterport's."""

import keras
import numpy as np
import pytest

from mrcnn.applications import (
    APPLICATIONS,
    ApplicationBackbone,
    UnmoldForApplication,
    convert_keras_resnet_weights,
    keras_resnet_to_matterport,
)
from mrcnn.backbone import resnet_graph
from mrcnn.weights import load_weights_by_name, weighted_layers


@pytest.mark.parametrize("name", ["ResNet50", "EfficientNetV2B0", "ConvNeXtTiny"])
def test_application_pyramid_shapes_and_names(name):
    image = keras.Input((64, 96, 3), batch_size=2)
    features = ApplicationBackbone(name)(image)
    assert [tuple(f.shape[:3]) for f in features] == [(2, 16, 24), (2, 8, 12), (2, 4, 6),
                                                      (2, 2, 3)]
    model = keras.Model(image, features)
    names = {layer.name for layer in model.layers}
    # Keras' own names, at the top of the model (not inside a wrapping application model).
    assert set(APPLICATIONS[name][0]) <= names


def test_unknown_application_and_weights_are_refused():
    with pytest.raises(ValueError, match="ResNet50"):
        ApplicationBackbone("VGG16")
    with pytest.raises(ValueError, match="imagenet"):
        ApplicationBackbone("ResNet50", weights="/tmp/x.h5")


def test_unmold_for_application_modes():
    mean = np.array([120.0, 110.0, 100.0], np.float32)
    image = np.array([[[[1.0, 2.0, 3.0]]]], np.float32)  # molded: RGB minus mean
    raw = np.asarray(UnmoldForApplication(mean, "raw")(image))
    np.testing.assert_allclose(raw[0, 0, 0], [121.0, 112.0, 103.0])
    caffe = np.asarray(UnmoldForApplication(mean, "caffe")(image))
    expected_bgr = np.array([103.0, 112.0, 121.0]) - [103.939, 116.779, 123.68]
    np.testing.assert_allclose(caffe[0, 0, 0], expected_bgr, rtol=1e-5)


def test_keras_resnet_names_map_to_matterport():
    assert keras_resnet_to_matterport("conv1_conv") == "conv1"
    assert keras_resnet_to_matterport("conv1_bn") == "bn_conv1"
    assert keras_resnet_to_matterport("conv2_block1_0_conv") == "res2a_branch1"
    assert keras_resnet_to_matterport("conv2_block1_0_bn") == "bn2a_branch1"
    assert keras_resnet_to_matterport("conv3_block2_1_conv") == "res3b_branch2a"
    assert keras_resnet_to_matterport("conv4_block23_3_bn") == "bn4w_branch2c"
    assert keras_resnet_to_matterport("conv5_block3_2_conv") == "res5c_branch2b"
    assert keras_resnet_to_matterport("conv5_block3_out") is None
    assert keras_resnet_to_matterport("mrcnn_mask") is None


def test_keras_resnet50_weights_load_by_name_into_matterport_resnet50(tmp_path):
    keras_resnet = keras.applications.ResNet50(include_top=False, weights=None,
                                               input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for layer in weighted_layers(keras_resnet).values():  # every array distinct
        layer.set_weights([rng.normal(size=w.shape).astype("float32") + 2.0
                           for w in layer.get_weights()])
    path = str(tmp_path / "resnet50_matterport.h5")
    written = convert_keras_resnet_weights(keras_resnet, path, "resnet50")

    image = keras.Input((None, None, 3))
    matterport = keras.Model(image, resnet_graph(image, "resnet50", norm="frozen_bn")[1:])
    loaded = load_weights_by_name(matterport, path, strict=True)
    target = weighted_layers(matterport)
    assert sorted(loaded) == sorted(written) == sorted(target)
    source = {keras_resnet_to_matterport(n): layer
              for n, layer in weighted_layers(keras_resnet).items()}
    for name, layer in target.items():
        for got, want in zip(layer.get_weights(), source[name].get_weights()):
            np.testing.assert_array_equal(got, want)
