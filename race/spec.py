"""Race specs: which boots to run, as YAML, expanded into an ordered plan of boot cells.

    name: default
    costs: p4-xeon-2005            # cost table (packaged name or a path next to the spec)
    ladder: default                # milestone ladder (packaged name or a path)
    seeds: [1, 2, 3]
    matrix:                        # every combination is raced, for every engine entry
      profile: [sarge]
      vcpus: [1, 2]
      memory_mib: [512]
      machine_memory_mib: [null]   # null: the engine's default
      flush_filter: [false]
    engines:
      - engine: native
      - engine: paravirt
        options: {strategy: [per-pagetable, shared, shared-percpu, walk]}
      - engine: shadow
        label: shadow-vtx          # optional display name
        costs: p4-vtx-2005         # per-entry costs, cost_overrides, ladder and matrix
        cost_overrides: {trap: 4000}

An option or axis given as a list is an axis of the race; a scalar is one value. Every
mistake is reported, one line each in line order, naming file, line, key, value and the
allowed choices (`SpecError`, exit status 2 at the CLI), including what a boot would refuse
when it is built: the limits of `DomainSpec`, each engine's `machine_memory_range` and
`min_pool_pages`, ladder or cost-table files with mistakes of their own, and a VCPU count
a ladder milestone's `vcpus` match can never match. An engine the spec names that is not
installed yet is skipped with a note, so each engine joins the race the day it lands.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from engines.api.contract import LOWMEM_MIB, MAX_VCPUS, DomainSpec
from milestones import load_ladder
from milestones.yamlcheck import Checker, compose, dotted

SPEC_DIR = Path(__file__).with_name("specs")
AXES = ("profile", "vcpus", "memory_mib", "machine_memory_mib", "flush_filter")
AXIS_DEFAULTS = {"profile": "sarge", "vcpus": 1, "memory_mib": 512,
                 "machine_memory_mib": None, "flush_filter": False}
TOP_KEYS = ("name", "description", "costs", "cost_overrides", "ladder", "seeds", "matrix",
            "engines")
ENTRY_KEYS = ("engine", "label", "options", "costs", "cost_overrides", "ladder", "matrix")


class SpecError(ValueError):
    """A spec that cannot be raced; `.lines` holds one message per mistake."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


@dataclass(frozen=True)
class Catalog:
    """What is installed: engines (name -> module with OPTIONS and DEFAULTS), profiles,
    ladders, cost tables, the cell type and the boot function. Tests pass their own."""
    engines: Mapping[str, Any]
    profiles: Sequence[str]
    ladders: Sequence[str]
    cost_tables: Sequence[str]
    cell_type: type
    run_boot: Callable
    load_cost_table: Callable
    cost_events: Mapping[str, Sequence[str]] = field(default_factory=dict)  # engine -> needs

    @classmethod
    def installed(cls) -> "Catalog":
        from engines.api import list_cost_tables, load_cost_table
        from race import boot
        return cls(engines=dict(boot.ENGINES), profiles=list(boot.list_profiles()),
                   ladders=list(boot.list_ladders()), cost_tables=list_cost_tables(),
                   cell_type=boot.BootCell, run_boot=boot.run_boot,
                   load_cost_table=load_cost_table,
                   cost_events={name: boot.engine_class(name).COST_EVENTS
                                for name in boot.ENGINES})


@dataclass
class Race:
    """A validated spec, expanded: `cells` in plan order (entry, options, matrix, seed)."""
    name: str
    path: str
    text: str
    description: str
    seeds: list[int]
    cells: list[Any]
    labels: dict[str, str]                 # cell key -> engine entry label
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)   # engine -> spec lines

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.keys()).encode()).hexdigest()[:12]

    def keys(self) -> list[str]:
        return [c.key() for c in self.cells]


def list_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def resolve_spec(name_or_path: str | None) -> Path:
    """A packaged spec's name (`default`, `quick`) or a path to a YAML file."""
    name_or_path = name_or_path or "default"
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SpecError([f"{p}: no such spec file (packaged specs: "
                             f"{', '.join(list_specs())})"])
        return p
    packaged = SPEC_DIR / f"{name_or_path}.yaml"
    if not packaged.is_file():
        raise SpecError([f"spec {name_or_path!r}: not a packaged spec or a file "
                         f"(packaged specs: {', '.join(list_specs())})"])
    return packaged


def load_spec(name_or_path: str | None, catalog: Catalog | None = None) -> Race:
    path = resolve_spec(name_or_path)
    return parse_spec(path.read_text(), str(path), catalog or Catalog.installed())


# -- small helpers -------------------------------------------------------------------------
def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list) else [v]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- validation and expansion -------------------------------------------------------------
def parse_spec(text: str, filename: str, catalog: Catalog) -> Race:
    doc, lines = compose(text, filename, SpecError)
    ck = Checker(filename, lines)
    if not isinstance(doc, dict):
        raise SpecError([f"{filename}:1: the spec must be a mapping with keys "
                         f"{', '.join(TOP_KEYS)}"])
    ck.unknown_keys((), doc, TOP_KEYS)
    here = Path(filename).parent
    name = doc.get("name", Path(filename).stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        ck.error(("name",), name, "must be a word of letters, digits, '-' or '_'")
    seeds = _seeds(ck, doc.get("seeds", [0]))
    matrix = _matrix(ck, ("matrix",), doc.get("matrix", {}), catalog, top=True)
    costs = _table(ck, ("costs",), doc.get("costs", "p4-xeon-2005"), catalog.cost_tables,
                   here, "cost table", catalog.load_cost_table)
    ladder = _table(ck, ("ladder",), doc.get("ladder", "default"), catalog.ladders, here,
                    "ladder", load_ladder)
    overrides = _overrides(ck, ("cost_overrides",), doc.get("cost_overrides", {}))
    entries = doc.get("engines")
    if not isinstance(entries, list) or not entries:
        ck.error(("engines",), entries, "must be a non-empty list of engine entries "
                                        "(e.g. '- engine: native')")
        entries = []
    race = Race(name=str(name), path=filename, text=text,
                description=str(doc.get("description", "")).strip(), seeds=seeds, cells=[],
                labels={})
    where: dict[str, tuple] = {}
    for i, entry in enumerate(entries):
        _expand_entry(ck, ("engines", i), entry, catalog, race, where, matrix=matrix,
                      costs=costs, ladder=ladder, overrides=overrides, here=here)
    for engine, at in race.skipped.items():
        race.notes.append(f"engine {engine!r} ({Path(filename).name} line"
                          f"{'s' if len(at) > 1 else ''} {', '.join(map(str, at))}) is not "
                          f"installed yet: skipped (installed: {', '.join(catalog.engines)})")
    if entries and not race.cells and not ck.errors:
        ck.error(("engines",), [e.get("engine") if isinstance(e, dict) else e for e in entries],
                 f"names no installed engine (installed: {', '.join(catalog.engines)})")
    if ck.errors:
        raise SpecError(ck.sorted())
    return race


def _expand_entry(ck: Checker, p: tuple, entry: Any, catalog: Catalog, race: Race,
                  where: dict, *, matrix, costs, ladder, overrides, here) -> None:
    if isinstance(entry, str):
        entry = {"engine": entry}
    if not isinstance(entry, dict):
        ck.error(p, entry, "must be a mapping with keys " + ", ".join(ENTRY_KEYS))
        return
    ck.unknown_keys(p, entry, ENTRY_KEYS)
    engine = entry.get("engine")
    if engine not in catalog.engines:
        close = difflib.get_close_matches(str(engine), list(catalog.engines), n=1, cutoff=0.75)
        if close or not isinstance(engine, str) or not engine.isidentifier():
            hint = f"; did you mean {close[0]!r}?" if close else ""
            ck.error(p + ("engine",), engine, f"is not an engine (installed: "
                                              f"{', '.join(catalog.engines)}){hint}")
        else:
            race.skipped.setdefault(engine, []).append(ck.line(p))
        return
    option_paths: dict[tuple, tuple] = {}
    option_sets = _options(ck, p + ("options",), entry.get("options", {}),
                           catalog.engines[engine], option_paths)
    if "matrix" in entry:
        matrix = {**matrix, **_matrix(ck, p + ("matrix",), entry["matrix"], catalog)}
    _domain(ck, p, engine, catalog.engines[engine], option_sets, option_paths, matrix)
    if "costs" in entry:
        costs = _table(ck, p + ("costs",), entry["costs"], catalog.cost_tables, here,
                       "cost table", catalog.load_cost_table)
    if "ladder" in entry:
        ladder = _table(ck, p + ("ladder",), entry["ladder"], catalog.ladders, here, "ladder",
                        load_ladder)
    if ladder is not None:
        _reachable(ck, matrix, ladder)
    overrides = {**overrides, **_overrides(ck, p + ("cost_overrides",),
                                           entry.get("cost_overrides", {}))}
    if costs is not None:
        _price(ck, p, entry, engine, catalog, costs, overrides)
    label = entry.get("label")
    if label is not None and not isinstance(label, str):
        ck.error(p + ("label",), label, "must be a string")
    if ck.errors:
        return
    for opts in option_sets:
        for combo in itertools.product(*([v for v, _ in matrix[a]] for a in AXES)):
            axes = dict(zip(AXES, combo))
            for seed in race.seeds:
                cell = catalog.cell_type(
                    engine=engine, options=opts, profile=axes["profile"],
                    vcpus=axes["vcpus"], memory_mib=axes["memory_mib"],
                    machine_memory_mib=axes["machine_memory_mib"],
                    flush_filter=axes["flush_filter"], seed=seed, costs=costs,
                    cost_overrides=tuple(sorted(overrides.items())), ladder=ladder)
                key = cell.key()
                if key in where:
                    ck.error(p, engine, f"repeats cell {key} of {dotted(where[key])} "
                                        f"(line {ck.line(where[key])})")
                    return
                where[key] = p
                race.cells.append(cell)
                race.labels[key] = _label(engine, opts, label, len(option_sets) > 1)


def _price(ck: Checker, p: tuple, entry: dict, engine: str, catalog: Catalog, costs: str,
           overrides: dict[str, int]) -> None:
    """The cost table with the overrides prices every event the engine charges."""
    try:
        table = catalog.load_cost_table(costs, overrides)
    except Exception as e:  # the cost table's own message names event and choices
        path = p + ("cost_overrides",) if "cost_overrides" in entry else ("cost_overrides",)
        ck.error(path, overrides, f"rejected by cost table {costs!r}: {e}")
        return
    try:
        table.require(catalog.cost_events.get(engine, ()), f"engine {engine!r}")
    except ValueError as e:  # CostTableError: names the events missing
        ck.error(p + ("costs",) if "costs" in entry else ("costs",), costs,
                 f"cannot price {dotted(p)}: {e}")


def _domain(ck: Checker, p: tuple, engine: str, module: Any, option_sets: list[tuple],
            option_paths: dict[tuple, tuple], matrix: dict[str, list]) -> None:
    """What the engine refuses when it is built, refused here by the engine's own rules: a
    shadow pool smaller than `min_pool_pages(vcpus)`, machine memory outside
    `machine_memory_range(domain)`. One line per value written, naming its first misfit."""
    min_pool = getattr(module, "min_pool_pages", None)
    machine_range = getattr(module, "machine_memory_range", None)
    done: set[tuple] = set()
    for opts in option_sets:
        pool = dict(opts).get("pool_pages")
        for (vcpus, vp), (mib, _), (machine, mp) in itertools.product(
                matrix["vcpus"], matrix["memory_mib"], matrix["machine_memory_mib"]):
            if min_pool and _is_int(pool) and pool < min_pool(vcpus):
                at = option_paths[("pool_pages", pool)]
                if at not in done:
                    done.add(at)
                    ck.error(at, pool, f"is too small a shadow pool for vcpus {vcpus} "
                                       f"({dotted(vp)}) (choices: auto, or integers >= "
                                       f"{min_pool(vcpus)})")
                continue
            if machine_range is None or machine is None or mp in done:
                continue
            domain = DomainSpec(vcpus=vcpus, memory_mib=mib, machine_memory_mib=machine,
                                options=dict(opts))
            low, high = machine_range(domain)
            if not low <= machine <= high:
                done.add(mp)
                ck.error(mp, machine, f"is not a machine memory size {dotted(p)} ({engine}) "
                                      f"can boot with vcpus {vcpus} and memory_mib {mib} (null "
                                      f"for the engine's default, or MiB, integers "
                                      f"{low}..{high})")


def _label(engine: str, opts: tuple, label: str | None, several: bool) -> str:
    def word(k, v):
        return (k if v else f"no-{k}") if isinstance(v, bool) else str(v)
    short = ",".join(word(k, v) for k, v in opts)
    if label:
        return f"{label}({short})" if several and short else label
    return f"{engine}({short})" if short else engine


def _seeds(ck: Checker, value: Any) -> list[int]:
    seeds = _as_list(value)
    if not seeds:
        ck.error(("seeds",), value, "must list at least one seed (integers >= 0)")
    for i, s in enumerate(seeds):
        if not _is_int(s) or s < 0:
            ck.error(("seeds", i) if isinstance(value, list) else ("seeds",), s,
                     "is not a seed (integers >= 0)")
    if len(set(map(repr, seeds))) != len(seeds):
        ck.error(("seeds",), value, "repeats a seed")
    return [s for s in seeds if _is_int(s)]


# the limits DomainSpec enforces (engines/api/contract.py), so no boot fails on them; each
# engine's own limits on machine memory and options are checked by `_domain`
AXIS_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "vcpus": (lambda v: _is_int(v) and 1 <= v <= MAX_VCPUS,
              f"is not a VCPU count (integers 1..{MAX_VCPUS})"),
    "memory_mib": (lambda v: _is_int(v) and LOWMEM_MIB[0] <= v <= LOWMEM_MIB[1],
                   f"is not a guest memory size (MiB, integers {LOWMEM_MIB[0]}.."
                   f"{LOWMEM_MIB[1]}: lowmem only)"),
    "machine_memory_mib": (lambda v: v is None or (_is_int(v) and 16 <= v <= 1 << 16),
                           "is not a machine memory size (null for the engine's default, or "
                           "MiB, integers 16..65536)"),
    "flush_filter": (lambda v: isinstance(v, bool), "is not allowed (choices: true, false)"),
}


def _matrix(ck: Checker, p: tuple, value: Any, catalog: Catalog,
            top: bool = False) -> dict[str, list[tuple[Any, tuple]]]:
    """Axis -> its valid values, each with the key path it was written at."""
    if not isinstance(value, dict):
        ck.error(p, value, f"must be a mapping of axes ({', '.join(AXES)})")
        value = {}
    ck.unknown_keys(p, value, AXES)
    out = {a: [(AXIS_DEFAULTS[a], p)] for a in AXES} if top else {}
    for axis in AXES:
        if axis not in value:
            continue
        values = _as_list(value[axis])
        if not values:
            ck.error(p + (axis,), value[axis], "must list at least one value")
        kept: dict[Any, tuple] = {}
        for i, v in enumerate(values):
            vp = p + (axis, i) if isinstance(value[axis], list) else p + (axis,)
            if axis == "profile":
                ok = ck.choice(vp, v, list(catalog.profiles))
            elif not (ok := AXIS_RULES[axis][0](v)):
                ck.error(vp, v, AXIS_RULES[axis][1])
            if ok:
                kept.setdefault(v, vp)
        out[axis] = list(kept.items())
    return out


def _options(ck: Checker, p: tuple, value: Any, module: Any,
             where: dict[tuple, tuple]) -> list[tuple]:
    """Every combination of the options' values; `where` gets each (key, value)'s path."""
    allowed: Mapping[str, tuple] = getattr(module, "OPTIONS", {})
    if not isinstance(value, dict):
        ck.error(p, value, f"must be a mapping of options ({', '.join(allowed) or 'none'})")
        return [()]
    ck.unknown_keys(p, value, list(allowed))
    axes = []
    for key in sorted(value):
        if key not in allowed:
            continue
        values = _as_list(value[key])
        if not values:
            ck.error(p + (key,), value[key], "must list at least one value")
        for i, v in enumerate(values):
            vp = p + (key, i) if isinstance(value[key], list) else p + (key,)
            if ck.choice(vp, v, list(allowed[key])):
                where.setdefault((key, v), vp)
        axes.append([(key, v) for v in dict.fromkeys(values)])
    return [tuple(c) for c in itertools.product(*axes)]


def _table(ck: Checker, p: tuple, value: Any, packaged: Sequence[str], here: Path,
           what: str, load: Callable[[str], Any]) -> str | None:
    """A packaged name, or a .yaml path (relative to the spec's folder) that `load` accepts;
    its mistakes (each naming that file and line) are the spec's, at this key's line."""
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        path = Path(value) if Path(value).is_absolute() else here / value
        if not path.is_file():
            ck.error(p, value, f"is not a {what} file (no such file {path})")
            return None
        try:
            load(str(path))
        except ValueError as e:              # LadderError, CostTableError
            ck.foreign(p, getattr(e, "lines", str(e).splitlines()))
            return None
        return str(path)
    if ck.choice(p, value, list(packaged), ", or a path to a .yaml file"):
        return value
    return None


def _reachable(ck: Checker, matrix: dict, ladder: str) -> None:
    """A milestone whose match wants a VCPU count other than the cell's can never be
    reached (the guest emits smp_online with every VCPU it runs): each such boot would end
    as a DNF, so the VCPU value is a mistake of the spec."""
    try:
        lad = load_ladder(ladder)
    except ValueError:                   # its mistakes are reported where it is named
        return
    for v, vp in matrix["vcpus"]:
        for m in lad.milestones:
            if "vcpus" in m.match and m.match["vcpus"] != v:
                ck.error(vp, v, f"can never reach milestone {m.name!r} of ladder "
                                f"{lad.name!r} (its match wants vcpus: {m.match['vcpus']}): "
                                f"every such boot would end as a DNF")


def _overrides(ck: Checker, p: tuple, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        ck.error(p, value, "must be a mapping of event: cycles")
        return {}
    out = {}
    for event, cycles in value.items():
        if not _is_int(cycles) or cycles < 0:
            ck.error(p + (event,), cycles, "is not a cycle count (integers >= 0)")
        else:
            out[str(event)] = cycles
    return out
