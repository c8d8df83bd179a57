"""ComfyUI's own templates: every SD-family one imports, the core ones run on the embedded
model, and the README's table says which run and why the others do not yet."""

from __future__ import annotations

import pytest

pytest.importorskip("comfyui_workflow_templates")

from tests.support.paths import REPO  # noqa: E402
from tools.comfy_templates import FAMILY, MUST_RUN, Row, markdown, report, templates_dir  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows() -> dict[str, Row]:
    return {row.name: row for row in report()}


def test_the_family_list_names_real_templates() -> None:
    shipped = {p.stem for p in templates_dir().glob("*.json")}
    assert set(FAMILY) <= shipped


def test_the_core_templates_run(rows: dict[str, Row]) -> None:
    for name in MUST_RUN:
        assert rows[name].runs, f"{name}: {rows[name].why}"


def test_every_template_that_does_not_run_says_why(rows: dict[str, Row]) -> None:
    assert set(rows) == set(FAMILY)
    for row in rows.values():
        assert row.runs or row.why, row.name


def test_the_readme_table_is_current(rows: dict[str, Row]) -> None:
    table = markdown(sorted(rows.values(), key=lambda r: r.name))
    assert table in (REPO / "README.md").read_text(), (
        "README's template table is stale; regenerate it with python -m tools.comfy_templates")
