"""Finding a LoRA file's module names among a component's actual modules.

kohya-style files spell a module path with every ``.`` turned into ``_``; since module
names themselves contain ``_`` that cannot be undone by string rules, so the lookup goes
the other way: every module of the model is spelled that way once, and the file's name is
looked up. Text encoders may or may not nest their layers under ``text_model.`` (it depends
on the transformers version and the class), while files nearly always include it, so both
spellings of every path are indexed.
"""

from __future__ import annotations

from torch import nn

TEXT_MODEL = "text_model."


class AmbiguousNameError(LookupError):
    """Two module paths spell the same underscore name; the file cannot say which."""


def underscore(path: str) -> str:
    """A module path as kohya writes it: ``a.b_c.0`` -> ``a_b_c_0``."""
    return path.replace(".", "_")


def _aliases(path: str, optional_prefix: str | None) -> tuple[str, ...]:
    if optional_prefix is None:
        return (path,)
    if path.startswith(optional_prefix):
        return path, path[len(optional_prefix):]
    return path, optional_prefix + path


class ModuleIndex:
    """The paths of one component's parameter-holding modules, found by dotted path or by
    kohya's underscore spelling.

    Only modules that own parameters themselves are indexed: a LoRA patches a layer's
    weight, never a container.
    """

    def __init__(self, module: nn.Module, optional_prefix: str | None = None) -> None:
        self.module = module
        self._dotted: dict[str, str | None] = {}
        self._underscored: dict[str, str | None] = {}
        names = [name for name, sub in module.named_modules()
                 if name and any(True for _ in sub.parameters(recurse=False))]
        # Own spellings first; a prefix-toggled alias never displaces one.
        for name in names:
            _add(self._dotted, name, name)
            _add(self._underscored, underscore(name), name)
        for name in names:
            for alias in _aliases(name, optional_prefix)[1:]:
                self._dotted.setdefault(alias, name)
                self._underscored.setdefault(underscore(alias), name)

    def dotted(self, path: str) -> str | None:
        """The module path a dotted name in a file means, None if none."""
        return _get(self._dotted, path)

    def underscored(self, name: str) -> str | None:
        """The module path a kohya underscore name means, None if none."""
        return _get(self._underscored, name)


def _add(table: dict[str, str | None], alias: str, name: str) -> None:
    """Record alias -> name; an alias two different modules share maps to None (ambiguous)."""
    table[alias] = name if table.get(alias, name) == name else None


def _get(table: dict[str, str | None], key: str) -> str | None:
    if key not in table:
        return None
    found = table[key]
    if found is None:
        raise AmbiguousNameError(key)
    return found
