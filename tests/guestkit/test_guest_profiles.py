"""Workload profiles (YAML): the packaged ones load, `inherits` merges, and bad input is
refused with one line naming the file, the key, the value and what is allowed (STYLE.md,
'Errors': bad user input gets one line naming file, key, value and the allowed choices).
"""
from __future__ import annotations

import pytest

from guestkit import ProfileError, list_profiles, load_profile
from guestkit.profile import SCHEMA
from race.boot import BootCell, run_boot

PACKAGED = ["lmbench-ctx", "lmbench-exec", "lmbench-fork", "lmbench-mmap",
            "lmbench-pagefault", "lmbench-prot", "lmbench-sh", "sarge", "tiny"]


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(path: str) -> str:
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_every_packaged_profile_loads_and_is_listed():
    assert list_profiles() == PACKAGED
    for name in PACKAGED:
        prof = load_profile(name)
        assert prof.name == name and prof.origin.endswith(f"{name}.yaml")


def test_sarge_is_the_2005_debian_boot_two_vcpus_512_mib_hz_1000():
    prof = load_profile("sarge")
    assert (prof.workload, prof.vcpus, prof.memory_mib) == ("boot", 2, 512)
    assert prof.kernel["hz"] == 1000 and prof.kernel["fork_copy"] == "all"


def test_inherits_merges_nested_mappings_key_by_key(tmp_path):
    """tiny overrides some boot counts of sarge and keeps the rest."""
    tiny, sarge = load_profile("tiny"), load_profile("sarge")
    assert tiny.memory_mib == 64 and tiny.boot["rcs_scripts"] == 3
    assert tiny.boot["distinct_commands"] == sarge.boot["distinct_commands"]
    assert tiny.programs == sarge.programs and tiny.kernel == sarge.kernel
    path = _write(tmp_path, "mine.yaml", "name: mine\ninherits: tiny\n"
                  "programs:\n  sh: {text: 7}\n")
    mine = load_profile(path)
    assert mine.programs["sh"]["text"] == 7
    assert mine.programs["sh"]["heap"] == tiny.programs["sh"]["heap"]
    assert mine.description == ""          # a description is not inherited


def test_an_unknown_key_names_the_file_the_dotted_key_and_the_allowed_keys(tmp_path):
    path = _write(tmp_path, "p.yaml", "name: p\ninherits: tiny\nkernel:\n  hzz: 100\n")
    msg = _error(path)
    assert path in msg and "'kernel.hzz'" in msg
    assert f"(allowed: {', '.join(sorted(SCHEMA['kernel']))})" in msg
    assert "hz" in msg and "timeslice_ticks" in msg


def test_an_unknown_top_level_key_is_refused(tmp_path):
    path = _write(tmp_path, "p.yaml", "name: p\ninherits: tiny\nvcpu: 2\n")
    msg = _error(path)
    assert path in msg and "'vcpu'" in msg and "vcpus" in msg


@pytest.mark.parametrize("key, value, shown, allowed", [
    ("kernel:\n  hz", "300", "300", "100 | 250 | 1000"),
    ("vcpus", "0", "0", "int 1..32"),
    ("memory_mib", "4096", "4096", "int 16..896"),
    ("boot:\n  gettys", "true", "True", "int"),
    ("programs:\n  sh:\n    text", "-1", "-1", "int"),
    ("kernel:\n  fork_copy", "some", "'some'", "all | anon"),
    ("workload", "benchmark", "'benchmark'", "boot | lmbench"),
])
def test_a_bad_value_names_file_key_value_and_the_allowed_values(tmp_path, key, value, shown,
                                                                 allowed):
    path = _write(tmp_path, "p.yaml", f"name: p\ninherits: tiny\n{key}: {value}\n")
    msg = _error(path)
    dotted = key.replace(":\n    ", ".").replace(":\n  ", ".")
    assert msg == f"{path}: key '{dotted}': value {shown} not allowed (allowed: {allowed})"


def test_a_bad_lmbench_mechanism_lists_the_seven_mechanisms(tmp_path):
    path = _write(tmp_path, "p.yaml", "name: p\ninherits: lmbench-fork\n"
                  "lmbench: {mechanism: swap}\n")
    msg = _error(path)
    assert "'lmbench.mechanism'" in msg and "'swap'" in msg
    assert "fork | exec | sh | ctx | pagefault | mmap | prot" in msg


def test_a_section_that_is_not_a_mapping_is_refused(tmp_path):
    path = _write(tmp_path, "p.yaml", "name: p\ninherits: tiny\nkernel: 5\n")
    assert "key 'kernel': value 5 must be a mapping" in _error(path)


def test_a_missing_required_key_is_named(tmp_path):
    path = _write(tmp_path, "p.yaml", "name: p\nworkload: boot\nvcpus: 1\nmemory_mib: 64\n")
    msg = _error(path)
    assert path in msg and "'kernel' is required" in msg


def test_a_missing_nested_key_is_named_with_its_section(tmp_path):
    sarge = (load_profile("sarge").origin)
    text = open(sarge).read().replace("  nx: true\n", "")
    path = _write(tmp_path, "p.yaml", text)
    msg = _error(path)
    assert path in msg and "kernel.nx is missing" in msg


def test_an_inherits_cycle_is_refused_naming_the_file_and_the_parent(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"name: a\ninherits: {b}\n")
    b.write_text(f"name: b\ninherits: {a}\n")
    msg = _error(str(a))
    assert "forms a cycle" in msg and ("a.yaml" in msg and "b.yaml" in msg)


def test_a_profile_inheriting_itself_is_a_cycle(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(f"name: a\ninherits: {a}\n")
    assert "forms a cycle" in _error(str(a))


def test_an_unknown_profile_name_lists_the_packaged_choices():
    with pytest.raises(ProfileError) as exc:
        load_profile("nosuch")
    assert "'nosuch'" in str(exc.value) and ", ".join(PACKAGED) in str(exc.value)


def test_an_unknown_parent_names_the_file_and_the_inherits_key(tmp_path):
    path = _write(tmp_path, "p.yaml", "name: p\ninherits: nosuch\n")
    msg = _error(path)
    assert path in msg and "inherits" in msg and "'nosuch'" in msg


def test_a_lmbench_profile_without_its_mechanism_is_refused_at_load(tmp_path):
    path = _write(tmp_path, "p.yaml", "name: p\ninherits: tiny\nworkload: lmbench\n"
                  "lmbench: {iterations: 3}\n")
    msg = _error(path)
    assert path in msg and "lmbench.mechanism" in msg


def test_a_lmbench_profile_without_its_mechanism_does_not_crash_the_harness(tmp_path):
    """run_boot reports a bad cell as a ValueError subclass the CLI prints, or as a DNF;
    an exception escaping it is a harness bug (race/boot.py docstring)."""
    path = _write(tmp_path, "p.yaml", "name: p\ninherits: tiny\nworkload: lmbench\n"
                  "lmbench: {iterations: 3}\n")
    cell = BootCell(engine="native", profile=path, vcpus=1, memory_mib=64)
    try:
        result = list(run_boot(cell))[-1]
    except ProfileError:
        return
    assert result["status"] == "dnf"
