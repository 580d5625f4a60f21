"""The optional C kernels (darknetpy/_kernels.c); everything else is in pyproject.toml.

optional=True: without a working C compiler the build goes on and darknetpy runs its numpy code.
-fno-trapping-math and -fno-math-errno let GCC vectorize the selects and sqrtf; they change no result.
"""
import sys
from glob import glob

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-fno-trapping-math", "-fno-math-errno"]
setup(ext_modules=[Extension("darknetpy._kernels", ["darknetpy/_kernels.c"], depends=glob("darknetpy/_*.h"),
                             extra_compile_args=flags, optional=True)])
