"""The `noodle` command: run, validate, nodes, serve.

These flags are a contract that shipped workflows, docs and checks rely on:

    noodle run FILE [--set NODE.INPUT=VALUE]... [--output-dir DIR] [--target NODE]... [--json]
        [--extra-model-paths FILE] [--allow-path DIR]... [--vram auto|high|low|cpu]
    noodle validate FILE [--set ...]... [--target ...]... [--json]
    noodle nodes [--json]
    noodle import FILE [-o OUT]
    noodle serve [--host HOST] [--port PORT] [--output-dir DIR] [--extra-model-paths FILE]
        [--auth-token TOKEN] [--state-db FILE] [--requeue-interrupted]
        [--previews auto|latent|full] [--preview-every N] [--vram auto|high|low|cpu]
        [--backend local|ray] [--ray-address ADDR] [--workers N] [--worker-gpus G]
    noodle batch FILE --sweep NODE.INPUT=SPEC... [--zip] [--set ...]... [--output-dir DIR]
        [--backend local|ray] [--ray-address ADDR] [--workers N] [--worker-gpus G] [--json]

Exit codes: 0 success, 1 a node failed or the run was interrupted, 2 the workflow is
invalid (or unreadable), or so is a setting (a missing or malformed model paths file).
With `--json`, `run` prints one JSON object per event per line (the last is
`run_finished`; preview images are replaced by null) and an invalid workflow prints one
`{"type": "invalid", "ok": false, "errors": [...]}` line.

A command never ends in a traceback. When it stops on bad input (exit 2) or on an error of
its own (exit 1, code `internal_error`), its last line is one JSON object
`{"ok": false, "errors": [{"node", "input", "code", "message"}, ...]}` (`run` adds
`"type": "invalid"` or `"type": "internal_error"`): on stdout with `--json`, else on stderr
after the readable report.

FILE may be a workflow in any format the node library can import (its importers register
with `graph_runtime.workflow`), JSON or a PNG that carries one; `import` writes it out as a
v1 workflow file.

The node library is a module imported by name, once, here (default `nodes`; `--nodes` or
env `NOODLE_NODES`, several separated by commas); importing it registers its nodes. The
folders and cache budgets become one `Executor`, which `run` uses and `serve` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graph_runtime.cache import OutputCache, budgets_from_env, parse_bytes
from graph_runtime.console import ConsoleReporter
from graph_runtime.executor import Executor, RunResult, WorkflowInvalid
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from graph_runtime.scale.flags import scale_flags
from graph_runtime.serve_flags import memory_flags, serve_flags
from graph_runtime.settings import ENVIRONMENT, Folders, SettingsError, check_folders, env
from graph_runtime.workflow import (
    Workflow,
    WorkflowFormatError,
    apply_overrides,
    dumps,
    load_workflow_file,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def load_node_library(spec: str | None) -> list[str]:
    """Import the node library module(s); returns their names."""
    names = [s.strip() for s in (spec or env("NOODLE_NODES") or "nodes").split(",")]
    names = [n for n in names if n]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise SettingsError(f"cannot import the node library {name!r}: {exc}") from exc
    return names


def _print_json(obj: Any, stream: Any = None) -> None:
    """One JSON line; escaped to ASCII if the stream cannot take the text (a lone surrogate
    from a command-line argument, a terminal that is not UTF-8)."""
    stream = sys.stdout if stream is None else stream
    try:
        stream.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    except UnicodeEncodeError:
        stream.write(json.dumps(obj, default=str) + "\n")
    stream.flush()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"node": None, "input": None, "code": code, "message": message}


def _fail(args: argparse.Namespace, exit_code: int, error: dict[str, Any]) -> int:
    """End a command that cannot go on, with the JSON line the module docstring promises."""
    kind = "invalid" if exit_code == EXIT_INVALID else "internal_error"
    as_json = bool(getattr(args, "json", False))
    if not as_json:
        print(f"noodle {args.command}: {error['message']}", file=sys.stderr)
    report: dict[str, Any] = {"ok": False, "errors": [error]}
    if args.command == "run":
        report = {"type": kind, **report}
    _print_json(report, sys.stdout if as_json else sys.stderr)
    return exit_code


def _format_error(err: dict[str, Any]) -> str:
    where = []
    if err.get("node") is not None:
        where.append(f"node {err['node']}")
    if err.get("input"):
        where.append(f"input {err['input']}")
    prefix = ", ".join(where) + ": " if where else ""
    return f"{prefix}[{err['code']}] {err['message']}"


def _report_invalid(errors: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        _print_json({"type": "invalid", "ok": False, "errors": errors})
    else:
        print(f"invalid workflow ({len(errors)} error(s)):", file=sys.stderr)
        for err in errors:
            print("  " + _format_error(err), file=sys.stderr)
        _print_json({"ok": False, "errors": errors}, sys.stderr)
    return EXIT_INVALID


def _load(args: argparse.Namespace) -> tuple[Workflow | None, list[dict[str, Any]]]:
    try:
        wf = load_workflow_file(Path(args.file), REGISTRY)
    except WorkflowFormatError as exc:
        return None, [{"node": None, "input": None, "code": "invalid_file",
                       "message": str(exc)}]
    return wf, apply_overrides(wf, list(args.set or []))


# ---------------------------------------------------------------------------- run
def _json_event(event: dict[str, Any]) -> None:
    if "preview" in event:
        event = {**event, "preview": None}
    _print_json(event)


def _install_sigint(interrupt: threading.Event) -> None:
    """First Ctrl-C asks the run to stop at the next step; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        if interrupt.is_set():
            raise KeyboardInterrupt
        interrupt.set()

    signal.signal(signal.SIGINT, handler)


def _budgets(args: argparse.Namespace) -> dict[str, int | None]:
    budgets: dict[str, int | None] = dict(budgets_from_env())
    if getattr(args, "cache_cpu_bytes", None):
        budgets["cpu"] = parse_bytes(args.cache_cpu_bytes)
    if getattr(args, "cache_cuda_bytes", None):
        budgets["cuda"] = parse_bytes(args.cache_cuda_bytes)
    return budgets


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The one executor a command uses: its cache budgets and folders from the flags, then
    the environment overrides, then the defaults. The node library's checks run on the
    folders here, so a bad settings file stops the command before any work."""
    budgets = _budgets(args)
    allowed = getattr(args, "allow_path", None)
    folders = Folders.from_env(output=getattr(args, "output_dir", None),
                               models=getattr(args, "models_dir", None),
                               model_paths_file=getattr(args, "extra_model_paths", None),
                               allowed_paths=(None if allowed is None
                                              else [Path.cwd(), *allowed]))
    check_folders(folders)
    return Executor(REGISTRY, OutputCache(budgets), folders)


def _pass_vram(args: argparse.Namespace) -> None:
    """--vram is read by the node library's loaders and runners (as NOODLE_VRAM); the
    engine only passes it on."""
    if args.vram:
        os.environ["NOODLE_VRAM"] = args.vram


def cmd_run(args: argparse.Namespace) -> int:
    _pass_vram(args)
    load_node_library(args.nodes)
    executor = executor_from_args(args)
    wf, errors = _load(args)
    if wf is not None:
        errors = errors + validate(wf, REGISTRY, args.target or None, executor.folders)
    if errors:
        return _report_invalid(errors, args.json)
    assert wf is not None
    interrupt = threading.Event()
    _install_sigint(interrupt)
    on_event = _json_event if args.json else ConsoleReporter()
    try:
        result: RunResult = executor.run(wf, targets=args.target or None, on_event=on_event,
                                         interrupt=interrupt)
    except WorkflowInvalid as exc:
        return _report_invalid(exc.errors, args.json)
    if not args.json:
        for nid, ui in result.ui.items():
            for key in ("text", "value"):
                for item in ui.get(key, []):
                    print(f"#{nid} {key}: {item}")
        for path in result.files:
            print(path)
        state = "done" if result.ok else ("interrupted" if result.interrupted else "failed")
        print(f"{state} in {result.seconds:.2f}s: {len(result.executed)} executed, "
              f"{len(result.cached)} cached", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


# ---------------------------------------------------------------------------- others
def cmd_validate(args: argparse.Namespace) -> int:
    load_node_library(args.nodes)
    wf, errors = _load(args)
    if wf is not None:
        errors = errors + validate(wf, REGISTRY, args.target or None, Folders.from_env())
    if args.json:
        _print_json({"ok": not errors, "errors": errors})
    elif errors:
        _report_invalid(errors, False)
    else:
        print("valid")
    return EXIT_INVALID if errors else EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    load_node_library(args.nodes)
    schemas = REGISTRY.schemas()
    if args.json:
        _print_json(schemas)
        return EXIT_OK
    by_category: dict[str, list[dict[str, Any]]] = {}
    for schema in schemas.values():
        by_category.setdefault(schema["category"], []).append(schema)
    for category in sorted(by_category):
        print(f"{category}:")
        for s in by_category[category]:
            ins = ", ".join(f"{i['name']}:{i['type']}" for i in s["inputs"])
            outs = ", ".join(f"{o['name']}:{o['type']}" for o in s["outputs"])
            mark = "  [output]" if s["output_node"] else ""
            print(f"  {s['name']}({ins}) -> {outs or '-'}{mark}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """Convert a file in any importable format to a v1 workflow file (or stdout). Problems
    the result still has (node types not installed, say) are listed, not fatal: the file
    is worth having to fix them in."""
    load_node_library(args.nodes)
    try:
        wf = load_workflow_file(Path(args.file), REGISTRY)
    except WorkflowFormatError as exc:
        return _fail(args, EXIT_INVALID, _error("invalid_file", str(exc)))
    problems = validate(wf, REGISTRY, folders=Folders.from_env())
    if args.output:
        Path(args.output).write_text(dumps(wf), encoding="utf-8")
        print(f"wrote {args.output} ({len(wf.nodes)} nodes)", file=sys.stderr)
    else:
        sys.stdout.write(dumps(wf))
    if problems:
        print(f"note: it does not validate yet ({len(problems)} problem(s)):", file=sys.stderr)
        for err in problems:
            print("  " + _format_error(err), file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the web server; imported lazily so headless use never loads aiohttp (nor the
    local backend Ray)."""
    if args.previews:  # read by the node library's preview code, which the engine never imports
        os.environ["NOODLE_PREVIEWS"] = args.previews
    _pass_vram(args)
    names = load_node_library(args.nodes)
    server = importlib.import_module("graph_runtime.server")
    token = args.auth_token or env("NOODLE_AUTH_TOKEN")
    executor = executor_from_args(args)
    backend = None
    if args.backend == "ray":
        commands = importlib.import_module("graph_runtime.scale.commands")
        backend = commands.ray_backend(args, executor, names)
    server.serve(executor, host=args.host, port=args.port,
                 **({"auth_token": token} if token else {}),
                 state_db=args.state_db, requeue_interrupted=args.requeue_interrupted,
                 backend=backend, preview_every=args.preview_every)
    return EXIT_OK


# ---------------------------------------------------------------------------- scale-out
def cmd_batch(args: argparse.Namespace) -> int:
    """Run a workflow over a sweep (see `graph_runtime.scale.commands`)."""
    return int(importlib.import_module("graph_runtime.scale.commands").batch(args))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nodes", default=None,
                        help="node library module(s) to import (default: $NOODLE_NODES or "
                             "'nodes')")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache-cpu-bytes", default=None,
                       help="cache budget in RAM, e.g. 4G (default: $NOODLE_CACHE_CPU_BYTES)")
    cache.add_argument("--cache-cuda-bytes", default=None,
                       help="cache budget on the GPU (default: $NOODLE_CACHE_CUDA_BYTES)")
    wfargs = argparse.ArgumentParser(add_help=False)
    wfargs.add_argument("file", help="workflow file: JSON in any importable format, or a "
                                     "PNG that carries a workflow")
    wfargs.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                        help="override an input (JSON where it parses, else a string)")
    wfargs.add_argument("--target", action="append", metavar="NODE",
                        help="run only this node and what it needs (repeatable)")
    wfargs.add_argument("--json", action="store_true", help="machine-readable output")
    memory = memory_flags()
    paths = argparse.ArgumentParser(add_help=False)
    paths.add_argument("--extra-model-paths", default=None, metavar="FILE",
                       help="a file naming more model folders, in the extra_model_paths.yaml "
                            "format; they are used in place (default: "
                            "$NOODLE_EXTRA_MODEL_PATHS)")

    variables = "\n".join(f"  {name:<24} {text}" for name, text in ENVIRONMENT.items())
    parser = argparse.ArgumentParser(prog="noodle", description="Noodle: node-graph "
                                     "workflows for diffusion models.",
                                     epilog="environment variables:\n" + variables,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common, cache, wfargs, paths, memory],
                         help="run a workflow")
    run.add_argument("--output-dir", default="output", help="where files go (default: output)")
    run.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                     help="a folder (or file) nodes may read besides the input and model "
                          "folders and the working directory (repeatable)")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", parents=[common, wfargs], help="check a workflow")
    val.set_defaults(func=cmd_validate)
    nodes = sub.add_parser("nodes", parents=[common], help="list node types")
    nodes.add_argument("--json", action="store_true", help="every node's schema as JSON")
    nodes.set_defaults(func=cmd_nodes)
    imp = sub.add_parser("import", parents=[common], help="convert another tool's workflow "
                         "(JSON or PNG) to a Noodle workflow file")
    imp.add_argument("file", help="the workflow file or PNG to convert")
    imp.add_argument("-o", "--output", default=None, metavar="OUT",
                     help="where to write the v1 workflow (default: stdout)")
    imp.set_defaults(func=cmd_import)
    serve = sub.add_parser("serve", parents=[common, cache, paths, memory],
                           help="start the web canvas")
    serve_flags(serve)
    serve.set_defaults(func=cmd_serve)
    scale_flags(serve)
    bat = sub.add_parser("batch", parents=[common, cache, wfargs, paths],
                         help="run a workflow over a sweep of inputs, with a manifest")
    bat.add_argument("--sweep", action="append", metavar="NODE.INPUT=SPEC",
                     help="values for one input: 0..63, [1,5,9] or @file.txt (repeatable; "
                          "several make every combination)")
    bat.add_argument("--zip", action="store_true",
                     help="pair the sweeps' values up instead of every combination")
    bat.add_argument("--output-dir", default="output", help="files and manifest.jsonl")
    bat.set_defaults(func=cmd_batch)
    scale_flags(bat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        # The node library documents its own variables (e.g. the model hub's) on import.
        with contextlib.suppress(Exception):
            load_node_library(None)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        return _fail(args, EXIT_INVALID, _error("invalid_setting", str(exc)))
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_FAILED
    except OSError as exc:  # a file named on the command line that cannot be written
        return _fail(args, EXIT_INVALID, _error("os_error", f"{exc.strerror or exc}: "
                                                             f"{exc.filename or ''}".rstrip(": ")))
    except Exception as exc:  # noqa: BLE001 - reported as JSON, never as a traceback
        return _fail(args, EXIT_FAILED, _error("internal_error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    sys.exit(main())
