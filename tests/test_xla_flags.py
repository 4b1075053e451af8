"""The tests' XLA flags (tests/_xla_flags.py): the emitter flag only for the jaxlib versions that accept it.

An XLA flag a jaxlib does not know aborts every test process, so the version gate matters more than
the speed-up; the versions are stand-ins patched into the package metadata that the module reads.
"""

from importlib import metadata

import pytest

import _xla_flags

BASE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.mark.parametrize("version, with_emitter_flag", [
    ("0.10.0", True), ("0.10.2", True), ("0.9.2", False), ("0.11.0", False), ("0.12.0.1", False),
    ("1.0.0", False), ("0.10.dev", True), ("garbled", False),
])
def test_the_emitter_flag_is_added_for_jaxlib_0_10_only(monkeypatch, version, with_emitter_flag):
    monkeypatch.setattr(_xla_flags.metadata, "version", lambda name: version)
    flags = _xla_flags._fast_compile()
    assert flags.startswith(BASE)
    assert ("--xla_cpu_use_fusion_emitters=false" in flags) == with_emitter_flag
    assert flags == (f"{BASE} --xla_cpu_use_fusion_emitters=false" if with_emitter_flag else BASE)


def test_without_jaxlib_installed_the_base_flags_are_used(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_xla_flags.metadata, "version", missing)
    assert _xla_flags._fast_compile() == BASE
