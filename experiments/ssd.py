"""SSD (Liu et al. 2016) object detection: SSD300/512 on VGG-16, SSD300 on ResNet-50, and
a half-width ResNet-18 SSD at 128² that trains on a CPU.

  python -m experiments.ssd --flagfile=experiments/configs/ssd128_shapes_cpu.flags
  python -m experiments.ssd --flagfile=experiments/configs/ssd300_voc.flags

The task is 'detection' (cvjax.tasks.detection): results.json gets test_map50 (VOC
AP@0.5) and test_map (COCO AP@[.5:.95]); `python -m cvjax.detect --workdir=...`
draws the trained detector's boxes on an image.
"""
from experiments import common

if __name__ == '__main__':
  common.main()
