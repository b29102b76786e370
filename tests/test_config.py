"""Config: validation messages, derived attributes, to_dict/display."""

import re

import numpy as np
import pytest

from mrcnn.config import Config
from samples.shapes.shapes import ShapesConfig


def make(**overrides):
    """Instantiate a Config subclass with the given class attributes (2 classes unless
    given: the base Config's 1 is refused)."""
    return type("TestConfig", (Config,), {"NUM_CLASSES": 2, **overrides})()


POSITIVE_INTS = ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH", "NUM_CLASSES",
                 "RPN_ANCHOR_STRIDE", "RPN_TRAIN_ANCHORS_PER_IMAGE", "PRE_NMS_LIMIT",
                 "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE", "TRAIN_ROIS_PER_IMAGE",
                 "POOL_SIZE", "MASK_POOL_SIZE", "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES",
                 "TOP_DOWN_PYRAMID_SIZE", "FPN_CLASSIF_FC_LAYERS_SIZE", "IMAGE_CHANNEL_COUNT",
                 "GN_GROUPS", "IMAGE_MAX_DIM")

# (overrides, attribute named in the message, fragment of the expected value/rule)
CASES = (
    [({a: 0}, a, "integer >= 1") for a in POSITIVE_INTS]
    + [({"IMAGES_PER_GPU": 2.0}, "IMAGES_PER_GPU", "integer >= 1"),
       ({"GPU_COUNT": True}, "GPU_COUNT", "integer >= 1"),
       ({"VALIDATION_STEPS": -1}, "VALIDATION_STEPS", "integer >= 0"),
       ({"DATA_WORKERS": -1}, "DATA_WORKERS", "integer >= 0"),
       ({"MALLOC_MMAP_THRESHOLD": 64 * 1024 * 1024}, "MALLOC_MMAP_THRESHOLD", "[0, 33554432]"),
       ({"MALLOC_MMAP_THRESHOLD": -1}, "MALLOC_MMAP_THRESHOLD", "[0, 33554432]"),
       ({"MALLOC_MMAP_THRESHOLD": 1.5e6}, "MALLOC_MMAP_THRESHOLD", "integer number of bytes"),
       ({"BACKBONE": "resnet152"}, "BACKBONE", "'resnet50', 'resnet101'"),
       ({"BACKBONE": staticmethod(lambda x, **k: x)}, "COMPUTE_BACKBONE_SHAPE",
        "COMPUTE_BACKBONE_SHAPE(image_shape)"),
       ({"BACKBONE_STRIDES": [4, 8, 16, 32]}, "BACKBONE_STRIDES", "5 strides"),
       ({"RPN_ANCHOR_SCALES": (32, 64, 128, 256)}, "RPN_ANCHOR_SCALES", "i.e. 5"),
       ({"RPN_ANCHOR_RATIOS": []}, "RPN_ANCHOR_RATIOS", "positive ratios"),
       ({"RPN_ANCHOR_RATIOS": [0.5, 0]}, "RPN_ANCHOR_RATIOS", "positive ratios"),
       ({"IMAGE_RESIZE_MODE": "stretch"}, "IMAGE_RESIZE_MODE", "'square', 'pad64', 'crop'"),
       ({"IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": 0}, "IMAGE_MIN_DIM", "integer >= 1"),
       ({"IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": 500}, "IMAGE_MIN_DIM",
        "divisible by 64"),
       ({"IMAGE_MAX_DIM": 1000}, "IMAGE_MAX_DIM", "divisible by 64"),
       ({"IMAGE_RESIZE_MODE": "pad64", "IMAGE_MIN_DIM": 100}, "IMAGE_MIN_DIM",
        "divisible by 64"),
       ({"IMAGE_MIN_DIM": 1100}, "IMAGE_MIN_DIM", "<= IMAGE_MAX_DIM (1024)"),
       ({"IMAGE_MIN_SCALE": -1}, "IMAGE_MIN_SCALE", "positive scale"),
       ({"MEAN_PIXEL": np.array([1.0, 2.0])}, "MEAN_PIXEL", "3 values"),
       ({"IMAGE_CHANNEL_COUNT": 4}, "MEAN_PIXEL", "4 values"),
       ({"MINI_MASK_SHAPE": (56,)}, "MINI_MASK_SHAPE", "(height, width)"),
       ({"MINI_MASK_SHAPE": (0, 56)}, "MINI_MASK_SHAPE", "positive sizes"),
       ({"MASK_SHAPE": [14, 14]}, "MASK_SHAPE", "[28, 28]"),
       ({"MASK_POOL_SIZE": 7}, "MASK_SHAPE", "[14, 14]"),
       ({"ROI_POSITIVE_RATIO": 0}, "ROI_POSITIVE_RATIO", "(0, 1]"),
       ({"ROI_POSITIVE_RATIO": 1.5}, "ROI_POSITIVE_RATIO", "(0, 1]"),
       ({"TRAIN_ROIS_PER_IMAGE": 2}, "TRAIN_ROIS_PER_IMAGE", "at least 1"),
       ({"RPN_NMS_THRESHOLD": 0}, "RPN_NMS_THRESHOLD", "(0, 1]"),
       ({"DETECTION_NMS_THRESHOLD": 1.5}, "DETECTION_NMS_THRESHOLD", "(0, 1]"),
       ({"DETECTION_MIN_CONFIDENCE": -0.1}, "DETECTION_MIN_CONFIDENCE", "[0, 1]"),
       ({"BBOX_STD_DEV": np.array([0.1, 0.1, 0.2])}, "BBOX_STD_DEV", "4 values"),
       ({"RPN_BBOX_STD_DEV": np.array([0.1, 0.1])}, "RPN_BBOX_STD_DEV", "4 values"),
       ({"LOSS_WEIGHTS": {"rpn_loss": 1.0}}, "LOSS_WEIGHTS", "unknown loss names ['rpn_loss']"),
       ({"LEARNING_RATE": 0}, "LEARNING_RATE", "positive learning rate"),
       ({"WEIGHT_DECAY": -1e-4}, "WEIGHT_DECAY", ">= 0"),
       ({"GRADIENT_CLIP_NORM": 0}, "GRADIENT_CLIP_NORM", "positive norm or None"),
       ({"NORM": "batchnorm"}, "NORM", "'frozen_bn', 'bn', 'gn'"),
       ({"NORM": "gn", "TOP_DOWN_PYRAMID_SIZE": 100}, "GN_GROUPS",
        "divide TOP_DOWN_PYRAMID_SIZE (100)"),
       ({"NORM": "gn", "GN_GROUPS": 128}, "GN_GROUPS", "64 channels of conv1"),
       ({"BOX_HEAD": "3fc"}, "BOX_HEAD", "'2fc', '4conv1fc'"),
       ({"DETECTION_SCORE_MODE": "max"}, "DETECTION_SCORE_MODE", "'argmax', 'foreground'"),
       ({"MASK_PASTE": "bilinear"}, "MASK_PASTE", "'subpixel', 'integer'"),
       ({"OPTIMIZER": "adam"}, "OPTIMIZER", "'sgd', 'adamw'"),
       ({"LR_SCHEDULE": "step"}, "LR_SCHEDULE", "'constant', 'plateau', 'cosine'"),
       ({"LR_PLATEAU_FACTOR": 1.0}, "LR_PLATEAU_FACTOR", "(0, 1)"),
       ({"MIXED_PRECISION": "float16"}, "MIXED_PRECISION", "'mixed_bfloat16'"),
       ({"USE_RPN_ROIS": False}, "USE_RPN_ROIS", "expected True"),
       ({"NUM_CLASSES": 1}, "NUM_CLASSES", "class 0 is the background")]
)


@pytest.mark.parametrize("overrides, attr, expected", CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_validation_error_names_attribute_and_rule(overrides, attr, expected):
    with pytest.raises(ValueError) as info:
        make(**overrides)
    message = str(info.value)
    # "TestConfig.ATTR = <value> is invalid: <what is expected>."
    assert re.match(rf"TestConfig\.{attr} = .+ is invalid: ", message), message
    assert expected in message


def test_defaults_and_shapes_config_validate():
    # The base Config's NUM_CLASSES (1, Matterport's "override me") is refused; everything
    # else in it validates.
    type("TwoClasses", (Config,), {"NUM_CLASSES": 2})()
    ShapesConfig()
    Config.validate(ShapesConfig())


def test_callable_backbone_with_shape_function_is_accepted():
    config = make(BACKBONE=staticmethod(lambda image, stage5=True, train_bn=False: []),
                  COMPUTE_BACKBONE_SHAPE=staticmethod(lambda shape: np.zeros((5, 2))))
    assert callable(config.BACKBONE)
    assert config.to_dict()["BACKBONE"] == "<lambda>"
    assert "COMPUTE_BACKBONE_SHAPE" not in config.to_dict()


def test_derived_attributes():
    config = make(IMAGES_PER_GPU=3, GPU_COUNT=2, NUM_CLASSES=7)
    assert config.BATCH_SIZE == 6
    assert config.IMAGE_META_SIZE == 1 + 3 + 3 + 4 + 1 + 7
    np.testing.assert_array_equal(config.IMAGE_SHAPE, [1024, 1024, 3])

    crop = make(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=512)
    np.testing.assert_array_equal(crop.IMAGE_SHAPE, [256, 256, 3])
    square = make(IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=512, IMAGE_CHANNEL_COUNT=1,
                  MEAN_PIXEL=np.array([100.0]))
    np.testing.assert_array_equal(square.IMAGE_SHAPE, [512, 512, 1])


@pytest.mark.parametrize("train_bn, norm, expected", [
    (False, None, "frozen_bn"), (True, None, "bn"), (None, None, "bn"),
    (False, "gn", "gn"), (True, "frozen_bn", "frozen_bn")])
def test_norm_derived_from_train_bn(train_bn, norm, expected):
    assert make(TRAIN_BN=train_bn, NORM=norm).NORM == expected


def test_to_dict_and_display(capsys):
    config = ShapesConfig()
    d = config.to_dict()
    assert d["NAME"] == "shapes"
    assert d["BATCH_SIZE"] == 8
    assert d["IMAGE_SHAPE"] == [128, 128, 3]  # arrays become lists
    assert d["MEAN_PIXEL"] == [123.7, 116.8, 103.9]
    assert d["NORM"] == ShapesConfig.NORM
    assert list(d) == sorted(d)
    assert all(k.isupper() for k in d)
    assert "validate" not in d
    assert d["COMPUTE_BACKBONE_SHAPE"] is None  # shown unset, as Matterport's display did

    config.display()
    out = capsys.readouterr().out
    assert "Configurations:" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["NAME"].split()[1] == "shapes"
    assert lines["BATCH_SIZE"].split()[1] == "8"
    assert lines["RPN_ANCHOR_SCALES"].endswith("(8, 16, 32, 64, 128)")
    assert set(d) <= set(lines)


def test_json_dict_holds_what_display_shows():
    import json

    class Odd(ShapesConfig):
        LOSS_WEIGHTS = {"rpn_class_loss": np.float32(2.0), "rpn_bbox_loss": 1,
                        "mrcnn_class_loss": 1.0, "mrcnn_bbox_loss": 1.0,
                        "mrcnn_mask_loss": 1.0}
        BACKBONE_STRIDES = (4, 8, 16, 32, 64)

    config = Odd()
    saved = json.loads(json.dumps(config.to_json_dict()))
    shown = config.to_dict()
    assert list(saved) == list(shown)

    def as_json(value):  # the one change JSON makes: tuples are lists
        if isinstance(value, (list, tuple)):
            return [as_json(v) for v in value]
        if isinstance(value, dict):
            return {k: as_json(v) for k, v in value.items()}
        return value

    for key, value in shown.items():
        assert saved[key] == as_json(value), key
    assert saved["LOSS_WEIGHTS"]["rpn_class_loss"] == 2.0
    assert saved["BACKBONE_STRIDES"] == [4, 8, 16, 32, 64]


# ----------------------------------------------------------------------------- --set


def test_parse_overrides_reads_python_literals_and_bare_words():
    from mrcnn.config import parse_overrides

    got = parse_overrides(["BACKBONE=resnet18", "IMAGE_MIN_DIM=256", "LEARNING_RATE=2e-3",
                           "RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128)", "MIXED_PRECISION=None",
                           "USE_MINI_MASK=False", "NAME='my run'", "IMAGE_MIN_DIM=320"])
    assert got == {"BACKBONE": "resnet18", "IMAGE_MIN_DIM": 320, "LEARNING_RATE": 0.002,
                   "RPN_ANCHOR_SCALES": (8, 16, 32, 64, 128), "MIXED_PRECISION": None,
                   "USE_MINI_MASK": False, "NAME": "my run"}
    assert list(got)[0] == "BACKBONE"


@pytest.mark.parametrize("pair, fragment", [
    ("LEARNING_RATES=0.1", "LEARNING_RATES is not a setting of ShapesConfig (did you mean "
                           "LEARNING_RATE"),
    ("IMAGE_MIN_DIM", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("display=1", "display is not a setting"),
])
def test_parse_overrides_names_a_bad_pair(pair, fragment):
    from mrcnn.config import parse_overrides

    with pytest.raises(ValueError) as info:
        parse_overrides([pair], ShapesConfig)
    assert fragment in str(info.value) and repr(pair) in str(info.value)


def test_shapes_cli_set_reaches_the_config_and_bad_values_are_one_line(tmp_path, capsys):
    from samples.shapes import shapes

    with pytest.raises(SystemExit) as info:
        shapes.main(["detect", "--tiny", "--set", "DETECTION_MIN_CONFIDENCE=2",
                     f"--logs={tmp_path}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DETECTION_MIN_CONFIDENCE" in err[0]
    args = type("Args", (), {"tiny": True, "set": ["DETECTION_MIN_CONFIDENCE=0.3",
                                                   "TRAIN_ROIS_PER_IMAGE=6"]})()
    config = shapes._make_config(args, shapes.ShapesConfig)
    assert config.DETECTION_MIN_CONFIDENCE == 0.3 and config.TRAIN_ROIS_PER_IMAGE == 6
    assert config.NAME == "tinyshapes"


# --- per-attribute type checks (config.ATTRIBUTE_TYPES) ------------------------------------

from mrcnn.config import ATTRIBUTE_TYPES  # noqa: E402

NAN, INF = float("nan"), float("inf")
FINITE_NUMBERS = ("LEARNING_RATE", "LEARNING_MOMENTUM", "WEIGHT_DECAY", "ROI_POSITIVE_RATIO",
                  "RPN_NMS_THRESHOLD", "DETECTION_NMS_THRESHOLD", "DETECTION_MIN_CONFIDENCE",
                  "LR_PLATEAU_FACTOR", "LR_MIN_FACTOR", "GRADIENT_CLIP_NORM", "IMAGE_MIN_SCALE")
VECTORS = ("BACKBONE_STRIDES", "MINI_MASK_SHAPE", "MASK_SHAPE", "RPN_ANCHOR_SCALES",
           "RPN_ANCHOR_RATIOS", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV", "MEAN_PIXEL")


def _as_strings(value):
    """The same values written as strings, e.g. (32, 64) -> ("32", "64")."""
    return type(value)(str(v) for v in value) if not isinstance(value, np.ndarray) \
        else value.astype(str)


# (attribute, bad value): every value is wrong by type alone, whatever the other attributes.
TYPE_CASES = (
    [(a, "0.01") for a in FINITE_NUMBERS]
    + [(a, NAN) for a in FINITE_NUMBERS] + [(a, INF) for a in FINITE_NUMBERS]
    + [(a, -INF) for a in FINITE_NUMBERS] + [(a, True) for a in FINITE_NUMBERS]
    + [(a, "2") for a in POSITIVE_INTS] + [(a, 2.5) for a in POSITIVE_INTS]
    + [(a, _as_strings(getattr(Config, a))) for a in VECTORS]
    + [(a, 3) for a in VECTORS]
    + [(a, np.zeros((2, len(getattr(Config, a))))) for a in VECTORS]
    + [(a, [NAN] * len(getattr(Config, a))) for a in VECTORS]
    + [(a, "yes") for a in ("USE_MINI_MASK", "TRAIN_ROIS_INCLUDE_GT", "USE_RPN_ROIS",
                            "TRAIN_BN")]
    + [(a, 1) for a in ("USE_MINI_MASK", "TRAIN_ROIS_INCLUDE_GT")]
    + [("NAME", 5)]
    + [("LOSS_WEIGHTS", {"rpn_class_loss": w}) for w in (-1.0, NAN, INF, "1")]
    + [("LOSS_WEIGHTS", [("rpn_class_loss", 1.0)])]
)


@pytest.mark.parametrize("attr, value", TYPE_CASES,
                         ids=[f"{a}={v!r}"[:60] for a, v in TYPE_CASES])
def test_wrong_type_names_attribute_value_and_expectation(attr, value):
    with pytest.raises(ValueError) as info:
        make(**{attr: value})
    message = str(info.value)
    assert message.startswith(f"TestConfig.{attr} = {value!r} is invalid: expected "), message
    assert ATTRIBUTE_TYPES[attr].description in message


def test_numpy_scalars_and_arrays_are_accepted():
    config = make(LEARNING_RATE=np.float32(0.02), IMAGES_PER_GPU=np.int64(2),
                  RPN_ANCHOR_SCALES=np.array([8, 16, 32, 64, 128]), USE_MINI_MASK=np.bool_(False),
                  LOSS_WEIGHTS={"rpn_class_loss": 0, "mrcnn_mask_loss": np.float64(2.0)},
                  GRADIENT_CLIP_NORM=None, IMAGE_MIN_SCALE=None, TRAIN_BN=None)
    assert config.BATCH_SIZE == 2


def test_unknown_loss_weight_key_is_rejected_with_the_known_names():
    with pytest.raises(ValueError, match=r"LOSS_WEIGHTS .*unknown loss names \['mask'\]"):
        make(LOSS_WEIGHTS={"mask": 1.0})


def _sample_configs():
    from samples.balloon.balloon import BalloonConfig, BalloonInferenceConfig
    from samples.coco.coco import CocoConfig, CocoInferenceConfig
    from samples.nucleus.nucleus import NucleusConfig, NucleusInferenceConfig
    from samples.shapes.shapes import ShapesInferenceConfig
    return [ShapesConfig, ShapesInferenceConfig, BalloonConfig, BalloonInferenceConfig,
            CocoConfig, CocoInferenceConfig, NucleusConfig, NucleusInferenceConfig]


def test_every_sample_config_and_its_tiny_variant_validates():
    import warnings

    from mrcnn.tiny import tiny_config

    for cls in _sample_configs():
        with warnings.catch_warnings():
            # No spurious "not a setting" / "derived attribute" warning for the samples.
            warnings.filterwarnings("error", message=".*(not a Config setting|is not used)")
            config = cls()
        config.validate()
        for attr, expect in ATTRIBUTE_TYPES.items():
            assert expect.check(getattr(config, attr)), (cls.__name__, attr)
        tiny_config(cls).validate()
