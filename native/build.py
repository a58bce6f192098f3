"""cffi build script: compiles pish_native.c into the extension module ``pish_core._native``.

Out-of-line API mode, so nothing parses C declarations when pish starts.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "pish_native.h").read_text())
ffibuilder.set_source(
    "pish_core._native",
    '#include "pish_native.h"',
    sources=["native/pish_native.c"],  # relative: setuptools refuses absolute paths
    include_dirs=["native"],
    libraries=["seccomp"],  # libseccomp builds the seccomp filter (Debian: libseccomp-dev)
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=True)
