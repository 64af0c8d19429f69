# All metadata and options live in setup.cfg; this shim lets older tools
# (and `pip install .` with legacy front ends) find them.
from setuptools import setup

setup()
