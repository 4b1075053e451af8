"""XLA flags of the test processes (no jax import here: conftest sets them before jax loads).

FAST_COMPILE: LLVM at optimization level 0 without its expensive passes. The tests' programs
are tiny, so XLA:CPU compiling them is most of the suite's time; these flags cut the compile
CPU time by about 30% (measured on the model contract tests) with the same float semantics
(XLA:CPU runs without fast-math either way). Benchmarks and real runs keep XLA's defaults.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
