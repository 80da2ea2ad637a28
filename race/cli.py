"""`pae-race`: the command line.

    pae-race run [SPEC] [--executor ray|serial] [--address ADDR] [--out DIR]
                 [--format terminal|markdown|json] [--resume]
    pae-race report RESULTS [--baseline OTHER] [--fail-on MILESTONE:+N%] [--format ...]

SPEC is a packaged spec's name (`default`, `quick`) or a path. Progress goes to stderr,
the dashboard to stdout (and to $GITHUB_STEP_SUMMARY as markdown when set). Exit status:
0 done, 1 a boot broke (harness or infrastructure), a --fail-on regression or a --plot that
could not be written, 2 a mistake in the spec or the command line (a Ray address that does
not answer included), 130 interrupted (resume with --resume).

Other subcommands (`boot`, `list`) come from `race.bootcmd.register(subparsers)`; a
subcommand sets `func(args) -> exit status` as its default.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .compare import FailOn
from .report import FORMATS, build, render, write_step_summary
from .results import ResultsError, ResultStore, load_results
from .spec import SpecError, list_specs


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except BrokenPipeError:         # `pae-race boot --json | head`: the reader left early
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())    # no second error when Python flushes
        return 141                  # as a shell reports a writer killed by SIGPIPE


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pae-race", description="Race Xen PV-PAE, shadow "
                                "paging and bare hardware to a multiuser boot.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a race and print its dashboard")
    run.add_argument("spec", nargs="?", default="default", metavar="SPEC",
                     help=f"packaged spec ({', '.join(list_specs())}) or a YAML path "
                          f"(default: default)")
    run.add_argument("--executor", choices=("ray", "serial"), default=None,
                     help="ray (default; parallel, embedded or a cluster) or serial "
                          "(one process, no Ray: identical records)")
    run.add_argument("--address", default=None,
                     help="attach to a Ray cluster (host:port, or 'auto'); default: "
                          "$RAY_ADDRESS, else an embedded Ray on 127.0.0.1")
    run.add_argument("--cpus", type=int, default=None,
                     help="CPUs of the embedded Ray (default: all)")
    run.add_argument("--out", default="results", help="results root (default: results/)")
    run.add_argument("--format", choices=FORMATS, default="terminal")
    run.add_argument("--resume", action="store_true",
                     help="finish the newest interrupted race of this spec under --out")
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="print the dashboard of a finished race")
    rep.add_argument("results", metavar="RESULTS",
                     help="a race folder, or a results root (its newest race)")
    rep.add_argument("--baseline", metavar="OTHER", help="compare with this race (asv-style)")
    rep.add_argument("--fail-on", action="append", default=[], metavar="MILESTONE:+N%",
                     help="exit 1 on a significant slow-down beyond N%% at MILESTONE (or * "
                          "for any) against --baseline; repeatable")
    rep.add_argument("--format", choices=FORMATS, default="terminal")
    rep.add_argument("--plot", metavar="FILE", help="also write the timeline (.svg or .png)")
    rep.set_defaults(func=cmd_report)
    try:
        from race import bootcmd
    except ModuleNotFoundError as e:
        if e.name != "race.bootcmd":
            raise
    else:
        bootcmd.register(sub)
    return p


def _fail(lines: list[str], status: int = 2) -> int:
    for line in lines:
        print(f"pae-race: {line}", file=sys.stderr)
    return status


def cmd_run(args) -> int:
    from .runner import ExecutorError, make_executor
    from .spec import Catalog, load_spec
    executor_kind = args.executor or "ray"
    if args.address and executor_kind == "serial":
        return _fail([f"--address {args.address}: value needs --executor ray "
                      f"(choices for --executor with --address: ray)"])
    if args.cpus is not None:
        if args.cpus < 1:
            return _fail([f"--cpus {args.cpus}: value must be a whole number >= 1"])
        if executor_kind == "serial" or args.address:
            return _fail([f"--cpus {args.cpus}: sizes the embedded Ray only (not with "
                          f"--executor serial or --address)"])
    try:
        catalog = Catalog.installed()
    except ModuleNotFoundError as e:
        return _fail([f"the race needs {e.name}, which is not installed"], 1)
    try:
        race = load_spec(args.spec, catalog)
        found = ResultStore.find(args.out, race) if args.resume else None
        if found is not None and found.left == 0:
            return _nothing_to_resume(args, found)     # no executor (nor Ray) to start
    except SpecError as e:
        return _fail(e.lines)
    except ResultsError as e:
        return _fail([str(e)])
    store = None
    try:
        t_begin = time.perf_counter()
        with make_executor(executor_kind, args.address, args.cpus) as ex:
            shape = ex.shape()
            t0 = time.perf_counter()
            startup = round(t0 - t_begin, 3)
            store = (ResultStore.resume(args.out, race, shape) if args.resume
                     else ResultStore.create(args.out, race, shape, catalog))
            status = _race(args, race, ex, store, catalog)
            store.log_timing({"race_elapsed_s": round(time.perf_counter() - t0, 3),
                              "startup_s": startup, "executor": shape["executor"],
                              "cpus": sum(shape.get("cpus", [1])) or 1,
                              **({"interrupted": True} if status == 130 else {})})
            if status == 130:
                return 130
    except ExecutorError as e:
        return _fail([f"{e} (from {'--address' if args.address else '$RAY_ADDRESS'})"])
    except ResultsError as e:
        return _fail([str(e)])
    except KeyboardInterrupt:      # before the race loop took over (Ray's start, the store)
        if store is not None and store.manifest.get("status") == "running":
            store.finish("interrupted")
            return _fail([f"interrupted: {len(store.done)}/{len(race.cells)} boots recorded "
                          f"in {store.dir}; run again with --resume to finish"], 130)
        return _fail(["interrupted before the race started: nothing recorded"], 130)
    return _finish_run(args, store)


def _race(args, race, ex, store, catalog) -> int:
    """The race loop; 130 when interrupted (run_race has marked the store and said so)."""
    from .progress import make_progress
    from .runner import run_race
    progress = make_progress(quiet=args.quiet)
    try:
        run_race(race, ex, store, progress, catalog.run_boot)
    except KeyboardInterrupt:
        return 130
    return 0


def _nothing_to_resume(args, store) -> int:
    if not args.quiet:
        print(f"pae-race: nothing to resume: all {len(store.done)} boots of "
              f"{store.race_id} are recorded", file=sys.stderr)
    if store.manifest.get("status") != "complete":
        store.finish("complete")
    return _finish_run(args, store)


def _finish_run(args, store) -> int:
    results = load_results(store.dir)
    if not _timeline(results, store.dir / "timeline.svg", quiet=True) and not args.quiet:
        print("pae-race: no timeline.svg: it needs matplotlib (pip install -e '.[plot]')",
              file=sys.stderr)
    _publish(results, args.format)
    broken = sum(1 for r in results.records if r["status"] == "broken")
    return 1 if broken else 0


def cmd_report(args) -> int:
    try:
        rules = [FailOn.parse(f) for f in args.fail_on]
    except ValueError as e:
        return _fail([str(e)])
    if rules and not args.baseline:
        return _fail([f"--fail-on {args.fail_on[0]}: needs --baseline OTHER"])
    try:
        results = load_results(args.results)
        baseline = load_results(args.baseline) if args.baseline else None
    except ResultsError as e:
        return _fail([str(e)])
    known = set()
    for r in (results.records + (baseline.records if baseline else [])):
        known.update(s["milestone"] for s in r.get("milestones", []))
    bad = [f"--fail-on {rule.milestone}: value {rule.milestone!r} is not a milestone of "
           f"these races (choices: *, {', '.join(sorted(known))})"
           for rule in rules if rule.milestone != "*" and rule.milestone not in known]
    if bad:
        return _fail(bad)
    plotted = _timeline(results, Path(args.plot), quiet=False) if args.plot else True
    doc = _publish(results, args.format, baseline, rules)
    failed = doc.get("comparison", {}).get("failures", [])
    return 1 if failed or not plotted else 0


def _publish(results, fmt: str, baseline=None, rules=None) -> dict:
    doc = build(results, baseline, rules)
    sys.stdout.write(render(doc, fmt))
    sys.stdout.flush()
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        write_step_summary(render(doc, "markdown"))
    return doc


def _timeline(results, path: Path, quiet: bool) -> bool:
    """Write the timeline; False (said on stderr unless quiet) when matplotlib is missing."""
    from .plot import PlotUnavailable, write_timeline
    try:
        write_timeline(results, path)
    except PlotUnavailable as e:
        if not quiet:
            print(f"pae-race: {e}", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
