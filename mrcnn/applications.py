"""Backbones from ``keras.applications`` and Keras' ResNet names mapped to Matterport's.

``ApplicationBackbone("ResNet50")`` (or "ResNet101", "EfficientNetV2B0", "ConvNeXtTiny")
is a backbone part (docs/components.md): it builds the Keras application on the model's
image, with Keras' own layer names, and returns its stage outputs at strides 4, 8, 16, 32.
ImageNet weights come from Keras' own download, only with ``weights="imagenet"``.

``convert_keras_resnet_weights`` renames a Keras ResNet's weights (``conv2_block1_1_conv``)
to Matterport's (``res2a_branch2a``), so Keras' ImageNet ResNet weights can initialize the
Matterport-named backbone (``Config.BACKBONE = "resnet50"``) by name.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import keras
import numpy as np
from keras import layers, ops

from mrcnn.backbone import resnet_graph
from mrcnn.component import Component
from mrcnn.weights import layer_arrays, read_weights, save_weights_by_name, weighted_layers

# Layers whose outputs are C2..C5 (strides 4, 8, 16, 32), and how each application expects
# its input: "caffe" = BGR minus the ImageNet mean (Keras' ResNet), "raw" = RGB in 0..255
# (the application normalizes it itself).
APPLICATIONS = {
    "ResNet50": (("conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                  "conv5_block3_out"), "caffe"),
    "ResNet101": (("conv2_block3_out", "conv3_block4_out", "conv4_block23_out",
                   "conv5_block3_out"), "caffe"),
    "EfficientNetV2B0": (("block2b_add", "block3b_add", "block5e_add", "top_activation"),
                         "raw"),
    "ConvNeXtTiny": (("convnext_tiny_stage_0_block_2_identity",
                      "convnext_tiny_stage_1_block_2_identity",
                      "convnext_tiny_stage_2_block_8_identity",
                      "convnext_tiny_stage_3_block_2_identity"), "raw"),
}


@keras.saving.register_keras_serializable(package="mrcnn")
class UnmoldForApplication(layers.Layer):
    """The model's input (RGB minus ``mean_pixel``, ``utils.mold_image``) -> the input a
    ``keras.applications`` model expects: "caffe" (BGR minus the ImageNet mean, as Keras'
    ResNet weights were trained with) or "raw" (RGB in 0..255).

    Args:
        mean_pixel: Config.MEAN_PIXEL (RGB).
        mode: "caffe" or "raw".
    """

    IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

    def __init__(self, mean_pixel, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "raw"):
            raise ValueError(f"UnmoldForApplication: mode must be 'caffe' or 'raw', got {mode!r}")
        self.mean_pixel = [float(v) for v in np.asarray(mean_pixel).reshape(-1)]
        self.mode = mode

    def call(self, image):
        rgb = ops.cast(image, "float32") + np.asarray(self.mean_pixel, np.float32)
        if self.mode == "raw":
            return rgb
        return ops.flip(rgb - np.asarray(self.IMAGENET_MEAN_RGB, np.float32), axis=-1)

    def get_config(self):
        base = super().get_config()
        base.update(mean_pixel=self.mean_pixel, mode=self.mode)
        return base


class ApplicationBackbone(Component):
    """A ``keras.applications`` model as the backbone (contract: image -> [C2..C5]).

    Its layers keep Keras' names, so ``train(layers="heads")`` / ``"all"`` and by-name loading
    of its own checkpoints work; Matterport's stage presets ("3+", "4+", "5+") select layers
    by Matterport's names and do not match them. Its BatchNorm layers are Keras' own
    (trainable when selected by ``train(layers=...)``), not the frozen ones of NORM="frozen_bn".

    Args:
        name: one of ``APPLICATIONS``: "ResNet50", "ResNet101", "EfficientNetV2B0",
            "ConvNeXtTiny".
        weights: None (random initialization, no download) or "imagenet" (Keras downloads
            the weights when the model is built).
        mean_pixel: Config.MEAN_PIXEL, added back to the molded image before the
            application's own preprocessing.
    """

    def __init__(self, name: str = "ResNet50", weights: str | None = None,
                 mean_pixel=(123.7, 116.8, 103.9)):
        if name not in APPLICATIONS:
            raise ValueError(f"ApplicationBackbone: {name!r} is not supported; expected one of "
                             f"{sorted(APPLICATIONS)}")
        if weights not in (None, "imagenet"):
            raise ValueError(f"ApplicationBackbone: weights must be None or 'imagenet', got "
                             f"{weights!r} (load other files with MaskRCNN.load_weights)")
        self.name, self.weights = name, weights
        self.mean_pixel = np.asarray(mean_pixel, np.float32).reshape(-1)
        self._keep(name=name, weights=weights, mean_pixel=mean_pixel)

    def __call__(self, image) -> list:
        """Args: image [B, H, W, 3] molded. Returns: [C2, C3, C4, C5]."""
        feature_layers, mode = APPLICATIONS[self.name]
        x = UnmoldForApplication(self.mean_pixel, mode, name="backbone_input")(image)
        # input_tensor: the application's layers join the model being built (no nested
        # model), so their outputs and names are reachable from it.
        app = getattr(keras.applications, self.name)(
            include_top=False, weights=self.weights, input_tensor=x)
        return [app.get_layer(name).output for name in feature_layers]


_KERAS_RESNET = re.compile(r"conv(\d)_block(\d+)_(\d)_(conv|bn)")


def keras_resnet_to_matterport(name: str) -> str | None:
    """Matterport's name of a weighted layer of Keras' ResNet50/101/152.

    ``conv1_conv`` -> ``conv1``, ``conv1_bn`` -> ``bn_conv1``,
    ``conv3_block2_1_conv`` -> ``res3b_branch2a``, ``conv3_block2_1_bn`` -> ``bn3b_branch2a``,
    ``conv4_block1_0_conv`` -> ``res4a_branch1`` (the projection shortcut).

    Args:
        name: a Keras layer name.

    Returns:
        The Matterport name, or None for a layer Matterport's ResNet does not have.
    """
    if name == "conv1_conv":
        return "conv1"
    if name == "conv1_bn":
        return "bn_conv1"
    match = _KERAS_RESNET.fullmatch(name)
    if not match:
        return None
    stage, block, index, kind = match.groups()
    letter = chr(ord("a") + int(block) - 1)
    branch = "branch1" if index == "0" else "branch2" + "abc"[int(index) - 1]
    return f"{'res' if kind == 'conv' else 'bn'}{stage}{letter}_{branch}"


def convert_keras_resnet_weights(source, filepath: str, architecture: str = "resnet50") -> list:
    """Write a Keras ResNet's weights under Matterport's names, loadable by name.

    Args:
        source: a Keras ResNet50/101 model, or the path of its HDF5 weights file (e.g.
            Keras' ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``).
        filepath: the ``.h5`` file to write (Matterport's layout; load it with
            ``MaskRCNN.load_weights(filepath, by_name=True)``).
        architecture: "resnet50" or "resnet101", the depth of ``source``.

    Returns:
        The Matterport layer names written.

    Raises:
        ValueError: a Matterport ResNet layer has no weights in ``source``, or shapes differ.
    """
    arrays = (layer_arrays(source) if isinstance(source, keras.Model)
              else read_weights(str(source)))
    renamed = OrderedDict((keras_resnet_to_matterport(name), values)
                          for name, values in arrays.items())
    renamed.pop(None, None)
    image = keras.Input((None, None, 3))
    target = keras.Model(image, resnet_graph(image, architecture, norm="frozen_bn")[1:])
    missing = [name for name in weighted_layers(target) if name not in renamed]
    if missing:
        raise ValueError(f"convert_keras_resnet_weights: {len(missing)} layers of Matterport's "
                         f"{architecture} have no weights in the source (first: {missing[:3]});"
                         " is it a Keras ResNet of that depth?")
    for name, layer in weighted_layers(target).items():
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in renamed[name]]
        if expected != found:
            raise ValueError(f"convert_keras_resnet_weights: {name} has shapes {found}, "
                             f"Matterport's {architecture} expects {expected}")
        layer.set_weights(renamed[name])
    save_weights_by_name(target, filepath)
    return list(weighted_layers(target))
