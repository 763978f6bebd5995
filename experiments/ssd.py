"""SSD (Liu et al. 2016) object detection: SSD300/512 on VGG-16, SSD300 on ResNet-50, and
a half-width ResNet-18 SSD at 128² that trains on a CPU.

  python -m experiments.ssd --flagfile=experiments/configs/ssd128_shapes_cpu.flags
  python -m experiments.ssd --flagfile=experiments/configs/ssd300_voc.flags

The task is 'detection' (cvjax.detection.task): results.json gets test_map50 (VOC
AP@0.5) and test_map (COCO AP@[.5:.95]); `python -m cvjax.detect --workdir=...`
draws the trained detector's boxes on an image.
"""
from experiments import common

# The measured CPU recipe (experiments/configs/ssd128_shapes_cpu.flags); the VOC/COCO flagfiles
# set everything they need, --augment=ssd (the full SSD augmentation) included.
DEFAULTS = dict(
    task='detection', model='ssd128_resnet18_slim', dataset='cvjax_shapes', augment='flip',
    batch_size=32, num_epochs=16, optimizer='adam', learning_rate=3e-3, schedule='cosine',
    warmup_epochs=0.3, weight_decay=0.0, eval_split='validation', eval_every_steps=1000,
    log_every_steps=50)

if __name__ == '__main__':
  common.main(DEFAULTS)
