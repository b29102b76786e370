"""Tests for mrcnn.utils.Dataset and check_mask."""

import warnings

import numpy as np
import pytest
from PIL import Image

from mrcnn import dataset as dataset_module, utils


def two_source_dataset():
    ds = utils.Dataset()
    ds.add_class("shapes", 1, "square")
    ds.add_class("shapes", 2, "circle")
    ds.add_class("coco", 1, "person, human")
    ds.add_class("coco", 18, "dog")
    ds.add_class("shapes", 1, "square")  # duplicate: ignored
    ds.add_image("shapes", image_id=7, path=None, height=32, width=32)
    ds.add_image("coco", image_id=391895, path="/data/coco/391895.jpg")
    ds.add_image("shapes", image_id=8, path=None, height=32, width=32)
    ds.prepare()
    return ds


def test_prepare_two_sources_maps_classes_both_ways():
    ds = two_source_dataset()
    assert ds.num_classes == 5
    assert ds.class_names == ["BG", "square", "circle", "person", "dog"]
    np.testing.assert_array_equal(ds.class_ids, [0, 1, 2, 3, 4])
    assert ds.class_info[0] == {"source": "", "id": 0, "name": "BG"}
    assert ds.class_from_source_map == {
        ".0": 0, "shapes.1": 1, "shapes.2": 2, "coco.1": 3, "coco.18": 4,
    }
    assert ds.map_source_class_id("coco.18") == 4
    assert ds.map_source_class_id("shapes.1") == 1
    assert ds.get_source_class_id(4, "coco") == 18
    assert ds.get_source_class_id(2, "shapes") == 2
    with pytest.raises(ValueError, match="coco"):
        ds.get_source_class_id(3, "shapes")
    # Background is part of every source, as in Matterport.
    assert ds.source_class_ids == {"": [0], "shapes": [0, 1, 2], "coco": [0, 3, 4]}
    assert sorted(ds.sources) == ["", "coco", "shapes"]


def test_prepare_images():
    ds = two_source_dataset()
    assert ds.num_images == 3
    np.testing.assert_array_equal(ds.image_ids, [0, 1, 2])
    assert ds.image_from_source_map == {"shapes.7": 0, "coco.391895": 1, "shapes.8": 2}
    assert ds.image_info[1]["path"] == "/data/coco/391895.jpg"
    assert ds.image_info[0]["height"] == 32  # extra kwargs kept
    assert ds.source_image_link(1) == "/data/coco/391895.jpg"
    assert ds.image_reference(0) == ""


def test_add_class_rejects_dotted_source():
    with pytest.raises(ValueError, match="dot"):
        utils.Dataset().add_class("my.source", 1, "thing")


# ----------------------------------------------------------------------------- load_image


def image_dataset(path):
    ds = utils.Dataset()
    ds.add_class("files", 1, "thing")
    ds.add_image("files", image_id="a", path=str(path))
    ds.prepare()
    return ds


def test_load_image_rgb_passthrough(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    out = image_dataset(path).load_image(0)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)


def test_load_image_grayscale_expanded(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    out = image_dataset(path).load_image(0)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_load_image_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0  # fully transparent
    rgba[1, 2] = [200, 100, 50, 255]
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    out = image_dataset(path).load_image(0)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])  # alpha dropped, not composited


def test_load_image_16bit_rescaled_by_dtype_range(tmp_path):
    values = np.array([[0, 257, 1000], [32768, 65280, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)  # PIL writes a 16-bit grayscale PNG
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really 16 bit on disk
    out = image_dataset(path).load_image(0)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    expected = np.round(values / 65535 * 255).astype(np.uint8)  # [[0, 1, 4], [128, 254, 255]]
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    # The same reader serves files outside a dataset.
    np.testing.assert_array_equal(utils.load_image_file(str(path)), out)


def test_to_uint8_float_and_16bit_rgb():
    # The conversion used by load_image, on decoded arrays directly.
    floats = np.array([[[0.0, 0.5, 1.0]]])
    np.testing.assert_array_equal(dataset_module._to_rgb_uint8(floats), [[[0, 128, 255]]])
    rgb16 = np.array([[[65535, 0, 32896]]], dtype=np.uint16)
    np.testing.assert_array_equal(dataset_module._to_rgb_uint8(rgb16), [[[255, 0, 128]]])
    gray_alpha = np.array([[[50, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(dataset_module._to_rgb_uint8(gray_alpha), [[[50, 50, 50]]])


def test_load_image_missing_file_names_path_and_id(tmp_path):
    path = tmp_path / "nope.jpg"
    ds = image_dataset(path)
    with pytest.raises(IOError) as info:
        ds.load_image(0)
    assert str(path) in str(info.value) and "image_id=0" in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        utils.load_image_file(str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio probing legacy plugins
def test_load_image_corrupt_file_names_path(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not a png")
    with pytest.raises((IOError, ValueError)) as info:
        image_dataset(path).load_image(0)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- load_mask


def test_base_load_mask_warns_and_returns_empty():
    ds = two_source_dataset()
    with pytest.warns(UserWarning, match="override"):
        mask, class_ids = ds.load_mask(0)
    assert mask.shape == (0, 0, 0)
    assert class_ids.shape == (0,) and class_ids.dtype == np.int32


def test_check_mask_accepts_and_normalises():
    mask = np.zeros((8, 9, 2), np.uint8)
    mask[1:3, 1:3, 0] = 1
    out_mask, out_ids = utils.check_mask(mask, [1, 2], image_id=3, image_shape=(8, 9, 3))
    assert out_mask.dtype == bool and out_mask.shape == (8, 9, 2)
    assert out_ids.dtype == np.int32
    np.testing.assert_array_equal(out_mask, mask.astype(bool))
    # 0/255 integer masks (as drawn by OpenCV) are bool-like too.
    out_mask, _ = utils.check_mask(mask * 255, [1, 2], image_id=3, image_shape=(8, 9, 3))
    np.testing.assert_array_equal(out_mask, mask.astype(bool))
    # Crowd instances (negative ids) are allowed.
    utils.check_mask(mask.astype(bool), np.array([1, -2]), 3, (8, 9))
    # Zero instances: the base class's [0, 0, 0] mask becomes [H, W, 0].
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = two_source_dataset().load_mask(0)
    out_mask, out_ids = utils.Dataset.check_mask(*empty, image_id=0, image_shape=(8, 9, 3))
    assert out_mask.shape == (8, 9, 0) and out_mask.dtype == bool and out_ids.shape == (0,)


@pytest.mark.parametrize(
    "mask, class_ids, pattern",
    [
        (np.zeros((8, 9), bool), [1], "3-D"),
        (np.zeros((8, 9, 2), bool), [1], "2 instances.*1 entries"),
        (np.zeros((8, 10, 1), bool), [1], "spatial size"),
        (np.full((8, 9, 1), 0.5), [1], "bool"),
        (np.arange(72).reshape(8, 9, 1), [1], "bool"),  # a label map, not a mask
        (np.array([0, 1, 255] * 24, np.uint8).reshape(8, 9, 1), [1], "bool"),
        (np.zeros((8, 9, 1), bool), [[1]], "1-D"),
        (np.zeros((8, 9, 1), bool), [1.5], "integers"),
    ],
)
def test_check_mask_errors_name_the_image(mask, class_ids, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        utils.check_mask(mask, np.array(class_ids), image_id=42, image_shape=(8, 9, 3))
    assert "image_id=42" in str(info.value)


def test_check_mask_num_classes():
    with pytest.raises(ValueError, match="image_id=5.*outside"):
        utils.check_mask(np.zeros((4, 4, 1), bool), [7], 5, (4, 4), num_classes=3)


def test_subclass_load_mask_contract():
    class Squares(utils.Dataset):
        def load_mask(self, image_id):
            info = self.image_info[image_id]
            mask = np.zeros((info["height"], info["width"], 1), bool)
            mask[4:10, 4:10, 0] = True
            return mask, np.array([self.map_source_class_id("shapes.1")], np.int32)

    ds = Squares()
    ds.add_class("shapes", 1, "square")
    ds.add_image("shapes", 0, None, height=16, width=20)
    ds.prepare()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an override must not hit the base warning
        mask, class_ids = utils.check_mask(*ds.load_mask(0), image_id=0, image_shape=(16, 20))
    np.testing.assert_array_equal(utils.extract_bboxes(mask), [[4, 4, 10, 10]])
    assert class_ids.tolist() == [1]


def test_check_mask_rejects_background_class_id():
    with pytest.raises(ValueError, match=r"image_id=9.*\[1, 0\].*background") as info:
        utils.check_mask(np.ones((4, 4, 2), bool), [1, 0], 9, (4, 4))
    assert "load_mask" in str(info.value)


# ------------------------------------------------- as_model_image (user load_image overrides)


@pytest.mark.parametrize("dtype, top", [(np.float32, 1.0), (np.float64, 1.0),
                                        (np.uint16, 65535), (bool, 1)])
def test_as_model_image_converts_like_files(dtype, top):
    # Reference: the dtype-range rule documented in Dataset.load_image, in NumPy.
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (5, 6, 3))
    image = (values > 0.5) if dtype is bool else (values * top).astype(dtype)
    out = utils.as_model_image(image, "image_id=1")
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
    expected = np.round(image.astype(np.float64) * 255 / top).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_as_model_image_uint8_is_untouched_and_bad_input_names_the_image():
    image = np.zeros((4, 4, 3), np.uint8)
    assert utils.as_model_image(image, "image_id=1") is image
    # Floats beyond [0, 1] are taken as 0..255 values (clipped), as for files.
    np.testing.assert_array_equal(
        utils.as_model_image(np.array([[[-3.0, 12.4, 300.0]]]), "x"), [[[0, 12, 255]]])
    with pytest.raises(ValueError, match=r"image_id=7.*dtype <U1"):
        utils.as_model_image(np.full((4, 4, 3), "a"), "image_id=7")
    with pytest.raises(ValueError, match=r"image_id=7.*shape \(4, 4\).*\[height, width, 3\]"):
        utils.as_model_image(np.zeros((4, 4)), "image_id=7")


def test_load_image_gt_converts_float_and_uint16_overrides():
    from mrcnn import data
    from tests.tiny import TinyConfig, shapes_dataset

    class Scaled(type(shapes_dataset(1))):
        scale, dtype = 1.0, np.float32

        def load_image(self, image_id):
            image = super().load_image(image_id).astype(np.float64) / 255
            return (image * self.scale).astype(self.dtype)

    config = TinyConfig()
    reference = data.load_image_gt(shapes_dataset(2), config, 1)[0]
    for scale, dtype in ((1.0, np.float32), (65535.0, np.uint16)):
        dataset = shapes_dataset(2)
        dataset.__class__ = type("S", (Scaled,), {"scale": scale, "dtype": dtype})
        image = data.load_image_gt(dataset, config, 1)[0]
        assert image.dtype == reference.dtype
        # Float32 rounding of v / 255 can move a pixel by one level, never more.
        assert np.abs(image.astype(int) - reference.astype(int)).max() <= 1, dtype
