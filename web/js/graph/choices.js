// Fresh choice lists without a reload: the server lists model files when /api/nodes is asked,
// so after new files arrive the canvas asks again and gives every registered node class and
// every choice widget on the graph the new lists. A widget keeps its value even when the
// file is gone (validation then says so), as a loaded workflow does.

import { LiteGraph } from "../../lib/litegraph.es.js";

// The values a choice widget of `spec` offers: its options, with its default first.
function valuesOf(spec) {
  const values = [...(spec.options ?? [])];
  if (spec.default && !values.includes(spec.default)) values.unshift(spec.default);
  return values;
}

// Updates the option lists of registered types and of the graph's choice widgets from
// `schemas` (as /api/nodes serves them). Returns how many widgets changed.
export function refreshChoices(editor, schemas) {
  for (const [name, schema] of Object.entries(schemas)) {
    const cls = LiteGraph.registered_node_types[name];
    if (!cls?.schema) continue;
    for (const spec of cls.schema.inputs) {
      const fresh = schema.inputs.find((s) => s.name === spec.name);
      if (spec.widget === "choice" && fresh?.widget === "choice") spec.options = [...(fresh.options ?? [])];
    }
    editor.schemas[name] = cls.schema;
  }
  let changed = 0;
  for (const node of editor.graph._nodes) {
    for (const w of node.widgets ?? []) {
      if (w.type !== "combo" || w.noodleInput?.widget !== "choice") continue;
      const values = valuesOf(w.noodleInput);
      if (!values.includes(w.value)) values.push(w.value);
      if (values.join("\n") === (w.options.values ?? []).join("\n")) continue;
      w.options.values = values;
      changed += 1;
    }
  }
  editor.canvas.setDirty(true, true);
  return changed;
}
