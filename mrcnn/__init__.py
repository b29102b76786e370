"""mrcnn: Mask R-CNN instance segmentation for Keras 3, in the Matterport tradition.

Modules follow the data flow of the model:

- ``config``: the ``Config`` control panel.
- ``utils``: ``Dataset`` and NumPy box/mask/anchor/metric utilities (no TensorFlow import).
- ``coco_eval``: COCO-style evaluation of detections through pycocotools.
- ``visualize``: matplotlib drawing helpers (headless-safe).
- ``ops``: backend-specific kernels (ROI crop-and-resize, NMS) with pure ``keras.ops`` twins.
- ``backbone`` -> ``fpn`` -> ``rpn`` -> ``proposals`` -> ``roi_align`` -> ``box_head`` /
  ``mask_head`` -> ``detection``; ``detection_targets`` and ``losses`` for training.
- ``transform``: image <-> model-input geometry (resize, mold, image meta, unmold, paste).
- ``data``: ground-truth loading, RPN targets and the training ``PyDataset``.
- ``training``, ``runs``, ``weights``, ``layer_config``: the training model, run folders and
  checkpoints, HDF5 weights, plain-value layer configs.
- ``model``: the ``MaskRCNN`` facade (``import mrcnn.model as modellib``); ``export``: a
  SavedModel for serving; ``predict``: detection over image files.
- ``progress``, ``download``: progress lines of long loops; every download.
"""

__version__ = "0.1.0"
