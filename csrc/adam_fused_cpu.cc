// One pass per step: the Adam family's update for XLA:CPU, as an XLA FFI handler.
//
// This is an implementation of adam_optax's chain
//
//   scale_by_moments -> bias_correction -> [add_decayed_weights] -> scale_by_lr
//   -> optax.apply_updates
//
// never a second definition of it: every per-step scalar (the EMA weights, the
// bias corrections, eps scaled by c_2(t), NAdam's weights, the learning rate
// and weight decay of this step) is computed by the same Python helpers the
// chain uses and arrives here in the `scalars` buffer. What is left is the
// per-element arithmetic of `scale_by_moments`'s leaf function and of the
// per-leaf maps of the later transforms, written below in the same order,
// operation by operation, in the same compute dtype (float32 for float32 and
// half-precision leaves, float64 for float64), with the same roundings to the
// update's dtype between transforms. Compiled without FMA contraction and
// without -ffast-math, and with denormals flushed as XLA:CPU flushes them,
// every operation is the IEEE operation XLA performs, so the results are
// bit-identical to the XLA path (tests/test_fused.py checks it).
//
// One call updates many leaves: the buffers of every leaf are passed as
// variadic operands. The work (the sum of the leaves' sizes) is cut into
// chunks that the calling thread and tasks scheduled on XLA's intra-op thread
// pool take in turn; the handler returns a future that completes when the
// last chunk is done.
//
// Operands: scalars (kNumScalars values of the compute dtype), then per leaf
//   g, m, v, [x = nu_max, with kAmsgrad], p.
// Results per leaf: the new params p + u, m, v, [x]. Every result aliases its
// operand (input_output_aliases): the step is in place.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ADAM_OPTAX_X86 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace adam_optax {
namespace {

// Bumped whenever the operands, attributes, scalars or arithmetic change; the
// Python loader refuses a library built from another version of this file.
constexpr int32_t kAbiVersion = 4;

// Bits of the "mode" attribute (adam_optax/_fused.py writes them).
constexpr int64_t kNesterov = 1 << 0;   // numerator weight_mu * m + weight_g * g
constexpr int64_t kAmsgrad = 1 << 1;    // running maximum x of the second moment
constexpr int64_t kInside = 1 << 2;     // second moment divided by c_2(t) first
constexpr int64_t kInfinity = 1 << 3;   // AdaMax: v = max(b2 v, |g| + eps), no root
// The learning rate (weight decay rate) is the constant 1 in XLA's program:
// XLA then drops the multiply by it and fuses the product before it into the
// add after it instead (see StageB).
constexpr int64_t kUnitLr = 1 << 4;
constexpr int64_t kUnitDecay = 1 << 5;
constexpr int64_t kKnownModes = (1 << 6) - 1;

// Bits of the per-leaf "leaf_flags" attribute.
constexpr int64_t kDecay = 1 << 0;  // add weight_decay * p (AdamW; mask true)

// The scalars operand, in this order (adam_optax/_fused.py: _SCALARS).
enum Scalar : int {
  kKeep1,     // b1
  kMix1,      // 1 - b1
  kKeep2,     // b2
  kMix2,      // 1 - b2
  kBias2,     // c_2(t) = 1 - b2^t
  kEps,       // eps (times sqrt(c_2(t)) with nu_correction="downstream")
  kEpsRoot,   // eps_root (times c_2(t), likewise)
  kWeightMu,  // NAdam's numerator weights
  kWeightG,
  kFactor,    // bias_correction's sqrt(c_2(t)) / c_1(t) (1 without it)
  kRate,      // add_decayed_weights' rate of this step
  kNegLr,     // scale_by_lr's -learning_rate of this step
  kNumScalars,
};

constexpr int64_t kBlock = 512;             // elements converted/staged at a time
constexpr int64_t kMinChunk = 1 << 15;      // smallest piece of work for one task
constexpr int64_t kParallelMin = 1 << 17;   // below this many elements: no threads

// ---------------------------------------------------------------------------
// Storage types and the conversions XLA performs (round to nearest even).

inline float Bf16ToF32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

struct Bf16 {};  // tag: bfloat16 storage (uint16_t bits)
struct F16 {};   // tag: float16 storage (_Float16)

// x rounded to the storage type T and back, in the compute type C.
template <typename C, typename T>
inline C RoundTo(C x) {
  if constexpr (std::is_same_v<T, C>) {
    return x;
  } else if constexpr (std::is_same_v<T, Bf16>) {
    return Bf16ToF32(F32ToBf16(x));
  } else if constexpr (std::is_same_v<T, F16>) {
    return static_cast<C>(static_cast<_Float16>(x));
  } else {
    return static_cast<C>(static_cast<T>(x));
  }
}

template <typename C>
constexpr ffi::DataType kComputeType =
    std::is_same_v<C, float> ? ffi::DataType::F32 : ffi::DataType::F64;

// Elements [offset, offset + n) of a buffer of type `type`, as C. Returns the
// buffer itself when it already holds C, else converts into `tmp`.
template <typename C>
inline C* Load(void* base, ffi::DataType type, int64_t offset, int64_t n, C* tmp) {
  switch (type) {
    case ffi::DataType::F32: {
      auto* src = static_cast<float*>(base) + offset;
      if constexpr (std::is_same_v<C, float>) return src;
      for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<C>(src[i]);
      return tmp;
    }
    case ffi::DataType::F64: {
      auto* src = static_cast<double*>(base) + offset;
      if constexpr (std::is_same_v<C, double>) return src;
      for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<C>(src[i]);
      return tmp;
    }
    case ffi::DataType::BF16: {
      auto* src = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<C>(Bf16ToF32(src[i]));
      return tmp;
    }
    case ffi::DataType::F16: {
      auto* src = static_cast<const _Float16*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<C>(src[i]);
      return tmp;
    }
    default:
      return tmp;  // excluded by CheckTypes
  }
}

// Writes `values` (n elements of C) to [offset, offset + n) of a buffer of
// type `type`, unless they were computed there in place.
template <typename C>
inline void Store(void* base, ffi::DataType type, int64_t offset, int64_t n, const C* values) {
  switch (type) {
    case ffi::DataType::F32: {
      auto* dst = static_cast<float*>(base) + offset;
      if constexpr (std::is_same_v<C, float>) return;
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(values[i]);
      return;
    }
    case ffi::DataType::F64: {
      auto* dst = static_cast<double*>(base) + offset;
      if constexpr (std::is_same_v<C, double>) return;
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<double>(values[i]);
      return;
    }
    case ffi::DataType::BF16: {
      if constexpr (std::is_same_v<C, float>) {
        auto* dst = static_cast<uint16_t*>(base) + offset;
        for (int64_t i = 0; i < n; ++i) dst[i] = F32ToBf16(values[i]);
      }
      return;
    }
    case ffi::DataType::F16: {
      auto* dst = static_cast<_Float16*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<_Float16>(values[i]);
      return;
    }
    default:
      return;
  }
}

// XLA:CPU's maximum: a if a >= b or a is NaN, else b (so NaN propagates).
template <typename C>
inline C Max(C a, C b) {
  return (a >= b || a != a) ? a : b;
}

// a * b + c as XLA:CPU computes it. XLA compiles its loops with LLVM's
// floating-point contraction allowed, so on a CPU with FMA a multiply whose only
// use is an add in the same loop becomes part of a fused multiply-add, rounded
// once. In (a * b) + (c * d) only one product can be fused: which one XLA fuses
// was read off XLA's own results for each expression below (m: b1 * m, v:
// b2 * v, NAdam: weight_mu * m, AdamW: rate * p, the params: update * -lr), and
// tests/test_fused.py checks them bit for bit. kFma says whether this build of
// the loops runs on a CPU with FMA; without FMA XLA fuses nothing, and neither
// does the kernel.
template <bool kFma, typename C>
inline C MulAdd(C a, C b, C c) {
  if constexpr (kFma) {
    return std::fma(a, b, c);  // fmaf for float: one rounding, in C
  } else {
    return a * b + c;
  }
}

// ---------------------------------------------------------------------------
// The arithmetic. Stage A is scale_by_moments' leaf function: it updates the
// moments in place and writes the ratio r. Stage B is the rest of the chain on
// r: bias correction, weight decay, learning rate and apply_updates, each
// rounded to the update's storage type U as the chain's per-leaf maps round.

enum Denominator : int { kRoot = 0, kRootInside = 1, kNorm = 2 };

template <typename C, bool kFma, bool kNest, bool kAms, int kDen>
__attribute__((always_inline)) inline void StageA(int64_t n, const C* __restrict g,
                                                  C* __restrict m, C* __restrict v,
                                                  C* __restrict x, C* __restrict r,
                                                  const C* s) {
  const C keep1 = s[kKeep1], mix1 = s[kMix1], keep2 = s[kKeep2], mix2 = s[kMix2];
  const C bias2 = s[kBias2], eps = s[kEps], eps_root = s[kEpsRoot];
  const C weight_mu = s[kWeightMu], weight_g = s[kWeightG];
  for (int64_t i = 0; i < n; ++i) {
    const C grad = g[i];
    const C new_m = MulAdd<kFma>(keep1, m[i], mix1 * grad);
    C new_v;
    if constexpr (kDen == kNorm) {
      new_v = Max(keep2 * v[i], std::abs(grad) + eps);
    } else {
      new_v = MulAdd<kFma>(keep2, v[i], mix2 * (grad * grad));
    }
    C second = new_v;
    if constexpr (kDen == kRootInside) second = new_v / bias2;
    if constexpr (kAms) {
      second = Max(x[i], second);
      x[i] = second;
    }
    C denominator;
    if constexpr (kDen == kNorm) {
      denominator = second;
    } else {
      denominator = std::sqrt(second + eps_root) + eps;
    }
    C numerator = new_m;
    if constexpr (kNest) numerator = MulAdd<kFma>(weight_mu, new_m, weight_g * grad);
    m[i] = new_m;
    v[i] = new_v;
    // num.safe_ratio: 0 where the denominator is 0 (eps = 0, no gradient yet).
    // As there, the division always runs (by 1 in those lanes), so that the
    // loop vectorises: a division under a condition would not.
    const bool zero = denominator == C(0);
    const C ratio = numerator / (zero ? C(1) : denominator);
    r[i] = zero ? C(0) : ratio;
  }
}

// p + ((round(r) * factor [+ rate * p]) * -lr), rounded to U after each map,
// written over p. With U the compute type nothing is rounded in between, so
// XLA's loop holds the products in registers and fuses them into the adds (see
// MulAdd); otherwise each map's result goes through U and only rate * p can be
// fused. Where the rate (kUnit)
// or the learning rate (kUnitLr) is the constant 1, XLA's program has no
// multiply by it, and the product before it is fused into the add instead:
// p + r * factor and, without decay, p - r * factor.
template <typename C, typename U, bool kFma, bool kDec, bool kUnit, bool kUnitLr>
__attribute__((always_inline)) inline void StageB(int64_t n, const C* __restrict r,
                                                  C* __restrict p, const C* s) {
  const C factor = s[kFactor], rate = s[kRate], neg_lr = s[kNegLr];
  for (int64_t i = 0; i < n; ++i) {
    C u;
    if constexpr (std::is_same_v<U, C>) {
      if constexpr (kDec && kUnit) {
        u = MulAdd<kFma>(r[i], factor, p[i]);
      } else if constexpr (kDec) {
        u = MulAdd<kFma>(rate, p[i], r[i] * factor);
      } else {
        u = r[i] * factor;
      }
      if constexpr (kUnitLr && !kDec) {
        p[i] = MulAdd<kFma>(-r[i], factor, p[i]);
      } else {
        p[i] = MulAdd<kFma>(u, neg_lr, p[i]);
      }
    } else {
      u = RoundTo<C, U>(RoundTo<C, U>(r[i]) * factor);
      if constexpr (kDec) u = RoundTo<C, U>(MulAdd<kFma>(rate, p[i], u));
      u = RoundTo<C, U>(u * neg_lr);
      p[i] = RoundTo<C, U>(p[i] + u);
    }
  }
}

// Every operand of one leaf, with its element type.
struct Leaf {
  void* g;
  void* m;
  void* v;
  void* x;    // nu_max, or null
  void* p;    // params, updated in place
  ffi::DataType tg, tm, tv, tx, tp;
  int64_t size;
  int64_t flags;
};

template <typename C, bool kFma>
__attribute__((always_inline)) inline void DispatchA(int64_t mode, int64_t n, const C* g, C* m,
                                                     C* v, C* x, C* r, const C* s) {
  const bool nest = mode & kNesterov, ams = mode & kAmsgrad;
  const int den = (mode & kInfinity) ? kNorm : (mode & kInside) ? kRootInside : kRoot;
#define ADAM_OPTAX_CASE_A(N, A, D) \
  if (nest == N && ams == A && den == D) return StageA<C, kFma, N, A, D>(n, g, m, v, x, r, s);
  ADAM_OPTAX_CASE_A(false, false, kRoot)
  ADAM_OPTAX_CASE_A(true, false, kRoot)
  ADAM_OPTAX_CASE_A(false, true, kRoot)
  ADAM_OPTAX_CASE_A(true, true, kRoot)
  ADAM_OPTAX_CASE_A(false, false, kRootInside)
  ADAM_OPTAX_CASE_A(true, false, kRootInside)
  ADAM_OPTAX_CASE_A(false, true, kRootInside)
  ADAM_OPTAX_CASE_A(true, true, kRootInside)
  ADAM_OPTAX_CASE_A(false, false, kNorm)
  ADAM_OPTAX_CASE_A(true, false, kNorm)
  ADAM_OPTAX_CASE_A(false, true, kNorm)
  ADAM_OPTAX_CASE_A(true, true, kNorm)
#undef ADAM_OPTAX_CASE_A
}

template <typename C, typename U, bool kFma, bool kDec>
__attribute__((always_inline)) inline void DispatchUnit(int64_t mode, int64_t n, const C* r,
                                                        C* p, const C* s) {
  const bool unit = mode & kUnitDecay, unit_lr = mode & kUnitLr;
  if (unit && unit_lr) return StageB<C, U, kFma, kDec, true, true>(n, r, p, s);
  if (unit) return StageB<C, U, kFma, kDec, true, false>(n, r, p, s);
  if (unit_lr) return StageB<C, U, kFma, kDec, false, true>(n, r, p, s);
  return StageB<C, U, kFma, kDec, false, false>(n, r, p, s);
}

template <typename C, typename U, bool kFma>
__attribute__((always_inline)) inline void DispatchB(bool decay, int64_t mode, int64_t n,
                                                     const C* r, C* p, const C* s) {
  if (decay) return DispatchUnit<C, U, kFma, true>(mode, n, r, p, s);
  return DispatchUnit<C, U, kFma, false>(mode, n, r, p, s);
}

// Elements [begin, end) of one leaf, a block at a time.
template <typename C, bool kFma>
__attribute__((always_inline)) inline void ProcessLeafT(const Leaf& leaf, const C* s,
                                                        int64_t mode, int64_t begin,
                                                        int64_t end) {
  alignas(64) C g_tmp[kBlock], m_tmp[kBlock], v_tmp[kBlock], x_tmp[kBlock];
  alignas(64) C p_tmp[kBlock], r[kBlock];
  const bool ams = mode & kAmsgrad;
  const bool decay = leaf.flags & kDecay;
  for (int64_t offset = begin; offset < end; offset += kBlock) {
    const int64_t n = std::min(kBlock, end - offset);
    const C* g = Load<C>(leaf.g, leaf.tg, offset, n, g_tmp);
    C* m = Load<C>(leaf.m, leaf.tm, offset, n, m_tmp);
    C* v = Load<C>(leaf.v, leaf.tv, offset, n, v_tmp);
    C* x = ams ? Load<C>(leaf.x, leaf.tx, offset, n, x_tmp) : x_tmp;
    DispatchA<C, kFma>(mode, n, g, m, v, x, r, s);
    Store<C>(leaf.m, leaf.tm, offset, n, m);
    Store<C>(leaf.v, leaf.tv, offset, n, v);
    if (ams) Store<C>(leaf.x, leaf.tx, offset, n, x);
    C* p = Load<C>(leaf.p, leaf.tp, offset, n, p_tmp);
    if constexpr (std::is_same_v<C, float>) {
      switch (leaf.tp) {
        case ffi::DataType::BF16:
          DispatchB<C, Bf16, kFma>(decay, mode, n, r, p, s);
          break;
        case ffi::DataType::F16:
          DispatchB<C, F16, kFma>(decay, mode, n, r, p, s);
          break;
        default:
          DispatchB<C, C, kFma>(decay, mode, n, r, p, s);
      }
    } else {
      DispatchB<C, C, kFma>(decay, mode, n, r, p, s);
    }
    Store<C>(leaf.p, leaf.tp, offset, n, p);
  }
}

// The loops above, compiled for the CPU they run on. XLA compiles its loops
// for the host CPU, so the build matching the host's FMA support is the one
// with the same roundings; wider vectors only make it faster.
template <typename C>
using LeafFn = void (*)(const Leaf&, const C*, int64_t, int64_t, int64_t);

#define ADAM_OPTAX_VARIANT(NAME, ATTRIBUTES, FMA)                                        \
  ATTRIBUTES void NAME##F32(const Leaf& leaf, const float* s, int64_t mode, int64_t b,  \
                            int64_t e) {                                                \
    ProcessLeafT<float, FMA>(leaf, s, mode, b, e);                                      \
  }                                                                                     \
  ATTRIBUTES void NAME##F64(const Leaf& leaf, const double* s, int64_t mode, int64_t b, \
                            int64_t e) {                                                \
    ProcessLeafT<double, FMA>(leaf, s, mode, b, e);                                     \
  }

#if defined(ADAM_OPTAX_X86) && defined(__GNUC__)
ADAM_OPTAX_VARIANT(Avx2, __attribute__((target("avx2,fma,f16c"))), true)
ADAM_OPTAX_VARIANT(Fma, __attribute__((target("fma"))), true)
ADAM_OPTAX_VARIANT(Base, , false)

template <typename C>
LeafFn<C> PickProcessLeaf() {
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  const bool avx2 = fma && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if constexpr (std::is_same_v<C, float>) {
    return avx2 ? Avx2F32 : fma ? FmaF32 : BaseF32;
  } else {
    return avx2 ? Avx2F64 : fma ? FmaF64 : BaseF64;
  }
}
#else
#if defined(__FP_FAST_FMA) || defined(__aarch64__)
ADAM_OPTAX_VARIANT(Base, , true)
#else
ADAM_OPTAX_VARIANT(Base, , false)
#endif

template <typename C>
LeafFn<C> PickProcessLeaf() {
  if constexpr (std::is_same_v<C, float>) {
    return BaseF32;
  } else {
    return BaseF64;
  }
}
#endif

template <typename C>
void ProcessLeaf(const Leaf& leaf, const C* s, int64_t mode, int64_t begin, int64_t end) {
  static const LeafFn<C> process = PickProcessLeaf<C>();
  process(leaf, s, mode, begin, end);
}

// Denormals flushed to zero on input and output, as XLA:CPU runs its own
// loops (a jitted 1e-40 * 1e30 is 0 there); the previous mode is restored.
class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals() {
#ifdef ADAM_OPTAX_X86
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);  // FTZ | DAZ
#endif
  }
  ~ScopedFlushDenormals() {
#ifdef ADAM_OPTAX_X86
    _mm_setcsr(saved_);
#endif
  }

 private:
  unsigned int saved_ = 0;
};

// One call's work: the leaves laid end to end, cut into chunks.
template <typename C>
struct Job {
  std::vector<Leaf> leaves;
  std::vector<int64_t> starts;  // leaves[i] covers [starts[i], starts[i + 1])
  C scalars[kNumScalars];
  int64_t mode = 0;
  int64_t chunk = 0;
  int64_t num_chunks = 0;
  std::atomic<int64_t> next{0};

  void Run(int64_t begin, int64_t end) const {
    auto it = std::upper_bound(starts.begin(), starts.end(), begin);
    for (size_t i = static_cast<size_t>(it - starts.begin()) - 1; i < leaves.size(); ++i) {
      if (starts[i] >= end) break;
      const int64_t lo = std::max(begin, starts[i]) - starts[i];
      const int64_t hi = std::min(end, starts[i + 1]) - starts[i];
      if (hi > lo) ProcessLeaf(leaves[i], scalars, mode, lo, hi);
    }
  }

  // Takes chunks until none is left.
  void Work() {
    ScopedFlushDenormals flush;
    for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) {
      Run(c * chunk, std::min((c + 1) * chunk, starts.back()));
    }
  }
};

// Direct access to the raw operand and result buffers (ffi's checked get<>
// builds a diagnostic per call, which thousands of leaves notice).
class RawArgs : public ffi::RemainingArgs {
 public:
  explicit RawArgs(const ffi::RemainingArgs& args) : ffi::RemainingArgs(args) {}
  const XLA_FFI_Buffer* at(size_t i) const {
    return args()->types[offset() + i] == XLA_FFI_ArgType_BUFFER
               ? static_cast<const XLA_FFI_Buffer*>(args()->args[offset() + i])
               : nullptr;
  }
};

class RawRets : public ffi::RemainingRets {
 public:
  explicit RawRets(const ffi::RemainingRets& rets) : ffi::RemainingRets(rets) {}
  const XLA_FFI_Buffer* at(size_t i) const {
    return rets()->types[offset() + i] == XLA_FFI_RetType_BUFFER
               ? static_cast<const XLA_FFI_Buffer*>(rets()->rets[offset() + i])
               : nullptr;
  }
};

int64_t Count(const XLA_FFI_Buffer* buffer) {
  int64_t count = 1;
  for (int64_t d = 0; d < buffer->rank; ++d) count *= buffer->dims[d];
  return count;
}

ffi::DataType TypeOf(const XLA_FFI_Buffer* buffer) {
  return static_cast<ffi::DataType>(buffer->dtype);
}

// Storage types the kernel converts exactly as XLA does, for compute type C.
template <typename C>
bool Supported(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32:
    case ffi::DataType::F64:
    case ffi::DataType::F16:
      return true;
    case ffi::DataType::BF16:
      return std::is_same_v<C, float>;  // double -> bf16 would round twice
    default:
      return false;
  }
}

ffi::Future Failed(std::string message) {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetError(ffi::Error::InvalidArgument("adam_optax fused kernel: " + message));
  return future;
}

ffi::Future Done() {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetAvailable();
  return future;
}

// Builds the job from the operands, checking what XLA cannot check for us.
template <typename C>
std::string Plan(Job<C>& job, ffi::AnyBuffer scalars, const ffi::RemainingArgs& args,
                 const ffi::RemainingRets& rets, int64_t mode,
                 ffi::Span<const int64_t> leaf_flags) {
  if (mode & ~kKnownModes) return "unknown mode bits";
  if (scalars.element_type() != kComputeType<C> || scalars.element_count() != kNumScalars) {
    return "the scalars operand has the wrong type or length";
  }
  const bool ams = mode & kAmsgrad;
  const size_t ins = 4 + ams, outs = 3 + ams;
  const size_t num_leaves = leaf_flags.size();
  if (args.size() != ins * num_leaves || rets.size() != outs * num_leaves) {
    return "operand count does not match leaf_flags";
  }
  std::memcpy(job.scalars, scalars.untyped_data(), sizeof job.scalars);
  job.mode = mode;
  job.leaves.reserve(num_leaves);
  job.starts.reserve(num_leaves + 1);
  job.starts.push_back(0);
  const RawArgs in(args);
  const RawRets out(rets);
  for (size_t i = 0; i < num_leaves; ++i) {
    const XLA_FFI_Buffer* b[5] = {in.at(ins * i), in.at(ins * i + 1), in.at(ins * i + 2),
                                  ams ? in.at(ins * i + 3) : nullptr,
                                  in.at(ins * i + 3 + ams)};
    const XLA_FFI_Buffer* r[4] = {out.at(outs * i), out.at(outs * i + 1), out.at(outs * i + 2),
                                  ams ? out.at(outs * i + 3) : nullptr};
    for (int k = 0; k < 5; ++k) {
      if ((k != 3 || ams) && b[k] == nullptr) {
        return "an operand is not a buffer";
      }
    }
    for (int k = 0; k < 3 + ams; ++k) {
      if (r[k] == nullptr) return "a result is not a buffer";
    }
    const int64_t size = Count(b[0]);
    Leaf leaf{};
    leaf.g = b[0]->data;
    leaf.m = r[1]->data;
    leaf.v = r[2]->data;
    leaf.x = ams ? r[3]->data : nullptr;
    leaf.p = r[0]->data;
    leaf.tg = TypeOf(b[0]);
    leaf.tm = TypeOf(b[1]);
    leaf.tv = TypeOf(b[2]);
    leaf.tx = ams ? TypeOf(b[3]) : leaf.tv;
    leaf.tp = TypeOf(b[4]);
    leaf.size = size;
    leaf.flags = leaf_flags[i];
    // The state is updated in place: its results must alias its operands.
    const bool aliased = b[1]->data == r[1]->data && b[2]->data == r[2]->data &&
                         (!ams || b[3]->data == r[3]->data) &&
                         b[4]->data == r[0]->data;
    if (!aliased) return "state results must alias their operands";
    for (int k = 1; k < 5; ++k) {
      if (b[k] != nullptr && Count(b[k]) != size) return "operands of one leaf differ in size";
    }
    for (int k = 0; k < 3 + ams; ++k) {
      if (Count(r[k]) != size) return "results of one leaf differ in size";
      if (TypeOf(r[k]) != TypeOf(b[k == 0 ? 4 : k])) {
        return "a result's type differs from its operand's";
      }
    }
    const ffi::DataType types[] = {leaf.tg, leaf.tm, leaf.tv, leaf.tx, leaf.tp};
    for (ffi::DataType type : types) {
      if (!Supported<C>(type)) return "unsupported element type";
    }
    job.leaves.push_back(leaf);
    job.starts.push_back(job.starts.back() + size);
  }
  return "";
}

template <typename C>
ffi::Future Step(ffi::ThreadPool pool, ffi::AnyBuffer scalars, ffi::RemainingArgs args,
                 ffi::RemainingRets rets, int64_t mode, ffi::Span<const int64_t> leaf_flags) {
  auto job = std::make_shared<Job<C>>();
  std::string error = Plan<C>(*job, scalars, args, rets, mode, leaf_flags);
  if (!error.empty()) return Failed(error);
  const int64_t total = job->starts.back();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (total < kParallelMin || threads == 1) {
    job->chunk = std::max<int64_t>(total, 1);
    job->num_chunks = total > 0;
    job->Work();
    return Done();
  }
  // About four chunks per thread, so that a thread slowed down by someone
  // else's work does not hold the step up; whole blocks, at least kMinChunk.
  const int64_t target = (total + 4 * threads - 1) / (4 * threads);
  job->chunk = std::max(kMinChunk, (target + kBlock - 1) / kBlock * kBlock);
  job->num_chunks = (total + job->chunk - 1) / job->chunk;
  // The calling thread takes chunks too: it would otherwise wait. Nobody waits
  // for anybody: a task that starts late finds the chunks gone and returns.
  const int64_t tasks = std::min(threads, job->num_chunks);
  ffi::CountDownPromise done(tasks);
  ffi::Future future(done);
  for (int64_t t = 1; t < tasks; ++t) {
    pool.Schedule([job, done]() mutable {
      job->Work();
      done.CountDown();
    });
  }
  job->Work();
  done.CountDown();
  return future;
}

}  // namespace
}  // namespace adam_optax

#define ADAM_OPTAX_BINDING                  \
  ffi::Ffi::Bind()                          \
      .Ctx<ffi::ThreadPool>()               \
      .Arg<ffi::AnyBuffer>()                \
      .RemainingArgs()                      \
      .RemainingRets()                      \
      .Attr<int64_t>("mode")                \
      .Attr<ffi::Span<const int64_t>>("leaf_flags")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamOptaxFusedF32, adam_optax::Step<float>, ADAM_OPTAX_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamOptaxFusedF64, adam_optax::Step<double>, ADAM_OPTAX_BINDING);

#ifndef ADAM_OPTAX_JAXLIB_VERSION
#define ADAM_OPTAX_JAXLIB_VERSION "unknown"
#endif

// What the Python loader checks before it registers the handlers.
extern "C" int32_t AdamOptaxFusedAbiVersion() { return adam_optax::kAbiVersion; }
extern "C" const char* AdamOptaxFusedJaxlibVersion() { return ADAM_OPTAX_JAXLIB_VERSION; }
