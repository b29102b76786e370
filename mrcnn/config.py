"""Mask R-CNN configuration: the control panel.

Subclass ``Config`` and override what your dataset needs, as with Matterport's Mask_RCNN::

    class BalloonConfig(Config):
        NAME = "balloon"
        NUM_CLASSES = 1 + 1
        STEPS_PER_EPOCH = 100

Every attribute keeps Matterport's name and default. Knobs added by mrcnn sit in their own
section after Matterport's, grouped by stage: backbone (normalization), RPN (conv width),
ROI heads (GT boxes as proposals, box head, mask head width), training (optimizer,
schedule), compute (mixed precision, XLA) and data loading (workers, allocator). Each
comment says what the knob trades off. ``Config()`` validates itself and raises ``ValueError``
naming the attribute, its value and what is allowed.

This module imports only NumPy, so datasets and scripts can use it without TensorFlow.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from mrcnn.transform import image_meta_size

# glibc caps its mmap threshold at HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024

RESIZE_MODES = ("none", "square", "pad64", "crop")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("frozen_bn", "bn", "gn")
BOX_HEADS = ("2fc", "4conv1fc")
DETECTION_SCORE_MODES = ("argmax", "foreground")
MASK_PASTES = ("subpixel", "integer")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("constant", "plateau", "cosine")
FROM_SCRATCH_RECIPES = ("auto", "off")
MIXED_PRECISIONS = (None, "float32", "mixed_bfloat16", "mixed_float16")
JIT_CHOICES = (True, False, "auto")
LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")


# --- per-attribute type checks ------------------------------------------------------------
# Each Config attribute whose value must have a given type, checked one by one before the
# cross-attribute rules of ``Config.validate``. NumPy scalars count as numbers; bools never
# count as numbers (``True`` is an int in Python, never a sensible learning rate).


def _one_of(value: Any, choices: Sequence[Any]) -> bool:
    """``value in choices`` for the string (or None) choices of a setting; False for any
    other type (an array compared with ``in`` raises instead of answering)."""
    return isinstance(value, (str, type(None))) and value in choices


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_positive(value: Any) -> bool:
    return _is_finite(value) and value > 0


class Expect(NamedTuple):
    """What an attribute must be: a predicate and its description for the error message."""
    check: Callable[[Any], bool]
    description: str


def _optional(expect: Expect) -> Expect:
    return Expect(lambda v: v is None or expect.check(v), expect.description + " or None")


def _vector(element: Callable[[Any], bool], description: str) -> Expect:
    """A 1-D list, tuple or array whose elements all pass ``element``."""
    def check(value: Any) -> bool:
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                return False
        elif not isinstance(value, (list, tuple)):
            return False
        return all(element(v) for v in value)
    return Expect(check, description)


def _loss_weights(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        _is_finite(w) and w >= 0 for w in value.values())


_POSITIVE_INT = Expect(lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_FINITE = Expect(_is_finite, "a finite number")
_BOOL = Expect(lambda v: isinstance(v, (bool, np.bool_)), "True or False")
_POSITIVE_INTS = _vector(lambda v: _is_int(v) and v >= 1, "a list of integers >= 1")
_POSITIVE_NUMBERS = _vector(_is_positive, "a list of positive finite numbers")

ATTRIBUTE_TYPES: dict[str, Expect] = {
    # Read by __init__ to derive IMAGE_SHAPE: checked before it is compared with "crop".
    "IMAGE_RESIZE_MODE": Expect(lambda v: _one_of(v, RESIZE_MODES), f"one of {RESIZE_MODES}"),
    **dict.fromkeys(
        ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH", "NUM_CLASSES", "RPN_ANCHOR_STRIDE",
         "RPN_TRAIN_ANCHORS_PER_IMAGE", "PRE_NMS_LIMIT", "POST_NMS_ROIS_TRAINING",
         "POST_NMS_ROIS_INFERENCE", "TRAIN_ROIS_PER_IMAGE", "POOL_SIZE", "MASK_POOL_SIZE",
         "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES", "TOP_DOWN_PYRAMID_SIZE",
         "FPN_CLASSIF_FC_LAYERS_SIZE", "IMAGE_CHANNEL_COUNT", "GN_GROUPS",
         "RPN_CONV_CHANNELS", "MASK_HEAD_CHANNELS", "IMAGE_MAX_DIM"), _POSITIVE_INT),
    **dict.fromkeys(
        ("LEARNING_RATE", "LEARNING_MOMENTUM", "WEIGHT_DECAY", "ROI_POSITIVE_RATIO",
         "RPN_NMS_THRESHOLD", "DETECTION_NMS_THRESHOLD", "DETECTION_MIN_CONFIDENCE",
         "LR_PLATEAU_FACTOR", "LR_MIN_FACTOR", "LR_WARMUP_FACTOR"), _FINITE),
    **dict.fromkeys(("GRADIENT_CLIP_NORM", "IMAGE_MIN_SCALE"), _optional(_FINITE)),
    **dict.fromkeys(("USE_MINI_MASK", "TRAIN_ROIS_INCLUDE_GT", "USE_RPN_ROIS"), _BOOL),
    # Matterport: None trains BN in Keras' default mode, like True here (NORM="bn").
    "TRAIN_BN": _optional(_BOOL),
    "NAME": _optional(Expect(lambda v: isinstance(v, str), "a string")),
    **dict.fromkeys(("BACKBONE_STRIDES", "MASK_SHAPE"), _POSITIVE_INTS),
    "MINI_MASK_SHAPE": _vector(_POSITIVE_INT.check,
                               "(height, width): two positive sizes in pixels (integers)"),
    **dict.fromkeys(("RPN_ANCHOR_SCALES", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV"),
                    _POSITIVE_NUMBERS),
    "RPN_ANCHOR_RATIOS": _vector(_is_positive, "a list of positive ratios (width / height)"),
    "MEAN_PIXEL": _vector(_is_finite, "a list of finite numbers, one per channel"),
    "LOSS_WEIGHTS": Expect(_loss_weights, "a dict of loss name -> finite weight >= 0"),
}


class Config:
    """Base configuration. Subclass it and override the attributes you need.

    Derived attributes (``BATCH_SIZE``, ``IMAGE_SHAPE``, ``IMAGE_META_SIZE`` and the resolved
    ``NORM``) are computed in ``__init__``, so override base attributes as class attributes,
    not after construction (or call ``Config.__init__`` again). A subclass that sets a
    derived attribute to another value than the computed one gets a warning naming both.

    A subclass may add its own upper-case attributes (a data path, a class list). One whose
    name is close to a setting's (``LEARNING_RAT``) is most likely a typo that leaves the
    setting at its default, so it is warned about with a did-you-mean; other new names are
    taken silently. List deliberate near-misses in ``OWN_SETTINGS`` to silence the warning.
    """

    # Upper-case attributes of your subclass that are yours, not mrcnn settings: never
    # warned about even when their name is close to a setting's.
    OWN_SETTINGS: Sequence[str] = ()

    # Name the configuration, e.g. "coco" or "shapes". Used in log folder and checkpoint names.
    NAME: str | None = None

    # Number of replicas to train with, over all machines together (4 GPUs on each of 2
    # machines: 8). >1 trains data-parallel on the backend's engine: tf.distribute's
    # MirroredStrategy (MultiWorkerMirroredStrategy when TF_CONFIG lists several workers)
    # or keras.distribution.DataParallel on JAX (all processes' devices after
    # jax.distributed.initialize()); see mrcnn/ops/distribute.py. The global batch is
    # IMAGES_PER_GPU * GPU_COUNT, and the losses are those of that batch on one device, so
    # more GPUs means a bigger batch (scale LEARNING_RATE with it). Inference (detect) runs
    # on one device whatever this says.
    GPU_COUNT = 1

    # Images per replica. A 12GB GPU fits about two 1024x1024 images. Fewer images per GPU
    # is the main memory lever after image size; BatchNorm statistics suffer below ~8 images
    # per replica, which is why NORM defaults to frozen BN and "gn" exists.
    IMAGES_PER_GPU = 2

    # Training steps per epoch. Need not match the dataset size: it sets how often
    # checkpoints, TensorBoard summaries and validation happen.
    STEPS_PER_EPOCH = 1000

    # Validation steps run at the end of every epoch. More gives a steadier validation
    # loss and costs time.
    VALIDATION_STEPS = 50

    # Backbone: "resnet50" or "resnet101" (Matterport), or "resnet18" / "resnet34" (basic
    # blocks, same layer naming). resnet50 needs noticeably less memory and time than
    # resnet101 and is enough for most datasets; resnet18/34 suit small datasets trained
    # from scratch and CPUs, at some cost in accuracy on hard data. A callable is also accepted (Matterport contract):
    # ``BACKBONE(input_image, stage5=True, train_bn=...) -> [C1, C2, C3, C4, C5]``; then
    # COMPUTE_BACKBONE_SHAPE must be set too.
    BACKBONE: str | Callable = "resnet101"

    # Only for a callable BACKBONE: ``COMPUTE_BACKBONE_SHAPE(image_shape)`` returns the
    # [height, width] of each pyramid level (array of shape [5, 2]).
    COMPUTE_BACKBONE_SHAPE: Callable | None = None

    # Stride of each level of the feature pyramid (P2..P6) relative to the input image.
    # These follow the ResNet stages and are rarely changed.
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]

    # Size of the fully connected layers of the classification head ("2fc" box head).
    # 1024 as in the FPN paper; smaller saves memory with some loss of box accuracy.
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024

    # Channels of the top-down feature pyramid. 256 everywhere in the literature;
    # 128 roughly halves FPN and head memory.
    TOP_DOWN_PYRAMID_SIZE = 256

    # Number of classes, background included (e.g. 1 + number of object classes).
    NUM_CLASSES = 1

    # Side of the square anchor at each pyramid level, in pixels. Small objects need small
    # anchors: missing masks on small objects usually means the smallest scale is too big.
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)

    # Anchor aspect ratios (width/height) at each position. More ratios help elongated
    # objects and cost anchors (memory and time in the RPN and its targets).
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]

    # Anchor stride on each feature map: 1 = an anchor set at every cell, 2 = every other
    # cell (4x fewer anchors, less memory, worse recall on small objects).
    RPN_ANCHOR_STRIDE = 1

    # IoU threshold of the NMS that filters RPN proposals. Raise it (e.g. 0.9) to keep more
    # overlapping proposals for crowded small objects; lower it for fewer, more varied ones.
    RPN_NMS_THRESHOLD = 0.7

    # Anchors per image used to train the RPN (half positive at most). More anchors give a
    # denser RPN signal; images with few objects do fine with fewer.
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256

    # Proposals kept (by RPN score) before NMS. Bounds the NMS cost; lower it to save time.
    PRE_NMS_LIMIT = 6000

    # Proposals kept after NMS, in training and in inference. The main time/memory knob of
    # the second stage together with TRAIN_ROIS_PER_IMAGE; fewer risks missing objects in
    # crowded images.
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    # Mini masks: store each ground-truth mask cropped to its box and resized to
    # MINI_MASK_SHAPE instead of full image size. Saves most of the ground-truth memory at
    # high resolution, at the cost of some detail on large objects.
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)  # (height, width)

    # Input image resizing.
    # none:   no resizing or padding; the image is returned as is (training pads it to
    #         IMAGE_SHAPE, so it must not be larger than IMAGE_MAX_DIM).
    # square: scale so the short side is at least IMAGE_MIN_DIM and the long side at most
    #         IMAGE_MAX_DIM, then pad with zeros to IMAGE_MAX_DIM x IMAGE_MAX_DIM.
    # pad64:  scale up to IMAGE_MIN_DIM / IMAGE_MIN_SCALE, then pad each side to a multiple
    #         of 64 (inference on varied sizes; IMAGE_MAX_DIM is ignored when resizing).
    # crop:   scale as above, then take a random IMAGE_MIN_DIM x IMAGE_MIN_DIM crop (training
    #         on large images at full resolution, e.g. nucleus).
    # Smaller images are the strongest memory lever, at the cost of small-object recall.
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    # Minimum scaling ratio, checked after IMAGE_MIN_DIM: 2 upscales every image at least
    # twice (useful for tiny objects), 0 disables it.
    IMAGE_MIN_SCALE = 0
    # Channels per image: 3 for RGB. Other counts need MEAN_PIXEL of the same length and a
    # first convolution trained from scratch (pretrained conv1 weights expect 3).
    IMAGE_CHANNEL_COUNT = 3

    # Mean pixel value (RGB) subtracted from the input.
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    # ROIs per image fed to the classifier and mask heads in training. The paper uses 512;
    # the RPN rarely produces that many positives, so 200 keeps the 1:3 balance with less
    # memory. Lower it to save memory, raise it with many objects per image.
    TRAIN_ROIS_PER_IMAGE = 200

    # Share of positive ROIs in the sampled ROIs. 0.33 as in the paper.
    ROI_POSITIVE_RATIO = 0.33

    # ROI pooling output size of the classifier and the mask heads.
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14

    # Mask head output size. The head upsamples its pool x2, so this must be
    # 2 * MASK_POOL_SIZE.
    MASK_SHAPE = [28, 28]

    # Ground-truth instances per image that are used (the rest are dropped, with a warning).
    # Memory of the mask targets grows linearly with it.
    MAX_GT_INSTANCES = 100

    # Standard deviations of the box refinement targets of the RPN and of the final boxes.
    # They scale the regression targets to unit-ish variance.
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    # Maximum number of final detections per image. Raise it for crowded images (e.g. 400
    # for nuclei): each detection also gets a mask, so inference memory grows with it.
    DETECTION_MAX_INSTANCES = 100

    # Minimum class probability for a detection to be kept. Lower it (even to 0) for higher
    # mask recall at the cost of more false positives.
    DETECTION_MIN_CONFIDENCE = 0.7

    # IoU threshold of the per-class NMS on final detections.
    DETECTION_NMS_THRESHOLD = 0.3

    # Which ROIs become detections. "argmax" (Matterport): an ROI's class is the most
    # probable of all classes, so one the head finds likelier background than anything is
    # dropped, whatever DETECTION_MIN_CONFIDENCE says. "foreground" (torchvision,
    # detectron2): its class is the most probable object class, and that probability is
    # the score; DETECTION_MIN_CONFIDENCE alone filters. With a low threshold, "foreground"
    # adds low-score detections below Matterport's: mask recall and AP rise (they never
    # fall: the higher-scored detections stay as they were), at the cost of more
    # detections (up to DETECTION_MAX_INSTANCES) to post-process.
    DETECTION_SCORE_MODE = "argmax"

    # How detect() pastes each 28x28 mask into the image. "subpixel" (detectron2): onto the
    # detection box as predicted, with fractional pixel edges. "integer" (Matterport):
    # onto the box rounded to whole pixels first, which moves each edge by up to half a
    # pixel, a large share of an object a dozen pixels across: on the synthetic nuclei
    # (~12 px) the same 12 checkpoints score 0.017 +- 0.010 more mask AP (every one gains)
    # with "subpixel" (docs: training from scratch). Same cost; the returned boxes are
    # rounded either way.
    MASK_PASTE = "subpixel"

    # Learning rate and momentum. The paper uses 0.02 for 16 images per batch; Matterport
    # lowered it because gradients explode more easily with fewer images, especially with
    # SGD from scratch.
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9

    # Weight decay. With SGD it is Matterport's L2 term on kernels (not on BN/GN gamma and
    # beta, each weight's sum of squares divided by its size); with AdamW it is the
    # optimizer's decoupled decay.
    WEIGHT_DECAY = 0.0001

    # Loss weights, to balance the five losses.
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.,
        "rpn_bbox_loss": 1.,
        "mrcnn_class_loss": 1.,
        "mrcnn_bbox_loss": 1.,
        "mrcnn_mask_loss": 1.,
    }

    # Train the heads on RPN proposals (True) or on ROIs that the data generator samples
    # around the ground truth (False; only for debugging the heads without an RPN).
    USE_RPN_ROIS = True

    # Matterport's BatchNorm switch. False: BN layers are frozen (inference mode, not
    # trained): right for small batches. True: BN layers are trained. Used to derive NORM
    # when NORM is left at None.
    TRAIN_BN = False

    # Gradient norm clipping, per weight tensor as Matterport (Keras ``clipnorm``). Guards
    # against the exploding gradients of small batches; None disables it.
    GRADIENT_CLIP_NORM = 5.0

    # ---------------------------------------------------------------------------------
    # mrcnn knobs (not in Matterport), grouped by stage
    # ---------------------------------------------------------------------------------

    # -- Backbone and pyramid --

    # Normalization layers.
    # frozen_bn: BatchNorm always in inference mode and not trained (Matterport's
    #            TRAIN_BN=False). Best with pretrained weights and small batches.
    # bn:        BatchNorm trained (needs larger batches per replica to be stable).
    # gn:        GroupNorm in backbone, FPN, box head and mask head, as in the GN paper.
    #            Independent of batch size, the choice for training from scratch; a little
    #            slower than frozen BN.
    # None: derived from TRAIN_BN (False -> "frozen_bn", otherwise "bn").
    NORM: str | None = None

    # Groups of GroupNorm (NORM="gn"). 32 as in the GN paper; must divide every channel count.
    GN_GROUPS = 32

    # -- RPN --

    # Channels of the RPN's shared 3x3 conv (512 in Matterport and the paper). It runs on
    # every pyramid level, P2 included, so it is one of the largest costs at high
    # resolution; 256 or 128 is plenty for simple data.
    RPN_CONV_CHANNELS = 512

    # -- ROI heads --

    # Add the ground-truth boxes to the RPN proposals before sampling the ROIs of the heads
    # (as Detectron and torchvision do; Matterport did not). Early in training, and above all
    # from scratch, the RPN finds few objects; the GT boxes give the heads positives to learn
    # from at once. Costs MAX_GT_INSTANCES more candidate ROIs, nothing at inference.
    TRAIN_ROIS_INCLUDE_GT = True

    # Channels of the mask head's four 3x3 convs and deconv (256 in the paper). Its cost
    # scales with positive ROIs x channels^2: the main lever of mask-head time and memory.
    MASK_HEAD_CHANNELS = 256

    # Box head. "2fc": Matterport's two 1024-wide layers (a 7x7 conv and a 1x1 conv).
    # "4conv1fc": four 3x3 convs and one fc, as in the GN paper: more accurate with GN,
    # slower.
    BOX_HEAD = "2fc"

    # -- Training --

    # Optimizer. "sgd": SGD with momentum LEARNING_MOMENTUM (Matterport). "adamw": AdamW with
    # decoupled weight decay, more forgiving for training from scratch and fine-tuning with
    # small datasets.
    OPTIMIZER = "sgd"

    # Learning-rate schedule. "constant" (Matterport); "plateau": multiply the rate by
    # LR_PLATEAU_FACTOR when the validation loss stops improving for LR_PLATEAU_PATIENCE
    # epochs (ReduceLROnPlateau), down to LR_MIN_FACTOR * LEARNING_RATE; "cosine": cosine
    # decay over the epochs of each train() call down to LR_MIN_FACTOR * LEARNING_RATE.
    LR_SCHEDULE = "constant"
    LR_PLATEAU_FACTOR = 0.1
    LR_PLATEAU_PATIENCE = 3
    LR_MIN_FACTOR = 0.0

    # Linear warm-up: over the first LR_WARMUP_STEPS optimizer steps of a run the rate
    # climbs from LR_WARMUP_FACTOR x the scheduled rate to the full rate (Goyal et al.;
    # Detectron's 1,000 iterations). From random weights the first gradients are large and
    # erratic; a warm-up lets a high rate be used without diverging. 0 = none (Matterport,
    # and fine-tuning, where the weights are already sane). Counted by the optimizer, so a
    # resumed run continues the ramp and a later stage does not repeat it.
    LR_WARMUP_STEPS = 0
    LR_WARMUP_FACTOR = 0.001

    # The from-scratch recipe (mrcnn.presets.FROM_SCRATCH: AdamW at 0.002, 50-step warm-up,
    # plateau schedule), for a train() that starts from random weights: no load_weights(),
    # or none that filled the backbone. "auto": train() applies it to the settings of that
    # recipe your Config leaves at their defaults (yours stay) and says so in one line; the
    # run's config.json records the result. Measured on nuclei from scratch it learns much
    # faster than Matterport's SGD at 0.001, which is tuned for fine-tuning pretrained
    # weights. "off": train with this Config's settings as they are (e.g. to reproduce a
    # Matterport run or to compare optimizers). Runs from loaded weights never use it.
    FROM_SCRATCH_RECIPE = "auto"

    # -- Compute: precision and compilation --

    # Mixed precision policy: None / "float32" (full precision), "mixed_bfloat16" (Ampere+
    # GPUs, TPUs; no loss scaling needed) or "mixed_float16" (older GPUs; loss scaling is
    # applied). Saves activation memory and time; the losses are always computed in float32.
    MIXED_PRECISION: str | None = None

    # Compile the train and predict steps with XLA: True, False or "auto". XLA fuses the
    # graph into fewer, larger kernels: faster steps on a GPU/TPU after a one-time compile
    # (minutes for ResNet-101), but slower on a CPU, where TensorFlow's own kernels (oneDNN)
    # win: R50-FPN 256 px batch 2 train step on 2 cores, 0.23 img/s as a plain graph and
    # 0.12 img/s with XLA. "auto" compiles where it pays: always on JAX (there the only
    # alternative is running op by op), on TensorFlow only with a GPU/TPU. False is also the
    # setting for quick debugging.
    JIT_COMPILE: bool | str = "auto"

    # -- Data loading --

    # Data loading: worker threads (or processes) of the training PyDataset, by default one
    # per usable core, so that the host keeps the accelerator fed. 0 loads in the training
    # loop (simplest to debug; 1 does the same in Keras). Batches are reproducible with any
    # number of workers (each batch has its own seeded random state).
    DATA_WORKERS = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1)
    # Threads (False) or processes (True). OpenCV and NumPy release the GIL, so threads
    # scale on the resize/mask/anchor work and share the dataset for free; processes get
    # a pickled copy of the dataset each epoch and only pay off when a dataset's own
    # Python code (decoding, annotation parsing) dominates. See bench/input_pipeline.py.
    DATA_USE_MULTIPROCESSING = False

    # glibc's mmap threshold (bytes) held during training on TensorFlow. tf.data's generator
    # op freezes it at 128 KB, so every activation buffer is mmap-ed and page-faulted anew
    # each step: 2.2 s instead of 1.3 s per shapes step on 2 cores (see mrcnn/allocator.py).
    # Higher keeps freed buffers in malloc's heap (faster, resident memory may stay higher);
    # the maximum is 32 MiB. 0 leaves the allocator alone. No effect off glibc.
    MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024

    def __init__(self) -> None:
        """Compute derived attributes and validate the configuration.

        Raises:
            ValueError: an attribute has a value that cannot work; the message names the
                attribute, its value and what is allowed.
        """
        # A function assigned as a class attribute would come back as a bound method
        # (called with the config as first argument): store the plain function instead.
        for attr in ("BACKBONE", "COMPUTE_BACKBONE_SHAPE"):
            value = getattr(self, attr)
            if inspect.ismethod(value) and value.__self__ is self:
                setattr(self, attr, value.__func__)

        self._check_types()  # before the derived attributes compute with the values
        self._warn_unknown_settings()
        # What a subclass set for the attributes computed below (class attributes only: a
        # second __init__ call recomputes the instance's own values without a word).
        declared = {attr: getattr(type(self), attr) for attr in DERIVED
                    if hasattr(type(self), attr)}
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT

        # Input image shape used by the training graph: crops are MIN_DIM square, every
        # other mode fits in a MAX_DIM square.
        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = np.array(
                [self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM, self.IMAGE_CHANNEL_COUNT])
        else:
            self.IMAGE_SHAPE = np.array(
                [self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, self.IMAGE_CHANNEL_COUNT])

        # id + original shape (3) + image shape (3) + window (4) + scale + active class ids
        # (the layout is transform.META_LAYOUT).
        self.IMAGE_META_SIZE = image_meta_size(self.NUM_CLASSES)
        self._warn_derived(declared)

        if self.NORM is None:
            self.NORM = "frozen_bn" if self.TRAIN_BN is False else "bn"
        self.validate()

    def _warn_derived(self, declared: dict[str, Any]) -> None:
        """Warn when a subclass set a derived attribute that ``__init__`` replaced."""
        for attr, value in declared.items():
            used = getattr(self, attr)
            try:
                same = bool(np.array_equal(np.asarray(value), np.asarray(used)))
            except (TypeError, ValueError):
                same = False
            if not same:
                warnings.warn(
                    f"{type(self).__name__}.{attr} = {value!r} is not used: Config computes "
                    f"{attr} = {_plain(used)!r} ({DERIVED[attr]}); set those instead.",
                    stacklevel=3)

    def _warn_unknown_settings(self) -> None:
        """Warn about a subclass attribute whose name is close to a setting's (a typo)."""
        known = set(SETTINGS) | set(DERIVED)
        own = {self.OWN_SETTINGS} if isinstance(self.OWN_SETTINGS, str) else \
            set(self.OWN_SETTINGS)
        for cls in type(self).__mro__:
            if cls is Config or not issubclass(cls, Config):
                continue
            for name in vars(cls):
                if not name.isupper() or name.startswith("_") or name in known or name in own:
                    continue
                close = suggest(name, known, cutoff=0.8)
                if close:
                    warnings.warn(
                        f"{cls.__name__}.{name} is not a Config setting (did you mean "
                        f"{' or '.join(close)}?); it is kept as your own attribute and the "
                        f"setting keeps its value. Add {name!r} to OWN_SETTINGS if it is "
                        "meant.", stacklevel=3)

    def _check_types(self) -> None:
        """Check each attribute of ``ATTRIBUTE_TYPES`` on its own (type, finiteness, sign).

        Runs before anything computes with the values, so that ``LEARNING_RATE = "0.01"``
        is reported as such rather than as a ``TypeError`` deep in training.

        Raises:
            ValueError: naming the first attribute that does not match, its value and what
                is expected.
        """
        for attr, expect in ATTRIBUTE_TYPES.items():
            value = getattr(self, attr)
            if not expect.check(value):
                raise ValueError(f"{type(self).__name__}.{attr} = {value!r} is invalid: "
                                 f"expected {expect.description}.")

    # ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every setting; raise ``ValueError`` naming the first bad one.

        Raises:
            ValueError: with the attribute name, its value and what is allowed.
        """

        def fail(attr: str, expected: str) -> None:
            raise ValueError(
                f"{type(self).__name__}.{attr} = {getattr(self, attr)!r} is invalid: "
                f"{expected}.")

        def positive_int(attr: str) -> None:
            if not _POSITIVE_INT.check(getattr(self, attr)):
                fail(attr, "expected an integer >= 1")

        self._check_types()
        if self.NUM_CLASSES < 2:
            fail("NUM_CLASSES", "expected at least 2: class 0 is the background, so "
                 "NUM_CLASSES = 1 + the number of object classes (set it in your Config "
                 "subclass)")
        if not (isinstance(self.MALLOC_MMAP_THRESHOLD, numbers.Integral)
                and not isinstance(self.MALLOC_MMAP_THRESHOLD, bool)
                and 0 <= self.MALLOC_MMAP_THRESHOLD <= MAX_MMAP_THRESHOLD):
            fail("MALLOC_MMAP_THRESHOLD",
                 f"expected an integer number of bytes in [0, {MAX_MMAP_THRESHOLD}]")
        for attr in ("VALIDATION_STEPS", "DATA_WORKERS", "LR_PLATEAU_PATIENCE",
                     "LR_WARMUP_STEPS"):
            value = getattr(self, attr)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                fail(attr, "expected an integer >= 0")
        if not 0 <= self.LR_MIN_FACTOR <= 1:
            fail("LR_MIN_FACTOR", "expected a fraction of LEARNING_RATE in [0, 1]")
        if not 0 < self.LR_WARMUP_FACTOR <= 1:
            fail("LR_WARMUP_FACTOR", "expected a fraction of the learning rate in (0, 1]")
        if not 0 <= self.LEARNING_MOMENTUM < 1:
            fail("LEARNING_MOMENTUM", "expected a momentum in [0, 1)")

        # Backbone.
        if callable(self.BACKBONE):
            if not callable(self.COMPUTE_BACKBONE_SHAPE):
                fail("COMPUTE_BACKBONE_SHAPE",
                     "a callable BACKBONE needs COMPUTE_BACKBONE_SHAPE(image_shape) returning "
                     "the [height, width] of each pyramid level")
        elif not _one_of(self.BACKBONE, BACKBONES):
            fail("BACKBONE", f"expected one of {BACKBONES} or a callable")
        if len(self.BACKBONE_STRIDES) != 5:
            fail("BACKBONE_STRIDES", "expected 5 strides, one per pyramid level P2..P6")
        if len(self.RPN_ANCHOR_SCALES) != len(self.BACKBONE_STRIDES):
            fail("RPN_ANCHOR_SCALES",
                 f"expected one scale per pyramid level, i.e. {len(self.BACKBONE_STRIDES)} "
                 f"(len(BACKBONE_STRIDES)), got {len(self.RPN_ANCHOR_SCALES)}")
        if len(self.RPN_ANCHOR_RATIOS) < 1 or any(r <= 0 for r in self.RPN_ANCHOR_RATIOS):
            fail("RPN_ANCHOR_RATIOS", "expected a non-empty list of positive ratios")

        # Image sizes.
        if not _one_of(self.IMAGE_RESIZE_MODE, RESIZE_MODES):
            fail("IMAGE_RESIZE_MODE", f"expected one of {RESIZE_MODES}")
        if self.IMAGE_MIN_DIM is not None and (
                not isinstance(self.IMAGE_MIN_DIM, numbers.Integral)
                or isinstance(self.IMAGE_MIN_DIM, bool) or self.IMAGE_MIN_DIM < 0):
            fail("IMAGE_MIN_DIM", "expected an integer number of pixels (or 0/None for none)")
        if self.IMAGE_RESIZE_MODE == "crop":
            positive_int("IMAGE_MIN_DIM")
            if self.IMAGE_MIN_DIM % 64:
                fail("IMAGE_MIN_DIM", "crop mode trains on IMAGE_MIN_DIM squares, which must "
                     "be divisible by 64 (the backbone halves the size 6 times)")
        else:
            if self.IMAGE_MAX_DIM % 64:
                fail("IMAGE_MAX_DIM", "the training image shape is IMAGE_MAX_DIM square, "
                     "which must be divisible by 64 (the backbone halves the size 6 times)")
            if self.IMAGE_RESIZE_MODE == "pad64" and self.IMAGE_MIN_DIM and \
                    self.IMAGE_MIN_DIM % 64:
                fail("IMAGE_MIN_DIM", "pad64 mode needs IMAGE_MIN_DIM divisible by 64")
            if self.IMAGE_RESIZE_MODE == "square" and self.IMAGE_MIN_DIM and \
                    self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM:
                fail("IMAGE_MIN_DIM", f"expected <= IMAGE_MAX_DIM ({self.IMAGE_MAX_DIM})")
        if self.IMAGE_MIN_SCALE is not None and self.IMAGE_MIN_SCALE < 0:
            fail("IMAGE_MIN_SCALE", "expected 0 (off) or a positive scale")
        if np.shape(self.MEAN_PIXEL) != (self.IMAGE_CHANNEL_COUNT,):
            fail("MEAN_PIXEL", f"expected {self.IMAGE_CHANNEL_COUNT} values, one per channel "
                 "(IMAGE_CHANNEL_COUNT)")
        if len(self.MINI_MASK_SHAPE) != 2 or min(self.MINI_MASK_SHAPE) < 1:
            fail("MINI_MASK_SHAPE", "expected (height, width) with positive sizes")
        if list(self.MASK_SHAPE) != [2 * self.MASK_POOL_SIZE] * 2:
            fail("MASK_SHAPE", f"the mask head upsamples MASK_POOL_SIZE ({self.MASK_POOL_SIZE}) "
                 f"x2, so expected [{2 * self.MASK_POOL_SIZE}, {2 * self.MASK_POOL_SIZE}]")

        # Sampling and thresholds.
        if not 0 < self.ROI_POSITIVE_RATIO <= 1:
            fail("ROI_POSITIVE_RATIO", "expected a share in (0, 1]")
        if int(self.TRAIN_ROIS_PER_IMAGE * self.ROI_POSITIVE_RATIO) < 1:
            fail("TRAIN_ROIS_PER_IMAGE", "TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO "
                 f"= {self.TRAIN_ROIS_PER_IMAGE * self.ROI_POSITIVE_RATIO:g} leaves no "
                 "positive ROI per image; expected at least 1")
        for attr in ("RPN_NMS_THRESHOLD", "DETECTION_NMS_THRESHOLD"):
            if not 0 < getattr(self, attr) <= 1:
                fail(attr, "expected an IoU threshold in (0, 1]")
        if not 0 <= self.DETECTION_MIN_CONFIDENCE <= 1:
            fail("DETECTION_MIN_CONFIDENCE", "expected a probability in [0, 1]")
        if np.shape(self.RPN_BBOX_STD_DEV) != (4,) or np.shape(self.BBOX_STD_DEV) != (4,):
            fail("BBOX_STD_DEV" if np.shape(self.BBOX_STD_DEV) != (4,) else "RPN_BBOX_STD_DEV",
                 "expected 4 values (dy, dx, dh, dw)")

        # Training.
        unknown = set(self.LOSS_WEIGHTS) - set(LOSS_NAMES)
        if unknown:
            fail("LOSS_WEIGHTS", f"unknown loss names {sorted(unknown)}; expected keys among "
                 f"{LOSS_NAMES}")
        if self.LEARNING_RATE <= 0:
            fail("LEARNING_RATE", "expected a positive learning rate")
        if self.WEIGHT_DECAY < 0:
            fail("WEIGHT_DECAY", "expected >= 0")
        if self.GRADIENT_CLIP_NORM is not None and self.GRADIENT_CLIP_NORM <= 0:
            fail("GRADIENT_CLIP_NORM", "expected a positive norm or None")
        if not _one_of(self.NORM, NORMS):
            fail("NORM", f"expected one of {NORMS} (or None to derive it from TRAIN_BN)")
        if self.NORM == "gn":
            for attr in ("TOP_DOWN_PYRAMID_SIZE", "MASK_HEAD_CHANNELS"):
                if getattr(self, attr) % self.GN_GROUPS:
                    fail("GN_GROUPS", f"GroupNorm groups must divide {attr} "
                         f"({getattr(self, attr)})")
            if 64 % self.GN_GROUPS:
                fail("GN_GROUPS", "GroupNorm groups must divide the 64 channels of conv1")
        if not _one_of(self.BOX_HEAD, BOX_HEADS):
            fail("BOX_HEAD", f"expected one of {BOX_HEADS}")
        if not _one_of(self.DETECTION_SCORE_MODE, DETECTION_SCORE_MODES):
            fail("DETECTION_SCORE_MODE", f"expected one of {DETECTION_SCORE_MODES}")
        if not _one_of(self.MASK_PASTE, MASK_PASTES):
            fail("MASK_PASTE", f"expected one of {MASK_PASTES}")
        if not _one_of(self.OPTIMIZER, OPTIMIZERS):
            fail("OPTIMIZER", f"expected one of {OPTIMIZERS}")
        if not _one_of(self.LR_SCHEDULE, LR_SCHEDULES):
            fail("LR_SCHEDULE", f"expected one of {LR_SCHEDULES}")
        if not 0 < self.LR_PLATEAU_FACTOR < 1:
            fail("LR_PLATEAU_FACTOR", "expected a factor in (0, 1)")
        if not _one_of(self.FROM_SCRATCH_RECIPE, FROM_SCRATCH_RECIPES):
            fail("FROM_SCRATCH_RECIPE", f"expected one of {FROM_SCRATCH_RECIPES}")
        if not _one_of(self.MIXED_PRECISION, MIXED_PRECISIONS):
            fail("MIXED_PRECISION", f"expected one of {MIXED_PRECISIONS}")
        if not (self.JIT_COMPILE is True or self.JIT_COMPILE is False
                or isinstance(self.JIT_COMPILE, str) and self.JIT_COMPILE == "auto"):
            fail("JIT_COMPILE", f"expected one of {JIT_CHOICES}")
        if not self.USE_RPN_ROIS:
            fail("USE_RPN_ROIS", "training the heads on generator ROIs is not supported by "
                 "mrcnn; expected True")

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a dict of upper-case attribute names to values.

        Returns:
            Mapping of every public, non-callable attribute (NumPy arrays become lists).
        """
        out = {}
        for name in sorted(dir(self)):
            if name.startswith("_") or not name.isupper() or name == "OWN_SETTINGS":
                continue  # OWN_SETTINGS lists the user's attributes: not a setting itself
            value = getattr(self, name)
            if callable(value):
                if name != "BACKBONE":
                    continue  # e.g. COMPUTE_BACKBONE_SHAPE: nothing to print or serialize
                value = getattr(value, "__name__", repr(value))
            if isinstance(value, np.ndarray):
                value = value.tolist()
            out[name] = value
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """``to_dict()`` with JSON types only: what a run folder's ``config.json`` holds.

        Tuples become lists, NumPy scalars Python numbers, and anything JSON cannot hold
        (an object a user put in a Config) its ``repr``; the keys and values are otherwise
        exactly those ``display()`` prints.

        Returns:
            A dict that ``json.dumps`` accepts.
        """
        return {key: _json_safe(value) for key, value in self.to_dict().items()}

    def display(self) -> None:
        """Print every setting, one per line, as Matterport's ``Config.display()`` did."""
        print("\nConfigurations:")
        for key, value in self.to_dict().items():
            print(f"{key:30} {value}")
        print("\n")


# Attributes Config.__init__ computes, and from what.
DERIVED = {
    "BATCH_SIZE": "IMAGES_PER_GPU * GPU_COUNT",
    "IMAGE_SHAPE": "[IMAGE_MAX_DIM, IMAGE_MAX_DIM, IMAGE_CHANNEL_COUNT], or IMAGE_MIN_DIM in "
                   "crop mode",
    "IMAGE_META_SIZE": "from NUM_CLASSES",
}

# Every setting of the base Config (what a subclass may override).
SETTINGS = frozenset(name for name in vars(Config)
                     if name.isupper() and not name.startswith("_")) - {"OWN_SETTINGS"}


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _json_safe(value: Any) -> Any:
    """A JSON-compatible copy of a Config value (see ``Config.to_json_dict``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return repr(value)


def suggest(name: str, known: Iterable[str], cutoff: float = 0.6) -> list[str]:
    """Settings whose names are close to ``name`` (a did-you-mean), closest first.

    Args:
        name: the unknown name.
        known: the valid names.
        cutoff: similarity in [0, 1] a suggestion needs (``difflib``'s ratio).

    Returns:
        Up to 3 names.
    """
    return difflib.get_close_matches(name, sorted(known), n=3, cutoff=cutoff)


def parse_overrides(pairs: Sequence[str], base: type[Config] = Config) -> dict[str, Any]:
    """``KEY=VALUE`` strings (a command line's ``--set``) -> Config attribute overrides.

    Detectron2's convention: each VALUE is read as a Python literal (``0.01``, ``(8, 16)``,
    ``None``, ``True``, ``{"rpn_class_loss": 2.0}``); a bare word that is not a literal is a
    string (``BACKBONE=resnet18``). Values are validated when the Config is built.

    Args:
        pairs: e.g. ``["BACKBONE=resnet18", "IMAGE_MIN_DIM=256"]``.
        base: the Config class the keys must belong to.

    Returns:
        {KEY: value}, in the given order (a key given twice keeps the last value).

    Raises:
        ValueError: a pair without "=", or a KEY that is not an upper-case attribute of
            ``base``; the message names it (and suggests close names).
    """
    known = {name for name in dir(base) if name.isupper() and not name.startswith("_")}
    known.discard("OWN_SETTINGS")
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. IMAGE_MIN_DIM=256")
        if key not in known:
            close = suggest(key.upper(), known)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"--set {pair!r}: {key} is not a setting of "
                             f"{base.__name__}{hint}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()  # a bare word: a string such as resnet18 or square
        overrides[key] = value
    return overrides
