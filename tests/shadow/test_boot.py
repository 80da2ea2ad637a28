"""The shadow engine under the real guest (guestkit, translated ABI): tiny boots to
multiuser on 1 and 2 VCPUs with every audit passing, reads back exactly what bare hardware
reads, is deterministic, and shows the mechanisms reference/shadow.md leads one to expect."""
from __future__ import annotations

import functools

import pytest

from race.boot import BootCell, run_boot


@functools.lru_cache(maxsize=None)
def boot(engine: str, vcpus: int, options: tuple = (), costs: str = "p4-xeon-2005") -> dict:
    events = list(run_boot(BootCell(engine, options, profile="tiny", vcpus=vcpus,
                                    memory_mib=64, costs=costs)))
    return events[-1]


@pytest.mark.parametrize("vcpus", [1, 2])
def test_tiny_boots_to_multiuser_and_reads_back_what_native_reads(vcpus):
    shadow, native = boot("shadow", vcpus), boot("native", vcpus)
    assert shadow["status"] == "ok", shadow["reason"]
    assert [m["milestone"] for m in shadow["milestones"]] == \
        [m["milestone"] for m in native["milestones"]]
    assert shadow["readback"] == native["readback"]


def test_a_seeded_shadow_boot_is_identical_when_run_again():
    first = boot("shadow", 2)
    again = list(run_boot(BootCell("shadow", (), profile="tiny", vcpus=2, memory_mib=64)))[-1]
    assert again["cycles"] == first["cycles"] and again["counters"] == first["counters"]


def test_tiny_shows_the_shadow_mechanisms():
    c = boot("shadow", 2)["counters"]
    assert c["pf_bounce"] == c["pf_delivery"] == boot("native", 2)["counters"]["pf_delivery"]
    assert c["sh_emulate"] > 0 and c["sh_fill"] > 0 and c["sh.unshadow_early"] > 0
    assert c["sh.wrmap_found_heuristic"] > c.get("sh.wrmap_found_scan", 0)
    assert 0 < c["sh_cr3"] <= c["hw.cr3_loads"]


def test_early_vtx_costs_more_than_ring_compression_for_the_same_events():
    pv, vtx = boot("shadow", 2), boot("shadow", 2, (), "p4-vtx-2005")
    assert vtx["counters"]["trap"] == pytest.approx(pv["counters"]["trap"], rel=0.01)
    assert vtx["cycles"] > 2 * pv["cycles"]
