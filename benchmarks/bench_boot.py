"""Wall time of whole boots: seconds per `sarge` and `tiny` boot to multiuser on an engine,
simulated memory accesses (translations the MMU served) per wall second, and where the time
goes (a cProfile summary of the sarge boot). Not a test: it prints figures.

Target (issue 3): sarge to multiuser on native in under 15 s on one core of this machine.

    python -m benchmarks.bench_boot [--engine native] [--option k=v ...] [--no-profile]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from race.boot import BootCell, run_boot


def one_boot(cell: BootCell, clock=time.perf_counter) -> tuple[float, dict]:
    """Seconds (by `clock`: wall by default) and the result record of one boot."""
    t0 = clock()
    result = None
    for ev in run_boot(cell):
        if ev["type"] == "result":
            result = ev
    return clock() - t0, result


def accesses(result: dict) -> int:
    c = result["counters"]
    return c["hw.tlb_hits_4k"] + c["hw.tlb_hits_2m"] + c["hw.tlb_misses_4k"] + c["hw.tlb_misses_2m"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="native")
    ap.add_argument("--option", action="append", default=[])
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)
    opts = tuple(sorted((k, (v == "true") if v in ("true", "false") else v)
                        for k, v in (o.split("=", 1) for o in args.option)))
    print(f"boot wall time on engine {args.engine} {dict(opts) or ''}")
    for profile, mem in (("tiny", 64), ("sarge", 512)):
        cell = BootCell(args.engine, opts, profile=profile, vcpus=2, memory_mib=mem)
        wall, result = one_boot(cell)
        n = accesses(result)
        print(f"  {profile:6s}: {wall:6.2f} s wall, status {result['status']}, "
              f"{result['cycles']:,} simulated cycles, {n:,} memory accesses "
              f"({n / wall / 1e3:,.0f} k/s), {result['counters']['guest.page_faults']:,} faults")
    if not args.no_profile:
        prof = cProfile.Profile()
        prof.enable()
        one_boot(BootCell(args.engine, opts, profile="sarge", vcpus=2, memory_mib=512))
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
        print("where the time goes (sarge, by own time):")
        print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


if __name__ == "__main__":
    main()
