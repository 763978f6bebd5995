"""FCN semantic segmentation (Long et al. 2015) on the masks of `cvjax_shapes` (task 'segmentation').

  python -m experiments.fcn --flagfile=experiments/configs/fcn8s_tiny_shapes.flags

The dataset is generated offline on first use (see cvjax.data.cvjax_shapes); results
report mIoU (the main metric) and pixel accuracy.
"""
from experiments import common

if __name__ == '__main__':
  common.main()
