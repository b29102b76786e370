"""``import mrcnn.imgaug_compat`` before ``import imgaug``: imgaug 0.4.0 on NumPy 2.

The one line Matterport-style scripts add above their imgaug import. It restores the
``np.sctypes`` entries imgaug reads on import (``mrcnn.augment.restore_numpy_for_imgaug``);
nothing else in NumPy or imgaug is changed.
"""

from mrcnn.augment import restore_numpy_for_imgaug

restore_numpy_for_imgaug()
