"""The one compiled part of the kit: the simulator's filler text (``hybrid/sim/_filler.c``).

Everything else is in pyproject.toml.  The extension is optional: where it cannot be built (no C
compiler), the install goes on and ``hybrid.sim.model`` uses its pure-Python twin, which gives the
same texts, a little slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("hybrid.sim._filler", ["hybrid/sim/_filler.c"], optional=True)])
