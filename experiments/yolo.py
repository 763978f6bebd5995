"""YOLOv3 (Redmon & Farhadi 2018) object detection: Darknet-53 YOLOv3, YOLOv3-tiny, and a
quarter-width Darknet at 128² that trains on a CPU (yolov3_shapes).

  python -m experiments.yolo --flagfile=experiments/configs/yolov3_shapes_cpu.flags

The task is 'detection' (cvjax.detection.task, the same loop and evaluator as SSD):
results.json gets test_map50 (VOC AP@0.5) and test_map (COCO AP@[.5:.95]);
`python -m cvjax.anchors --dataset=... --k=9` computes anchors for --model_kwargs,
`python -m cvjax.detect --workdir=...` draws the trained detector's boxes, and
`python -m cvjax.convert --source=darknet` imports Darknet's yolov3.weights.
"""
from experiments import common

# The CPU recipe, SSD's (experiments/configs/ssd128_shapes_cpu.flags) with the YOLO model.
DEFAULTS = dict(
    task='detection', model='yolov3_shapes', dataset='cvjax_shapes', augment='flip',
    batch_size=32, num_epochs=16, optimizer='adam', learning_rate=3e-3, schedule='cosine',
    warmup_epochs=0.3, weight_decay=0.0, eval_split='validation', eval_every_steps=1000,
    log_every_steps=50)

if __name__ == '__main__':
  common.main(DEFAULTS)
