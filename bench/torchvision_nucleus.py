"""torchvision's Mask R-CNN from scratch on the same synthetic nuclei: the peer contender of
``bench/nucleus_seeds.py``.

    python bench/torchvision_nucleus.py '<json settings>'   # prints one line RESULT{...}

Needs torch and torchvision (the ``bench`` extra), nothing of mrcnn, Keras or OpenCV, so it
runs in a PyTorch-only environment. The model is what a torchvision user builds for this data:
``resnet_fpn_backbone`` of the same depth as mrcnn's run (ResNet-18 by default) with random
weights and GroupNorm (frozen BatchNorm, torchvision's default, cannot learn from scratch;
mrcnn's nucleus Config trains GroupNorm too), all layers trainable, the anchor sizes of the
nucleus Config (8 to 128 px), its proposal and ROI counts, 400 detections per image, score
threshold 0 and a 0.5 NMS.

Data: the same DSB-layout folder, the same sampling as the nucleus sample: images scaled up
2x, random crops of ``crop`` px, instances that leave the crop dropped; Matterport's nucleus
augmentation (0, 1 or 2 of: horizontal flip, vertical flip, a rotation by 90/180/270,
brightness x0.8-1.5, Gaussian blur sigma 0-5). Inference: whole held-out images scaled 2x,
as mrcnn's ``NucleusInferenceConfig`` does.

Recipes (``settings["recipe"]``):
- ``reference``: torchvision's detection reference train.py: SGD, lr 0.02 x batch/16,
  momentum 0.9, weight decay 1e-4, a linear warm-up over the first epoch's steps (at most
  1000) from 0.001x, and x0.1 steps at 16/26 and 22/26 of the epochs.
- ``mrcnn``: mrcnn's from-scratch recipe as settings carry it (AdamW at ``lr``, a linear
  warm-up of ``warmup_steps`` from ``warmup_factor``; the plateau decay is left out: it
  rarely fires in runs this short).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time


def _read_png(path: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path))


def load_folder(root: str, subset: str) -> list[dict]:
    """Images (uint8 [H, W, 3]) and masks (bool [N, H, W]) of a DSB-layout subset."""
    import numpy as np

    items = []
    for image_dir in sorted(glob.glob(os.path.join(root, subset, "*"))):
        name = os.path.basename(image_dir)
        image = _read_png(os.path.join(image_dir, "images", f"{name}.png"))
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        files = sorted(glob.glob(os.path.join(image_dir, "masks", "*.png")))
        masks = np.stack([_read_png(f) > 0 for f in files]) if files else \
            np.zeros((0,) + image.shape[:2], bool)
        items.append({"id": name, "image": image[..., :3], "masks": masks})
    return items


def _augment(image, masks, rng):
    """Matterport's nucleus augmentation on torch tensors: image float [3, H, W] 0-255,
    masks uint8 [N, H, W]."""
    import torch
    import torchvision.transforms.functional as TF

    chosen = rng.choice(5, size=int(rng.integers(0, 3)), replace=False)
    for k in chosen:
        if k == 0 and rng.random() < 0.5:
            image, masks = image.flip(-1), masks.flip(-1)
        elif k == 1 and rng.random() < 0.5:
            image, masks = image.flip(-2), masks.flip(-2)
        elif k == 2:
            turns = int(rng.integers(1, 4))
            image, masks = torch.rot90(image, turns, (-2, -1)), torch.rot90(masks, turns, (-2, -1))
        elif k == 3:
            image = (image * float(rng.uniform(0.8, 1.5))).clamp(0, 255)
        elif k == 4:
            sigma = float(rng.uniform(0.0, 5.0))
            if sigma > 0.1:
                size = 2 * int(round(3 * sigma)) + 1
                image = TF.gaussian_blur(image, [size, size], [sigma, sigma])
    return image, masks


def sample_crop(item: dict, crop: int, rng):
    """Scale 2x, take a random ``crop`` square, augment; the target dict torchvision wants."""
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(item["image"]).permute(2, 0, 1).float()[None]
    masks = torch.from_numpy(item["masks"].astype("uint8"))[None].float()
    h, w = item["image"].shape[:2]
    image = F.interpolate(image, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)[0]
    masks = F.interpolate(masks, size=(2 * h, 2 * w), mode="nearest")[0].to(torch.uint8)
    y = int(rng.integers(0, 2 * h - crop + 1))
    x = int(rng.integers(0, 2 * w - crop + 1))
    image, masks = image[:, y:y + crop, x:x + crop], masks[:, y:y + crop, x:x + crop]
    image, masks = _augment(image, masks, rng)
    keep = masks.flatten(1).sum(1) > 0
    masks = masks[keep]
    boxes = torch.zeros((len(masks), 4))
    for i, m in enumerate(masks):  # a few hundred small masks: fine for a benchmark
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return image / 255.0, {"boxes": boxes, "labels": torch.ones(len(masks), dtype=torch.int64),
                           "masks": masks}


def uncompressed_rles(masks) -> list[dict]:
    """bool [H, W, N] -> COCO's uncompressed RLEs (column-major run lengths, starting with
    a run of zeros), so this worker needs no pycocotools."""
    import numpy as np

    out = []
    for k in range(masks.shape[-1]):
        flat = masks[..., k].ravel(order="F").astype(np.int8)
        change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        counts = np.diff(np.concatenate([[0], change]))
        out.append({"size": [int(masks.shape[0]), int(masks.shape[1])],
                    "counts": [int(c) for c in counts]})
    return out


def build_model(settings: dict):
    import torch
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name=settings["backbone"], weights=None,
                                   trainable_layers=5,
                                   norm_layer=lambda c: torch.nn.GroupNorm(32, c))
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)),
                              aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(backbone, num_classes=2, min_size=settings["crop"],
                    max_size=settings["crop"], rpn_anchor_generator=anchors,
                    rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,
                    rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=2000,
                    rpn_nms_thresh=0.9, rpn_batch_size_per_image=64,
                    box_batch_size_per_image=128, box_detections_per_img=400,
                    box_score_thresh=0.0, box_nms_thresh=0.5)


def learning_rate(settings: dict, epoch: int, step: int) -> float:
    """The recipe's rate at (epoch, step within the epoch)."""
    steps, epochs = settings["steps"], settings["epochs"]
    if settings["recipe"] == "reference":
        base = 0.02 * settings["batch"] / 16
        warmup = min(1000, steps - 1)
        factor = 1.0
        if epoch == 0 and step < warmup:
            alpha = step / warmup
            factor = 0.001 * (1 - alpha) + alpha
        factor *= 0.1 ** sum(epoch >= round(epochs * m / 26) for m in (16, 22))
        return base * factor
    global_step = epoch * steps + step
    if global_step < settings["warmup_steps"]:
        alpha = global_step / settings["warmup_steps"]
        return settings["lr"] * (settings["warmup_factor"] * (1 - alpha) + alpha)
    return settings["lr"]


def run(settings: dict) -> dict:
    """Train with the recipe, detect on the held-out images after every epoch (the same
    result layout as ``nucleus_worker.run``)."""
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    seed = int(settings["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = load_folder(settings["data"], "stage1_train")
    test = load_folder(settings["data"], "stage1_test")
    model = build_model(settings)
    params = [p for p in model.parameters() if p.requires_grad]
    if settings["recipe"] == "reference":
        optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=0.0, weight_decay=settings.get("wd", 1e-4))
    out, wall, cpu = [], 0.0, 0.0
    for epoch in range(settings["epochs"]):
        model.train()
        t, c = time.perf_counter(), time.process_time()
        for step in range(settings["steps"]):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, epoch, step)
            batch = [sample_crop(train[int(i)], settings["crop"], rng)
                     for i in rng.integers(0, len(train), settings["batch"])]
            losses = model([b[0] for b in batch], [b[1] for b in batch])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1} "
                                         f"step {step + 1}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        model.eval()
        detections = {}
        with torch.no_grad():
            for item in test:
                h, w = item["image"].shape[:2]
                model.transform.min_size = (2 * min(h, w),)
                model.transform.max_size = 2 * max(h, w)
                image = torch.from_numpy(item["image"]).permute(2, 0, 1).float() / 255.0
                r = model([image])[0]
                masks = (r["masks"][:, 0] > 0.5).numpy().transpose(1, 2, 0)
                detections[item["id"]] = {"scores": [float(s) for s in r["scores"]],
                                          "rles": uncompressed_rles(masks)}
        model.transform.min_size = (settings["crop"],)
        model.transform.max_size = settings["crop"]
        out.append({"epoch": epoch + 1,
                    "images": (epoch + 1) * settings["steps"] * settings["batch"],
                    "train_wall": wall, "train_cpu": cpu, "detections": detections})
        print(f"  torchvision seed {seed} epoch {epoch + 1} done", file=sys.stderr, flush=True)
    import torchvision
    return {"epochs": out, "versions": {"torch": torch.__version__,
                                        "torchvision": torchvision.__version__}}


if __name__ == "__main__":
    result = run(json.loads(sys.argv[1]))
    print("RESULT" + json.dumps(result))
