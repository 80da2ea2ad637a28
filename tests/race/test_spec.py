"""Race specs: expansion into cells, skipped engines, and one line per mistake."""
from __future__ import annotations

import textwrap

import pytest

from race.spec import SpecError, load_spec, parse_spec

GOOD = """\
name: t
seeds: [1, 2]
matrix:
  profile: tiny
  vcpus: [1, 2]
engines:
  - engine: native
  - engine: paravirt
    options: {strategy: [shared, walk], ptwr: true}
"""


def parse(text, catalog, filename="spec.yaml"):
    return parse_spec(textwrap.dedent(text), filename, catalog)


def test_cells_are_ordered_by_entry_then_options_then_matrix_then_seed(catalog):
    race = parse(GOOD, catalog)
    got = [(c.engine, dict(c.options).get("strategy"), c.vcpus, c.seed) for c in race.cells]
    assert got == [("native", None, 1, 1), ("native", None, 1, 2), ("native", None, 2, 1),
                   ("native", None, 2, 2),
                   ("paravirt", "shared", 1, 1), ("paravirt", "shared", 1, 2),
                   ("paravirt", "shared", 2, 1), ("paravirt", "shared", 2, 2),
                   ("paravirt", "walk", 1, 1), ("paravirt", "walk", 1, 2),
                   ("paravirt", "walk", 2, 1), ("paravirt", "walk", 2, 2)]
    assert race.cells[4].options == (("ptwr", True), ("strategy", "shared"))
    assert race.labels[race.cells[4].key()] == "paravirt(ptwr,shared)"
    assert race.labels[race.cells[0].key()] == "native"


def test_the_default_spec_names_every_pv_strategy_and_both_shadow_cost_models(catalog):
    race = load_spec("default", catalog)
    strategies = {dict(c.options)["strategy"] for c in race.cells if c.engine == "paravirt"}
    assert strategies == {"per-pagetable", "shared", "shared-percpu", "walk"}
    assert {c.profile for c in race.cells} == {"sarge"}
    assert {c.vcpus for c in race.cells} == {1, 2}
    assert race.seeds == [1, 2, 3]
    assert len(race.cells) == (1 + 4) * 2 * 3
    assert "shadow" in race.text and "p4-vtx-2005" in race.text


def test_an_engine_not_installed_yet_is_skipped_with_a_note(catalog):
    race = load_spec("default", catalog)      # the fake catalog has no shadow engine
    assert race.notes == ["engine 'shadow' (default.yaml lines 22, 23, 27) is not installed yet: "
                          "skipped (installed: native, paravirt)"]
    assert all(c.engine != "shadow" for c in race.cells)


def test_the_quick_spec_is_a_small_smoke_race(catalog):
    race = load_spec("quick", catalog)
    assert {c.profile for c in race.cells} == {"tiny"} and race.seeds == [1]
    assert len(race.cells) <= 8


def test_each_mistake_is_one_line_naming_file_line_key_value_and_choices(catalog):
    text = """\
    seeds: [1, -2]
    matrix:
      profile: [tiny, gentoo]
      vcpus: [0, 2]
      flush_filter: maybe
    colour: blue
    engines:
      - engine: paravirt
        options:
          strategy: [shared, linear]
          pinning: on
      - engine: native
        costs: p3-1999
    """
    with pytest.raises(SpecError) as e:
        parse(text, catalog, "bad.yaml")
    assert e.value.lines == [             # in line order
        "bad.yaml:1: seeds[1]: value -2 is not a seed (integers >= 0)",
        "bad.yaml:3: matrix.profile[1]: value 'gentoo' is not allowed (choices: sarge, tiny, "
        "buggy, slow)",
        "bad.yaml:4: matrix.vcpus[0]: value 0 is not a VCPU count (integers 1..32)",
        "bad.yaml:5: matrix.flush_filter: value 'maybe' is not allowed (choices: true, false)",
        "bad.yaml:6: colour: unknown key (allowed: name, description, costs, cost_overrides,"
        " ladder, seeds, matrix, engines)",
        "bad.yaml:10: engines[0].options.strategy[1]: value 'linear' is not allowed (choices: "
        "per-pagetable, shared, shared-percpu, walk)",
        "bad.yaml:11: engines[0].options.pinning: unknown key (allowed: strategy, ptwr)",
        "bad.yaml:13: engines[1].costs: value 'p3-1999' is not allowed (choices: "
        "k8-opteron-2005, p4-vtx-2005, p4-xeon-2005, or a path to a .yaml file)",
    ]


def test_a_misspelt_engine_is_a_mistake_not_a_skip(catalog):
    with pytest.raises(SpecError) as e:
        parse("engines:\n  - engine: paravrit\n", catalog, "s.yaml")
    assert e.value.lines == ["s.yaml:2: engines[0].engine: value 'paravrit' is not an engine "
                             "(installed: native, paravirt); did you mean 'paravirt'?"]


def test_a_spec_whose_engines_are_all_missing_is_refused(catalog):
    with pytest.raises(SpecError) as e:
        parse("engines: [shadow]\n", catalog, "s.yaml")
    assert "names no installed engine" in e.value.lines[0]


def test_cost_overrides_are_checked_against_the_cost_table(catalog):
    race = parse("cost_overrides: {trap: 999}\nengines: [native]\nmatrix: {profile: tiny}\n",
                 catalog)
    assert race.cells[0].cost_overrides == (("trap", 999),)
    with pytest.raises(SpecError) as e:
        parse("engines:\n  - engine: native\n    cost_overrides: {warp_drive: 3}\n", catalog,
              "s.yaml")
    assert e.value.lines[0].startswith("s.yaml:3: engines[0].cost_overrides: value "
                                       "{'warp_drive': 3} rejected by cost table")
    assert "warp_drive" in e.value.lines[0]


def test_a_cost_table_path_is_relative_to_the_spec(catalog, tmp_path):
    from engines.api.costs import TABLE_DIR
    (tmp_path / "mine.yaml").write_text((TABLE_DIR / "p4-xeon-2005.yaml").read_text())
    spec = tmp_path / "s.yaml"
    spec.write_text("costs: mine.yaml\nengines: [native]\n")
    race = load_spec(str(spec), catalog)
    assert race.cells[0].costs == str(tmp_path / "mine.yaml")


def test_broken_yaml_names_its_line(catalog):
    with pytest.raises(SpecError) as e:
        parse("engines:\n  - engine: native\n  options: [\n", catalog, "y.yaml")
    assert e.value.lines[0].startswith("y.yaml:")
    assert "not valid YAML" in e.value.lines[0]


def test_a_repeated_cell_is_refused(catalog):
    with pytest.raises(SpecError) as e:
        parse("engines: [native, native]\n", catalog, "d.yaml")
    assert "repeats cell" in e.value.lines[0] and "engines[0]" in e.value.lines[0]


def test_an_unknown_spec_name_lists_the_packaged_specs(catalog):
    with pytest.raises(SpecError) as e:
        load_spec("fastest", catalog)
    assert e.value.lines == ["spec 'fastest': not a packaged spec or a file (packaged specs: "
                             "default, quick)"]


def test_packaged_specs_validate_against_the_installed_engines():
    """The day an engine lands, its options in the packaged specs must be ones it offers."""
    pytest.importorskip("race.boot")
    for name in ("default", "quick"):
        race = load_spec(name)
        assert race.cells
