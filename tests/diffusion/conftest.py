"""The diffusion tests compare against diffusers on one CPU thread: fast for toy sizes, and
the same reduction order on every machine."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
