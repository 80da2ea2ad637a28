"""The PV engine's benchmark (issue 5 §7): wall and CPU time per `sarge` boot per kernel-L2
strategy against the native boot, and the cycles and counters at multiuser per strategy
(hypercalls, entries validated, bounces, ptwr emulations, flushes, page-table pages, linear
slots written, software-walk reads). With `--flush-filter` the K8 TLB flush filter is on.
Not a test: it prints a table (and JSON with --json).

    python -m benchmarks.bench_paravirt [--profile sarge] [--vcpus 2] [--flush-filter]
                                        [--repeat N]

Target: a PV boot within 2x of the native boot's wall time. On a shared machine one run is
noise: --repeat N runs every engine N times, round-robin, and keeps each engine's fastest
wall and CPU times (other work only ever adds time); the ratios are of those minima.
"""
from __future__ import annotations

import argparse
import json
import time

from tabulate import tabulate

from race.boot import BootCell, run_boot

STRATEGIES = ("per-pagetable", "shared", "shared-percpu", "walk")
COLUMNS = (("hypercall", "hypercalls"), ("pv_validate_entry", "entries validated"),
           ("pv_validate_table", "tables validated"), ("pf_bounce", "bounces"),
           ("ptwr_emulations", "ptwr emul."), ("pv_tlb_flushes", "Xen flushes"),
           ("pv_typechange_flush", "type flushes"), ("ipi", "IPIs"),
           ("pv_linear_slot", "linear slots"), ("pv_soft_walk_ref", "walk reads"),
           ("hw.tlb_misses_4k", "TLB misses"), ("hw.filter_kept", "filter kept"),
           ("pv_pt_pages", "PT pages"))


def one(cell: BootCell) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    result = [ev for ev in run_boot(cell) if ev["type"] == "result"][0]
    result["wall"] = time.perf_counter() - t0
    result["cpu"] = time.process_time() - c0
    return result


def at_multiuser(result: dict) -> tuple[int | None, dict]:
    for m in result["milestones"]:
        if m["milestone"] == "multiuser":
            return m["cycles"], m["counters"]
    return None, result["counters"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="sarge")
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--memory", type=int, default=512)
    ap.add_argument("--flush-filter", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs per engine (minimum kept)")
    args = ap.parse_args(argv)
    cells = [("native", BootCell("native", (), profile=args.profile, vcpus=args.vcpus,
                                 memory_mib=args.memory, flush_filter=args.flush_filter))]
    cells += [(s, BootCell("paravirt", (("strategy", s),), profile=args.profile,
                           vcpus=args.vcpus, memory_mib=args.memory,
                           flush_filter=args.flush_filter)) for s in STRATEGIES]
    results: dict[str, dict] = {}
    for _ in range(max(args.repeat, 1)):                 # round-robin: load hits all alike
        for name, cell in cells:
            r = one(cell)
            best = results.setdefault(name, r)
            best["wall"], best["cpu"] = min(best["wall"], r["wall"]), min(best["cpu"], r["cpu"])
    rows, records = [], {}
    native = results["native"]
    for name, r in results.items():
        cycles, counters = at_multiuser(r)
        records[name] = {"status": r["status"], "reason": r["reason"], "wall": r["wall"],
                         "cpu": r["cpu"], "cycles_multiuser": cycles,
                         "counters": {k: counters.get(k, 0) for k, _ in COLUMNS},
                         "digest": r["readback"]["digest"]}
        rows.append([name, r["status"] if not r["reason"] else f"dnf: {r['reason'][:60]}",
                     f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r['wall'] / native['wall']:.2f}x",
                     f"{r['cpu'] / native['cpu']:.2f}x", f"{cycles:,}" if cycles else "-"]
                    + [f"{counters.get(k, 0):,}" for k, _ in COLUMNS])
    print(f"{args.profile}, {args.vcpus} VCPUs, {args.memory} MiB, flush filter "
          f"{'on' if args.flush_filter else 'off'}"
          + (f", best of {args.repeat} runs each" if args.repeat > 1 else ""))
    print(tabulate(rows, headers=["engine", "status", "wall s", "cpu s", "wall vs native",
                                  "cpu vs native", "cycles @multiuser"]
                   + [h for _, h in COLUMNS]))
    if args.json:
        print(json.dumps(records, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
