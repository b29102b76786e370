"""TF Model Garden's Mask R-CNN train step, set up like mrcnn's bench step (for comparison).

Used by ``bench/train_step_speed.py --model-garden``; needs ``tf-models-official`` (which
pins its own TensorFlow and tf-keras, so install it in a separate virtualenv together with
mrcnn: ``pip install "tf-models-official==2.20.*" -e .``, then run the bench there, so both
models run on the same TensorFlow).

Equal settings (those of ``bench.common.bench_config``): ResNet-50 + FPN P2-P6, 3 anchors
per location, from random weights, the same synthetic shapes images and boxes/masks at
the same size and batch, 256 RPN anchors per image, 2,000 proposals per image after NMS
0.7 (mrcnn's POST_NMS_ROIS_TRAINING), ``rois`` sampled ROIs per image with mrcnn's positive
fraction (0.33), as many mask ROIs as positive slots (168 at 512 ROIs), 7x7 box and 14x14
mask ROI align, a 2-fc box head (mrcnn's Matterport head), 4 3x3 convs in the mask head,
backbone BatchNorm frozen (inference mode, like mrcnn's frozen_bn), SGD momentum 0.9,
float32. The step is Model Garden's own ``MaskRCNNTask.train_step`` in a ``tf.function``
(graph mode) or with ``jit_compile=True`` (XLA).
"""

from __future__ import annotations

import numpy as np

from bench.common import time_steps


def available() -> bool:
    """True when ``tf-models-official`` imports."""
    try:
        import official.vision.tasks.maskrcnn  # noqa: F401
    except Exception:  # noqa: BLE001  (any import failure means: not usable here)
        return False
    return True


def _task(size: int, num_classes: int, rois: int, positive_fraction: float,
          post_nms: int):
    from official.vision.configs import maskrcnn as cfg
    from official.vision.tasks import maskrcnn as task_lib

    model = cfg.MaskRCNN(
        num_classes=num_classes, input_size=[size, size, 3], include_mask=True,
        detection_head=cfg.DetectionHead(num_convs=0, num_fcs=2, fc_dims=1024),
        roi_generator=cfg.ROIGenerator(pre_nms_top_k=6000, num_proposals=post_nms,
                                       nms_iou_threshold=0.7),
        roi_sampler=cfg.ROISampler(num_sampled_rois=rois,
                                   foreground_fraction=positive_fraction),
        mask_sampler=cfg.MaskSampler(num_sampled_masks=int(rois * positive_fraction)))
    model.norm_activation.use_sync_bn = False
    task_cfg = cfg.MaskRCNNTask(model=model, losses=cfg.Losses(l2_weight_decay=1e-4))
    return task_lib.MaskRCNNTask(task_cfg)


def _batch(task, dataset, size: int):
    """Model Garden's own parser applied to the shapes images: (images, labels) batched."""
    import tensorflow as tf
    from official.vision.dataloaders import maskrcnn_input

    m = task.task_config.model
    parser = maskrcnn_input.Parser(
        output_size=[size, size], min_level=m.min_level, max_level=m.max_level,
        num_scales=m.anchor.num_scales, aspect_ratios=m.anchor.aspect_ratios,
        anchor_size=m.anchor.anchor_size, include_mask=True, dtype="float32")
    examples = []
    for image_id in dataset.image_ids:
        image = dataset.load_image(image_id)
        masks, class_ids = dataset.load_mask(image_id)
        h, w = image.shape[:2]
        ys, xs = np.any(masks, axis=1), np.any(masks, axis=0)
        boxes = np.array([[np.argmax(ys[:, i]), np.argmax(xs[:, i]),
                           h - np.argmax(ys[::-1, i]), w - np.argmax(xs[::-1, i])]
                          for i in range(masks.shape[-1])], np.float32)
        data = {
            "image": tf.constant(image),
            "groundtruth_classes": tf.constant(class_ids, tf.int64),
            "groundtruth_is_crowd": tf.zeros([len(class_ids)], tf.bool),
            "groundtruth_boxes": tf.constant(boxes / np.array([h, w, h, w], np.float32)),
            "groundtruth_instance_masks": tf.constant(
                np.transpose(masks, (2, 0, 1)).astype(np.float32)),
        }
        examples.append(parser._parse_train_data(data))  # noqa: SLF001  (its public path reads tfrecords)
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *examples)


def bench_model_garden(dataset, size: int, batch: int, steps: int, warmup: int, *,
                       num_classes: int, rois: int = 512, positive_fraction: float = 0.33,
                       post_nms: int = 2000, jit: bool = False) -> dict:
    """Seconds per Model Garden train step on ``batch`` images of ``dataset``.

    Args:
        dataset: a prepared mrcnn ``Dataset`` with at least ``batch`` images of ``size``.
        size: square input side.
        batch: images per step.
        steps: timed steps.
        warmup: untimed steps first (tracing, compiling).
        num_classes: including background.
        rois: sampled ROIs per image.
        positive_fraction: foreground fraction of the sampled ROIs (mask ROIs = the
            positive slots).
        post_nms: proposals kept per image.
        jit: compile the step with XLA.

    Returns:
        dict with img/s, ms/step, cpu s/step and xla.
    """
    import tensorflow as tf
    import tf_keras

    tf.keras.utils.set_random_seed(0)
    task = _task(size, num_classes, rois, positive_fraction, post_nms)
    model = task.build_model()
    # Frozen backbone BN, as mrcnn's frozen_bn: inference-mode statistics, no updates.
    for layer in model.backbone.submodules:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False
    optimizer = tf_keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    images, labels = _batch(task, dataset, size)
    images, labels = images[:batch], tf.nest.map_structure(lambda t: t[:batch], labels)

    @tf.function(jit_compile=jit)
    def step(images, labels):
        return task.train_step((images, labels), model, optimizer)[task.loss]

    seconds, cpu = time_steps(lambda: step(images, labels), steps, warmup)
    return {"img/s": batch / seconds, "ms/step": 1000 * seconds, "cpu s/step": cpu,
            "xla": jit}
