"""The shadow engine's per-race-cell options: what each switch means, its allowed values,
the defaults, and validation of `DomainSpec.options`.

Defaults are Xen 3.0.3's shadow2 as released (Oct 2006; reference/shadow.md §4,
linux-guest.md §2.2): the writable-mapping heuristic and early unshadow on, no prefetch
(SHOPT_PREFETCH came later), no out-of-sync L1s (Xen 3.3, 2008). The pool default follows
libxl's shadow allocation, 1 MiB per VCPU plus 8 KiB per MiB of guest memory (in pages:
256 per VCPU + 2 per MiB); Xen's own floor (`shadow_min_acceptable_pages`, 128 per VCPU)
is lowered here to what one fault can need, so tests can exhaust the pool on purpose.
"""
from __future__ import annotations

from typing import Any

from engines.api import DomainSpec

from .p2m import XEN_BASE_MFN

OPTIONS: dict[str, tuple] = {
    "early_unshadow": (True, False),      # SHOPT_EARLY_UNSHADOW: fork/exit detection
    "prefetch": (False, True),            # SHOPT_PREFETCH: fill up to 32 following entries
    "oos": (False, True),                 # Xen 3.3 out-of-sync L1 shadows
    "wrmap_heuristic": (True, False),     # SHOPT_WRITABLE_HEURISTIC guesses before the scan
    "pool_pages": ("auto", 64, 256, 1024, 4096),   # or any int >= min_pool_pages(vcpus)
}
DEFAULTS: dict[str, Any] = {"early_unshadow": True, "prefetch": False, "oos": False,
                            "wrmap_heuristic": True, "pool_pages": "auto"}


def min_pool_pages(vcpus: int) -> int:
    """Every VCPU's 4 top-level shadows, 4 more for the CR3 load in progress, and the two
    pages one fault may take."""
    return 4 * vcpus + 6


def xen_frames(spec: DomainSpec, pool_pages: int) -> int:
    """Xen's frames for the domain: the shadow pool, a monitor page per VCPU, the unpaged
    shadows, the Xen area and the P2M's own pages."""
    nr_pages = spec.memory_mib * 256
    return pool_pages + spec.vcpus + 4 + 16 + 8 + (nr_pages * 8 + 4095) // 4096


def machine_memory_range(spec: DomainSpec) -> tuple[int, int]:
    """The machine memory (MiB, min and max) a domain of `spec` boots in: Xen's frames from
    1 MiB up, then the guest's (p2m.P2M refuses less), at most 64 GiB (36-bit)."""
    frames = XEN_BASE_MFN + xen_frames(spec, resolve_options(spec)["pool_pages"])
    return -(-(frames + spec.memory_mib * 256) // 256), 64 * 1024


def resolve_options(spec: DomainSpec) -> dict[str, Any]:
    """DEFAULTS overlaid with `spec.options`; ValueError naming key, value and choices."""
    opt = dict(DEFAULTS)
    for key, value in spec.options.items():
        if key not in OPTIONS:
            raise ValueError(f"shadow engine option {key!r} unknown "
                             f"(options: {', '.join(sorted(OPTIONS))})")
        if key == "pool_pages":
            ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                                     and value >= min_pool_pages(spec.vcpus))
        else:
            ok = isinstance(value, bool)
        if not ok:
            raise ValueError(f"shadow engine option {key}={value!r}: allowed "
                             f"{', '.join(map(repr, OPTIONS[key]))}"
                             + (f" or an integer >= {min_pool_pages(spec.vcpus)}"
                                if key == "pool_pages" else ""))
        opt[key] = value
    if opt["pool_pages"] == "auto":
        opt["pool_pages"] = 256 * spec.vcpus + 2 * spec.memory_mib
    return opt
