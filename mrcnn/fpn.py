"""Feature Pyramid Network: lateral 1x1 convs, top-down upsampling, 3x3 output convs, P6."""

from __future__ import annotations

from keras import layers

from mrcnn import initializers
from mrcnn.component import Component
from mrcnn.norm import norm_layer


def fpn_graph(c2, c3, c4, c5, pyramid_size: int = 256, norm: str = "frozen_bn",
              gn_groups: int = 32) -> list:
    """Build P2..P6 from the backbone stages C2..C5 (Matterport names: fpn_c5p5, fpn_p2, ...).

    Args:
        c2, c3, c4, c5: backbone feature maps at strides 4, 8, 16, 32.
        pyramid_size: channels of every pyramid level (Config.TOP_DOWN_PYRAMID_SIZE).
        norm: Config.NORM. With "gn" every FPN conv is followed by GroupNorm (named
            ``<conv>_gn``), as in the GN paper; with BatchNorm kinds the FPN has no norm, as in
            Matterport and the FPN paper.
        gn_groups: GroupNorm groups.

    Returns:
        [P2, P3, P4, P5, P6]. P6 (stride 64) is P5 subsampled, used only by the RPN.
    """

    def conv(x, kernel: int, name: str):
        x = layers.Conv2D(pyramid_size, kernel, padding="same", name=name,
                          kernel_initializer=initializers.fpn_conv(norm))(x)
        if norm == "gn":
            x = norm_layer("gn", name + "_gn", gn_groups)(x)
        return x

    p5 = conv(c5, 1, "fpn_c5p5")
    p4 = layers.Add(name="fpn_p4add")([
        layers.UpSampling2D(2, name="fpn_p5upsampled")(p5), conv(c4, 1, "fpn_c4p4")])
    p3 = layers.Add(name="fpn_p3add")([
        layers.UpSampling2D(2, name="fpn_p4upsampled")(p4), conv(c3, 1, "fpn_c3p3")])
    p2 = layers.Add(name="fpn_p2add")([
        layers.UpSampling2D(2, name="fpn_p3upsampled")(p3), conv(c2, 1, "fpn_c2p2")])
    # 3x3 convs smooth the aliasing of the nearest-neighbour upsampling.
    p2 = conv(p2, 3, "fpn_p2")
    p3 = conv(p3, 3, "fpn_p3")
    p4 = conv(p4, 3, "fpn_p4")
    p5 = conv(p5, 3, "fpn_p5")
    p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]


class FPN(Component):
    """The Feature Pyramid Network (``fpn_graph``: Matterport's names fpn_c5p5, fpn_p2...).

    Contract of an FPN: called on ``[C2, C3, C4, C5]`` (strides 4..32), it returns
    ``[P2, P3, P4, P5, P6]`` (strides 4..64) with the same channel count on every level
    (the RPN head and the ROI heads are built for it).

    Args:
        pyramid_size: channels of every level (Config.TOP_DOWN_PYRAMID_SIZE).
        norm: Config.NORM ("gn" adds GroupNorm after each conv).
        gn_groups: GroupNorm groups (Config.GN_GROUPS).
    """

    def __init__(self, pyramid_size: int = 256, norm: str = "frozen_bn", gn_groups: int = 32):
        self.pyramid_size, self.norm, self.gn_groups = int(pyramid_size), norm, int(gn_groups)
        self._keep(pyramid_size=pyramid_size, norm=norm, gn_groups=gn_groups)

    def __call__(self, features: list) -> list:
        """Args: features [C2, C3, C4, C5]. Returns: [P2, P3, P4, P5, P6]."""
        c2, c3, c4, c5 = features
        return fpn_graph(c2, c3, c4, c5, self.pyramid_size, norm=self.norm,
                         gn_groups=self.gn_groups)
