"""Training: one-shot tuning (Tune-A-Video, LAMP) and Video Adapter small-model training.

* :func:`tune`: the Tune-A-Video recipe on one video and its prompt (``lamp=True`` for LAMP).
* :func:`train_adapter`: a small video UNet trained on a folder of captioned videos, composed
  with a frozen prior at sampling.

Both train with PYoCo's correlated noise on request, mixed precision, gradient checkpointing,
atomic resumable checkpoints, and data parallelism under ``accelerate launch``.
"""
from .adapter import AdapterConfig, train_adapter
from .loop import TrainResult, TrainSettings
from .tune import trainable_parameter_names, tune

__all__ = ["AdapterConfig", "TrainResult", "TrainSettings", "train_adapter", "trainable_parameter_names", "tune"]
