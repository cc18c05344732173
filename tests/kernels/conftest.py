"""Test setup for interp.kernels: ``TRITON_INTERPRET=1`` (no CUDA) is set in tests/conftest.py, which pytest
loads before any test module, so that kernels imported at collection time are interpreter objects."""
