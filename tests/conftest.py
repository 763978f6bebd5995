"""Test-wide setup: eight simulated CPU devices, quiet TensorFlow.

Must run before JAX initialises its backends, which is why it sets the
environment at import time (tests only; the library never does this).
"""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
