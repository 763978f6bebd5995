"""Object detection numerics: box coding, matching, MultiBox loss, YOLOv3's loss and
decoding, batched NMS, COCO/VOC metrics; and the reader of the detection datasets.

Units and conventions used throughout (cvjax's, not torchvision's):
  boxes:   f32[..., 4] (ymin, xmin, ymax, xmax), normalised to [0, 1] by the
           image height and width unless a docstring says "pixels".
  labels:  int32 object classes 0..K-1; SSD's class logits have K + 1 columns and
           column 0 is background (label l is column l + 1); YOLO's have K, no background.
  anchors: SSD's default boxes, f32[A, 4] in the box format above; YOLO's anchors are
           (w, h) pairs per map, f32[A, 2], normalised.

Modules: `boxes` (IoU, coding), `matching`, `multibox` (SSD's loss), `yolo` (YOLOv3
loss, decoding, k-means anchors), `families` (a model family's loss and decoding, chosen
by the model class), `postprocess` (NMS, top-k), `metrics` (COCO, VOC), `data` (TFDS
voc/coco/cvjax_shapes as a `cvjax.data.DataSpec`), `draw` (pictures). Each imports only
jax/numpy (and, for `data`, TensorFlow): usable without the training loop. The task is
`cvjax.tasks.detection`; SSD's augmentation is in `cvjax.data.preprocess`; the default
boxes live with the models (`cvjax.models.default_boxes`).

Importing this package does no I/O and loads neither TensorFlow nor TFDS.
"""
