"""The race: specs (YAML) expanded into boot cells, run serially or on Ray, recorded so
that nothing is lost, and turned into dashboards. Only this package knows about Ray; it
calls the guest through one function, `race.boot.run_boot(cell)`, a plain deterministic
generator of milestone stamps and one final result.
"""
