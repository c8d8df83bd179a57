"""`noodle run --vram` and `noodle serve --vram` pass the memory mode to the node library
through NOODLE_VRAM (the engine itself never reads it), and `noodle --help` lists it."""

from __future__ import annotations

from pathlib import Path

import pytest

import nodes  # noqa: F401  (documents the node library's variables)
from graph_runtime import cli
from graph_runtime.settings import ENVIRONMENT
from nodes import offload
from tests.gpu_paths.conftest import Log
from tests.support.paths import WORKFLOWS


def test_the_flag_is_on_run_and_serve_and_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    for command in (["run", "wf.json"], ["serve"]):
        args = parser.parse_args([*command, "--vram", "low"])
        monkeypatch.delenv(offload.ENV_VAR, raising=False)
        cli._pass_vram(args)
        assert offload.requested_mode() == "low"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "wf.json", "--vram", "lots"])
    assert offload.ENV_VAR in ENVIRONMENT


def test_noodle_run_low_offloads_the_shipped_txt2img(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path, transfers: Log) -> None:
    monkeypatch.setenv(offload.ENV_VAR, "high")  # restored after; --vram overrides it
    code = cli.main(["run", str(WORKFLOWS / "txt2img.json"), "--vram", "low",
                     "--set", "5.steps=1", "--set", "1.device=cpu",
                     "--output-dir", str(tmp_path)])
    assert code == 0
    assert list(tmp_path.glob("txt2img*.png"))
    # Two prompts, one Denoise, one decode: each model in and out once per use.
    assert [where for _, where in transfers] == ["compute", "offload"] * 4
