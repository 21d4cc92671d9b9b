"""Reference protocols, each a face command that builds a study and runs it through the one
runner: the LMC-under-shift study (`lmc`), its demo (`demo`) and the fusion table (`fusion`)."""

from . import demo, fusion, lmc  # noqa: F401  (each registers its command)
