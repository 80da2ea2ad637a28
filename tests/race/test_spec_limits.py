"""Race specs refuse up front what a boot would refuse when it is built (README, "Writing a
spec"): the guest memory and VCPU limits of DomainSpec, each engine's machine-memory range
and shadow pool floor, broken ladder and cost-table files; and the mistakes come in line
order. Before, such a spec passed, and every boot ended `broken` (exit 1)."""
from __future__ import annotations

import textwrap

import pytest

from engines.api import DomainSpec
from race.spec import Catalog, SpecError, parse_spec


@pytest.fixture(scope="module")
def installed():
    pytest.importorskip("race.boot")
    return Catalog.installed()


def errors(text: str, catalog, filename: str = "s.yaml") -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(textwrap.dedent(text), filename, catalog)
    return e.value.lines


def test_guest_memory_beyond_lowmem_is_refused_like_domainspec_refuses_it(catalog):
    assert errors("matrix: {memory_mib: [512, 2048]}\nengines: [native]\n", catalog) == [
        "s.yaml:1: matrix.memory_mib[1]: value 2048 is not a guest memory size (MiB, integers "
        "16..896: lowmem only)"]
    parse_spec("matrix: {memory_mib: [16, 896]}\nengines: [native]\n", "s.yaml", catalog)
    for mib in (15, 897):
        with pytest.raises(ValueError):
            DomainSpec(memory_mib=mib)
        assert errors(f"matrix: {{memory_mib: {mib}}}\nengines: [native]\n", catalog)


def test_the_vcpu_limit_is_domainspecs(catalog):
    parse_spec("matrix: {vcpus: 32}\nengines: [native]\n", "s.yaml", catalog)
    with pytest.raises(ValueError):
        DomainSpec(vcpus=33)
    assert errors("matrix: {vcpus: 33}\nengines: [native]\n", catalog) == [
        "s.yaml:1: matrix.vcpus: value 33 is not a VCPU count (integers 1..32)"]


def test_paravirt_machine_memory_too_small_for_the_domain_and_xen_is_refused(installed):
    text = """\
    matrix:
      memory_mib: 512
      machine_memory_mib: [null, 32, 576]
    engines: [native, paravirt]
    """
    assert errors(text, installed) == [
        "s.yaml:3: matrix.machine_memory_mib[1]: value 32 is not a machine memory size "
        "engines[1] (paravirt) can boot with vcpus 1 and memory_mib 512 (null for the engine's "
        "default, or MiB, integers 576..16384)"]


def test_the_machine_memory_range_is_the_one_the_paravirt_engine_enforces(installed):
    from engines.api import load_cost_table
    from engines.paravirt import PVEngine
    with pytest.raises(ValueError, match="machine memory 575 MiB"):
        PVEngine(DomainSpec(vcpus=1, memory_mib=512, machine_memory_mib=575), load_cost_table())
    assert errors("matrix: {machine_memory_mib: 575}\nengines: [paravirt]\n", installed)
    parse_spec("matrix: {machine_memory_mib: 576}\nengines: [paravirt]\n", "s.yaml", installed)


def test_shadow_machine_memory_must_hold_xens_frames_and_the_guest(installed):
    """p2m.P2M refuses 519 MiB for a 512 MiB guest with the default pool on one VCPU."""
    text = """\
    matrix: {machine_memory_mib: [519, 520]}
    engines:
      - engine: shadow
    """
    assert errors(text, installed) == [
        "s.yaml:1: matrix.machine_memory_mib[0]: value 519 is not a machine memory size "
        "engines[0] (shadow) can boot with vcpus 1 and memory_mib 512 (null for the engine's "
        "default, or MiB, integers 520..65536)"]


def test_native_ignores_machine_memory_so_any_size_passes(installed):
    race = parse_spec("matrix: {machine_memory_mib: 32}\nengines: [native]\n", "s.yaml",
                      installed)
    assert race.cells[0].machine_memory_mib == 32


def test_a_shadow_pool_below_the_floor_for_the_vcpus_is_refused(installed):
    text = """\
    matrix: {vcpus: [1, 16]}
    engines:
      - engine: shadow
        options: {pool_pages: [64, 256]}
    """
    assert errors(text, installed) == [
        "s.yaml:4: engines[0].options.pool_pages[0]: value 64 is too small a shadow pool for "
        "vcpus 16 (matrix.vcpus[1]) (choices: auto, or integers >= 70)"]


def test_a_ladder_file_with_mistakes_is_refused_with_its_own_lines(catalog, tmp_path):
    (tmp_path / "lad.yaml").write_text(
        "name: l\nmilestones:\n  - {name: rcS, event: rc_done, match: {runlevel: 9}}\n"
        "  - {name: up, event: smp_on}\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("seeds: [1, 1]\nladder: lad.yaml\nengines: [native]\n")
    with pytest.raises(SpecError) as e:
        parse_spec(spec.read_text(), str(spec), catalog)
    lad = tmp_path / "lad.yaml"
    assert e.value.lines[0] == f"{spec}:1: seeds: value [1, 1] repeats a seed"
    assert e.value.lines[1].startswith(f"{lad}:3: milestones[0].match.runlevel: value 9 can "
                                       f"never match")
    assert e.value.lines[2].startswith(f"{lad}:4: milestones[1].event: value 'smp_on' is not "
                                       f"allowed")
    assert len(e.value.lines) == 3


def test_a_broken_cost_table_file_is_refused_before_the_race(catalog, tmp_path):
    (tmp_path / "c.yaml").write_text("name: c\ncpu: x\nmhz: [1000\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("costs: c.yaml\nengines: [native]\n")
    with pytest.raises(SpecError) as e:
        parse_spec(spec.read_text(), str(spec), catalog)
    assert len(e.value.lines) == 1 and str(tmp_path / "c.yaml") in e.value.lines[0]
    assert "not valid YAML" in e.value.lines[0]


def test_mistakes_come_in_line_order(catalog):
    text = """\
    engines:
      - engine: native
        matrix: {vcpus: 0}
    matrix: {memory_mib: 4}
    seeds: [-1]
    ladder: tall
    """
    assert [line.split(":")[1] for line in errors(text, catalog)] == ["3", "4", "5", "6"]


def test_costs_and_ladder_choices_say_a_yaml_path_is_allowed_too(catalog):
    lines = errors("ladder: tall\ncosts: cheap\nengines: [native]\n", catalog)
    assert lines == [
        "s.yaml:1: ladder: value 'tall' is not allowed (choices: default, or a path to a "
        ".yaml file)",
        "s.yaml:2: costs: value 'cheap' is not allowed (choices: k8-opteron-2005, "
        "p4-vtx-2005, p4-xeon-2005, or a path to a .yaml file)"]


def test_a_cost_table_file_that_cannot_price_an_engine_is_refused(installed, tmp_path):
    """ShadowEngine's constructor requires every event it charges (CostTable.require)."""
    from engines.api.costs import TABLE_DIR
    text = (TABLE_DIR / "p4-xeon-2005.yaml").read_text()
    (tmp_path / "nofill.yaml").write_text(
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("sh_fill:")))
    spec = tmp_path / "s.yaml"
    spec.write_text("engines:\n  - native\n  - engine: shadow\n    costs: nofill.yaml\n")
    with pytest.raises(SpecError) as e:
        parse_spec(spec.read_text(), str(spec), installed)
    assert e.value.lines == [
        f"{spec}:4: engines[1].costs: value '{tmp_path / 'nofill.yaml'}' cannot price "
        f"engines[1]: {tmp_path / 'nofill.yaml'}: cost table 'p4-xeon-2005' lacks events "
        f"sh_fill needed by engine 'shadow'"]
    spec.write_text("costs: nofill.yaml\nengines: [native, paravirt]\n")
    assert len(parse_spec(spec.read_text(), str(spec), installed).cells) == 2


def test_a_vcpu_count_the_ladder_can_never_match_is_refused(catalog, tmp_path):
    """A ladder whose smp_online wants 2 VCPUs, raced on 1 and 2: every 1-VCPU boot would
    end as a DNF (the guest emits smp_online with the VCPUs it runs)."""
    (tmp_path / "two.yaml").write_text(
        "name: two\nmilestones:\n  - {name: up, event: smp_online, match: {vcpus: 2}}\n"
        "  - {name: init, event: exec, match: {path: /sbin/init}}\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("ladder: two.yaml\nmatrix: {vcpus: [1, 2]}\nengines:\n  - native\n"
                    "  - engine: paravirt\n    matrix: {vcpus: 4}\n")
    with pytest.raises(SpecError) as e:
        parse_spec(spec.read_text(), str(spec), catalog)
    assert e.value.lines == [
        f"{spec}:2: matrix.vcpus[0]: value 1 can never reach milestone 'up' of ladder 'two' "
        f"(its match wants vcpus: 2): every such boot would end as a DNF",
        f"{spec}:6: engines[1].matrix.vcpus: value 4 can never reach milestone 'up' of "
        f"ladder 'two' (its match wants vcpus: 2): every such boot would end as a DNF"]
    spec.write_text("ladder: two.yaml\nmatrix: {vcpus: 2}\nengines: [native]\n")
    assert len(parse_spec(spec.read_text(), str(spec), catalog).cells) == 1
