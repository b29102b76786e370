"""Datasets that need no code: COCO json, VIA json, the DSB nucleus folders, ``module:Class``.

Each loader is a ``mrcnn.dataset.Dataset`` subclass that registers images and decodes masks
from a data file, checks the file when it is read (an error names the file and the entry)
and keeps every image and mask path inside its image root (``mrcnn.paths.inside``; pass
``allow_outside=True`` to accept other paths on purpose):

- ``coco.CocoDataset``: any COCO instances json (any categories; polygons, RLE, crowds as
  negative class ids), images in any folder (detectron2's ``register_coco_instances``).
- ``via.ViaDataset``: a VGG Image Annotator json; polygons, rectangles, circles and ellipses;
  several classes through a ``region_attributes`` key.
- ``dsb.NucleusDataset``: the 2018 Data Science Bowl folder layout, one mask PNG per instance.
- ``spec.load_dataset``: a ``--data`` value (a json file, a folder or ``module:Class``) to a
  prepared dataset, as the ``mrcnn`` command reads it.
"""

from mrcnn.datasets.coco import CocoDataset  # noqa: F401
from mrcnn.datasets.dsb import NucleusDataset  # noqa: F401
from mrcnn.datasets.spec import load_dataset  # noqa: F401
from mrcnn.datasets.via import ViaDataset  # noqa: F401
