"""Tests of the ComfyUI compatibility: its node pack, sampling, workflow import, API."""
