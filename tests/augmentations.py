"""Transforms for tests that run them in spawned worker processes.

A worker process imports the module of the transform it runs; this one
imports numpy only, so a spawned worker does not import TensorFlow (as it
would through a test module that imports ``h5feed.sequence``).
"""

from __future__ import annotations

import numpy as np


def noisy(X, Y, rng):
    """Noise from the batch's stream on every column but the row's number."""
    X = X.copy()
    X[:, 1:] += rng.standard_normal(X[:, 1:].shape).astype(X.dtype)
    return X, Y


def global_noise(X, Y):
    """An older transform: numpy's global generator."""
    return X + np.random.standard_normal(X.shape).astype(X.dtype), Y
