"""Reading the project's YAML inputs (cost tables here; guest profiles use it too): a file
or a packaged name, `inherits:` resolved next to the file that says it, and errors of one
line that name the file, the line, the key and the value.

Every boot reads its cost table and guest profile, so the parser is libyaml's
(`yaml.CSafeLoader`, the same safe schema) when PyYAML has it: about 3 ms for what the
pure-Python SafeLoader takes 30 ms over, an eighth of a `tiny` boot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path, error: type[Exception]) -> Any:
    try:
        return yaml.load(Path(path).read_text(), Loader=SAFE_LOADER)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise error(f"{path}:{where} not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def resolve(name_or_path: str, packaged: Path, kind: str, error: type[Exception],
            referrer: Path | None = None) -> Path:
    """A YAML file by path (relative to `referrer`'s folder when given) or a packaged name."""
    name = str(name_or_path)
    choices = ", ".join(sorted(p.stem for p in packaged.glob("*.yaml")))
    if name.endswith((".yaml", ".yml")):
        for base in ([referrer.parent] if referrer else []) + [Path.cwd()]:
            p = Path(name) if Path(name).is_absolute() else base / name
            if p.exists():
                return p
    elif (packaged / f"{name}.yaml").exists():
        return packaged / f"{name}.yaml"
    if referrer is not None:
        raise error(f"{referrer}: key 'inherits': value {name!r}: no such file or packaged "
                    f"{kind} (choices: {choices})")
    raise error(f"{kind} {name!r}: no such file or packaged {kind} (choices: {choices})")
