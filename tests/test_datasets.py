"""mrcnn.datasets: COCO json, VIA json, DSB folders, module:Name; checks and path safety."""

from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pycocotools.coco import COCO

from mrcnn.datasets import CocoDataset, NucleusDataset, ViaDataset, load_dataset
from mrcnn.datasets.coco import rle_counts_from_string
from mrcnn.datasets.spec import split_dataset
from mrcnn.errors import InputError, UnsafePathError
from tests.app_data import write_via_multiclass
from tests.sample_data import write_coco_dataset, write_nucleus_dataset, write_png


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco_dataset(str(tmp_path_factory.mktemp("coco")), subsets=("train",))


def _coco_json(coco) -> dict:
    with open(coco["files"]["train"]) as f:
        return json.load(f)


def _write(path, data) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


# ---------------------------------------------------------------------------------- COCO

def test_coco_json_masks_match_pycocotools(coco):
    image_dir = os.path.join(coco["root"], "train2017")
    dataset = CocoDataset()
    dataset.load_coco_json(coco["files"]["train"], image_dir)
    dataset.prepare()
    reference = COCO(coco["files"]["train"])
    assert dataset.class_names[1:] == ["person", "car", "dog"]
    # Matterport's rule: only images with annotations.
    assert sorted(i["id"] for i in dataset.image_info) == sorted(
        {a["image_id"] for a in reference.dataset["annotations"]})
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        masks, class_ids = dataset.load_mask(image_id)
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[info["id"]]))
        assert masks.shape[-1] == len(anns)
        for k, ann in enumerate(anns):
            np.testing.assert_array_equal(masks[..., k], reference.annToMask(ann) > 0)
            expected = dataset.map_source_class_id(f"coco.{ann['category_id']}")
            assert class_ids[k] == (-expected if ann["iscrowd"] else expected)
        assert info["path"] == os.path.join(image_dir, reference.imgs[info["id"]]["file_name"])


@pytest.mark.parametrize("segmentation, fragment", [
    ([[1.0, 2.0, 5.0, 6.0]], "at least 3 points"),
    ([], "empty 'segmentation'"),
    ({"size": [10, 12], "counts": [120]}, "differs from the image's"),
])
def test_coco_checks_name_annotation_image_and_file(coco, tmp_path, segmentation, fragment):
    data = _coco_json(coco)
    ann = data["annotations"][0]
    ann["segmentation"] = segmentation
    ann["iscrowd"] = 0
    path = _write(tmp_path / "bad.json", data)
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    with pytest.raises(InputError) as info:
        CocoDataset().load_coco_json(path, os.path.join(coco["root"], "train2017"))
    message = str(info.value)
    for part in (fragment, path, f"annotation {ann['id']}", f"image {image['id']}",
                 image["file_name"]):
        assert part in message, message


def test_coco_crowd_rle_of_another_size_is_accepted(coco, tmp_path):
    data = _coco_json(coco)
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    crowd["segmentation"] = {"size": [4, 5], "counts": [0, 20]}
    path = _write(tmp_path / "crowd.json", data)
    dataset = CocoDataset()
    dataset.load_coco_json(path, os.path.join(coco["root"], "train2017"))
    dataset.prepare()
    image_id = dataset.image_from_source_map[f"coco.{crowd['image_id']}"]
    masks, class_ids = dataset.load_mask(image_id)
    assert (class_ids < 0).sum() == 1
    assert masks[..., list(class_ids).index(class_ids[class_ids < 0][0])].all()


def test_rle_string_decoder_agrees_with_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.random((13, 17)) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        runs = rle_counts_from_string(rle["counts"].decode())
        # Independent decode of the run lengths: alternate 0/1 runs, column-major.
        flat = np.concatenate([np.full(n, k % 2, bool) for k, n in enumerate(runs)])
        np.testing.assert_array_equal(flat.reshape(17, 13).T, m)


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/passwd"])
def test_coco_file_name_leaving_the_image_root_is_refused(coco, tmp_path, name):
    data = _coco_json(coco)
    image = data["images"][0]
    image["file_name"] = name
    path = _write(tmp_path / "escape.json", data)
    with pytest.raises(UnsafePathError) as info:
        CocoDataset().load_coco_json(path, os.path.join(coco["root"], "train2017"))
    assert path in str(info.value) and f"image {image['id']}" in str(info.value)
    dataset = CocoDataset()
    dataset.load_coco_json(path, os.path.join(coco["root"], "train2017"), allow_outside=True)
    assert any(i["path"].endswith(name.lstrip("/")) for i in dataset.image_info)


def test_coco_symlink_out_of_the_image_root_is_refused(coco, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    data = _coco_json(coco)
    for image in data["images"]:
        os.symlink(os.path.join(coco["root"], "train2017", image["file_name"]),
                   root / image["file_name"])
    path = _write(tmp_path / "links.json", data)
    with pytest.raises(UnsafePathError, match="leaves the folder"):
        CocoDataset().load_coco_json(path, str(root))


# ----------------------------------------------------------------------------------- VIA

def test_via_multiclass_masks_and_classes(tmp_path):
    via = write_via_multiclass(str(tmp_path / "via"))
    dataset = ViaDataset()
    dataset.load_via(via["json"], class_key="type")
    dataset.prepare()
    assert dataset.class_names == ["BG", "cat", "dog"]
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        expected_masks, names = via["images"][info["id"]]
        masks, class_ids = dataset.load_mask(image_id)
        np.testing.assert_array_equal(masks, expected_masks)
        assert [dataset.class_names[c] for c in class_ids] == names


def test_via_region_without_class_and_unknown_class_are_named(tmp_path):
    via = write_via_multiclass(str(tmp_path / "via"))
    with open(via["json"]) as f:
        data = json.load(f)
    data["img1.png"]["regions"][1]["region_attributes"] = {}
    path = _write(tmp_path / "via" / "missing.json", data)
    with pytest.raises(InputError, match=r"img1.png.*region 1.*'type'"):
        ViaDataset().load_via(path, class_key="type")
    with pytest.raises(InputError, match="'bird' is not one of"):
        data["img1.png"]["regions"][1]["region_attributes"] = {"type": "bird"}
        ViaDataset().load_via(_write(tmp_path / "via" / "bird.json", data), class_key="type",
                              class_names=["cat", "dog"])


def test_via_path_leaving_the_folder_is_refused(tmp_path):
    via = write_via_multiclass(str(tmp_path / "via"), count=1)
    with open(via["json"]) as f:
        data = json.load(f)
    data["img0.png"]["filename"] = "../../img0.png"
    path = _write(tmp_path / "via" / "escape.json", data)
    with pytest.raises(UnsafePathError) as info:
        ViaDataset().load_via(path, class_key="type")
    assert path in str(info.value) and "../../img0.png" in str(info.value)


# ----------------------------------------------------------------------------------- DSB

def test_dsb_mask_with_two_nonzero_values_is_refused(tmp_path):
    dsb = write_nucleus_dataset(str(tmp_path / "dsb"), train_images=2, test_images=0)
    image_id = dsb["train_ids"][0]
    mask_path = tmp_path / "dsb" / "stage1_train" / image_id / "masks" / "000.png"
    mask = dsb["masks"][image_id][..., 0]
    # 0/1 masks are fine.
    write_png(str(mask_path), mask.astype(np.uint8))
    dataset = NucleusDataset()
    dataset.load_nucleus(str(tmp_path / "dsb"), "stage1_train", verify=True)
    # Background 1, nucleus 255: an error naming the file, at verify time.
    write_png(str(mask_path), np.where(mask, 255, 1).astype(np.uint8))
    with pytest.raises(InputError, match=str(mask_path)):
        NucleusDataset().load_nucleus(str(tmp_path / "dsb"), "stage1_train", verify=True)


def test_dsb_mask_symlink_outside_is_refused(tmp_path):
    dsb = write_nucleus_dataset(str(tmp_path / "dsb"), train_images=1, test_images=0)
    image_id = dsb["train_ids"][0]
    outside = tmp_path / "elsewhere.png"
    write_png(str(outside), dsb["masks"][image_id][..., 0].astype(np.uint8) * 255)
    os.symlink(outside, tmp_path / "dsb" / "stage1_train" / image_id / "masks" / "zzz.png")
    with pytest.raises(UnsafePathError, match="zzz.png"):
        NucleusDataset().load_nucleus(str(tmp_path / "dsb"), "stage1_train")
    dataset = NucleusDataset()
    dataset.load_nucleus(str(tmp_path / "dsb"), "stage1_train", allow_outside=True)


# ---------------------------------------------------------------------------------- specs

def test_specs_pick_the_loader(coco, tmp_path, monkeypatch):
    assert isinstance(load_dataset(coco["files"]["train"],
                                   os.path.join(coco["root"], "train2017")), CocoDataset)
    via = write_via_multiclass(str(tmp_path / "via"))
    assert load_dataset(via["json"], class_key="type").class_names == ["BG", "cat", "dog"]
    dsb = write_nucleus_dataset(str(tmp_path / "dsb"), train_images=2, test_images=0)
    nuclei = load_dataset(str(tmp_path / "dsb" / "stage1_train"))
    assert isinstance(nuclei, NucleusDataset) and len(nuclei.image_ids) == 2
    with pytest.raises(InputError, match="not a DSB subset folder.*stage1_train"):
        load_dataset(str(tmp_path / "dsb"))
    assert len(dsb["train_ids"]) == 2
    (tmp_path / "user_data.py").write_text(
        "from mrcnn.datasets import ViaDataset\n"
        "class Mine(ViaDataset):\n"
        "    def load(self, images):\n"
        f"        self.load_via({via['json']!r}, images, class_key='type')\n"
        "def make():\n"
        "    d = Mine()\n"
        "    d.load(None)\n"
        "    return d\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    mine = load_dataset("user_data:Mine", images=via["folder"])
    assert type(mine).__name__ == "Mine" and mine.num_classes == 3
    assert load_dataset("user_data:make").num_classes == 3
    with pytest.raises(InputError, match="has no Nope"):
        load_dataset("user_data:Nope")
    with pytest.raises(InputError, match="no such file or folder"):
        load_dataset(str(tmp_path / "missing.json"))


def test_split_keeps_classes_and_divides_images(tmp_path):
    via = write_via_multiclass(str(tmp_path / "via"), count=10)
    dataset = load_dataset(via["json"], class_key="type")
    train, val = split_dataset(dataset, 0.2, seed=3)
    names = sorted(i["id"] for i in train.image_info) + sorted(i["id"] for i in val.image_info)
    assert sorted(names) == sorted(i["id"] for i in dataset.image_info)
    assert len(val.image_ids) == 2 and train.class_names == val.class_names
    masks, class_ids = val.load_mask(0)
    np.testing.assert_array_equal(masks, via["images"][val.image_info[0]["id"]][0])


# ---------------------------------------------------------------------------- fuzzing

def _loads_or_names_the_file(load, path) -> None:
    """``load()`` and every mask either work or raise InputError naming ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = load()
            dataset.prepare()
            for image_id in dataset.image_ids:
                masks, class_ids = dataset.load_mask(image_id)
                info = dataset.image_info[image_id]
                assert masks.shape[:2] == (info["height"], info["width"])
                assert masks.shape[-1] == len(class_ids)
        except InputError as err:
            assert path in str(err) or os.path.basename(path) in str(err), str(err)


numbers = st.one_of(st.integers(-50, 80), st.floats(-1e7, 1e7),
                    st.sampled_from([float("nan"), float("inf"), -float("inf")]))
json_values = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=4),
                        st.lists(st.integers(-3, 40), max_size=3))
polygons = st.lists(st.lists(numbers, max_size=10), max_size=3)
rles = st.fixed_dictionaries({}, optional={
    "size": st.one_of(st.just([32, 32]), st.lists(st.integers(-2, 40), max_size=3),
                      json_values),
    "counts": st.one_of(st.just([1000, 24]), st.lists(st.integers(-5, 1100), max_size=4),
                        st.text(max_size=8), st.just("PP0"), json_values)})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(segmentation=st.one_of(polygons, rles, json_values),
       iscrowd=st.one_of(st.sampled_from([0, 1]), json_values),
       image_id=st.one_of(st.just(7), json_values),
       category_id=st.one_of(st.just(1), json_values),
       width=st.one_of(st.just(32), json_values), drop=st.sampled_from(
           [None, "images", "annotations", "categories", "file_name", "segmentation"]))
def test_fuzz_coco_fragments(tmp_path_factory, segmentation, iscrowd, image_id, category_id,
                             width, drop):
    folder = tmp_path_factory.mktemp("fuzz_coco")
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    data = {"images": [{"id": 7, "file_name": "a.png", "width": width, "height": 32}],
            "annotations": [{"id": 1, "image_id": image_id, "category_id": category_id,
                             "iscrowd": iscrowd, "segmentation": copy.deepcopy(segmentation)}],
            "categories": [{"id": 1, "name": "thing"}]}
    if drop in data:
        del data[drop]
    elif drop == "file_name":
        del data["images"][0]["file_name"]
    elif drop == "segmentation":
        del data["annotations"][0]["segmentation"]
    path = _write(folder / "fuzz.json", data)

    def load():
        dataset = CocoDataset()
        dataset.load_coco_json(path)
        return dataset

    _loads_or_names_the_file(load, path)


shapes = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["polygon", "rect", "circle", "ellipse"]),
                       json_values)},
    optional={k: st.one_of(numbers, json_values, st.lists(numbers, max_size=5))
              for k in ("all_points_x", "all_points_y", "x", "y", "width", "height", "cx",
                        "cy", "r", "rx", "ry", "theta")})
regions = st.fixed_dictionaries(
    {"shape_attributes": st.one_of(shapes, json_values)},
    optional={"region_attributes": st.one_of(
        st.fixed_dictionaries({}, optional={"class": st.one_of(
            st.sampled_from(["a", "b", ""]), json_values,
            st.dictionaries(st.sampled_from(["a", "b"]), st.booleans()))}), json_values)})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(region_list=st.one_of(st.lists(regions, max_size=3), json_values),
       as_dict=st.booleans(), filename=st.one_of(st.just("a.png"), json_values))
def test_fuzz_via_fragments(tmp_path_factory, region_list, as_dict, filename):
    folder = tmp_path_factory.mktemp("fuzz_via")
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    if as_dict and isinstance(region_list, list):
        region_list = {str(i): r for i, r in enumerate(region_list)}
    path = _write(folder / "via.json", {"a.png1": {"filename": filename,
                                                   "regions": region_list}})

    def load():
        dataset = ViaDataset()
        dataset.load_via(path)
        return dataset

    _loads_or_names_the_file(load, path)
