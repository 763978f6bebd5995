"""FCN semantic segmentation (Long et al. 2015) on the masks of `cvjax_shapes` (task 'segmentation').

  python -m experiments.fcn --flagfile=experiments/configs/fcn8s_tiny_shapes.flags

The dataset is generated offline on first use (see cvjax.data.shapes); results
report mIoU (the main metric) and pixel accuracy.
"""
from experiments import common

DEFAULTS = dict(
    task='segmentation', model='fcn8s_tiny', dataset='cvjax_shapes', image_size=128,
    batch_size=32, num_epochs=30, optimizer='adam', learning_rate=2e-3, schedule='cosine',
    weight_decay=1e-4)

if __name__ == '__main__':
  common.main(DEFAULTS)
