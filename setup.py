"""Only here for cffi: it compiles native/ into pish_core._native at install time (API, out-of-line)."""
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
