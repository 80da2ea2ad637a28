"""Workload profiles: YAML files that give every count of a boot as a knob. Packaged:
`sarge` (a Debian-3.1-like SysV boot, reference/linux-guest.md §3), `tiny` (for tests) and
`lmbench-*` micro-profiles that each measure one mechanism. A profile may `inherit` another
and override parts of it. Errors name the file, the key, the value and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.api.yamlfile import read_yaml, resolve

from .errors import ProfileError

PROFILE_DIR = Path(__file__).with_name("profiles")

_INT = ("int", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0)
_BOOL = ("bool", lambda x: isinstance(x, bool))
_PROGRAM = {k: _INT for k in ("text", "data", "bss", "heap", "stack", "syscalls", "work")}
SCHEMA: dict[str, Any] = {
    "name": ("str", lambda x: isinstance(x, str)),
    "description": ("str", lambda x: isinstance(x, str)),
    "inherits": ("str", lambda x: isinstance(x, str)),
    "workload": ("boot | lmbench", lambda x: x in ("boot", "lmbench")),
    "vcpus": ("int 1..32", lambda x: isinstance(x, int) and 1 <= x <= 32),
    "memory_mib": ("int 16..896", lambda x: isinstance(x, int) and 16 <= x <= 896),
    "kernel": {"hz": ("100 | 250 | 1000", lambda x: x in (100, 250, 1000)), "pge": _BOOL,
               "nx": _BOOL, "kthreads": _INT, "fork_copy": ("all | anon", lambda x: x in ("all", "anon")),
               "timeslice_ticks": _INT, "kthread_every_ticks": _INT, "kthread_work": _INT},
    "boot": {k: _INT for k in ("rcs_scripts", "rc2_scripts", "commands_per_script",
                               "distinct_commands", "subshells_per_script", "hotplug_events",
                               "hotplug_burst", "hotplug_gap_cycles", "modprobe_every",
                               "module_pages", "kuse_per_command", "subshell_work", "daemons",
                               "gettys")},
    "libs": {k: _INT for k in ("ld_text", "ld_touch", "libc_text", "libc_touch", "libc_data")},
    "programs": {k: _PROGRAM for k in ("init", "sh", "cmd", "daemon", "getty")},
    "lmbench": {"mechanism": ("fork | exec | sh | ctx | pagefault | mmap | prot",
                              lambda x: x in ("fork", "exec", "sh", "ctx", "pagefault", "mmap", "prot")),
                "iterations": _INT, "pages": _INT},
}
REQUIRED = ("name", "workload", "vcpus", "memory_mib", "kernel", "boot", "libs", "programs")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    workload: str
    vcpus: int
    memory_mib: int
    kernel: dict
    boot: dict
    libs: dict
    programs: dict
    lmbench: dict
    origin: str


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _resolve(name_or_path: str, referrer: Path | None = None) -> Path:
    return resolve(name_or_path, PROFILE_DIR, "profile", ProfileError, referrer)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _check(path: Path, doc: dict, schema: dict, prefix: str = "") -> None:
    for key, value in doc.items():
        where = f"{prefix}{key}"
        if key not in schema:
            raise ProfileError(f"{path}: key {where!r} unknown (allowed: "
                               f"{', '.join(sorted(schema))})")
        rule = schema[key]
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise ProfileError(f"{path}: key {where!r}: value {value!r} must be a mapping")
            _check(path, value, rule, where + ".")
        elif not rule[1](value):
            raise ProfileError(f"{path}: key {where!r}: value {value!r} not allowed "
                               f"(allowed: {rule[0]})")


def _complete(path: Path, doc: dict, schema: dict) -> None:
    """Every key of each section must be given (the lmbench section only for lmbench
    workloads, and its `pages` has a default)."""
    for key, rule in schema.items():
        if not isinstance(rule, dict) or key not in doc:
            continue
        if key == "lmbench" and doc.get("workload") != "lmbench":
            continue
        for sub in rule:
            if sub not in doc[key] and (key, sub) != ("lmbench", "pages"):
                raise ProfileError(f"{path}: key {key}.{sub} is missing")


def _load_doc(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    doc = read_yaml(path, ProfileError)
    if not isinstance(doc, dict):
        raise ProfileError(f"{path}: the top level must be a mapping")
    _check(path, doc, SCHEMA)
    if "inherits" in doc:
        parent = _resolve(doc["inherits"], referrer=path)
        if parent in seen or parent == path:
            raise ProfileError(f"{path}: inherits {doc['inherits']!r} forms a cycle")
        base = _load_doc(parent, seen + (path,))
        base.pop("description", None)
        doc = _merge(base, {k: v for k, v in doc.items() if k != "inherits"})
    return doc


def load_profile(name_or_path: str) -> Profile:
    path = _resolve(name_or_path)
    doc = _load_doc(path)
    for key in REQUIRED:
        if key not in doc:
            raise ProfileError(f"{path}: key {key!r} is required")
    _complete(path, doc, SCHEMA)
    if doc["workload"] == "lmbench" and "lmbench" not in doc:
        raise ProfileError(f"{path}: workload 'lmbench' needs an 'lmbench' mapping")
    lm = doc.get("lmbench", {})
    return Profile(name=doc["name"], description=doc.get("description", ""),
                   workload=doc["workload"], vcpus=doc["vcpus"], memory_mib=doc["memory_mib"],
                   kernel=doc["kernel"], boot=doc["boot"], libs=doc["libs"],
                   programs=doc["programs"], lmbench={"pages": 16, **lm}, origin=str(path))
