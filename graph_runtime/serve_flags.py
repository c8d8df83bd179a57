"""The options of `noodle serve` (parsing them imports nothing of the server)."""

from __future__ import annotations

import argparse


def serve_flags(serve: argparse.ArgumentParser) -> None:
    """Where the server listens, who may use it, what it keeps, and its step previews."""
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--previews", choices=("auto", "latent", "full"), default=None,
                       help="step previews: real VAE decodes when cheap (auto), the fast "
                            "latent projection, or always decoded (default: NOODLE_PREVIEWS "
                            "or auto)")
    serve.add_argument("--preview-every", type=int, default=1, metavar="N",
                       help="step previews every N steps and the last (default: 1, every "
                            "step, as ComfyUI; 0: none); made only while a canvas is "
                            "connected, off the sampling loop")
    serve.add_argument("--output-dir", default="output")
    serve.add_argument("--models-dir", default=None,
                       help="models folder (default: $NOODLE_MODELS_DIR or models/)")
    serve.add_argument("--auth-token", default=None, metavar="TOKEN",
                       help="require this token (bearer header or the /login page); needed "
                            "off loopback (default: $NOODLE_AUTH_TOKEN)")
    serve.add_argument("--state-db", default=None, metavar="FILE",
                       help="SQLite file keeping the queue and history across restarts "
                            "(default: user/queue.sqlite3; :memory: keeps nothing)")
    serve.add_argument("--requeue-interrupted", action="store_true",
                       help="run again a prompt that was running when the server stopped "
                            "(default: record it in the history as interrupted)")


def memory_flags() -> argparse.ArgumentParser:
    """`--vram`, shared by `run` and `serve` as a parent parser."""
    memory = argparse.ArgumentParser(add_help=False)
    memory.add_argument("--vram", choices=("auto", "high", "low", "cpu"), default=None,
                        help="where models wait between uses: on the accelerator (high), on "
                             "the CPU, moved over only while each runs (low), everything on "
                             "the CPU (cpu), or high when they fit, else low (auto; default: "
                             "$NOODLE_VRAM or auto)")
    return memory
