"""The milestone ladder (YAML) and the tracker that stamps each milestone with the simulated
time of the VCPU that reached it and a snapshot of the counters. Sees guest events only:
(event name, vcpu, data) tuples, as the guest kernel emits them.
"""
from .ladder import Ladder, LadderError, Milestone, list_ladders, load_ladder
from .tracker import Stamp, Tracker

__all__ = ["Ladder", "LadderError", "Milestone", "list_ladders", "load_ladder", "Stamp",
           "Tracker"]
