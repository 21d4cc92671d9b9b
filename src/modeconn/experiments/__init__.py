"""Reference protocols, each one module: the LMC-under-shift study (`lmc`) and the demo."""
