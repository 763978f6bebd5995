"""YOLOv3 (Redmon & Farhadi 2018) object detection: Darknet-53 YOLOv3, YOLOv3-tiny, and a
quarter-width Darknet at 128² that trains on a CPU (yolov3_shapes).

  python -m experiments.yolo --flagfile=experiments/configs/yolov3_shapes_cpu.flags

The task is 'detection' (cvjax.tasks.detection, the same loop and evaluator as SSD):
results.json gets test_map50 (VOC AP@0.5) and test_map (COCO AP@[.5:.95]);
`python -m cvjax.anchors --dataset=... --k=9` computes anchors for --model_kwargs,
`python -m cvjax.detect --workdir=...` draws the trained detector's boxes, and
`python -m cvjax.convert --source=darknet` imports Darknet's yolov3.weights.
"""
from experiments import common

if __name__ == '__main__':
  common.main()
