"""Converters: turn what labs already have into one h5feed file.

Installed as ``h5feed.convert`` (see ``package_dir`` in setup.cfg).
"""
