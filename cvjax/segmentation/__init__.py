"""Semantic segmentation numerics: per-pixel loss, mIoU; the `cvjax_shapes` masks reader.

Conventions: per-pixel labels int32[B, H, W] in 0..K-1 with 0 the background;
a label ≥ K (e.g. VOC's 255 border) is ignored by the loss and the metrics.
Model outputs are per-pixel logits float32[B, H, W, K] (`cvjax.models.fcn`).

Modules: `metrics` (pixel loss, confusion matrix, IoU), `data` (the segmentation
view of `cvjax_shapes` as a `cvjax.data.DataSpec`), `predict` (probabilities at each
input's own size). The task is `cvjax.tasks.segmentation`.

Importing this package does no I/O and loads neither TensorFlow nor TFDS.
"""
