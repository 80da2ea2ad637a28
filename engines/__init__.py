"""The PAE machine (`engines.hw`), the guest/engine contract (`engines.api`) and the engines
that run a guest on it: bare hardware, Xen-style PV-PAE and Xen-style shadow paging."""
