// Products for a few rows (a decode step), built at first use by serving/textgen/kernels.py with
// torch.utils.cpp_extension (where it cannot be built, the layers keep PyTorch's own operators):
//   int8_linear(x float32 (M, K), qweight int8 (N, K), weight_scale (N), bias) -> float32 (M, N): Int8Linear's
//   forward in one call (per-row int8 quantizing, exact int32 sums, scaling), bit-identical to its PyTorch operators;
//   bf16_gemm_nt(a bf16 (M, K), b bf16 (N, K), bias) -> bf16 (M, N): float32 sums of exact products (and the bias),
//   rounded once, as F.linear in bf16 computes them (PackedLinear's decode path);
//   f32_gemm_nt(a float32 (M, K), b float32 (N, K), bias) -> float32 (M, N): float32 sums, and the bias, in a fixed
//   order (Float32Linear's decode path);
//   decode_attention(q (B, H, 1, D), k, v (B, Hkv, L, D), starts (B), scale) -> (B, 1, H, D): a decode step's
//   attention, each sequence over its own keys (batch_invariant_attention's);
//   lora_add_(y (M, N), x (M, K), a, b, slots (M), ranks): each row's LoRA delta, with its own adapter, added in place
//   (LoraLinear's; rows of no adapter untouched).
// Every output element is summed in an order that depends on K alone, never on M or on the thread count: a row gets
// the same bits whatever else is in the batch (batch invariance), which PyTorch's GEMMs do not promise.
//
// At one row per call a linear layer is a matrix-vector product: every weight byte is read once, so the speed is the
// memory's, provided the arithmetic keeps up and the call costs little (at one token per step, a dozen small PyTorch
// operators per layer cost as much as the product). The weight's rows are taken in blocks of 8 (a few KB, contiguous):
// the first input row reads a block from memory, the others find it in the core's cache, so a batch of rows costs
// little more than one; bf16 and float32 rows go two at a time through a block, each weight load serving both. int8:
// with AVX-512 VNNI, dpbusd multiplies 64 unsigned by signed bytes per instruction (rows shifted by 128, the shift
// taken off exactly); without VNNI, AVX-512BW/AVX2 madd on int16, or plain C++; integer sums are exact. bf16: AVX-512
// BF16's dpbf16, 32 products per instruction, plain C++ elsewhere (kernels.py uses it only where it is native).
// float32: AVX-512 FMA, 16 products per instruction, AVX2 FMA 8, or plain C++. Output rows are split over torch's own
// thread pool (at::parallel_for).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX512BW__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// Each 64-byte piece of a weight row is prefetched this many blocks of rows ahead of its use (a prefetch never faults,
// also beyond the weight's end). The hardware's prefetchers follow one stream well, eight interleaved ones less so
// (what prefetching buys, and why two blocks: docs/benchmarks/).
constexpr int kPrefetchBlocks = 2;

// Int8Linear's per-row quantizing: scale max|x| / 127 (at least 1e-12), x / scale rounded half to even, as its PyTorch
// operators compute them (the division and the maximum are exact in any order, so vectors give the same bits).
float quantize_row(const float* row, int64_t k_size, int8_t* out) {
  float amax = 0.f;
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 vmax = _mm512_setzero_ps();
  for (; k + 16 <= k_size; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(row + k)));
  amax = _mm512_reduce_max_ps(vmax);
#endif
  for (; k < k_size; ++k) amax = std::max(amax, std::fabs(row[k]));
  const float scale = std::max(amax / 127.f, 1e-12f);
  k = 0;
#if defined(__AVX512F__)
  const __m512 vscale = _mm512_set1_ps(scale);
  for (; k + 16 <= k_size; k += 16) {
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(row + k), vscale),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(q)));
  }
#endif
  for (; k < k_size; ++k) out[k] = static_cast<int8_t>(std::nearbyint(row[k] / scale));
  return scale;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// Exact int32 sums sum_k x[k] * w[j][k] of R unsigned rows against NB weight rows. VNNI's dpbusd multiplies unsigned
// by signed bytes, 4 products into each of 16 int32 lanes (|sum| < 2^31 for any K here); callers shift the signed rows
// to unsigned (q + 128) and take off 128 * sum_k w[j][k], which SHIFT computes in the same pass (into shifts).
template <int R, int NB, bool SHIFT>
inline void int8_dots(const uint8_t* x, int64_t x_stride, const int8_t* w, int64_t k_size, int32_t* sums,
                      int64_t sums_stride, int32_t* shifts) {
  __m512i acc[R][NB], acc_shift[NB];
  for (int j = 0; j < NB; ++j) {
    acc_shift[j] = _mm512_setzero_si512();
    for (int r = 0; r < R; ++r) acc[r][j] = _mm512_setzero_si512();
  }
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(128));
  int64_t k = 0;
  for (; k + 64 <= k_size; k += 64) {
    __m512i xk[R];
    for (int r = 0; r < R; ++r) xk[r] = _mm512_loadu_si512(x + r * x_stride + k);
    for (int j = 0; j < NB; ++j) {
      const __m512i wj = _mm512_loadu_si512(w + j * k_size + k);
      _mm_prefetch(reinterpret_cast<const char*>(w + (kPrefetchBlocks * NB + j) * k_size + k), _MM_HINT_T0);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], xk[r], wj);
      if (SHIFT) acc_shift[j] = _mm512_dpbusd_epi32(acc_shift[j], offset, wj);
    }
  }
  if (k < k_size) {
    const __mmask64 mask = (__mmask64(1) << (k_size - k)) - 1;
    __m512i xk[R];
    for (int r = 0; r < R; ++r) xk[r] = _mm512_maskz_loadu_epi8(mask, x + r * x_stride + k);
    for (int j = 0; j < NB; ++j) {
      const __m512i wj = _mm512_maskz_loadu_epi8(mask, w + j * k_size + k);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], xk[r], wj);
      if (SHIFT) acc_shift[j] = _mm512_dpbusd_epi32(acc_shift[j], offset, wj);
    }
  }
  for (int j = 0; j < NB; ++j) {
    for (int r = 0; r < R; ++r) sums[r * sums_stride + j] = _mm512_reduce_add_epi32(acc[r][j]);
    if (SHIFT) shifts[j] = _mm512_reduce_add_epi32(acc_shift[j]);
  }
}

#ifndef INT8_NB
#define INT8_NB 4
#endif
#ifndef INT8_RB
#define INT8_RB 4
#endif
// r (<= RB) rows against nb (<= NB) weight rows, into block[i * NB + j]; the first rows of a block (first) also sum
// the weight rows for the shift
template <int NB, int RB, int R = RB>
inline void int8_block(bool first, int r, int64_t nb, const uint8_t* x, int64_t x_stride, const int8_t* w,
                       int64_t k_size, int32_t* block, int32_t* shifts) {
  if constexpr (R > 1) {
    if (r < R) return int8_block<NB, RB, R - 1>(first, r, nb, x, x_stride, w, k_size, block, shifts);
  }
  if (nb == NB) {
    if (first) int8_dots<R, NB, true>(x, x_stride, w, k_size, block, NB, shifts);
    else int8_dots<R, NB, false>(x, x_stride, w, k_size, block, NB, shifts);
  } else {
    for (int64_t j = 0; j < nb; ++j) {
      if (first) int8_dots<R, 1, true>(x, x_stride, w + j * k_size, k_size, block + j, NB, shifts + j);
      else int8_dots<R, 1, false>(x, x_stride, w + j * k_size, k_size, block + j, NB, shifts + j);
    }
  }
}
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif

// sum_k x[k] * w[k] without VNNI: x widened to int16, w int8 (AVX-512BW madd, AVX2, or plain C++)
inline int32_t dot(const int16_t* x, const int8_t* w, int64_t k_size) {
  int64_t k = 0;
  int32_t sum = 0;
#if defined(__AVX512BW__)
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  for (; k + 64 <= k_size; k += 64) {
    __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
    __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 32)));
    acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(w0, _mm512_loadu_si512(x + k)));
    acc1 = _mm512_add_epi32(acc1, _mm512_madd_epi16(w1, _mm512_loadu_si512(x + k + 32)));
  }
  for (; k + 32 <= k_size; k += 32) {
    __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
    acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(w0, _mm512_loadu_si512(x + k)));
  }
  sum = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
#elif defined(__AVX2__)
  __m256i acc = _mm256_setzero_si256();
  for (; k + 16 <= k_size; k += 16) {
    __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(w0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k))));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  for (int32_t lane : lanes) sum += lane;
#endif
  for (; k < k_size; ++k) sum += static_cast<int32_t>(x[k]) * static_cast<int32_t>(w[k]);
  return sum;
}

// The exact int32 sums of the rows against weight rows [n_begin, n_end), into sums[(n - n_begin) * rows + m]
void int8_sums(const uint8_t* qu, const int16_t* q16, const int8_t* w_ptr, int64_t k_size, int64_t rows,
               int64_t n_begin, int64_t n_end, int32_t* sums) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  // weight rows in blocks (a few KB: after the first rows read them from memory, the block stays in the core's
  // cache for the others), input rows a few at a time; the first rows' pass also sums each weight row for the shift
  (void)q16;
  constexpr int NB = INT8_NB, RB = INT8_RB;
  int32_t block[RB][NB], shift[NB];
  for (int64_t n = n_begin; n < n_end; n += NB) {
    const int64_t nb = std::min<int64_t>(NB, n_end - n);
    const int8_t* w = w_ptr + n * k_size;
    for (int64_t m = 0; m < rows; m += RB) {
      const int r = static_cast<int>(std::min<int64_t>(RB, rows - m));
      int8_block<NB, RB>(m == 0, r, nb, qu + m * k_size, k_size, w, k_size, &block[0][0], shift);
      for (int i = 0; i < r; ++i)
        for (int64_t j = 0; j < nb; ++j) sums[(n - n_begin + j) * rows + m + i] = block[i][j] - shift[j];
    }
  }
#else
  (void)qu;
  for (int64_t n = n_begin; n < n_end; ++n)
    for (int64_t m = 0; m < rows; ++m) sums[(n - n_begin) * rows + m] = dot(q16 + m * k_size, w_ptr + n * k_size, k_size);
#endif
}

// Int8Linear's whole forward for a few float32 rows, in one call instead of a dozen operators: each row quantized
// symmetrically (quantize_row), the int8 product summed exactly, then (sum * row scale) * weight scale (+ bias),
// rounded as Int8Linear.forward's operators round, so the bits are the same.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& weight_scale,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2, "int8_linear: x float32 (M, K)");
  TORCH_CHECK(qweight.scalar_type() == at::kChar && qweight.dim() == 2 && qweight.size(1) == x.size(1),
              "int8_linear: qweight int8 (N, K), got ", qweight.sizes(), " for x ", x.sizes());
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat && weight_scale.numel() == qweight.size(0),
              "int8_linear: weight_scale float32 (N)");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->numel() == qweight.size(0)),
              "int8_linear: bias float32 (N)");
  const at::Tensor xc = x.contiguous(), wc = qweight.contiguous(), sc = weight_scale.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t m_size = xc.size(0), n_size = wc.size(0), k_size = xc.size(1);
  std::vector<int8_t> q(k_size);  // one quantized row
  std::vector<uint8_t> shifted(kVnni ? m_size * k_size : 0);  // q + 128, VNNI's unsigned operand
  std::vector<int16_t> widened(kVnni ? 0 : m_size * k_size);  // q as int16, the madd kernels' operand
  std::vector<float> row_scale(m_size);
  const float* x_ptr = xc.data_ptr<float>();
  for (int64_t m = 0; m < m_size; ++m) {
    row_scale[m] = quantize_row(x_ptr + m * k_size, k_size, q.data());
    for (int64_t k = 0; k < k_size; ++k) {
      if (kVnni) shifted[m * k_size + k] = static_cast<uint8_t>(q[k] + 128);
      else widened[m * k_size + k] = q[k];
    }
  }
  at::Tensor out = at::empty({m_size, n_size}, xc.options());
  const int8_t* w_ptr = wc.data_ptr<int8_t>();
  const float* s_ptr = sc.data_ptr<float>();
  const float* b_ptr = bias.has_value() ? bc.data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(8, 65536 / std::max<int64_t>(1, k_size));
  at::parallel_for(0, n_size, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> sums((end - begin) * m_size);
    int8_sums(shifted.data(), widened.data(), w_ptr, k_size, m_size, begin, end, sums.data());
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t m = 0; m < m_size; ++m) {
        volatile float scaled = static_cast<float>(sums[(n - begin) * m_size + m]) * row_scale[m];
        // without a bias two roundings (out.mul_(scale)), with one the single rounding of torch.addcmul's fma
        out_ptr[m * n_size + n] = b_ptr ? std::fma(scaled, s_ptr[n], b_ptr[n]) : static_cast<float>(scaled * s_ptr[n]);
      }
    }
  });
  return out;
}

#if defined(__AVX512BF16__)
// float32 sums of bf16 products (exact in float32) of R (1 or 2) rows against NB weight rows: AVX-512 BF16's dpbf16,
// 32 products per instruction. Each accumulator takes its products in the same order whatever R is.
template <int R, int NB>
inline void bf16_dots(const at::BFloat16* x, int64_t x_stride, const at::BFloat16* w, int64_t k_size, float* sums,
                      int64_t sums_stride) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= k_size; k += 32) {
    __m512bh xk[R];
    for (int r = 0; r < R; ++r) xk[r] = (__m512bh)_mm512_loadu_si512(x + r * x_stride + k);
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (kPrefetchBlocks * NB + j) * k_size + k), _MM_HINT_T0);
      const __m512bh wj = (__m512bh)_mm512_loadu_si512(w + j * k_size + k);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xk[r], wj);
    }
  }
  if (k < k_size) {
    const __mmask32 mask = (__mmask32(1) << (k_size - k)) - 1;
    __m512bh xk[R];
    for (int r = 0; r < R; ++r) xk[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + r * x_stride + k);
    for (int j = 0; j < NB; ++j) {
      const __m512bh wj = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * k_size + k);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xk[r], wj);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) sums[r * sums_stride + j] = _mm512_reduce_add_ps(acc[r][j]);
}

#ifndef BF16_NB
#define BF16_NB 4
#endif
#ifndef BF16_RB
#define BF16_RB 8
#endif
// r (<= RB) rows against nb (<= NB) weight rows, into block[i * NB + j]: whole blocks at once, the rest one by one
template <int NB, int RB, int R = RB>
inline void bf16_block(int r, int64_t nb, const at::BFloat16* x, int64_t x_stride, const at::BFloat16* w,
                       int64_t k_size, float* block) {
  if constexpr (R > 1) {
    if (r < R) return bf16_block<NB, RB, R - 1>(r, nb, x, x_stride, w, k_size, block);
  }
  if (nb == NB) bf16_dots<R, NB>(x, x_stride, w, k_size, block, NB);
  else for (int64_t j = 0; j < nb; ++j) bf16_dots<R, 1>(x, x_stride, w + j * k_size, k_size, block + j, NB);
}
#endif

// the float32 sums of rows [0, rows) of a against weight rows [n_begin, n_end): into sums[(n - n_begin) * rows + m]
void bf16_sums(const at::BFloat16* a, const at::BFloat16* b_ptr, int64_t k_size, int64_t rows, int64_t n_begin,
               int64_t n_end, float* sums) {
#if defined(__AVX512BF16__)
  constexpr int NB = BF16_NB;  // weight rows in blocks
  constexpr int RB = BF16_RB;  // input rows at a time
  float block[RB][NB];
  for (int64_t n = n_begin; n < n_end; n += NB) {
    const int64_t nb = std::min<int64_t>(NB, n_end - n);
    const at::BFloat16* w = b_ptr + n * k_size;
    for (int64_t m = 0; m < rows; m += RB) {
      const at::BFloat16* x = a + m * k_size;
      const int r = static_cast<int>(std::min<int64_t>(RB, rows - m));
      bf16_block<NB, RB>(r, nb, x, k_size, w, k_size, &block[0][0]);
      for (int i = 0; i < r; ++i)
        for (int64_t j = 0; j < nb; ++j) sums[(n - n_begin + j) * rows + m + i] = block[i][j];
    }
  }
#else
  for (int64_t n = n_begin; n < n_end; ++n)
    for (int64_t m = 0; m < rows; ++m) {
      float sum = 0.f;
      for (int64_t k = 0; k < k_size; ++k)
        sum += static_cast<float>(a[m * k_size + k]) * static_cast<float>(b_ptr[n * k_size + k]);
      sums[(n - n_begin) * rows + m] = sum;
    }
#endif
}

at::Tensor bf16_gemm_nt(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "bf16_gemm_nt: CPU tensors only");
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16, "bf16_gemm_nt: bf16 tensors only");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
              "bf16_gemm_nt: a (M, K) and b (N, K), got ", a.sizes(), " and ", b.sizes());
  // the bias joins the float32 sum before its one rounding to bf16, as oneDNN adds it
  const at::Tensor bias_f32 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!bias.has_value() || bias_f32.numel() == b.size(0), "bf16_gemm_nt: bias of ", bias_f32.numel(), " for ",
              b.size(0), " outputs");
  const float* bias_ptr = bias.has_value() ? bias_f32.data_ptr<float>() : nullptr;
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t m_size = ac.size(0), n_size = bc.size(0), k_size = ac.size(1);
  at::Tensor out = at::empty({m_size, n_size}, ac.options());
  const at::BFloat16* a_ptr = ac.data_ptr<at::BFloat16>();
  const at::BFloat16* b_ptr = bc.data_ptr<at::BFloat16>();
  at::BFloat16* out_ptr = out.data_ptr<at::BFloat16>();
  const int64_t grain = std::max<int64_t>(8, 32768 / std::max<int64_t>(1, k_size));
  at::parallel_for(0, n_size, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> sums((end - begin) * m_size);
    bf16_sums(a_ptr, b_ptr, k_size, m_size, begin, end, sums.data());
    for (int64_t n = begin; n < end; ++n)
      for (int64_t m = 0; m < m_size; ++m)
        out_ptr[m * n_size + n] = at::BFloat16(sums[(n - begin) * m_size + m] + (bias_ptr ? bias_ptr[n] : 0.f));
  });
  return out;
}

// float32 sums of R (1 or 2) rows against NB weight rows, each accumulator in the same order whatever R is:
// AVX-512 FMA (16 lanes), AVX2 FMA (8 lanes), or plain C++ (one lane)
template <int R, int NB>
inline void f32_dots(const float* x, int64_t x_stride, const float* w, int64_t k_size, float* sums,
                     int64_t sums_stride) {
  int64_t k = 0;
  float tail[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) tail[r][j] = 0.f;
#if defined(__AVX512F__)
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  for (; k + 16 <= k_size; k += 16) {
    __m512 xk[R];
    for (int r = 0; r < R; ++r) xk[r] = _mm512_loadu_ps(x + r * x_stride + k);
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (kPrefetchBlocks * NB + j) * k_size + k), _MM_HINT_T0);
      const __m512 wj = _mm512_loadu_ps(w + j * k_size + k);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(xk[r], wj, acc[r][j]);
    }
  }
  if (k < k_size) {
    const __mmask16 mask = (__mmask16(1) << (k_size - k)) - 1;
    __m512 xk[R];
    for (int r = 0; r < R; ++r) xk[r] = _mm512_maskz_loadu_ps(mask, x + r * x_stride + k);
    for (int j = 0; j < NB; ++j) {
      const __m512 wj = _mm512_maskz_loadu_ps(mask, w + j * k_size + k);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(xk[r], wj, acc[r][j]);
    }
    k = k_size;
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) tail[r][j] = _mm512_reduce_add_ps(acc[r][j]);
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm256_setzero_ps();
  for (; k + 8 <= k_size; k += 8) {
    __m256 xk[R];
    for (int r = 0; r < R; ++r) xk[r] = _mm256_loadu_ps(x + r * x_stride + k);
    for (int j = 0; j < NB; ++j) {
      const __m256 wj = _mm256_loadu_ps(w + j * k_size + k);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm256_fmadd_ps(xk[r], wj, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[r][j]);
      float sum = 0.f;
      for (float lane : lanes) sum += lane;
      tail[r][j] = sum;
    }
#endif
  for (; k < k_size; ++k)  // what no vector took (all of it in plain C++)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NB; ++j) tail[r][j] = std::fma(x[r * x_stride + k], w[j * k_size + k], tail[r][j]);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NB; ++j) sums[r * sums_stride + j] = tail[r][j];
}

#ifndef F32_NB
#define F32_NB 4
#endif
#ifndef F32_RB
#define F32_RB 8
#endif
// r (<= RB) rows against nb (<= NB) weight rows, into block[i * NB + j]
template <int NB, int RB, int R = RB>
inline void f32_block(int r, int64_t nb, const float* x, int64_t x_stride, const float* w, int64_t k_size,
                      float* block) {
  if constexpr (R > 1) {
    if (r < R) return f32_block<NB, RB, R - 1>(r, nb, x, x_stride, w, k_size, block);
  }
  if (nb == NB) f32_dots<R, NB>(x, x_stride, w, k_size, block, NB);
  else for (int64_t j = 0; j < nb; ++j) f32_dots<R, 1>(x, x_stride, w + j * k_size, k_size, block + j, NB);
}

at::Tensor f32_gemm_nt(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "f32_gemm_nt: CPU tensors only");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat, "f32_gemm_nt: float32 tensors only");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
              "f32_gemm_nt: a (M, K) and b (N, K), got ", a.sizes(), " and ", b.sizes());
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  TORCH_CHECK(!bias.has_value() || (bias_c.scalar_type() == at::kFloat && bias_c.numel() == b.size(0)),
              "f32_gemm_nt: bias float32 (N)");
  const float* bias_ptr = bias.has_value() ? bias_c.data_ptr<float>() : nullptr;
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t m_size = ac.size(0), n_size = bc.size(0), k_size = ac.size(1);
  at::Tensor out = at::empty({m_size, n_size}, ac.options());
  const float* a_ptr = ac.data_ptr<float>();
  const float* b_ptr = bc.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  constexpr int NB = F32_NB, RB = F32_RB;
  const int64_t grain = std::max<int64_t>(NB, 16384 / std::max<int64_t>(1, k_size));
  at::parallel_for(0, n_size, grain, [&](int64_t begin, int64_t end) {
    float block[RB][NB];
    for (int64_t n = begin; n < end; n += NB) {
      const int64_t nb = std::min<int64_t>(NB, end - n);
      const float* w = b_ptr + n * k_size;
      for (int64_t m = 0; m < m_size; m += RB) {
        const int r = static_cast<int>(std::min<int64_t>(RB, m_size - m));
        f32_block<NB, RB>(r, nb, a_ptr + m * k_size, k_size, w, k_size, &block[0][0]);
        for (int i = 0; i < r; ++i)
          for (int64_t j = 0; j < nb; ++j)
            out_ptr[(m + i) * n_size + n + j] = block[i][j] + (bias_ptr ? bias_ptr[n + j] : 0.f);
      }
    }
  });
  return out;
}

#if defined(__AVX512F__)
// exp(x) for 16 lanes: 2^n * e^r with n = round(x / ln 2), |r| <= ln 2 / 2 (ln 2 split in two for an exact r), e^r by
// its Taylor polynomial to r^7 (relative error about 1e-7, below float32's own); lanes under -87.3 give 0
inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  const __mmask16 zero = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~zero), _mm512_scalef_ps(p, n));
}

// 16 values (float32 or bf16) as float32
template <typename T>
inline __m512 load16(const T* p) {
  if constexpr (std::is_same_v<T, float>) return _mm512_loadu_ps(p);
  else return _mm512_castsi512_ps(_mm512_slli_epi32(  // bf16 is float32's top 16 bits
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
#endif

// One decode step's attention for one (sequence, head): softmax(scale q . k_j) over the sequence's own keys j in
// [start, L), times v, summed in a fixed order (float32). `query` is q as float32; `scores` has room for L.
template <typename T>
void attend_one(const float* query, const T* keys, int64_t k_stride, const T* values, int64_t v_stride, int64_t start,
                int64_t l_size, int64_t d_size, float scale, float* scores, float* acc) {
  float top = -INFINITY;
#if defined(__AVX512F__)
  if (d_size % 16 == 0 && d_size <= 256) {
    const int64_t parts = d_size / 16;
    __m512 q[16];
    for (int64_t i = 0; i < parts; ++i) q[i] = _mm512_mul_ps(_mm512_loadu_ps(query + 16 * i), _mm512_set1_ps(scale));
    for (int64_t j = start; j < l_size; ++j) {
      const T* k = keys + j * k_stride;
      __m512 dot = _mm512_mul_ps(q[0], load16(k));
      for (int64_t i = 1; i < parts; ++i) dot = _mm512_fmadd_ps(q[i], load16(k + 16 * i), dot);
      scores[j] = _mm512_reduce_add_ps(dot);
      top = std::max(top, scores[j]);
    }
    __m512 total = _mm512_setzero_ps();
    const __m512 vtop = _mm512_set1_ps(top);
    int64_t j = start;
    for (; j + 16 <= l_size; j += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + j), vtop));
      _mm512_storeu_ps(scores + j, e);
      total = _mm512_add_ps(total, e);
    }
    if (j < l_size) {
      const __mmask16 mask = (__mmask16(1) << (l_size - j)) - 1;
      const __m512 e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, scores + j), vtop)));
      _mm512_mask_storeu_ps(scores + j, mask, e);
      total = _mm512_add_ps(total, e);
    }
    const float sum = _mm512_reduce_add_ps(total);
    __m512 out[16];
    for (int64_t i = 0; i < parts; ++i) out[i] = _mm512_setzero_ps();
    for (int64_t jj = start; jj < l_size; ++jj) {
      const __m512 p = _mm512_set1_ps(scores[jj]);
      const T* v = values + jj * v_stride;
      for (int64_t i = 0; i < parts; ++i) out[i] = _mm512_fmadd_ps(p, load16(v + 16 * i), out[i]);
    }
    const __m512 inverse = _mm512_set1_ps(1.f / sum);
    for (int64_t i = 0; i < parts; ++i) _mm512_storeu_ps(acc + 16 * i, _mm512_mul_ps(out[i], inverse));
    return;
  }
#endif
  for (int64_t j = start; j < l_size; ++j) {
    float dot = 0.f;
    for (int64_t d = 0; d < d_size; ++d) dot = std::fma(query[d] * scale, static_cast<float>(keys[j * k_stride + d]), dot);
    scores[j] = dot;
    top = std::max(top, dot);
  }
  float sum = 0.f;
  for (int64_t j = start; j < l_size; ++j) sum += (scores[j] = std::exp(scores[j] - top));
  for (int64_t d = 0; d < d_size; ++d) acc[d] = 0.f;
  for (int64_t j = start; j < l_size; ++j)
    for (int64_t d = 0; d < d_size; ++d) acc[d] = std::fma(scores[j], static_cast<float>(values[j * v_stride + d]), acc[d]);
  for (int64_t d = 0; d < d_size; ++d) acc[d] *= 1.f / sum;
}

template <typename T>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const int64_t* starts,
                           float scale, at::Tensor& out) {
  const int64_t b_size = q.size(0), h_size = q.size(1), d_size = q.size(3), l_size = k.size(2);
  const int64_t group = h_size / k.size(1);
  const T* q_ptr = q.data_ptr<T>();
  const T* k_ptr = k.data_ptr<T>();
  const T* v_ptr = v.data_ptr<T>();
  T* out_ptr = out.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  at::parallel_for(0, b_size * h_size, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(d_size), acc(d_size), scores(l_size);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / h_size, h = bh % h_size, kvh = h / group;
      for (int64_t d = 0; d < d_size; ++d) query[d] = static_cast<float>(q_ptr[b * qs0 + h * qs1 + d]);
      attend_one<T>(query.data(), k_ptr + b * ks0 + kvh * ks1, ks2, v_ptr + b * vs0 + kvh * vs1, vs2, starts[b],
                    l_size, d_size, scale, scores.data(), acc.data());
      T* o = out_ptr + (b * h_size + h) * d_size;
      for (int64_t d = 0; d < d_size; ++d) o[d] = static_cast<T>(acc[d]);
    }
  });
}

// One query per sequence (a decode step) against that sequence's own keys [starts[b], L): each (sequence, head) by
// one thread, in a fixed order, so a sequence gets the same bits whatever else is in the batch. q (B, H, 1, D); k, v
// (B, Hkv, L, D) with the head dimension contiguous (views into a KV cache are fine); H a multiple of Hkv (grouped
// queries). Returns (B, 1, H, D), the layout attention implementations return, in q's dtype.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& starts,
                            double scale) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "decode_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "decode_attention: q (B, H, 1, D), "
              "k and v (B, Hkv, L, D); got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(3) && k.size(1) > 0 &&
              q.size(1) % k.size(1) == 0, "decode_attention: mismatched shapes ", q.sizes(), ", ", k.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
              (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16),
              "decode_attention: float32 or bf16 q, k, v of one dtype");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "decode_attention: head dim not contiguous");
  const at::Tensor st = starts.to(at::kLong).contiguous();
  TORCH_CHECK(st.numel() == q.size(0), "decode_attention: one start per sequence");
  const int64_t* s_ptr = st.data_ptr<int64_t>();
  for (int64_t b = 0; b < q.size(0); ++b)
    TORCH_CHECK(s_ptr[b] >= 0 && s_ptr[b] < k.size(2), "decode_attention: sequence ", b, " attends to no key");
  at::Tensor out = at::empty({q.size(0), 1, q.size(1), q.size(3)}, q.options());
  if (q.scalar_type() == at::kFloat) decode_attention_impl<float>(q, k, v, s_ptr, static_cast<float>(scale), out);
  else decode_attention_impl<at::BFloat16>(q, k, v, s_ptr, static_cast<float>(scale), out);
  return out;
}

// LoRA deltas, each row with its own adapter (serving/textgen/lora.py): for every row m whose slot s = slots[m] >= 0
// and ranks[s] > 0, y[m] += (x[m] @ a[s]) @ b[s] over the first ranks[s] of the R inner columns, in float32, added to
// y in float32 and rounded once to y's dtype. a (S, K, R) is A^T, b (S, R, N) scaling * B^T, both float32 or both
// bf16 (a bf16 model's: half the bytes to read), padded with zeros to R; x and y both float32 or both bf16.
// Each output sums its terms in an order fixed by K and the adapter's rank alone (per element: the
// loops over K and over the rank run in order; vectorised across R and across N, never across the sum), so a row gets
// the same bits whatever the other rows are, and a row of no adapter is left untouched.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define LORA_AVX512 1
// up to 16 values (float32 or bf16, the lanes of `mask`) as float32
inline __m512 load16_masked(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 load16_masked(const at::BFloat16* p, __mmask16 mask) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p)), 16));
}
// 16 float32 values stored as float32, or as bf16 rounded to nearest even (NaN as 0x7FC0), as c10::BFloat16 rounds
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(at::BFloat16* p, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)),
                                        _mm512_set1_epi32(0x7FFF));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
}
#endif

// h[j] = sum over k, in order, of x[k] * a[k][j] (an fma chain per j), for j < r_size
template <typename W>
inline void lora_down(const float* x, const W* a, int64_t k_size, int64_t r_size, float* h) {
  int64_t j = 0;
#if defined(LORA_AVX512)
  for (; j < r_size; j += 16) {
    const __mmask16 mask = r_size - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (r_size - j)) - 1);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < k_size; ++k)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(x[k]), load16_masked(a + k * r_size + j, mask), acc);
    _mm512_mask_storeu_ps(h + j, mask, acc);
  }
#endif
  for (; j < r_size; ++j) {
    float acc = 0.f;
    for (int64_t k = 0; k < k_size; ++k) acc = std::fma(x[k], static_cast<float>(a[k * r_size + j]), acc);
    h[j] = acc;
  }
}

// y[n] = round(y[n] + d[n]) for n in [begin, end), d[n] = sum over j < rank, in order, of h[j] * b[j][n] (an fma
// chain per n), b's rows `n_size` apart
template <typename Y, typename W>
inline void lora_up(Y* y, const float* h, const W* b, int64_t rank, int64_t n_size, int64_t begin, int64_t end) {
  int64_t n = begin;
#if defined(LORA_AVX512)
  for (; n + 16 <= end; n += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < rank; ++j)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(h[j]), load16_masked(b + j * n_size + n, __mmask16(0xFFFF)), acc);
    store16(y + n, _mm512_add_ps(load16_masked(y + n, __mmask16(0xFFFF)), acc));
  }
#endif
  for (; n < end; ++n) {
    float acc = 0.f;
    for (int64_t j = 0; j < rank; ++j) acc = std::fma(h[j], static_cast<float>(b[j * n_size + n]), acc);
    y[n] = static_cast<Y>(static_cast<float>(y[n]) + acc);
  }
}

// T: x's and y's type, W: a's and b's (float32 or bf16)
template <typename T, typename W>
void lora_add_impl(T* y_ptr, const T* x_ptr, const W* a_ptr, const W* b_ptr, const int64_t* slots,
                   const int64_t* ranks, int64_t m_size, int64_t k_size, int64_t r_size, int64_t n_size) {
  std::vector<float> h(m_size * r_size, 0.f), x(k_size);
  int64_t work = 0;  // products of the second stage per output column, to decide whether threads pay
  for (int64_t m = 0; m < m_size; ++m) {
    const int64_t s = slots[m];
    if (s < 0 || ranks[s] == 0) continue;
    for (int64_t k = 0; k < k_size; ++k) x[k] = static_cast<float>(x_ptr[m * k_size + k]);
    lora_down(x.data(), a_ptr + s * k_size * r_size, k_size, r_size, h.data() + m * r_size);
    work += ranks[s];
  }
  // a decode step's few rows take a few microseconds on one core: threads only for long prompts' many rows
  const int64_t grain = work * n_size > (int64_t(1) << 21) ? std::max<int64_t>(64, (int64_t(1) << 19) / work) : n_size;
  at::parallel_for(0, n_size, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = 0; m < m_size; ++m) {
      const int64_t s = slots[m];
      if (s < 0 || ranks[s] == 0) continue;
      lora_up(y_ptr + m * n_size, h.data() + m * r_size, b_ptr + s * r_size * n_size, ranks[s], n_size, begin, end);
    }
  });
}

void lora_add_(at::Tensor& y, const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& slots,
               const at::Tensor& ranks) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.size(0) == x.size(0) && y.is_contiguous() && x.is_contiguous(),
              "lora_add_: y (M, N) and x (M, K), contiguous; got ", y.sizes(), " and ", x.sizes());
  TORCH_CHECK((y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16) && x.scalar_type() == y.scalar_type(),
              "lora_add_: x and y both float32 or both bf16");
  TORCH_CHECK((a.scalar_type() == at::kFloat || a.scalar_type() == at::kBFloat16) && b.scalar_type() == a.scalar_type()
              && a.dim() == 3 && b.dim() == 3 && a.is_contiguous() && b.is_contiguous() && a.size(0) == b.size(0) &&
              a.size(1) == x.size(1) && a.size(2) == b.size(1) && b.size(2) == y.size(1),
              "lora_add_: a (S, K, R) and b (S, R, N), both float32 or both bf16; got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == x.size(0) && ranks.scalar_type() == at::kLong &&
              ranks.numel() == a.size(0) && slots.is_contiguous() && ranks.is_contiguous(),
              "lora_add_: slots int64 (M) and ranks int64 (S)");
  const int64_t* s_ptr = slots.data_ptr<int64_t>();
  const int64_t* r_ptr = ranks.data_ptr<int64_t>();
  for (int64_t m = 0; m < slots.numel(); ++m)
    TORCH_CHECK(s_ptr[m] < a.size(0), "lora_add_: row ", m, " names adapter ", s_ptr[m], " of ", a.size(0));
  for (int64_t s = 0; s < ranks.numel(); ++s)
    TORCH_CHECK(r_ptr[s] >= 0 && r_ptr[s] <= a.size(2), "lora_add_: rank ", r_ptr[s], " beyond ", a.size(2));
  const int64_t m_size = x.size(0), k_size = x.size(1), r_size = a.size(2), n_size = y.size(1);
  const auto run = [&](auto* y_ptr, auto* w_tag) {
    using T = std::remove_pointer_t<decltype(y_ptr)>;
    using W = std::remove_pointer_t<decltype(w_tag)>;
    lora_add_impl<T, W>(y_ptr, x.data_ptr<T>(), a.data_ptr<W>(), b.data_ptr<W>(), s_ptr, r_ptr, m_size, k_size,
                        r_size, n_size);
  };
  const bool bf16_y = y.scalar_type() == at::kBFloat16, bf16_w = a.scalar_type() == at::kBFloat16;
  if (bf16_y && bf16_w) run(y.data_ptr<at::BFloat16>(), static_cast<at::BFloat16*>(nullptr));
  else if (bf16_y) run(y.data_ptr<at::BFloat16>(), static_cast<float*>(nullptr));
  else if (bf16_w) run(y.data_ptr<float>(), static_cast<at::BFloat16*>(nullptr));
  else run(y.data_ptr<float>(), static_cast<float*>(nullptr));
}

// whether bf16_gemm_nt was compiled with AVX-512 BF16 (elsewhere its plain C++ is no match for oneDNN)
bool bf16_native() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(victorian_gpt, m) {
  m.def("bf16_native() -> bool");
  m.def("int8_linear(Tensor x, Tensor qweight, Tensor weight_scale, Tensor? bias=None) -> Tensor");
  m.def("bf16_gemm_nt(Tensor a, Tensor b, Tensor? bias=None) -> Tensor");
  m.def("f32_gemm_nt(Tensor a, Tensor b, Tensor? bias=None) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor starts, float scale) -> Tensor");
  m.def("lora_add_(Tensor(a!) y, Tensor x, Tensor a, Tensor b, Tensor slots, Tensor ranks) -> ()");
}

TORCH_LIBRARY_IMPL(victorian_gpt, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("bf16_gemm_nt", &bf16_gemm_nt);
  m.impl("f32_gemm_nt", &f32_gemm_nt);
  m.impl("decode_attention", &decode_attention);
  m.impl("lora_add_", &lora_add_);
}

TORCH_LIBRARY_IMPL(victorian_gpt, CompositeExplicitAutograd, m) {
  m.impl("bf16_native", &bf16_native);
}
