"""Object detection: SSD's default boxes, box coding, matching, MultiBox loss, YOLOv3's
loss and decoding, batched NMS, COCO/VOC metrics, detection datasets and the `DetectionTask`.

Units and conventions used throughout (cvjax's, not torchvision's):
  boxes:   f32[..., 4] (ymin, xmin, ymax, xmax), normalised to [0, 1] by the
           image height and width unless a docstring says "pixels".
  labels:  int32 object classes 0..K-1; SSD's class logits have K + 1 columns and
           column 0 is background (label l is column l + 1); YOLO's have K, no background.
  anchors: SSD's default boxes, f32[A, 4] in the box format above; YOLO's anchors are
           (w, h) pairs per map, f32[A, 2], normalised.

Modules: `boxes` (IoU, coding), `matching`, `loss` (MultiBox), `yolo` (YOLOv3 loss,
decoding, k-means anchors), `heads` (a model family's loss and decoding, chosen by the
model class), `postprocess` (NMS, top-k), `metrics` (COCO, VOC), `augment` (SSD
augmentation in tf.data), `data` (TFDS voc/coco/cvjax_shapes pipelines), `task` (`DetectionTask`, task 'detection' of
`cvjax.tasks`), `draw` (pictures). The default boxes live with the models
(`cvjax.models.anchors`): they are a pure function of the model and image size.

Importing this package does no I/O and loads neither TensorFlow nor TFDS.
"""
