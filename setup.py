"""The one compiled part: the fingerprints' hash (mlrepro/training/_wordhash.c).

Optional: where no C compiler or Python headers are at hand the build goes on without it, says so
here (``pip install -v`` shows it) and again, once a process, when a run first fingerprints on the
CPU; mlrepro.training.word_hash then computes the same numbers with NumPy, about twice as slowly. The
kernel takes its tensors as buffers and checks every length itself, so nothing Python passes it can
make it read past a buffer.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildOrSayWhy(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # a missing compiler or header: the install goes on without it
            sys.stderr.write(f"mlrepro: the compiled fingerprint hash was not built ({err}); "
                             "NumPy computes the same fingerprints, about twice as slowly\n")


setup(ext_modules=[Extension("mlrepro.training._wordhash", ["mlrepro/training/_wordhash.c"], optional=True,
                             extra_compile_args=["-O3"])],
      cmdclass={"build_ext": BuildOrSayWhy})
