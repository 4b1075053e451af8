"""XLA flags of the test processes (no jax import here: conftest sets them before jax loads).

FAST_COMPILE: LLVM at optimization level 0 without its expensive passes, and (on the jaxlib
versions below, which accept the flag) XLA:CPU's older elemental fusion emitters instead of its
MLIR fusion emitters. The tests' programs are tiny, so XLA:CPU compiling them is most of the
suite's time: the first two flags cut the compile CPU time by about 30% (measured on the model
contract tests); the emitter flag cut the suite from 707 s to 506 s (jaxlib 0.10.2, 2 cores,
2026-12-06) and the contract's encode + pmap tests from 78-88 s to 49 s. Float semantics are the
same (no fast-math either way); fused arithmetic may round otherwise, as between any two XLA
versions. Benchmarks and real runs keep XLA's defaults.

An XLA flag a jaxlib does not know aborts the process, so the emitter flag is added only for the
jaxlib versions it was measured on (read from the installed package's metadata, without importing
jax); newer ones compile the tests with the first two flags only.
"""

from importlib import metadata

_BASE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# (first, last) jaxlib major.minor known to accept --xla_cpu_use_fusion_emitters.
_EMITTER_FLAG_JAXLIB = ((0, 10), (0, 10))


def _jaxlib_minor() -> tuple[int, int] | None:
    try:
        parts = metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def _fast_compile() -> str:
    version = _jaxlib_minor()
    first, last = _EMITTER_FLAG_JAXLIB
    if version is not None and first <= version <= last:
        return f"{_BASE} --xla_cpu_use_fusion_emitters=false"
    return _BASE


FAST_COMPILE = _fast_compile()
