"""Build hook for the optional C accelerator (pathtrace/_fastpath.c); metadata is in pyproject.toml.

The extension is optional: without a compiler the build goes on and pathtrace runs the same
hot path in Python (pathtrace/flowcache.py), with identical output, only slower.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("pathtrace._fastpath", ["pathtrace/_fastpath.c"], optional=True,
                             depends=["pathtrace/_megalane.c"],
                             extra_compile_args=["-O2"])])
