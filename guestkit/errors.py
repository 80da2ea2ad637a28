"""Errors of the guest kernel model. A panic ends the boot as a DNF with its reason."""


class GuestError(Exception):
    """Base of guestkit errors."""


class GuestPanic(GuestError):
    """The guest kernel panicked (an oops, a fault loop, a data-ledger mismatch)."""


class ProfileError(GuestError, ValueError):
    """A workload profile that cannot be used (file, key, value, allowed choices)."""
