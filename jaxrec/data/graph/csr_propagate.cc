// Y = A X for a row-sorted sparse matrix A in CSR form (indptr = row starts, cols, weights) and a dense
// float32 X (..., n, d): the XLA:CPU custom call behind jaxrec.data.graph.propagate_fixed.
//
// Each output row is accumulated in registers, edge by edge in the matrix's order, as a
// product then a sum (compiled with -ffp-contract=off: no fused multiply-add), so the result
// is bit for bit the one of XLA's gather, multiply and sorted scatter-add (jaxrec's
// `propagate`), without its (E, d) message array and scatter. Columns outside [0, n) are
// skipped (the edge is dropped); edges outside [indptr[0], indptr[n]) are not read. Leading dimensions of X are independent products (vmap's
// expanded dimensions); the graph arrays must not be batched.
//
// Work is split into (batch, row range) tasks of about equal edge counts, taken from an
// atomic counter by the calling thread and by helpers scheduled on XLA's intra-op thread pool;
// the caller waits only for tasks already taken, never for a helper to start.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64), aligned(4)));  // 16 floats, unaligned loads allowed

struct Problem {
  const int32_t* indptr;
  const int32_t* cols;
  const float* weights;
  const float* x;
  float* y;
  int64_t n;
  int64_t d;
};

// Rows [r0, r1) of one product.
void RowRange(const Problem& p, const float* x, float* y, int64_t r0, int64_t r1) {
  const int64_t n = p.n, d = p.d;
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t e0 = p.indptr[r], e1 = p.indptr[r + 1];
    float* out = y + r * d;
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) {
      v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int32_t e = e0; e < e1; ++e) {
        const int64_t col = p.cols[e];
        if (col < 0 || col >= n) continue;
        const float* src = x + col * d + c;
        const float w = p.weights[e];
        const v16 m0 = *(const v16*)src * w, m1 = *(const v16*)(src + 16) * w;
        const v16 m2 = *(const v16*)(src + 32) * w, m3 = *(const v16*)(src + 48) * w;
        a0 += m0; a1 += m1; a2 += m2; a3 += m3;
      }
      *(v16*)out = a0; *(v16*)(out + 16) = a1; *(v16*)(out + 32) = a2; *(v16*)(out + 48) = a3;
      out += 64;
    }
    for (; c + 16 <= d; c += 16) {
      v16 a0 = {0};
      for (int32_t e = e0; e < e1; ++e) {
        const int64_t col = p.cols[e];
        if (col < 0 || col >= n) continue;
        const v16 m0 = *(const v16*)(x + col * d + c) * p.weights[e];
        a0 += m0;
      }
      *(v16*)out = a0;
      out += 16;
    }
    if (c < d) {
      float tail[16] = {0};
      const int64_t width = d - c;
      for (int32_t e = e0; e < e1; ++e) {
        const int64_t col = p.cols[e];
        if (col < 0 || col >= n) continue;
        const float* src = x + col * d + c;
        const float w = p.weights[e];
        for (int64_t j = 0; j < width; ++j) {
          const float m = src[j] * w;
          tail[j] += m;
        }
      }
      for (int64_t j = 0; j < width; ++j) out[j] = tail[j];
    }
  }
}

struct Tasks {
  Problem problem;
  std::vector<int64_t> bounds;  // row bounds of the parts, parts + 1 entries
  int64_t parts = 1;
  int64_t total = 0;            // batch * parts
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  // Takes and runs tasks until none is left.
  void Drain() {
    for (;;) {
      const int64_t task = next.fetch_add(1, std::memory_order_relaxed);
      if (task >= total) return;
      const int64_t b = task / parts, part = task % parts;
      const int64_t offset = b * problem.n * problem.d;
      RowRange(problem, problem.x + offset, problem.y + offset, bounds[part], bounds[part + 1]);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

constexpr int64_t kSerialWork = int64_t{1} << 16;  // edges * d under which one thread does it all

ffi::Error CsrPropagateImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> cols,
                            ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> x,
                            ffi::ResultBuffer<ffi::F32> y) {
  const auto dims = x.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("csr_propagate: x must be (..., n, d)");
  const int64_t n = dims[dims.size() - 2], d = dims[dims.size() - 1];
  const int64_t batch = n * d == 0 ? 0 : static_cast<int64_t>(x.element_count()) / (n * d);
  const int64_t n_edges = static_cast<int64_t>(cols.element_count());
  if (static_cast<int64_t>(indptr.element_count()) != n + 1)
    return ffi::Error::InvalidArgument("csr_propagate: indptr must have n + 1 entries (graph arrays unbatched)");
  if (static_cast<int64_t>(weights.element_count()) != n_edges)
    return ffi::Error::InvalidArgument("csr_propagate: cols and weights must have one entry per edge");
  if (batch == 0) return ffi::Error::Success();
  const int32_t* ip = indptr.typed_data();
  for (int64_t r = 0; r < n; ++r) {
    if (ip[r] < 0 || ip[r] > ip[r + 1] || ip[r + 1] > n_edges)
      return ffi::Error::InvalidArgument("csr_propagate: indptr must be non-decreasing within [0, E]");
  }

  auto tasks = std::make_shared<Tasks>();
  tasks->problem = Problem{ip, cols.typed_data(), weights.typed_data(), x.typed_data(), y->typed_data(), n, d};
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t work = (ip[n] - ip[0] + n) * d * batch;
  const bool serial = threads == 1 || work < kSerialWork;
  // Parts of about equal edge counts (rows count as one edge each: the stores).
  tasks->parts = serial ? 1 : std::max<int64_t>(1, std::min<int64_t>(n, 4 * threads / std::min(batch, 4 * threads)));
  tasks->bounds.resize(tasks->parts + 1);
  tasks->bounds[0] = 0;
  const int64_t span = ip[n] - ip[0] + n;
  for (int64_t part = 1; part < tasks->parts; ++part) {
    const int64_t target = span * part / tasks->parts;
    int64_t lo = tasks->bounds[part - 1], hi = n;  // first row r with (ip[r] - ip[0]) + r >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if ((ip[mid] - ip[0]) + mid < target) lo = mid + 1; else hi = mid;
    }
    tasks->bounds[part] = lo;
  }
  tasks->bounds[tasks->parts] = n;
  tasks->total = batch * tasks->parts;
  if (!serial) {
    const int64_t helpers = std::min<int64_t>(threads, tasks->total) - 1;
    for (int64_t h = 0; h < helpers; ++h) pool.Schedule([tasks] { tasks->Drain(); });
  }
  tasks->Drain();
  while (tasks->done.load(std::memory_order_acquire) < tasks->total) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrecCsrPropagate, CsrPropagateImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // indptr (n + 1,)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols (E,)
                                  .Arg<ffi::Buffer<ffi::F32>>()   // weights (E,)
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x (..., n, d)
                                  .Ret<ffi::Buffer<ffi::F32>>()); // y (..., n, d)
