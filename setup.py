"""The one compiled part: the fingerprints' hash (mlrepro/training/_wordhash.c).

Optional: where no C compiler is at hand the build goes on without it, and
mlrepro.training.watch computes the same numbers with NumPy, more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mlrepro.training._wordhash", ["mlrepro/training/_wordhash.c"], optional=True,
                             extra_compile_args=["-O3"])])
