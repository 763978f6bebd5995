"""Training: config, state, pure steps, checkpoints and the one loop."""
from cvjax.train.config import TrainConfig
from cvjax.train.loop import build_run, evaluate, fit

__all__ = ['TrainConfig', 'build_run', 'evaluate', 'fit']
