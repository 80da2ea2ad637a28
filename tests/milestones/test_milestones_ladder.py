"""The milestone ladder (YAML) and the tracker, on their own: the default ladder, the
validation of user ladders (one line naming file, key, value and choices), and how the
tracker stamps milestones in ladder order with the clock of the VCPU that reached them.
"""
from __future__ import annotations

import pytest

from milestones import Ladder, LadderError, Milestone, Stamp, Tracker, list_ladders, load_ladder
from milestones.ladder import DATA_VALUES, GUEST_EVENTS

DEFAULT = ["kernel_entry", "paging_on", "direct_map", "smp_online", "init_exec",
           "single_user", "multiuser"]


def _ladder_file(tmp_path, body: str) -> str:
    path = tmp_path / "ladder.yaml"
    path.write_text("name: mine\nmilestones:\n" + body)
    return str(path)


def _error(path: str) -> str:
    with pytest.raises(LadderError) as exc:
        load_ladder(path)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_the_default_ladder_climbs_from_kernel_entry_to_multiuser():
    ladder = load_ladder()
    assert list_ladders() == ["default"]
    assert ladder.names() == DEFAULT
    by_name = {m.name: m for m in ladder.milestones}
    assert by_name["init_exec"].event == "exec"
    assert by_name["init_exec"].match == {"path": "/sbin/init"}
    assert by_name["single_user"].match == {"runlevel": "S"}
    assert by_name["multiuser"].match == {"all": True}
    assert all(m.doc for m in ladder.milestones)


def test_a_user_ladder_loads_from_a_file(tmp_path):
    path = _ladder_file(tmp_path, "  - {name: up, event: smp_online}\n"
                                  "  - {name: shell, event: exec, match: {path: /bin/sh}}\n")
    ladder = load_ladder(path)
    assert ladder.name == "mine" and ladder.names() == ["up", "shell"]
    assert ladder.origin == path


def test_an_unknown_event_names_file_line_key_value_and_every_guest_event(tmp_path):
    path = _ladder_file(tmp_path, "  - {name: a, event: boot_done}\n")
    msg = _error(path)
    assert msg == (f"{path}:3: milestones[0].event: value 'boot_done' is not allowed "
                   f"(choices: {', '.join(GUEST_EVENTS)})")


def test_a_duplicate_name_is_refused_at_its_second_use(tmp_path):
    path = _ladder_file(tmp_path, "  - {name: a, event: exec}\n  - {name: a, event: rc_done}\n")
    assert _error(path) == (f"{path}:4: milestones[1].name: value 'a' is used twice (first at "
                            f"line 3)")


def test_a_match_that_is_not_a_mapping_is_refused(tmp_path):
    path = _ladder_file(tmp_path, "  - {name: a, event: exec, match: /sbin/init}\n")
    assert _error(path) == (f"{path}:3: milestones[0].match: value '/sbin/init' must be a "
                            f"mapping of the event's data keys (path, place)")


def test_a_match_on_a_key_the_event_never_carries_is_refused_with_the_keys_it_does(tmp_path):
    # a typo ("runlvl") would otherwise make a milestone that can never be reached
    path = _ladder_file(tmp_path, "  - {name: a, event: rc_done, match: {runlvl: S}}\n")
    assert _error(path) == (f"{path}:3: milestones[0].match.runlvl: value 'S' is not allowed: "
                            f"event 'rc_done' carries no key 'runlvl' (allowed keys: runlevel)")
    path = _ladder_file(tmp_path, "  - {name: a, event: paging_on, match: {vcpu: 0}}\n")
    assert _error(path) == (f"{path}:3: milestones[0].match.vcpu: value 0 is not allowed: "
                            f"event 'paging_on' carries no key 'vcpu' (it carries no data to "
                            f"match)")


def test_every_event_names_the_data_keys_a_match_may_use():
    assert GUEST_EVENTS["exec"] == ("path", "place")
    assert GUEST_EVENTS["getty_waiting"] == ("count", "of", "all")
    assert GUEST_EVENTS["kernel_entry"] == ()
    assert {e for e, _ in DATA_VALUES} <= set(GUEST_EVENTS)
    assert {(e, k) for e, keys in GUEST_EVENTS.items() for k in keys} == set(DATA_VALUES)


def test_an_unknown_milestone_key_lists_the_allowed_keys(tmp_path):
    path = _ladder_file(tmp_path, "  - {name: a, event: exec, when: 1}\n")
    assert _error(path) == (f"{path}:3: milestones[0].when: unknown key (allowed: name, "
                            f"event, match, doc)")


@pytest.mark.parametrize("body, fragment", [
    ("  - {event: exec}\n", ":3: milestones[0].name: value None must be a non-empty string"),
    ("  - exec\n", ":3: milestones[0]: value 'exec' must be a mapping"),
])
def test_a_malformed_milestone_is_refused(tmp_path, body, fragment):
    path = _ladder_file(tmp_path, body)
    msg = _error(path)
    assert path in msg and fragment in msg


def test_an_empty_ladder_is_refused(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text("name: l\nmilestones: []\n")
    assert _error(str(path)) == (f"{path}:2: milestones: value [] must be a non-empty list of "
                                 f"milestones")


@pytest.mark.parametrize("match, choices", [
    ("{runlevel: 9}", "'S', '2'; quote a digit"),
    ("{runlevel: 2}", "'S', '2'; quote a digit"),       # YAML's 2 is an int; guestkit's '2'
])
def test_a_match_on_a_value_the_guest_never_emits_is_refused(tmp_path, match, choices):
    """`runlevel: 9` used to pass, and the boot ended as a DNF ("milestone gettys reached
    before rcS"): guestkit's init runs rcS and rc2 only."""
    path = _ladder_file(tmp_path, f"  - {{name: rc, event: rc_done, match: {match}}}\n")
    value = match.split(": ")[1].rstrip("}")
    assert _error(path) == (f"{path}:3: milestones[0].match.runlevel: value {value} can never "
                            f"match event 'rc_done' (choices: {choices})")


@pytest.mark.parametrize("event, match", [
    ("smp_online", "{vcpus: 0}"), ("kthreads_started", "{count: many}"),
    ("exec", "{path: sbin/init}"), ("getty_waiting", "{all: 1}"), ("getty_waiting", "{of: 0}"),
])
def test_impossible_values_of_every_datum_are_refused(tmp_path, event, match):
    path = _ladder_file(tmp_path, f"  - {{name: m, event: {event}, match: {match}}}\n")
    assert f"{path}:3: milestones[0].match." in _error(path)


def test_every_mistake_of_a_ladder_is_one_line_in_line_order(tmp_path):
    """Like a spec mistake (README, "Writing a ladder"): all of them, not just the first,
    each with its file:line."""
    path = _ladder_file(tmp_path, "  - {name: a, event: exec}\n"
                                  "  - {name: rcS, event: rc_done, match: {level: S}}\n"
                                  "  - {name: b, event: getty_waiting, match: {all: maybe}}\n"
                                  "colour: red\n")
    with pytest.raises(LadderError) as exc:
        load_ladder(path)
    assert exc.value.lines == [
        f"{path}:4: milestones[1].match.level: value 'S' is not allowed: event 'rc_done' "
        f"carries no key 'level' (allowed keys: runlevel)",
        f"{path}:5: milestones[2].match.all: value 'maybe' can never match event "
        f"'getty_waiting' (choices: true, false)",
        f"{path}:6: colour: unknown key (allowed: name, description, milestones)",
    ]


def test_broken_yaml_in_a_ladder_names_its_line(tmp_path):
    path = _ladder_file(tmp_path, "  - {name: a, event: exec\n")
    msg = _error(path)
    assert msg.startswith(f"{path}:") and "not valid YAML" in msg


def test_an_unknown_ladder_name_lists_the_packaged_ladders():
    with pytest.raises(LadderError, match=r"'nosuch'.*choices: default"):
        load_ladder("nosuch")


def test_an_unknown_top_level_key_is_named(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text("name: l\nrungs: []\nmilestones:\n  - {name: a, event: exec}\n")
    assert _error(str(path)) == (f"{path}:2: rungs: unknown key (allowed: name, description, "
                                 f"milestones)")


# -------------------------------------------------------------------------- tracker

class _Clocks:
    def __init__(self):
        self.now = {0: 0, 1: 0}

    def __call__(self, vcpu):
        return self.now[vcpu]


def _tracker(counters=None):
    ladder = Ladder("t", (Milestone("up", "smp_online"),
                          Milestone("init", "exec", {"path": "/sbin/init"}),
                          Milestone("multi", "getty_waiting", {"all": True})))
    clocks, stamped = _Clocks(), []
    snap = counters if counters is not None else (lambda: {"n": 1})
    return Tracker(ladder, clocks, snap, on_stamp=stamped.append), clocks, stamped


def test_the_tracker_stamps_each_milestone_with_the_clock_of_the_vcpu_that_reached_it():
    tracker, clocks, stamped = _tracker()
    clocks.now = {0: 100, 1: 70}
    tracker("smp_online", 0, {"vcpus": 2})
    clocks.now = {0: 150, 1: 400}
    tracker("exec", 1, {"path": "/sbin/init", "place": "init"})
    assert stamped == tracker.stamps
    assert [(s.milestone, s.index, s.vcpu, s.cycles) for s in stamped] == \
        [("up", 0, 0, 100), ("init", 1, 1, 400)]
    assert tracker.next_milestone == "multi" and not tracker.done


def test_the_tracker_ignores_events_whose_data_does_not_match():
    tracker, clocks, _ = _tracker()
    tracker("smp_online", 0, {})
    tracker("exec", 0, {"path": "/bin/sh"})
    tracker("getty_waiting", 0, {"count": 1, "all": False})
    assert [s.milestone for s in tracker.stamps] == ["up"]
    assert tracker.violations == []


def test_a_later_milestone_reached_first_is_an_ordering_violation_not_a_stamp():
    tracker, clocks, _ = _tracker()
    tracker("exec", 0, {"path": "/sbin/init"})
    assert tracker.stamps == []
    assert tracker.violations == ["milestone init reached before up (event exec "
                                  "{'path': '/sbin/init'})"]


def test_the_stamp_keeps_a_copy_of_the_counters_at_that_moment():
    live = {"hw.cr3_loads": 1}
    tracker, clocks, _ = _tracker(lambda: live)
    tracker("smp_online", 0, {})
    live["hw.cr3_loads"] = 5
    assert tracker.stamps[0].counters == {"hw.cr3_loads": 1}


def test_the_tracker_is_done_after_the_last_milestone_and_ignores_the_rest():
    tracker, clocks, _ = _tracker()
    for event, data in (("smp_online", {}), ("exec", {"path": "/sbin/init"}),
                        ("getty_waiting", {"all": True}), ("smp_online", {})):
        tracker(event, 0, data)
    assert tracker.done and tracker.next_milestone is None and len(tracker.stamps) == 3
    assert isinstance(tracker.stamps[-1], Stamp)
