"""When the tests of the CPU propagation kernel (jaxrec/data/graph/csr_propagate.cc) run: wherever a
C++ compiler exists and the kernel is not switched off. Where a compiler exists, a kernel that
fails to build fails those tests (test_graph_native.py's test_the_kernel_builds_where_a_compiler_exists)
instead of skipping them."""

from jaxrec.data.graph import _csr_native

UNAVAILABLE = _csr_native._compiler() is None or _csr_native.native_disabled()
REASON = "no C++ compiler for the native kernel, or JAXREC_NATIVE_KERNELS=0 (the XLA path is tested by test_graph_fixed.py)"
