"""Importing ComfyUI workflows: its UI format, its API format and (through the engine's PNG
reading) the images it saves. Importing this package registers both importers with the
engine, so `graph_runtime.workflow.import_workflow`, `noodle import`/`run`/`validate` and
the canvas open ComfyUI files.

Node types are ComfyUI's class names, looked up in the registry: the ComfyUI node pack
gives them ComfyUI's input names, input order and outputs, which is what naming widget
values and link slots needs. A class the registry lacks still becomes a node of that type,
so validation reports it instead of the import dropping it.
"""

from graph_runtime.workflow import register_importer
from nodes.comfyui.importer.api_format import api_prompt, import_api_prompt, is_api_prompt
from nodes.comfyui.importer.ui_format import import_ui_workflow, is_ui_workflow

__all__ = ["api_prompt", "import_api_prompt", "import_ui_workflow", "is_api_prompt",
           "is_ui_workflow"]

register_importer("comfyui-ui", import_ui_workflow)
register_importer("comfyui-api", import_api_prompt)
