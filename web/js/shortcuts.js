// Editing keys: undo (Ctrl+Z), redo (Ctrl+Shift+Z, Ctrl+Y), copy (Ctrl+C), paste at the mouse
// (Ctrl+V), paste keeping the inputs from outside the copy (Ctrl+Shift+V), and bypass (Ctrl+B)
// or mute (Ctrl+M) the selected nodes, each key again making them active. They run before
// litegraph's own keys, and never while a text field has the focus.
//
// Copied nodes go to the system clipboard as v1 workflow text through the browser's copy
// event (no permission needed), so another page can paste them; the same text is also kept in
// localStorage, which serves when the clipboard cannot be read.

import { isEditable } from "./graph/history.js";
import { parseFragment } from "./graph/fragment.js";
import { toggleMode } from "./graph/modes.js";

const FALLBACK_KEY = "noodle.clipboard.v1";

function remember(text) {
  try {
    localStorage.setItem(FALLBACK_KEY, text);
  } catch (err) {
    // storage full or disabled: the system clipboard still has the copy
  }
}

async function readClipboard() {
  try {
    return await navigator.clipboard.readText();
  } catch (err) {
    return "";
  }
}

export function bindEditingKeys(editor) {
  let copied = null; // text waiting for the copy event
  let request = null; // a paste asked for by the keyboard, waiting for the paste event

  // Pastes clipboard text when it is a fragment, else the last copy made in this browser.
  const pasteText = (text, { at = null, keepInputs = false } = {}) => {
    const fragment = parseFragment(text) ?? parseFragment(localStorage.getItem(FALLBACK_KEY));
    if (!fragment) return false;
    editor.paste(fragment, { at, keepInputs });
    return true;
  };

  window.addEventListener("keydown", (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.altKey || isEditable(e.target)) return;
    const key = e.key.toLowerCase();
    if (key === "z" || key === "y") {
      e.preventDefault();
      e.stopImmediatePropagation();
      if (key === "y" || e.shiftKey) editor.history.redo();
      else editor.history.undo();
    } else if (key === "c" && !e.shiftKey) {
      const fragment = editor.copySelection();
      if (!fragment) return;
      e.stopImmediatePropagation(); // litegraph's own copy; the browser's copy event still fires
      copied = JSON.stringify(fragment);
      remember(copied);
      setTimeout(() => { // no copy event came: ask the clipboard API, where it is allowed
        if (copied) navigator.clipboard?.writeText(copied).catch(() => {});
        copied = null;
      }, 0);
    } else if ((key === "b" || key === "m") && !e.shiftKey) {
      const ids = new Set(editor.selectedIds());
      const nodes = editor.graph._nodes.filter((n) => ids.has(String(n.id)));
      if (!toggleMode(nodes, key === "b" ? "bypass" : "mute")) return;
      e.preventDefault();
      e.stopImmediatePropagation();
      editor.canvas.setDirty(true, true);
      editor.onChange(); // one undo step, checkpointed when the key is released
    } else if (key === "v") {
      e.stopImmediatePropagation();
      request = { keepInputs: e.shiftKey, at: [...(editor.canvas.graph_mouse ?? [0, 0])] };
      setTimeout(async () => { // no paste event came: read the clipboard API, or the fallback
        if (!request) return;
        const asked = request;
        request = null;
        pasteText(await readClipboard(), asked);
      }, 0);
    }
  }, true);

  document.addEventListener("copy", (e) => {
    if (!copied || isEditable(e.target)) return;
    e.clipboardData.setData("text/plain", copied);
    e.preventDefault();
    copied = null;
  });

  document.addEventListener("paste", (e) => {
    if (isEditable(e.target)) return;
    const asked = request ?? {};
    request = null;
    if (pasteText(e.clipboardData?.getData("text/plain") ?? "", asked)) e.preventDefault();
  });
}
