"""Cost tables as data (engines.api.costs): every number has a source, tables inherit and
are overridden per run, the digest names the numbers in force, and a bad table is refused
with one line naming the file, the key and the value (reference/costs.md).
"""
from __future__ import annotations

import json
import re

import pytest

from engines.api import CostTableError, DomainSpec, list_cost_tables, load_cost_table
from engines.api.costs import CostTable
from engines.native import NativeEngine

TABLES = ["k8-opteron-2005", "p4-vtx-2005", "p4-xeon-2005"]
LABEL = re.compile(r"^[RDEV]: \S")          # costs.md: Recalled, Derived, Estimate, Verified


def _write(tmp_path, text: str, name: str = "t.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(path: str, overrides=None) -> str:
    with pytest.raises(CostTableError) as exc:
        load_cost_table(path, overrides)
    assert "\n" not in str(exc.value)
    return str(exc.value)


HEAD = "name: mine\ncpu: test CPU\nmhz: 1000\ninherits: p4-xeon-2005\n"


def test_the_three_packaged_tables_are_listed():
    assert list_cost_tables() == TABLES


@pytest.mark.parametrize("name", TABLES)
def test_every_event_of_every_table_has_cycles_and_a_labelled_source(name):
    table = load_cost_table(name)
    assert table.name == name and table.mhz > 0 and table.cpu
    assert set(table.cycles) == set(table.sources)
    for event, cycles in table.cycles.items():
        assert isinstance(cycles, int) and cycles >= 0, event
        assert LABEL.match(table.sources[event]), (event, table.sources[event])


@pytest.mark.parametrize("name", TABLES)
def test_every_table_prices_every_event_the_native_engine_charges(name):
    table = load_cost_table(name)
    table.require(NativeEngine.COST_EVENTS, "native")
    NativeEngine(DomainSpec(vcpus=1, memory_mib=16), table)


def test_the_default_table_is_the_2005_p4_xeon():
    table = load_cost_table()
    assert table.name == "p4-xeon-2005" and table.mhz == 2400
    assert (table["mem_access"], table["walk_ref"], table["pf_delivery"]) == (2, 15, 1100)


def test_an_inheriting_table_keeps_the_parents_numbers_and_overrides_its_own():
    p4, k8 = load_cost_table("p4-xeon-2005"), load_cost_table("k8-opteron-2005")
    assert set(k8.cycles) == set(p4.cycles)
    assert k8["mem_access"] == 3 and k8.sources["mem_access"].startswith("R:")
    assert k8["walk_ref"] == 12 and k8["cr3_write"] == 75
    assert k8["fork_work"] == p4["fork_work"] and k8.sources["fork_work"] == p4.sources["fork_work"]
    assert k8.mhz == 2200 and k8.cpu != p4.cpu


def test_a_user_table_can_inherit_a_packaged_one(tmp_path):
    path = _write(tmp_path, HEAD + "events:\n  walk_ref: {cycles: 40, source: 'E: slow DRAM'}\n")
    table = load_cost_table(path)
    assert table["walk_ref"] == 40 and table.sources["walk_ref"] == "E: slow DRAM"
    assert table["mem_access"] == load_cost_table()["mem_access"]
    assert table.origin == path


def test_a_per_run_override_changes_the_number_and_says_so_in_the_source():
    table = load_cost_table("p4-xeon-2005", {"walk_ref": 20})
    assert table["walk_ref"] == 20 and table.sources["walk_ref"] == "per-run override"
    assert table.overrides == {"walk_ref": 20}
    assert load_cost_table()["walk_ref"] == 15          # the packaged table is untouched


def test_the_digest_is_stable_and_names_the_numbers_in_force(tmp_path):
    a, b = load_cost_table(), load_cost_table()
    assert a.digest() == b.digest() and re.fullmatch(r"[0-9a-f]{16}", a.digest())
    assert load_cost_table(overrides={"walk_ref": 20}).digest() != a.digest()
    assert load_cost_table(overrides={"walk_ref": 15}).digest() == a.digest()
    assert load_cost_table("k8-opteron-2005").digest() != a.digest()


def test_the_digest_does_not_depend_on_the_order_of_events_in_the_file(tmp_path):
    src = load_cost_table()
    lines = [f"  {e}: {{cycles: {c}, source: {json.dumps(src.sources[e])}}}"
             for e, c in src.cycles.items()]
    head = f"name: {src.name}\ncpu: x\nmhz: 2400\nevents:\n"
    fwd = load_cost_table(_write(tmp_path, head + "\n".join(lines) + "\n", "f.yaml"))
    rev = load_cost_table(_write(tmp_path, head + "\n".join(reversed(lines)) + "\n", "r.yaml"))
    assert fwd.digest() == rev.digest() == src.digest()


def test_a_number_without_a_source_is_refused_naming_file_and_event(tmp_path):
    path = _write(tmp_path, HEAD + "events:\n  walk_ref: {cycles: 15}\n")
    msg = _error(path)
    assert msg.startswith(f"{path}: events.walk_ref.source: every number needs a source")


def test_a_blank_source_is_no_source(tmp_path):
    path = _write(tmp_path, HEAD + "events:\n  walk_ref: {cycles: 15, source: '  '}\n")
    assert "events.walk_ref.source" in _error(path)


@pytest.mark.parametrize("value", ["-3", "1.5", "true", "'15'"])
def test_negative_or_non_integer_cycles_are_refused_with_the_value(tmp_path, value):
    path = _write(tmp_path, HEAD + f"events:\n  walk_ref: {{cycles: {value}, source: 'E: x'}}\n")
    msg = _error(path)
    assert msg.startswith(f"{path}: events.walk_ref.cycles: value ")
    assert msg.endswith("must be an integer >= 0")


def test_an_event_with_an_unknown_field_is_refused(tmp_path):
    path = _write(tmp_path, HEAD + "events:\n  walk_ref: {cycles: 15, source: 'E', note: 1}\n")
    assert f"{path}: events.walk_ref: value" in _error(path)


def test_an_unknown_top_level_key_lists_the_allowed_keys(tmp_path):
    path = _write(tmp_path, HEAD + "frequency: 3\n")
    assert _error(path) == (f"{path}: key 'frequency' unknown (allowed: cpu, description, "
                            f"events, inherits, mhz, name)")


def test_a_missing_required_key_is_named(tmp_path):
    path = _write(tmp_path, "name: t\ncpu: x\ninherits: p4-xeon-2005\n")
    assert _error(path) == f"{path}: key 'mhz' is required"


def test_an_inherits_cycle_is_refused(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"name: a\ncpu: x\nmhz: 1\ninherits: {b}\n")
    b.write_text(f"name: b\ncpu: x\nmhz: 1\ninherits: {a}\n")
    assert "forms a cycle" in _error(str(a))


def test_an_override_of_an_unknown_event_names_it_and_lists_the_events():
    msg = _error("p4-xeon-2005", {"walk_reff": 3})
    assert "p4-xeon-2005.yaml" in msg and "'walk_reff'" in msg
    assert "(events: ad_write, " in msg and "walk_ref" in msg


@pytest.mark.parametrize("value", [-1, 2.5])
def test_an_override_must_be_a_non_negative_integer(value):
    msg = _error("p4-xeon-2005", {"walk_ref": value})
    assert f"walk_ref={value!r}" in msg and "integer >= 0" in msg


def test_an_override_of_true_is_refused_like_true_in_a_file():
    _error("p4-xeon-2005", {"walk_ref": True})


def test_an_unknown_parent_names_the_file_and_the_inherits_key(tmp_path):
    path = _write(tmp_path, "name: t\ncpu: x\nmhz: 1\ninherits: nosuch\n")
    msg = _error(path)
    assert path in msg and "inherits" in msg


def test_an_unknown_table_name_lists_the_packaged_tables():
    msg = _error("nosuch")
    assert "'nosuch'" in msg and ", ".join(TABLES) in msg


def test_an_engine_refuses_a_table_that_lacks_an_event_it_charges():
    full = load_cost_table()
    cycles = {k: v for k, v in full.cycles.items() if k != "pf_delivery"}
    table = CostTable("thin", "x", 1000, cycles, {k: "E: x" for k in cycles}, origin="thin.yaml")
    with pytest.raises(CostTableError) as exc:
        NativeEngine(DomainSpec(vcpus=1, memory_mib=16), table)
    assert str(exc.value) == ("thin.yaml: cost table 'thin' lacks events pf_delivery needed "
                              "by engine 'native'")
    with pytest.raises(CostTableError, match="has no event 'nope'"):
        full["nope"]
