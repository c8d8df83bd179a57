"""ComfyUI's model folders: models/<kind>/, our flat models/, and extra_model_paths.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from graph_runtime import Folders, cli
from graph_runtime.settings import ENVIRONMENT, SettingsError, check_folders
from nodes.comfyui import model_paths
from nodes.comfyui.model_paths import (
    ModelPathsError,
    embedding_names,
    find_model,
    list_models,
    model_dirs,
    read_extra_paths,
)
from nodes.loaders import BUNDLED_MODELS, model_choices, resolve
from tests.support.paths import REPO

ORACLE = Path(os.environ.get("NOODLE_COMFYUI_ORACLE")
              or REPO.parent / "shared" / "oracles" / "ComfyUI")


@pytest.fixture(autouse=True)
def no_env_paths_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A paths file set in the developer's environment must not leak into these tests."""
    monkeypatch.delenv(model_paths.ENV_VAR, raising=False)


def bundled_dirs(kind: str) -> list[Path]:
    """The shipped models' folders of a kind (models/loras holds the tiny model's LoRAs),
    which every models folder's search ends with."""
    subs = model_paths.SUBFOLDERS.get(kind, (kind,))
    return [] if kind == "checkpoints" else [BUNDLED_MODELS / s for s in subs
                                             if (BUNDLED_MODELS / s).is_dir()]


def bundled_names(kind: str) -> list[str]:
    """Names of the shipped models of a kind, as `list_models` spells them."""
    return [p.relative_to(d).as_posix() for d in bundled_dirs(kind) for p in d.rglob("*")
            if p.is_file() and p.suffix in model_paths.MODEL_EXTENSIONS]


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def diffusers_folder(path: Path) -> Path:
    touch(path / "model_index.json", "{}")
    touch(path / "unet" / "diffusion_pytorch_model.safetensors")
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A models folder in ComfyUI's layout, plus our older flat entries."""
    root = tmp_path / "models"
    touch(root / "checkpoints" / "a.safetensors")
    touch(root / "checkpoints" / "SD1.5" / "deep" / "b.ckpt")
    touch(root / "checkpoints" / "notes.txt")
    touch(root / "checkpoints" / ".hidden.safetensors")
    diffusers_folder(root / "checkpoints" / "sd-diffusers")
    touch(root / "loras" / "style" / "l.safetensors")
    touch(root / "loras" / "old.pt")
    touch(root / "embeddings" / "bad-hands.pt")
    touch(root / "embeddings" / "neg" / "easy.safetensors")
    touch(root / "clip" / "te.safetensors")
    touch(root / "unet" / "u.sft")
    touch(root / "configs" / "v1-inference.yaml")
    touch(root / "configs" / "ignored.safetensors")
    touch(root / "flat.safetensors")
    diffusers_folder(root / "flat-pipe")
    return root


def test_lists_nested_files_diffusers_folders_flat_entries_and_the_bundled_model(
        models: Path) -> None:
    folders = Folders(models=models)
    names = list_models("checkpoints", folders)
    assert names == sorted(set(names))
    ours = [n for n in names if not (BUNDLED_MODELS / n).exists()]
    assert ours == ["SD1.5/deep/b.ckpt", "a.safetensors", "flat-pipe", "flat.safetensors",
                    "sd-diffusers"]
    assert "noodle-tiny" in names  # the shipped tiny model is a checkpoint
    assert list_models("loras", folders) == sorted(["old.pt", "style/l.safetensors",
                                                    *bundled_names("loras")])
    assert list_models("configs", folders) == ["v1-inference.yaml"]
    assert embedding_names(folders) == ["bad-hands", "neg/easy"]


def test_aliases_and_comfyuis_other_folder_names(models: Path) -> None:
    folders = Folders(models=models)
    assert list_models("clip", folders) == list_models("text_encoders", folders)
    assert list_models("text_encoders", folders) == ["te.safetensors"]
    assert list_models("unet", folders) == ["u.sft"]
    assert model_dirs("diffusion_models", folders) == [models / "unet",
                                                       models / "diffusion_models"]
    with pytest.raises(ValueError, match="unknown model folder kind 'lora'"):
        list_models("lora", folders)


def test_find_model_by_comfyui_name(models: Path) -> None:
    folders = Folders(models=models)
    deep = models / "checkpoints" / "SD1.5" / "deep" / "b.ckpt"
    assert find_model("checkpoints", "SD1.5/deep/b.ckpt", folders) == deep
    assert find_model("checkpoints", "SD1.5\\deep\\b.ckpt", folders) == deep  # from Windows
    assert find_model("checkpoints", "sd-diffusers", folders) == models / "checkpoints" / (
        "sd-diffusers")
    assert find_model("checkpoints", "flat.safetensors", folders) == models / "flat.safetensors"
    assert find_model("checkpoints", "noodle-tiny", folders) == BUNDLED_MODELS / "noodle-tiny"
    assert find_model("clip", "te.safetensors", folders) == models / "clip" / "te.safetensors"


def test_find_model_stays_inside_the_folders_and_says_what_it_searched(
        models: Path) -> None:
    folders = Folders(models=models)
    touch(models.parent / "secret.safetensors")
    with pytest.raises(FileNotFoundError) as info:
        find_model("checkpoints", "../secret.safetensors", folders)
    message = str(info.value)
    assert "checkpoints" in message and "'../secret.safetensors'" in message
    assert str(models / "checkpoints") in message and str(BUNDLED_MODELS) in message
    with pytest.raises(FileNotFoundError, match="close names: SD1.5/deep/b.ckpt"):
        find_model("checkpoints", "SD15/deep/b.ckpt", folders)
    with pytest.raises(FileNotFoundError, match="close names: style/l.safetensors"):
        find_model("loras", "l.safetensors", folders)
    # A LoRA is never taken for a checkpoint through the flat models/ folder.
    with pytest.raises(FileNotFoundError):
        find_model("checkpoints", "loras/style/l.safetensors", folders)
    with pytest.raises(FileNotFoundError):
        find_model("checkpoints", "checkpoints/notes.txt", folders)


def test_load_pipeline_sees_comfyui_folders_and_keeps_the_flat_layout(
        models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folders = Folders(models=models)
    assert resolve("flat-pipe", folders) == models / "flat-pipe"
    assert resolve("flat-pipe", models) == models / "flat-pipe"  # a bare models folder
    assert resolve("a.safetensors", folders) == models / "checkpoints" / "a.safetensors"
    assert resolve("SD1.5/deep/b.ckpt", folders).name == "b.ckpt"
    assert resolve("noodle-tiny", folders) == BUNDLED_MODELS / "noodle-tiny"
    choices = model_choices(folders)
    assert {"a.safetensors", "SD1.5/deep/b.ckpt", "flat-pipe", "flat.safetensors",
            "sd-diffusers", "noodle-tiny"} <= set(choices)
    touch(models / "checkpoints" / "pickled.pt")
    assert "pickled.pt" in list_models("checkpoints", folders)
    assert "pickled.pt" not in model_choices(folders)  # our loader reads no pickles


# ---------------------------------------------------------------------------- the yaml
def paths_yaml(tmp_path: Path) -> Path:
    """Every form the file takes: a relative and an env-var base_path, a section without
    one, multi-line values, absolute entries, aliases, is_default, an empty section."""
    absolute = tmp_path / "elsewhere"
    return touch(tmp_path / "conf" / "extra_model_paths.yaml", textwrap.dedent(f"""\
        a111:
            base_path: $A1111_HOME/
            checkpoints: models/Stable-diffusion
            vae: models/VAE
            loras: |
                 models/Lora
                 models/LyCORIS
            embeddings: embeddings
        comfyui:
            base_path: ../comfy
            is_default: true
            checkpoints: models/checkpoints/
            unet: models/unet
            clip: models/clip
            loras: models/loras
            controlnet: {absolute / "cn"}
        plain:
            checkpoints: relative/ckpts
            upscale_models: |
                {absolute / "esrgan"}
                up
        unused:
        """))


KINDS = ("checkpoints", "vae", "loras", "embeddings", "controlnet", "upscale_models",
         "text_encoders", "diffusion_models")


def expected_dirs(tmp_path: Path, models: Path) -> dict[str, list[Path]]:
    conf, comfy, a111 = tmp_path / "conf", tmp_path / "comfy", tmp_path / "a1111"
    return {
        "checkpoints": [comfy / "models/checkpoints", models / "checkpoints",
                        a111 / "models/Stable-diffusion", conf / "relative/ckpts"],
        "vae": [models / "vae", a111 / "models/VAE"],
        "loras": [comfy / "models/loras", models / "loras", a111 / "models/Lora",
                  a111 / "models/LyCORIS"],
        "embeddings": [models / "embeddings", a111 / "embeddings"],
        "controlnet": [tmp_path / "elsewhere/cn", models / "controlnet",
                       models / "t2i_adapter"],
        "upscale_models": [models / "upscale_models", tmp_path / "elsewhere/esrgan",
                           conf / "up"],
        "text_encoders": [comfy / "models/clip", models / "text_encoders", models / "clip"],
        "diffusion_models": [comfy / "models/unet", models / "unet",
                             models / "diffusion_models"],
    }


@pytest.fixture
def yaml_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Folders]:
    monkeypatch.setenv("A1111_HOME", str(tmp_path / "a1111"))
    monkeypatch.chdir(REPO)  # relative entries follow the yaml's folder, not the cwd
    path = paths_yaml(tmp_path)
    return path, Folders(models=tmp_path / "models", model_paths_file=path)


def test_extra_paths_folders_in_comfyuis_order(yaml_setup: tuple[Path, Folders],
                                               tmp_path: Path) -> None:
    _, folders = yaml_setup
    expected = expected_dirs(tmp_path, folders.models)
    for kind in KINDS:
        dirs = model_dirs(kind, folders)
        if kind == "checkpoints":
            assert dirs[-2:] == [folders.models, BUNDLED_MODELS]
            dirs = dirs[:-2]
        shipped = bundled_dirs(kind)  # searched last, wherever the models folder is
        assert dirs[len(dirs) - len(shipped):] == shipped, kind
        dirs = dirs[:len(dirs) - len(shipped)]
        assert dirs == expected[kind], kind


def test_extra_paths_models_are_listed_and_found(yaml_setup: tuple[Path, Folders],
                                                 tmp_path: Path) -> None:
    _, folders = yaml_setup
    lycoris = touch(tmp_path / "a1111/models/LyCORIS/sub/ly.safetensors")
    touch(tmp_path / "comfy/models/loras/mine.safetensors")
    touch(tmp_path / "a1111/models/Stable-diffusion/sd15.ckpt")
    touch(tmp_path / "a1111/embeddings/neg.pt")
    assert list_models("loras", folders) == sorted(["mine.safetensors", "sub/ly.safetensors",
                                                    *bundled_names("loras")])
    assert find_model("loras", "sub/ly.safetensors", folders) == lycoris
    assert embedding_names(folders) == ["neg"]
    assert resolve("sd15.ckpt", folders) == tmp_path / "a1111/models/Stable-diffusion/sd15.ckpt"
    assert "sd15.ckpt" in model_choices(folders)


def test_the_environment_names_the_file_too(yaml_setup: tuple[Path, Folders],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path, folders = yaml_setup
    assert model_paths.ENV_VAR in ENVIRONMENT  # so `noodle --help` lists it
    monkeypatch.setenv(model_paths.ENV_VAR, str(path))
    bare = Folders(models=folders.models)
    assert model_dirs("vae", bare) == model_dirs("vae", folders)


def test_the_file_is_parsed_once_per_version(yaml_setup: tuple[Path, Folders]) -> None:
    path, folders = yaml_setup
    first = read_extra_paths(path)
    assert read_extra_paths(path) is first
    path.write_text("only:\n  vae: /somewhere/vae\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert model_dirs("vae", folders) == [folders.models / "vae", Path("/somewhere/vae")]


@pytest.mark.skipif(not (ORACLE / "utils" / "extra_config.py").is_file(),
                    reason="ComfyUI oracle folder absent (set NOODLE_COMFYUI_ORACLE)")
def test_same_folders_as_comfyui_reads_from_the_file(yaml_setup: tuple[Path, Folders],
                                                     tmp_path: Path) -> None:
    """ComfyUI itself, given the same file and a base directory whose models/ is ours."""
    path, folders = yaml_setup
    script = textwrap.dedent(f"""\
        import json, sys
        sys.path.insert(0, {str(ORACLE)!r})
        sys.argv = ["main.py", "--cpu", "--base-directory", {str(tmp_path)!r}]
        import comfy.options
        comfy.options.enable_args_parsing()
        import folder_paths
        import utils.extra_config
        utils.extra_config.load_extra_path_config({str(path)!r})
        print(json.dumps({{k: folder_paths.get_folder_paths(k) for k in {list(KINDS)!r}}}))
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOODLE_")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind in KINDS:
        ours = [str(d) for d in model_dirs(kind, folders)]
        if kind == "checkpoints":
            ours = ours[:-2]  # our flat models/ and the bundled models come last
        ours = ours[:len(ours) - len(bundled_dirs(kind))]  # so do the shipped LoRAs
        assert ours == theirs[kind], kind


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("text", "needle"), [
    ("a111:\n  loras: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected sections"),
    ("a111: models\n", "key 'a111'"),
    ("a111:\n  base_path: path\n  loras: 3\n", "key a111.loras"),
    ("a111:\n  base_path: [x]\n", "key a111.base_path"),
    ("a111:\n  is_default: maybe\n  vae: v\n", "key a111.is_default"),
])
def test_malformed_file_names_the_file_and_key(tmp_path: Path, text: str,
                                               needle: str) -> None:
    path = touch(tmp_path / "extra_model_paths.yaml", text)
    folders = Folders(models=tmp_path / "models", model_paths_file=path)
    with pytest.raises(ModelPathsError, match=str(path)) as info:
        model_dirs("loras", folders)
    assert needle in str(info.value)
    with pytest.raises(SettingsError, match=needle.replace("[", r"\[")):
        check_folders(folders)


def test_missing_file_is_refused_at_startup(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError, match="nope.yaml"):
        check_folders(Folders(model_paths_file=missing))
    with pytest.raises(ModelPathsError, match="nope.yaml"):
        list_models("vae", Folders(model_paths_file=missing))


def test_run_stops_before_work_on_a_malformed_file(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = touch(tmp_path / "extra.yaml", "comfyui:\n  checkpoints: 12\n")
    code = cli.main(["run", str(tmp_path / "absent.json"), "--extra-model-paths", str(bad)])
    assert code == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert str(bad) in err and "comfyui.checkpoints" in err


def test_serve_hands_the_file_to_the_executor(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import graph_runtime.server as server

    seen: dict = {}
    monkeypatch.setattr(server, "serve", lambda executor, **kw: seen.update(ex=executor))
    good = touch(tmp_path / "extra.yaml", "comfyui:\n  checkpoints: ckpts\n")
    assert cli.main(["serve", "--output-dir", str(tmp_path / "out"),
                     "--extra-model-paths", str(good)]) == 0
    folders = seen["ex"].folders
    assert folders.model_paths_file == good
    assert folders.resolved().model_paths_file == good.resolve()
    assert tmp_path / "ckpts" in model_dirs("checkpoints", folders)


@pytest.mark.parametrize("command", ["serve", "run"])
def test_help_shows_the_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert "--extra-model-paths FILE" in out and "NOODLE_EXTRA_MODEL_PATHS" in out
