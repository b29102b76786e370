"""Initializers of the layers between the backbone and the losses, chosen by Config.NORM.

Frozen BatchNorm is an identity map at initialization, so from random weights nothing
normalizes the features that reach the FPN, the RPN and the box head. There Detectron's
choices keep the first losses finite: class predictors N(0, 0.01) (scores start near
uniform), box-delta predictors zero or N(0, 0.001) (proposals and detections start at their
anchors and ROIs; a random deltas layer made the first rpn_bbox_loss ~1e4), LeCun on the
linear FPN convs and He on the box head's fc layers.

With GroupNorm every FPN conv and box-head layer is normalized, the first losses are
finite with any of these, and the small predictors only slow learning by SGD: training
synthetic nuclei from scratch with GN at Matterport's SGD 0.001 (FROM_SCRATCH_RECIPE="off"),
mask AP50 after 200 images was 0.34 with Detectron's initializers and 0.54 with Keras'
defaults (Glorot uniform predictors and fc layers, He FPN), which GN gets
(docs/training-from-scratch.md). Trainable BatchNorm ("bn") keeps Detectron's: its FPN has
no norm, so the features reaching the predictors are not normalized either, and only GN
was measured. Pretrained weights overwrite all of them.

Each function returns a new initializer per call: an unseeded Keras initializer instance
returns the same values at every call, so two layers must not share one.
"""

from __future__ import annotations

from keras import initializers

# Keras' own default for Conv2D and Dense kernels.
KERAS_DEFAULT = "glorot_uniform"


def _normalized(norm: str) -> bool:
    # GroupNorm follows every FPN conv and box-head layer; BatchNorm kinds leave the FPN bare.
    return norm == "gn"


def class_predictor(norm: str = "frozen_bn") -> initializers.Initializer | str:
    """Class logits (rpn_class_raw, mrcnn_class_logits).

    Args:
        norm: Config.NORM.

    Returns:
        N(0, 0.01) without GN (first scores near uniform but not tied, so the first
        proposals and detections still differ); Keras' default with GN.
    """
    return KERAS_DEFAULT if _normalized(norm) else initializers.RandomNormal(stddev=0.01)


def rpn_delta_predictor(norm: str = "frozen_bn") -> initializers.Initializer | str:
    """RPN box deltas (rpn_bbox_pred).

    Args:
        norm: Config.NORM.

    Returns:
        Zeros without GN (every first proposal is its anchor); Keras' default with GN.
    """
    return KERAS_DEFAULT if _normalized(norm) else "zeros"


def box_delta_predictor(norm: str = "frozen_bn") -> initializers.Initializer | str:
    """Box-head deltas (mrcnn_bbox_fc).

    Args:
        norm: Config.NORM.

    Returns:
        N(0, 0.001) without GN (detections start at their ROIs; not exactly zero, since
        the ground-truth boxes join the ROIs with zero targets and zero predictions there
        would give the layer no gradient in early steps); Keras' default with GN.
    """
    return KERAS_DEFAULT if _normalized(norm) else initializers.RandomNormal(stddev=0.001)


def box_fc(norm: str = "frozen_bn") -> str:
    """The box head's "2fc" layers (mrcnn_class_conv1, mrcnn_class_conv2).

    Args:
        norm: Config.NORM.

    Returns:
        He normal without GN (they feed ReLUs); Keras' default with GN.
    """
    return KERAS_DEFAULT if _normalized(norm) else "he_normal"


def fpn_conv(norm: str = "frozen_bn") -> str:
    """The FPN convs (fpn_c5p5, ..., fpn_p2).

    Args:
        norm: Config.NORM.

    Returns:
        LeCun normal without GN (the FPN convs are linear, so LeCun keeps the
        activations' scale where He's factor 2 and the top-down sums would grow it); He
        normal with GN.
    """
    return "he_normal" if _normalized(norm) else "lecun_normal"
