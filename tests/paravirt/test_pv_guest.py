"""The guest kernel on the PV engine through its Xen-PV backend (guestkit.pvops_xen): the
`tiny` profile boots on each strategy, passes the engine audit and the data ledger, and
reads back exactly what it reads on bare hardware; `shared` fails its audit on SMP."""
import pytest

from engines.api import DomainSpec, GuestCrash, load_cost_table
from engines.native import NativeEngine
from engines.paravirt import PVEngine
from guestkit import Guest, GuestPanic, load_profile

COSTS = load_cost_table()
MEMORY = 64


def boot(engine):
    guest = Guest(engine, load_profile("tiny"), seed=0)
    guest.boot()
    return guest


@pytest.fixture(scope="module")
def native_digest():
    return boot(NativeEngine(DomainSpec(vcpus=2, memory_mib=MEMORY), COSTS)).readback_digest()


@pytest.mark.parametrize("strategy,vcpus", [("per-pagetable", 2), ("shared-percpu", 2),
                                            ("walk", 2), ("shared", 1)])
def test_tiny_boots_with_clean_audits_and_the_native_readback(strategy, vcpus, native_digest):
    e = PVEngine(DomainSpec(vcpus=vcpus, memory_mib=MEMORY,
                            options={"strategy": strategy}), COSTS)
    guest = boot(e)
    assert e.audit() == []
    assert guest.audit() == []
    assert guest.readback_digest() == native_digest
    c = e.counters()
    assert c["hypercall"] > 0 and c["pv_pins"] > 0 and c["calls_to_update_va"] > 0
    assert c["hw.cr3_loads"] > 0 and e.crashed is None


def test_shared_kernel_l2_on_two_vcpus_fails_the_audit_with_its_reason():
    e = PVEngine(DomainSpec(vcpus=2, memory_mib=MEMORY, options={"strategy": "shared"}), COSTS)
    guest = Guest(e, load_profile("tiny"), seed=0)
    guest.start()
    problems = []
    try:
        guest.run(lambda: bool(e.audit()))
    except (GuestPanic, GuestCrash) as err:       # or the wrong mapping kills the guest
        problems.append(str(err))
    problems += e.audit() + guest.audit()
    assert any("linear slots" in p or "expected" in p or "fault" in p for p in problems), \
        problems


def test_the_guest_pins_before_use_and_unpins_at_exit():
    e = PVEngine(DomainSpec(vcpus=1, memory_mib=MEMORY), COSTS)
    guest = boot(e)
    ops = guest.kernel.ops
    assert ops.name == "xen-pv" and ops.stats["pins"] > 0 and ops.stats["unpins"] > 0
    assert e.stats["pv_pins"] == ops.stats["pins"] + 0
    assert e.vm_assist == {2, 3}                      # writable pagetables, extended cr3
