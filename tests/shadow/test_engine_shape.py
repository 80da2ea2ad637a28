"""Shape of a ShadowEngine that its speed depends on (not behaviour): CPython 3.11
specialises attribute loads and method calls on an instance only while its attributes fit
the class's shared keys (at most 30). With 42 attributes every `self._sh_page_fault(...)`
took the generic method lookup (2.4% of a sarge boot's instructions)."""
from __future__ import annotations

import tiny_guest as tg


def test_a_booted_engine_keeps_fewer_than_30_instance_attributes():
    e = tg.make("shadow", vcpus=2)
    tg.boot(e, vcpus=2)
    tg.access(e, 0, tg.test_va(0, 0), "write", user=True, value=5)
    e.clear_page(0, tg.kva(tg.DATA[1]))
    assert len(vars(e)) < 30, sorted(vars(e))
