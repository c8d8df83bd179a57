// Undo/redo as whole-workflow snapshots. Every hook that may follow an edit (litegraph's
// change callbacks, widget callbacks, pointer and key release) only *schedules* a checkpoint;
// the checkpoint compares the serialised workflow with the last one and records a step when
// it differs. Comparing snapshots rather than replaying operations means no kind of edit can
// be missed or half-undone, and a drag (many moves, one pointer release) becomes one step.

const LIMIT = 100;

// Whether keys typed at `el` are text for it (undo and paste keys then belong to the field).
export function isEditable(el) {
  return Boolean(el && (el.isContentEditable || ["input", "textarea", "select"].includes(el.localName)));
}

export class History {
  // `capture()` -> the workflow as a string (no viewport); `restore(text)` loads one back;
  // `busy()` is true while an edit is still in progress (pointer held, typing in a field);
  // `onState()` runs whenever `dirty`, `canUndo` or `canRedo` may have changed.
  constructor({ capture, restore, busy = () => false, onState = () => {} }) {
    this.capture = capture;
    this.restore = restore;
    this.busy = busy;
    this.onState = onState;
    this.undoStack = [];
    this.redoStack = [];
    this.current = null;
    this.clean = null;
    this.timer = null;
    this.restoring = false;
  }

  // A freshly loaded workflow: no history, and nothing unsaved.
  reset() {
    this.undoStack = [];
    this.redoStack = [];
    this.current = this.capture();
    this.clean = this.current;
    this.onState();
  }

  get dirty() {
    return this.current !== this.clean;
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  get canRedo() {
    return this.redoStack.length > 0;
  }

  // The workflow as it is now has been saved.
  markClean() {
    this.checkpoint(true);
    this.clean = this.current;
    this.onState();
  }

  // The workflow differs from any saved file (e.g. unsaved edits restored after a reload).
  markDirty() {
    this.clean = null;
    this.onState();
  }

  // Checks for a change once the current event has been handled.
  schedule() {
    if (this.timer !== null || this.restoring) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.checkpoint();
    }, 0);
  }

  // Records a step if the workflow changed; unless `force`, waits while an edit is in progress.
  checkpoint(force = false) {
    if (this.restoring || this.current === null || (!force && this.busy())) return false;
    const now = this.capture();
    if (now === this.current) return false;
    this.undoStack.push(this.current);
    if (this.undoStack.length > LIMIT) this.undoStack.shift();
    this.redoStack = [];
    this.current = now;
    this.onState();
    return true;
  }

  undo() {
    this.checkpoint(true);
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.current);
    this.apply(this.undoStack.pop());
    return true;
  }

  redo() {
    this.checkpoint(true);
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.current);
    this.apply(this.redoStack.pop());
    return true;
  }

  apply(text) {
    this.restoring = true;
    try {
      this.restore(text);
    } finally {
      this.restoring = false;
    }
    // What the graph serialises to now, which a faithful load makes equal to `text`.
    this.current = this.capture();
    if (this.clean === text) this.clean = this.current;
    this.onState();
  }
}
