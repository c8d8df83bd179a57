"""The command-line options of the scale-out backends (no Ray import: parsing them is free)."""

from __future__ import annotations

import argparse


def scale_flags(parser: argparse.ArgumentParser) -> None:
    """`--backend` and the Ray options `noodle serve` and `noodle batch` share."""
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="where prompts run (default: local, this process)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join a Ray cluster (auto, ray://host:10001); default: start a "
                             "local Ray instance")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="Ray workers (default: one per GPU of the cluster, else 1)")
    parser.add_argument("--worker-gpus", type=float, default=None, metavar="G",
                        help="GPUs per worker (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--torch-threads", type=int, default=None, metavar="T",
                        help="torch threads per worker (default: torch's own choice)")
