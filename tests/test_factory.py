"""The factory (Config unpacked once into parts) and parts injected into MaskRCNN."""

import keras
import numpy as np
import pytest

from mrcnn import factory
from mrcnn.backbone import CallableBackbone, ResNetBackbone
from mrcnn.box_head import BoxHead
from mrcnn.fpn import FPN
from mrcnn.mask_head import MaskHead
from mrcnn.model import MaskRCNN
from mrcnn.rpn import RPNHead
from mrcnn.tiny import tiny_backbone
from mrcnn.weights import weighted_layers
from tests.tiny import TinyFastConfig


class FactoryConfig(TinyFastConfig):
    NAME = "factory"
    IMAGES_PER_GPU = 1
    NUM_CLASSES = 1 + 2
    MASK_HEAD_CHANNELS = 16
    RPN_CONV_CHANNELS = 32


def test_parts_from_config_carry_the_config_values():
    config = FactoryConfig()
    parts = factory.build_parts(config)
    assert parts.get_config() == {
        "backbone": {"fn": "mrcnn.tiny.tiny_backbone", "train_bn": config.TRAIN_BN},
        "fpn": {"pyramid_size": 64, "norm": "gn", "gn_groups": 16},
        "rpn_head": {"anchors_per_location": len(config.RPN_ANCHOR_RATIOS),
                     "anchor_stride": config.RPN_ANCHOR_STRIDE, "depth": 64, "channels": 32,
                     "norm": "gn"},
        "box_head": {"num_classes": 3, "pool_size": config.POOL_SIZE, "design": "2fc",
                     "fc_size": 128, "norm": "gn", "gn_groups": 16,
                     "image_stride": config.BACKBONE_STRIDES[0]},
        "mask_head": {"num_classes": 3, "pool_size": config.MASK_POOL_SIZE, "channels": 16,
                      "norm": "gn", "gn_groups": 16,
                      "image_stride": config.BACKBONE_STRIDES[0]},
    }
    resnet = factory.backbone_from_config(type("R", (FactoryConfig,), {
        "BACKBONE": "resnet18", "NORM": "bn"})())
    assert isinstance(resnet, ResNetBackbone)
    assert resnet.get_config() == {"architecture": "resnet18", "norm": "bn", "gn_groups": 16}


def _kernel(model, name: str) -> np.ndarray:
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


def _glorot_std(kernel: np.ndarray) -> float:
    receptive = int(np.prod(kernel.shape[:-2])) if kernel.ndim > 2 else 1
    return float(np.sqrt(2.0 / (receptive * (kernel.shape[-2] + kernel.shape[-1]))))


@pytest.mark.parametrize("norm", ["frozen_bn", "gn", "bn"])
def test_predictor_initializers_follow_the_norm(norm):
    # Frozen BN normalizes nothing at initialization, and BN leaves the FPN bare: Detectron's
    # small predictors keep the first losses finite. GN normalizes every FPN and head layer:
    # Keras' Glorot default, whose standard deviation is sqrt(2 / (fan_in + fan_out)).
    keras.utils.set_random_seed(0)
    rpn = RPNHead(3, 1, depth=64, channels=256, norm=norm)
    pyramid = [keras.Input((8, 8, 64)) for _ in range(5)]
    rpn_model = keras.Model(pyramid, rpn(pyramid))
    rois = keras.Input((32, 4))
    maps = [keras.Input((16 // 2 ** i, 16 // 2 ** i, 64)) for i in range(4)]
    box = BoxHead(3, 7, fc_size=256, norm=norm, gn_groups=16)
    box_model = keras.Model([rois, *maps], box(rois, maps))
    kernels = {name: _kernel(rpn_model.get_layer("rpn_model"), name)
               for name in ("rpn_class_raw", "rpn_bbox_pred")}
    kernels |= {name: _kernel(box_model, name) for name in
                ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_class_conv1")}
    if norm != "gn":
        expected = {"rpn_class_raw": 0.01, "rpn_bbox_pred": 0.0, "mrcnn_class_logits": 0.01,
                    "mrcnn_bbox_fc": 0.001,
                    "mrcnn_class_conv1": np.sqrt(2.0 / (7 * 7 * 64))}  # He normal
    else:
        expected = {name: _glorot_std(k) for name, k in kernels.items()}
    for name, kernel in kernels.items():
        np.testing.assert_allclose(kernel.std(), expected[name], rtol=0.15, atol=1e-7,
                                   err_msg=name)


@pytest.mark.parametrize("part", [
    ResNetBackbone("resnet34", norm="gn", gn_groups=8), CallableBackbone(tiny_backbone, True),
    FPN(32, norm="gn", gn_groups=4), RPNHead(3, 2, 32, 16),
    BoxHead(5, 7, design="4conv1fc", fc_size=64), MaskHead(5, 14, channels=8)])
def test_get_config_from_config_round_trip(part):
    again = type(part).from_config(part.get_config())
    assert type(again) is type(part) and again.get_config() == part.get_config()


def test_unknown_or_uncallable_parts_are_refused():
    with pytest.raises(TypeError, match="unknown parts"):
        factory.build_parts(FactoryConfig(), neck=FPN())
    with pytest.raises(TypeError, match="box_head"):
        factory.build_parts(FactoryConfig(), box_head="2fc")
    with pytest.raises(ValueError, match="BOX_HEAD"):
        BoxHead(3, design="3fc")


def test_given_parts_are_used_and_their_defaults_not_built(monkeypatch, tmp_path):
    def refuse(config):
        raise AssertionError("the default mask head was built although one was given")

    monkeypatch.setitem(factory._DEFAULTS, "mask_head", refuse)
    mask_head = MaskHead(3, 14, channels=8, norm="gn", gn_groups=4)
    model = MaskRCNN("inference", FactoryConfig(), str(tmp_path), mask_head=mask_head)
    assert model.parts.mask_head is mask_head
    conv = model.keras_model.get_layer("mrcnn_mask_conv1")
    assert conv.filters == 8  # the given head, not MASK_HEAD_CHANNELS=16


def test_injected_defaults_build_the_same_layers_as_the_config(tmp_path):
    config = FactoryConfig()
    default = MaskRCNN("training", config, str(tmp_path))
    given = MaskRCNN("training", config, str(tmp_path), **vars(factory.build_parts(config)))
    shapes = {name: [tuple(w.shape) for w in layer.weights]
              for name, layer in weighted_layers(default.keras_model).items()}
    assert shapes == {name: [tuple(w.shape) for w in layer.weights]
                      for name, layer in weighted_layers(given.keras_model).items()}
    assert "rpn_conv_shared" in shapes and "mrcnn_mask" in shapes and "fpn_c5p5" in shapes


def _strided_backbone(image):
    """A backbone that breaks the contract: C2 at stride 8."""
    x = image
    outs = []
    for i, stride in enumerate((8, 2, 2, 2)):
        x = keras.layers.Conv2D(8, 3, strides=stride, padding="same", name=f"bad{i}")(x)
        outs.append(x)
    return outs


def test_contract_violations_name_the_part(tmp_path):
    with pytest.raises(ValueError, match="fpn.*BACKBONE_STRIDES"):
        MaskRCNN("training", FactoryConfig(), str(tmp_path), backbone=_strided_backbone)
    with pytest.raises(ValueError, match="rpn_head.*RPN_ANCHOR_RATIOS"):
        MaskRCNN("training", FactoryConfig(), str(tmp_path), rpn_head=RPNHead(2, 1, 64, 16))
    with pytest.raises(ValueError, match="mask_head.*NUM_CLASSES"):
        MaskRCNN("inference", FactoryConfig(), str(tmp_path), mask_head=MaskHead(5, 14, 8))


def test_a_plain_function_serves_as_a_part(tmp_path):
    """Any callable with the contract works: a box head written as a function."""
    def box_head(rois, feature_maps):
        return BoxHead(3, 7, fc_size=32, norm="gn", gn_groups=4)(rois, feature_maps)

    model = MaskRCNN("inference", FactoryConfig(), str(tmp_path), box_head=box_head)
    assert model.keras_model.get_layer("mrcnn_class_conv2").filters == 32
    image = np.full((64, 64, 3), 128, np.uint8)
    assert model.detect([image])[0]["masks"].shape[:2] == (64, 64)


def test_one_input_spec_for_generator_graph_and_losses(tmp_path):
    from mrcnn.data import DataGenerator
    from mrcnn.inputs import training_inputs
    from tests.tiny import shapes_dataset

    config = type("ShapesFactoryConfig", (FactoryConfig,), {"NUM_CLASSES": 4})()
    specs = training_inputs(config)
    model = MaskRCNN("training", config, str(tmp_path)).keras_model
    assert model.mrcnn_input_names == [s.name for s in specs]
    for spec, tensor in zip(specs, model.inputs):
        assert tensor.name == spec.name
        assert keras.backend.standardize_dtype(tensor.dtype) == spec.dtype
        assert tuple(tensor.shape[1:]) == spec.shape
    (batch,) = DataGenerator(shapes_dataset(2), config, shuffle=False)[0]
    assert len(batch) == len(specs)
    for spec, array in zip(specs, batch):
        assert array.dtype == np.dtype(spec.dtype), spec.name
        assert all(s is None or s == a for s, a in zip(spec.shape, array.shape[1:])), spec.name
    assert batch[2].shape[1] == model.get_layer("anchors").compute_output_shape(
        (1, 64, 64, 3))[1]
