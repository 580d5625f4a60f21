"""The optional C kernels (darknetpy/_kernels.c); everything else is in pyproject.toml.

optional=True: without a working C compiler the build goes on and darknetpy runs its numpy code.
-fno-trapping-math lets GCC vectorize the kernels' selects; it changes no result.
"""
import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-fno-trapping-math"]
setup(ext_modules=[Extension("darknetpy._kernels", ["darknetpy/_kernels.c"], depends=["darknetpy/_steps.h"],
                             extra_compile_args=flags, optional=True)])
