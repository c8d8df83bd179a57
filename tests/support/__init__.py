"""Code the tests share, imported as `tests.support.<module>`.

- `paths`: where the repository, its workflows and its models are.
- `workflows`: `wf()` / `workflow_dict()` / `link()` builders, shipped workflows, a checked run.
- `toy_nodes`: the one toy node library, registered into any `Registry`.
- `toy_global`: importing it registers the toy library into the process-wide registry, for
  `noodle` subprocesses (`--nodes` / `NOODLE_NODES`).
- `command`: how tests start the `noodle` command in a subprocess.
- `model_configs`: tiny model configs and the SD1.5 scheduler config.
- `tiny_models`: one builder per tiny model kind (fixtures in tests/conftest.py).
- `ldm_export`: diffusers -> original LDM single-file export.
- `browser`: the server thread and Chromium settings of the canvas tests.
"""
