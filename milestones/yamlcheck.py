"""YAML inputs checked with line numbers: a document with the 1-based line of every key path,
and a checker that collects one line per mistake (`file:line: key.path: value ... (choices)`),
reported all at once in line order. Ladders (milestones.ladder) and race specs (race.spec)
share it; it lives here because milestones imports nothing else of ours (STYLE.md layers).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import yaml

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml's when present


def compose(text: str, filename: str,
            error: Callable[[list[str]], Exception]) -> tuple[Any, dict[tuple, int]]:
    """The document and the line of every key path, e.g. ('engines', 1, 'options'); YAML
    that does not parse raises `error([one line])`."""
    loader = SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error([f"{filename}:{mark.line + 1 if mark else 1}: not valid YAML: "
                     f"{problem}"]) from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}

    def walk(n, path):
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                lines[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, path + (i,))
    if node is not None:
        walk(node, ())
    return doc, lines


def dotted(path: tuple) -> str:
    """('engines', 1, 'options') -> 'engines[1].options'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def show(v: Any) -> str:
    """A value as YAML spells it."""
    return "null" if v is None else ("true" if v is True else "false" if v is False else str(v))


class Checker:
    """Collects one line per mistake: file:line: key: value ... (choices)."""

    def __init__(self, filename: str, lines: dict[tuple, int]):
        self.filename, self.lines = filename, lines
        self.errors: list[tuple[int, str]] = []          # (line, message)

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def add(self, path: tuple, text: str) -> None:
        line = self.line(path)
        self._put(line, f"{self.filename}:{line}: {dotted(path)}: {text}")

    def foreign(self, path: tuple, texts: Sequence[str]) -> None:
        """Mistakes of a file this one names at `path` (each names its own file and line),
        placed in line order where it is named."""
        for text in texts:
            self._put(self.line(path), text)

    def _put(self, line: int, text: str) -> None:
        if (line, text) not in self.errors:      # e.g. one cost table shared by entries
            self.errors.append((line, text))

    def error(self, path: tuple, value: Any, why: str) -> None:
        self.add(path, f"value {value!r} {why}")

    def choice(self, path: tuple, value: Any, choices: Sequence, more: str = "") -> bool:
        if any(type(value) is type(c) and value == c for c in choices):
            return True
        self.error(path, value, f"is not allowed (choices: "
                                f"{', '.join(show(c) for c in choices)}{more})")
        return False

    def unknown_keys(self, path: tuple, mapping: dict, allowed: Sequence) -> None:
        for key in mapping:
            if key not in allowed:
                self.add(path + (key,), f"unknown key (allowed: {', '.join(allowed) or 'none'})")

    def sorted(self) -> list[str]:
        """The messages in line order (a stable sort: same line, order found)."""
        return [text for _, text in sorted(self.errors, key=lambda e: e[0])]
