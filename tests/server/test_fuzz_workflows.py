"""Generated hostile workflows against the server and the CLI: never a 5xx, never an error
body that is not JSON, never a traceback.

Each example is a workflow over the real node library: real node types with values in
range, at their bounds and far outside them (NaN, 10**400, megabytes of text, lists nested
990 deep, wrong types), links to real, missing and misnamed outputs (cycles come by
themselves), unknown node types and ids such as "²", "١" or a lone surrogate, sometimes a
broken document around it. It is posted as our workflow to `POST /api/prompt` and, turned
into ComfyUI's API format, to `POST /prompt`; every tenth also goes through
`noodle validate` in this process, `PUT /api/workflows/{name}` and
`POST /api/workflows/import`. Only validation runs: the queue's executor checks a workflow
again and returns without calling a node, so no model is ever loaded. Afterwards the queue
and history routes must still answer with JSON.

`benchmarks/fuzz.py` runs the same check on 20,000 examples and prints the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nodes  # noqa: F401 - registers the node library this fuzzes
from graph_runtime import REGISTRY, Folders, cli
from graph_runtime.executor import Executor, RunResult, WorkflowInvalid
from graph_runtime.graph import validate
from graph_runtime.registry import InputSpec, NodeDef
from graph_runtime.server import create_app
from graph_runtime.widgets import Bool, Choice, Float, Int, Text
from graph_runtime.workflow import load_workflow

EXAMPLES = 2000
CLI_EVERY = 10
NODE_TYPES = sorted(REGISTRY)


class Nested:
    """Arrays nested `depth` deep, written out only when the request is encoded (a real
    nested list would break printing a failing example)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Nested({self.depth})"

    def token(self) -> str:
        return f"@nested:{self.depth}@"


HOSTILE_VALUES: list[Any] = [
    10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 2**53, math.nan, math.inf, -math.inf,
    1e308, -1e308, 5e-324, -0.0, "", "²", "\ud800", "\u202e\x00", "x" * 100_001, "NaN",
    "../../../etc/passwd", "C:\\Windows\\win.ini", "%s%n{0}", None, True, False, [], {},
    [1, 2], {"a": 1}, {"from": 5, "output": "x"}, {"from": "1"},
    {"from": None, "output": None}, {"from": ["1"], "output": "value"},
    {"from": "1", "output": 7},
]
HOSTILE_IDS = ["²", "١", "𝟙", "", " ", "0", "-1", "1.0", "1e400", "10" * 200, "a" * 1000,
               "\ud800", "__proto__", "constructor", "../x"]
HOSTILE_INDEXES: list[Any] = [99, -1, "0", None, 1.5, 10**400, [0], math.nan]


# ---------------------------------------------------------------------------- generating
# Hypothesis draws each workflow's shape (how many nodes, their ids and types, damage to
# the document); each node's inputs come from a generator seeded by one draw, since
# drawing every input value through hypothesis would cost more than the server's answer.
OUTPUT_TYPES = [name for name in NODE_TYPES if REGISTRY[name].output_node]
OUTPUT_NAMES = sorted({o.name for name in NODE_TYPES for o in REGISTRY[name].outputs})
BAD_TYPES = ["", "NoSuchNode", "²", "denoise", "Denoise "]


def _valid_value(spec: InputSpec, rng: random.Random) -> Any:
    """A value the input's widget accepts, its bounds and default included."""
    widget = spec.widget
    if isinstance(widget, (Int, Float)):
        low = widget.min if widget.min is not None else -(2**53)
        high = widget.max if widget.max is not None else 2**53
        if rng.random() < 0.3:
            return rng.choice([low, high, spec.default])
        return rng.randint(low, high) if isinstance(widget, Int) else rng.uniform(low, high)
    if isinstance(widget, Choice) and not callable(widget.options):
        return rng.choice(list(widget.options) or [""])
    if isinstance(widget, Text):
        return rng.choice(["", "a cat", "ünïcødé ²", "(a:1.2) [b] {c|d}", spec.default])
    if isinstance(widget, Bool):
        return rng.random() < 0.5
    return spec.default


def _producers(socket: str) -> list[str]:
    """Node types with an output that may be linked into an input of type `socket`."""
    if socket not in _PRODUCERS:
        _PRODUCERS[socket] = [name for name in NODE_TYPES
                              if any(REGISTRY.accepts(socket, o.type)
                                     for o in REGISTRY[name].outputs)]
    return _PRODUCERS[socket]


_PRODUCERS: dict[str, list[str]] = {}


def _grown_types(rng: random.Random, size: int) -> list[str]:
    """Node types that can make a valid graph: an output node, then a producer for each
    input that must be linked, until there are `size` nodes."""
    types = [rng.choice(OUTPUT_TYPES)]
    needs = [s.type for s in REGISTRY[types[0]].inputs.values() if s.required]
    while needs and len(types) < size:
        producers = _producers(needs.pop(0))
        if producers:
            types.append(rng.choice(producers))
            needs += [s.type for s in REGISTRY[types[-1]].inputs.values() if s.required]
    return types


class _Plan:
    """One workflow's nodes and how hostile to make their inputs (0: not at all)."""

    def __init__(self, pairs: list[tuple[str, str]], hostility: int, rng: random.Random):
        self.pairs, self.rng = pairs, rng
        self.hostile = (0.0, 0.1, 0.4)[hostility]

    def link(self, spec: InputSpec, position: int) -> Any:
        """A link to an output that fits (from a later node: no cycle, mostly), a misnamed
        one or a missing node."""
        rng, pairs = self.rng, self.pairs
        later = rng.random() < 0.9
        fits = [(nid, out.name) for i, (nid, ntype) in enumerate(pairs)
                if ntype in REGISTRY and (i > position or not later)
                for out in REGISTRY[ntype].outputs if REGISTRY.accepts(spec.type, out.type)]
        roll = rng.random() * self.hostile * 2.5  # 0 when not hostile
        if fits and roll < 0.5:
            source, output = rng.choice(fits)
            return {"from": source, "output": output}
        if not fits and not spec.required and not self.hostile:
            return None
        if pairs and roll < 0.9:
            return {"from": rng.choice(pairs)[0], "output": rng.choice(OUTPUT_NAMES)}
        return {"from": "missing", "output": "value"}

    def value(self, spec: InputSpec | None = None) -> Any:
        """A hostile value: for a number, often one just outside its bounds."""
        rng, widget = self.rng, spec.widget if spec is not None else None
        if isinstance(widget, (Int, Float)) and rng.random() < 0.4:
            low, high = widget.min, widget.max
            step = 1 if isinstance(widget, Int) else rng.choice([1e-9, 0.5, 1e9])
            edges = [v for v in (low - step if low is not None else None,
                                 high + step if high is not None else None) if v is not None]
            return rng.choice(edges or [2**53 + 1])
        if rng.random() < 0.03:  # rare: one makes the whole request too deep
            return Nested(rng.choice([65, 990]))
        return rng.choice(HOSTILE_VALUES)

    def inputs(self, position: int) -> dict[str, Any]:
        """Inputs valid, hostile, linked or left out, now and then one the node lacks."""
        rng = self.rng
        definition: NodeDef | None = REGISTRY.get(self.pairs[position][1])
        inputs: dict[str, Any] = {}
        for spec in definition.inputs.values() if definition is not None else []:
            if rng.random() < self.hostile:
                inputs[spec.name] = self.value(spec)
            elif spec.widget is None and (spec.required or rng.random() < 0.5):
                if (link := self.link(spec, position)) is not None:
                    inputs[spec.name] = link
            elif spec.widget is not None and rng.random() < 0.7:
                inputs[spec.name] = _valid_value(spec, rng)
        if rng.random() < self.hostile / 2:
            inputs[rng.choice(["x", "²", "", "inputs"])] = self.value()
        return inputs


@st.composite
def workflows(draw: st.DrawFn) -> dict[str, Any]:
    """A v1 workflow document: well-formed and mostly valid, with some hostile values, or
    hostile throughout (unknown types, odd ids, a broken document)."""
    hostility = draw(st.sampled_from([0, 1, 1, 2]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(0 if hostility else 1, 7))
    if hostility < 2:
        types = _grown_types(rng, count if hostility else 12)
        ids = [str(i + 1) for i in range(len(types))]
    else:
        types = [draw(st.one_of(st.sampled_from(NODE_TYPES), st.sampled_from(BAD_TYPES)))
                 for _ in range(count)]
        ids = [draw(st.sampled_from(HOSTILE_IDS)) if draw(st.integers(0, 3)) == 0
               else str(i + 1) for i in range(count)]
    plan = _Plan(list(zip(ids, types, strict=True)), hostility, rng)
    doc: dict[str, Any] = {"format": "noodle.workflow", "version": 1,
                           "nodes": {nid: {"type": ntype, "inputs": plan.inputs(i)}
                                     for i, (nid, ntype) in enumerate(plan.pairs)}}
    damage = draw(st.integers(0, 9)) if hostility == 2 else -1
    if damage == 0:
        doc["version"] = draw(st.sampled_from([2, "1", True, 1.0, None]))
    elif damage == 1:
        doc["nodes"] = draw(st.sampled_from([[], "nodes", None, Nested(70)]))
    elif damage == 2 and doc["nodes"]:
        doc["nodes"][next(iter(doc["nodes"]))] = draw(st.sampled_from(HOSTILE_VALUES))
    elif damage == 3:
        doc["ui"] = draw(st.sampled_from(HOSTILE_VALUES))
    elif damage == 4 and doc["nodes"]:
        doc["nodes"][next(iter(doc["nodes"]))]["type"] = draw(st.sampled_from(HOSTILE_VALUES))
    return doc


def api_prompt(doc: dict[str, Any], broken_links: bool) -> Any:
    """The workflow in ComfyUI's API format: links become `[id, output index]`."""
    nodes_ = doc.get("nodes")
    if not isinstance(nodes_, dict):
        return nodes_
    prompt: dict[str, Any] = {}
    for nid, nd in nodes_.items():
        if not isinstance(nd, dict):
            prompt[nid] = nd
            continue
        inputs = {}
        for name, value in (nd.get("inputs") or {}).items():
            if isinstance(value, dict) and isinstance(value.get("from"), str):
                source = nodes_.get(value["from"])
                definition = REGISTRY.get(source.get("type")) if isinstance(source, dict) \
                    else None
                outs = [o.name for o in definition.outputs] if definition else []
                index: Any = outs.index(value["output"]) if value.get("output") in outs else 0
                value = [value["from"], HOSTILE_INDEXES[len(name) % 8] if broken_links
                         else index]
            inputs[name] = value
        prompt[nid] = {"class_type": nd.get("type"), "inputs": inputs}
    return prompt


@st.composite
def examples(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], bool]:
    """(document, our request body, ComfyUI's request body, whether to send it as UTF-8)."""
    doc = draw(workflows())
    ours: dict[str, Any] = {"workflow": doc}
    comfy: dict[str, Any] = {"prompt": api_prompt(doc, draw(st.integers(0, 9)) == 0)}
    if draw(st.integers(0, 3)) == 0:
        hostile = draw(st.sampled_from(HOSTILE_VALUES))
        ours["client_id"] = comfy["client_id"] = hostile
        key = draw(st.sampled_from(["number", "front", "extra_data", "prompt_id",
                                    "partial_execution_targets"]))
        comfy[key] = hostile
    if draw(st.integers(0, 20)) == 0:
        ours = {"workflow": Nested(990)}
    return doc, ours, comfy, draw(st.booleans())


# ---------------------------------------------------------------------------- checking
class ValidateOnly(Executor):
    """An executor that validates as a run does and then runs nothing."""

    def run(self, wf: Any, targets: Any = None, on_event: Any = None, interrupt: Any = None,
            output_dir: Any = None, run_id: Any = None) -> RunResult:
        wf = load_workflow(wf)
        errors = validate(wf, self.registry, targets, self.folders)
        if errors:
            raise WorkflowInvalid(errors)
        return RunResult()


def encode(body: Any, utf8: bool) -> bytes:
    """JSON as a careless client writes it: NaN allowed, lone surrogates passed through."""
    text = json.dumps(body, allow_nan=True, ensure_ascii=not utf8,
                      default=lambda value: value.token())
    for depth in (65, 70, 990):
        text = text.replace(f'"@nested:{depth}@"', "[" * depth + "]" * depth)
    return text.encode("utf-8", "surrogatepass")


def check_answer(status: int, text: str, route: str, tally: Counter[str],
                 success_key: str = "prompt_id") -> None:
    """A 2xx or a 4xx, with a JSON body that says what was wrong. `route` "comfy" answers
    errors in ComfyUI's shape, any other in ours."""
    assert status < 500, f"{route}: {status} {text[:300]}"
    body = json.loads(text)
    if status >= 400:
        if route != "comfy":
            errors = body["errors"]
            assert errors and all({"node", "input", "code", "message"} <= set(e)
                                  for e in errors), text[:300]
            tally.update(f"{route} {e['code']}" for e in errors[:1])
        else:
            assert isinstance(body.get("error"), dict) or body.get("errors"), text[:300]
            tally[f"{route} {(body.get('error') or {}).get('type', 'errors')}"] += 1
    else:
        assert success_key in body, text[:300]
        tally[f"{route} accepted"] += 1


def check_cli(doc: dict[str, Any], path: Path, as_json: bool, tally: Counter[str]) -> None:
    """`noodle validate` in this process: exit 0 or 2, JSON out, no traceback."""
    path.write_bytes(encode(doc, utf8=True))
    out, err = io.StringIO(), io.StringIO()
    argv = ["validate", str(path)] + (["--json"] if as_json else [])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    assert code in (0, 2), err.getvalue()[-500:]
    assert "Traceback" not in err.getvalue() + out.getvalue()
    if code == 2:
        last = (out.getvalue() if as_json else err.getvalue()).strip().splitlines()[-1]
        assert json.loads(last)["errors"]
    tally[f"cli exit {code}"] += 1


@contextlib.contextmanager
def fuzz_client(root: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, TestClient]]:
    """A real server over the node library, on a loop of its own."""
    for name in ("output", "input", "temp", "user", "models"):
        (root / name).mkdir(exist_ok=True)
    folders = Folders(output=root / "output", input=root / "input", models=root / "models",
                      user=root / "user", temp_dir=root / "temp")
    app = create_app(ValidateOnly(REGISTRY, folders=folders))
    loop = asyncio.new_event_loop()
    client = TestClient(TestServer(app), loop=loop)
    loop.run_until_complete(client.start_server())
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def make_check(loop: asyncio.AbstractEventLoop, client: TestClient, root: Path,
               tally: Counter[str]) -> Callable[[Any], None]:
    """The check of one example, counting outcomes in `tally`."""

    async def post(path: str, data: bytes, method: str = "POST") -> tuple[int, str]:
        async with client.request(method, path, data=data) as resp:
            return resp.status, await resp.text()

    def check(example: tuple[dict[str, Any], dict[str, Any], dict[str, Any], bool]) -> None:
        doc, ours, comfy, utf8 = example
        status, text = loop.run_until_complete(post("/api/prompt", encode(ours, utf8)))
        check_answer(status, text, "ours", tally)
        status, text = loop.run_until_complete(post("/prompt", encode(comfy, utf8)))
        check_answer(status, text, "comfy", tally)
        tally["examples"] += 1
        if tally["examples"] % CLI_EVERY == 0:
            check_cli(doc, root / "fuzzed.json", tally["examples"] % (2 * CLI_EVERY) == 0,
                      tally)
            saved = encode(doc, utf8)
            status, text = loop.run_until_complete(post("/api/workflows/f", saved, "PUT"))
            check_answer(status, text, "save", tally, "name")
            status, text = loop.run_until_complete(post("/api/workflows/import",
                                                        encode(comfy["prompt"], utf8)))
            check_answer(status, text, "import", tally, "workflow")

    return check


def run_fuzz(root: Path, max_examples: int, tally: Counter[str]) -> None:
    """Check `max_examples` generated examples (derandomized: the same ones every time)."""
    with fuzz_client(root) as (loop, client):
        check = make_check(loop, client, root, tally)
        fuzzed = settings(max_examples=max_examples, deadline=None, derandomize=True,
                          database=None, suppress_health_check=list(HealthCheck))(
            given(examples())(check))
        fuzzed()
        for path in ("/api/queue", "/api/history", "/history?max_items=50", "/queue"):
            status, text = loop.run_until_complete(_get(client, path))
            assert status == 200 and json.loads(text) is not None, (path, status, text[:300])


async def _get(client: TestClient, path: str) -> tuple[int, str]:
    async with client.get(path) as resp:
        return resp.status, await resp.text()


def test_generated_workflows_never_crash_the_server_or_the_cli(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOODLE_MODELS_DIR", str(tmp_path / "models"))
    tally: Counter[str] = Counter()
    run_fuzz(tmp_path, EXAMPLES, tally)
    assert tally["examples"] >= EXAMPLES * 0.9, tally  # hypothesis may stop a little early
    assert tally["ours accepted"] and tally["comfy accepted"], tally  # valid ones pass
    assert tally["cli exit 0"] and tally["cli exit 2"], tally
