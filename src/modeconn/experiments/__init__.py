"""Reference protocols not yet studies: the LMC-under-shift experiment (`lmc`)."""
