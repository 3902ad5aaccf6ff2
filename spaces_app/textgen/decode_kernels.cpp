// Products for a few rows (a decode step), built at first use by spaces_app/textgen/kernels.py with
// torch.utils.cpp_extension (where it cannot be built, the layers keep PyTorch's own operators):
//   int8_linear(x float32 (M, K), qweight int8 (N, K), weight_scale (N), bias) -> float32 (M, N): Int8Linear's
//   forward in one call (per-row int8 quantizing, exact int32 sums, scaling), bit-identical to its PyTorch operators;
//   bf16_gemm_nt(a bf16 (M, K), b bf16 (N, K), bias) -> bf16 (M, N): float32 sums of exact products (and the bias),
//   rounded once, as F.linear in bf16 computes them (PackedLinear's decode path).
//
// At one row per call a linear layer is a matrix-vector product: every weight byte is read once, so the speed is the
// memory's, provided the arithmetic keeps up and the call costs little (at one token per step, a dozen small PyTorch
// operators per layer cost as much as the product). Each output row n is one pass over the weight's row n
// (contiguous) against the input rows. int8: the quantized rows are kept as int16; AVX-512BW multiplies 32 pairs and
// adds neighbours into 16 int32 lanes per instruction (_mm512_madd_epi16: |a * b| <= 127 * 127, so each pair sum
// fits), AVX2 16, plain C++ elsewhere; integer sums are exact. bf16: AVX-512 BF16's _mm512_dpbf16_ps, 32 products per
// instruction, plain C++ elsewhere (kernels.py uses it only where it is native). Output rows are split over torch's
// own thread pool (at::parallel_for).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#if defined(__AVX512BW__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// sum_k x[k] * w[k]: x already widened to int16, w int8
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

// Int8Linear's whole forward for a few float32 rows, in one call instead of a dozen operators: each row quantized
// symmetrically (scale max|x| / 127, at least 1e-12; x / scale rounded half to even), the int8 product summed exactly,
// then (sum * row scale) * weight scale (+ bias), rounded as Int8Linear.forward's operators round, so the bits are
// the same.
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
  std::vector<int16_t> quantized(m_size * k_size);
  std::vector<float> row_scale(m_size);
  const float* x_ptr = xc.data_ptr<float>();
  for (int64_t m = 0; m < m_size; ++m) {
    const float* row = x_ptr + m * k_size;
    float amax = 0.f;
    for (int64_t k = 0; k < k_size; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float scale = std::max(amax / 127.f, 1e-12f);
    row_scale[m] = scale;
    for (int64_t k = 0; k < k_size; ++k)
      quantized[m * k_size + k] = static_cast<int16_t>(std::nearbyint(row[k] / scale));
  }
  at::Tensor out = at::empty({m_size, n_size}, xc.options());
  const int8_t* w_ptr = wc.data_ptr<int8_t>();
  const float* s_ptr = sc.data_ptr<float>();
  const float* b_ptr = bias.has_value() ? bc.data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  const int16_t* q_ptr = quantized.data();
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, k_size));
  at::parallel_for(0, n_size, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* w = w_ptr + n * k_size;
      for (int64_t m = 0; m < m_size; ++m) {
        volatile float scaled = static_cast<float>(dot(q_ptr + m * k_size, w, k_size)) * row_scale[m];
        // without a bias two roundings (out.mul_(scale)), with one the single rounding of torch.addcmul's fma
        out_ptr[m * n_size + n] = b_ptr ? std::fma(scaled, s_ptr[n], b_ptr[n]) : static_cast<float>(scaled * s_ptr[n]);
      }
    }
  });
  return out;
}

// sum_k x[k] * w[k] in float32, x and w bf16 (their products are exact in float32)
inline float dot_bf16(const at::BFloat16* x, const at::BFloat16* w, int64_t k_size) {
  int64_t k = 0;
  float sum = 0.f;
#if defined(__AVX512BF16__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; k + 64 <= k_size; k += 64) {
    acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(x + k), (__m512bh)_mm512_loadu_si512(w + k));
    acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)_mm512_loadu_si512(x + k + 32), (__m512bh)_mm512_loadu_si512(w + k + 32));
  }
  sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#endif
  for (; k < k_size; ++k) sum += static_cast<float>(x[k]) * static_cast<float>(w[k]);
  return sum;
}

at::Tensor bf16_gemm_nt(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "bf16_gemm_nt: CPU tensors only");
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16, "bf16_gemm_nt: bf16 tensors only");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
              "bf16_gemm_nt: a (M, K) and b (N, K), got ", a.sizes(), " and ", b.sizes());
  // the bias joins the float32 sum before its one rounding to bf16, as oneDNN adds it
  const at::Tensor bias_f32 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::zeros({b.size(0)}, at::kFloat);
  TORCH_CHECK(bias_f32.numel() == b.size(0), "bf16_gemm_nt: bias of ", bias_f32.numel(), " for ", b.size(0), " outputs");
  const float* bias_ptr = bias_f32.data_ptr<float>();
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t m_size = ac.size(0), n_size = bc.size(0), k_size = ac.size(1);
  at::Tensor out = at::empty({m_size, n_size}, ac.options());
  const at::BFloat16* a_ptr = ac.data_ptr<at::BFloat16>();
  const at::BFloat16* b_ptr = bc.data_ptr<at::BFloat16>();
  at::BFloat16* out_ptr = out.data_ptr<at::BFloat16>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, k_size));
  at::parallel_for(0, n_size, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const at::BFloat16* w = b_ptr + n * k_size;
      for (int64_t m = 0; m < m_size; ++m)
        out_ptr[m * n_size + n] = at::BFloat16(dot_bf16(a_ptr + m * k_size, w, k_size) + bias_ptr[n]);
    }
  });
  return out;
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
}

TORCH_LIBRARY_IMPL(victorian_gpt, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("bf16_gemm_nt", &bf16_gemm_nt);
}

TORCH_LIBRARY_IMPL(victorian_gpt, CompositeExplicitAutograd, m) {
  m.impl("bf16_native", &bf16_native);
}
