"""The one contract between a guest kernel model and any engine (bare hardware, Xen PV,
Xen shadow): the ABI the guest runs on, domain creation, memory access through a simulated
CPU, privileged operations that an engine executes or traps, hypercalls, per-VCPU cycle
clocks charged from a cost table, counters and the audit of an engine's invariants.

A guest learns its ABI from `Engine.boot_info().abi`, never from the engine's class.
"""
from .contract import (ABI, AuditFailure, BootInfo, DomainSpec, Engine, EngineError,
                       GuestCrash, GuestPageFault)
from .costs import CostTable, CostTableError, load_cost_table, list_cost_tables
from engines.hw import A_FETCH, A_USER, A_WRITE, Access, PageFlag, PAGE_SIZE

__all__ = ["ABI", "AuditFailure", "BootInfo", "DomainSpec", "Engine", "EngineError",
           "GuestCrash", "GuestPageFault", "CostTable", "CostTableError", "load_cost_table",
           "list_cost_tables", "A_FETCH", "A_USER", "A_WRITE", "Access", "PageFlag",
           "PAGE_SIZE"]

# The Xen PV ABI (hypercall numbers, MMU_*/MMUEXT_* commands, records): `engines.api.xen`.
from . import xen  # noqa: E402
from .xen import __all__ as _xen_names  # noqa: E402
from .xen import *  # noqa: E402,F401,F403
__all__ += ["xen"] + list(_xen_names)
