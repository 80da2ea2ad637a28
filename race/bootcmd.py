"""`pae-race boot` (one guest, one engine, a milestone table and a verdict) and
`pae-race list` (engines, profiles, ladders, cost tables).

    pae-race boot --engine native --profile sarge [--vcpus N] [--memory MiB] [--seed S]
                  [--costs FILE|NAME] [--strategy S] [--option KEY=VALUE ...]
                  [--flush-filter] [--ladder NAME|FILE] [--json]

Exit status: 0 when the boot reaches its last milestone with passing audits, 1 when it does
not (DNF), 2 for bad input (one line naming the option, the value and the choices).
"""
from __future__ import annotations

import argparse
import json
import sys

from tabulate import tabulate

from milestones.yamlcheck import show

from .boot import CELL_ERRORS, ENGINES, BootCell, list_cost_tables, list_ladders, list_profiles, run_boot

# counters shown per milestone (deltas); engine-specific ones appear when present
TABLE_COUNTERS = (("guest.page_faults", "faults"), ("hw.tlb_misses_4k", "TLB miss"),
                  ("hw.cr3_loads", "CR3"), ("hypercall", "hypercalls"), ("trap", "traps"),
                  ("pf_bounce", "bounces"), ("sh_emulate", "emul. writes"),
                  ("sh_fill", "hidden faults"), ("hw.invlpg", "invlpg"))


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text, 0)
    except ValueError:
        return text


def register(sub) -> None:
    b = sub.add_parser("boot", help="boot one guest on one engine and print its milestones")
    b.add_argument("--engine", default="native")
    b.add_argument("--profile", default="sarge")
    b.add_argument("--vcpus", type=int)
    b.add_argument("--memory", type=int, metavar="MiB")
    b.add_argument("--machine-memory", type=int, metavar="MiB")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--costs", default="p4-xeon-2005", metavar="FILE|NAME")
    b.add_argument("--strategy", help="paravirt kernel-L2 strategy")
    b.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--flush-filter", action="store_true", help="K8 TLB flush filter on")
    b.add_argument("--ladder", default="default")
    b.add_argument("--json", action="store_true", help="print the result record as JSON")
    b.set_defaults(func=cmd_boot)
    ls = sub.add_parser("list", help="engines, profiles, ladders and cost tables")
    ls.set_defaults(func=cmd_list)


def _fail(msg: str | list[str]) -> int:
    for line in [msg] if isinstance(msg, str) else msg:
        print(f"pae-race: {line}", file=sys.stderr)
    return 2


def cell_from_args(args) -> BootCell:
    if args.engine not in ENGINES:
        raise ValueError(f"--engine: value {args.engine!r} not available "
                         f"(choices: {', '.join(ENGINES)})")
    if args.profile not in list_profiles() and not args.profile.endswith((".yaml", ".yml")):
        raise ValueError(f"--profile: value {args.profile!r} unknown "
                         f"(choices: {', '.join(list_profiles())}, or a .yaml file)")
    from guestkit import load_profile
    prof = load_profile(args.profile)
    opts, flag = {}, {}             # flag: the option's own flag, for the error line
    if args.strategy is not None:
        opts["strategy"], flag["strategy"] = args.strategy, "--strategy"
    for item in args.option:
        if "=" not in item:
            raise ValueError(f"--option: value {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        opts[k] = _parse_value(v)
    allowed = getattr(ENGINES[args.engine], "OPTIONS", {})
    for k, v in opts.items():
        if k not in allowed:
            raise ValueError(f"{flag.get(k, '--option')}: engine {args.engine!r} has no "
                             f"option {k!r} (options: {', '.join(allowed) or 'none'})")
        choices = allowed[k]
        if isinstance(choices, tuple) and choices and v not in choices:
            raise ValueError(f"{flag.get(k, f'--option {k}')}: value {v!r} not allowed "
                             f"(choices: {', '.join(map(str, choices))})")
    return BootCell(engine=args.engine, options=tuple(sorted(opts.items())),
                    profile=args.profile,
                    vcpus=prof.vcpus if args.vcpus is None else args.vcpus,
                    memory_mib=prof.memory_mib if args.memory is None else args.memory,
                    machine_memory_mib=args.machine_memory, flush_filter=args.flush_filter,
                    seed=args.seed, costs=args.costs, ladder=args.ladder)


def milestone_table(result: dict, mhz: int, fmt: str = "simple") -> str:
    rows, prev_cycles, prev = [], 0, {}
    present = [(k, label) for k, label in TABLE_COUNTERS
               if any(k in m["counters"] for m in result["milestones"])]
    for m in result["milestones"]:
        c = m["counters"]
        row = [m["milestone"], f"{m['cycles']:,}", f"{m['cycles'] / (mhz * 1000):.3f}",
               f"+{(m['cycles'] - prev_cycles) / (mhz * 1000):.3f}", m["vcpu"]]
        row += [f"{c.get(k, 0) - prev.get(k, 0):,}" for k, _ in present]
        rows.append(row)
        prev_cycles, prev = m["cycles"], c
    headers = ["milestone", "cycles", "ms", "delta ms", "vcpu"] + [l for _, l in present]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(headers) - 1))


def verdict(cell: BootCell, result: dict, mhz: int) -> str:
    if result["status"] == "ok":
        last = result["milestones"][-1]
        return (f"OK: {cell.engine} reached {last['milestone']} at {last['cycles']:,} cycles "
                f"({last['cycles'] / (mhz * 1000):.2f} ms at {mhz} MHz), audits passed")
    reached = result["milestones"][-1]["milestone"] if result["milestones"] else "nothing"
    return f"DNF: {cell.engine} stopped after {reached}: {result['reason']}"


def cmd_boot(args) -> int:
    try:
        cell = cell_from_args(args)
        from engines.api import load_cost_table
        mhz = load_cost_table(args.costs).mhz
        events = run_boot(cell)
        result = None
        for ev in events:
            if ev["type"] == "result":
                result = ev
    except CELL_ERRORS as e:       # a ladder's mistakes come one per line (LadderError.lines)
        return _fail(getattr(e, "lines", None) or str(e))
    if args.json:
        json.dump(result, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        print(f"boot {cell.key()}")
        print(milestone_table(result, mhz))
        print(verdict(cell, result, mhz))
    return 0 if result["status"] == "ok" else 1


def cmd_list(args) -> int:
    rows = [("engines", ", ".join(ENGINES)), ("profiles", ", ".join(list_profiles())),
            ("ladders", ", ".join(list_ladders())), ("cost tables", ", ".join(list_cost_tables()))]
    for name, module in ENGINES.items():
        defaults = getattr(module, "DEFAULTS", {})
        for k, v in getattr(module, "OPTIONS", {}).items():
            # as a spec spells them (true/false), the default marked with *
            shown = [show(c) + ("*" if k in defaults and c == defaults[k]
                                and type(c) is type(defaults[k]) else "") for c in v] \
                if isinstance(v, tuple) else [str(v)]
            rows.append((f"  {name} option {k}", " | ".join(shown)))
    rows.append(("", "* = the default"))
    print(tabulate(rows, tablefmt="plain"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (the race CLI registers the same subcommands)."""
    parser = argparse.ArgumentParser(prog="pae-race")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)
