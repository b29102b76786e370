"""mrcnn: Mask R-CNN instance segmentation for Keras 3, in the Matterport tradition.

Modules follow the data flow of the model:

- ``config``: the ``Config`` control panel.
- ``dataset``: the ``Dataset`` base class, mask and image checks (NumPy only).
- ``utils``: NumPy box and mask geometry, and Matterport's ``utils`` names (re-exported from
  ``dataset``, ``metrics``, ``anchors``); no TensorFlow import.
- ``metrics``: matching, AP, recall, and the per-image AP loop; ``coco_eval``: COCO-style
  evaluation of detections through pycocotools.
- ``visualize``: matplotlib drawing helpers (headless-safe).
- ``ops``: backend-specific kernels (ROI crop-and-resize, NMS) with pure ``keras.ops`` twins.
- ``backbone`` -> ``fpn`` -> ``rpn`` -> ``proposals`` -> ``roi_align`` -> ``box_head`` /
  ``mask_head`` -> ``detection``; ``detection_targets`` and ``losses`` for training.
- ``transform``: image <-> model-input geometry (resize, mold, image meta, unmold, paste).
- ``anchors``: anchor boxes in NumPy (``rpn.AnchorsLayer`` puts them in the graph).
- ``data``: ground-truth loading, RPN targets and the training ``PyDataset``;
  ``inspection``: Matterport's debugging paths (random ROIs, NumPy head targets,
  ``data_generator``).
- ``training``, ``runs``, ``weights``, ``layer_config``: the training model, run folders and
  checkpoints, HDF5 weights, plain-value layer configs.
- ``model``: the ``MaskRCNN`` facade (``import mrcnn.model as modellib``); ``layer_steps``:
  the named steps inside layers that ``MaskRCNN.ancestor`` finds (Matterport's
  ``ROI/refined_anchors:0``, ...); ``export``: a SavedModel for serving; ``predict``:
  detection over image files.
- ``progress``, ``download``: progress lines of long loops; every download.
- ``cli``, ``tiny``: what the samples' command lines share; the seconds-per-step smoke model.
- ``datasets``: loaders that need no code (COCO json, VIA json, DSB folders, ``module:Name``);
  ``evaluation``: COCO AP of a model on a dataset; ``callbacks``: AP every epoch
  (``results.csv``, TensorBoard, best/last checkpoints); ``app``: the ``mrcnn`` command.
"""

__version__ = "0.1.0"
