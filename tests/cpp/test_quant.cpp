// Int8 weights (I3) through the library: the row format, the int8 GEMMs against an integer
// reference (exact) and against the fp64 product of the unquantised operands (within the bound
// the quantisation steps imply), int8 models through the ordinary passes, the int8 file format and
// its refusals, and quantisation-aware training's straight-through gradient.
#include <cmath>
#include <filesystem>

#include "checkpoint/quantized.h"
#include "model/model.h"
#include "ops/gemm.h"
#include "ops/gemm_int8.h"
#include "ops/quant.h"
#include "model_test_util.h"
#include "test_util.h"
#include "train/state.h"

namespace dsv3 {
namespace {

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * float(r.normal());
  return v;
}

// An int8 weight (out, in) in the row format from fp32 values.
std::vector<uint8_t> q8(const std::vector<float>& w, int out, int in) {
  std::vector<uint8_t> b(q8_matrix_bytes(out, in));
  cpu::q8_quantize(b.data(), w.data(), out, in, size_t(in));
  return b;
}
Tensor q8_tensor(std::vector<uint8_t>& b, DType scheme) { return Tensor(b.data(), b.size(), scheme); }
const int8_t* q8_row(const std::vector<uint8_t>& b, int in, int r) {
  return reinterpret_cast<const int8_t*>(b.data() + size_t(r) * q8_row_bytes(in));
}

TEST(Int8, RowFormatRoundTripWithinHalfAStep) {
  const int out = 5, in = 37;  // a row length that needs padding to 4 bytes
  auto w = randn(size_t(out) * in, 1);
  for (int k = 0; k < in; k++) w[2 * in + k] = 0;  // an all-zero row
  const auto b = q8(w, out, in);
  std::vector<float> back(w.size());
  cpu::q8_dequantize(back.data(), in, b.data(), out, in);
  for (int r = 0; r < out; r++) {
    const float s = cpu::q8_scale(b.data(), in, r);
    float amax = 0;
    for (int k = 0; k < in; k++) amax = std::max(amax, std::fabs(w[r * in + k]));
    EXPECT_EQ(s, amax / 127.0f);
    int reach = 0;
    for (int k = 0; k < in; k++) {
      EXPECT_LE(std::fabs(back[r * in + k] - w[r * in + k]), 0.5f * s * (1 + 1e-6f) + 1e-30f);
      reach = std::max(reach, std::abs(int(q8_row(b, in, r)[k])));
    }
    EXPECT_EQ(reach, r == 2 ? 0 : 127) << "the largest value maps to +-127";
  }
  // non-finite weights give a NaN scale, which a loader refuses
  w[3] = NAN;
  const auto bad = q8(w, out, in);
  EXPECT_TRUE(std::isnan(cpu::q8_scale(bad.data(), in, 0)));
}

// The integer GEMM is exact: oneDNN's u8 x s8 result equals int64 sums of the same operands.
TEST(Int8, GemmU8S8IsExact) {
  Rng r(3);
  const int M = 37, N = 29, K = 300, L = q8_act_levels();
  std::vector<uint8_t> a(size_t(M) * K);
  for (auto& x : a) x = uint8_t(1 + r.below(uint64_t(2 * L + 1)));  // [1, 2L+1]
  a[0] = uint8_t(2 * L + 1), a[1] = uint8_t(2 * L + 1);                // the extremes side by side
  std::vector<uint8_t> b(q8_matrix_bytes(N, K));
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++)
      reinterpret_cast<int8_t*>(b.data() + n * q8_row_bytes(K))[k] = int8_t(int(r.below(255)) - 127);
  reinterpret_cast<int8_t*>(b.data())[0] = 127, reinterpret_cast<int8_t*>(b.data())[1] = 127;
  std::vector<int32_t> c(size_t(M) * N);
  cpu::gemm_u8s8s32_nt(M, N, K, a.data(), K, uint8_t(L + 1), b.data(), q8_row_bytes(K), c.data(), N);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      int64_t s = 0;
      for (int k = 0; k < K; k++) s += int64_t(int(a[i * K + k]) - (L + 1)) * q8_row(b, K, j)[k];
      ASSERT_EQ(c[i * N + j], s) << i << "," << j;
    }
}

// y = x w^T with int8 weights against the fp64 product of the unquantised operands. With
// x_k = sx a_k + dx_k (|dx_k| <= sx/2, W8A8 only) and w_k = sw q_k + dw_k (|dw_k| <= sw/2):
//   |x.w - sx sw a.q| <= sum_k |sx a_k| sw/2 + |sw q_k| sx/2 + sx sw/4
// plus the rounding of the fp32/bf16 arithmetic; every element is checked against its own bound.
void check_linear(DType scheme, DType xt, uint64_t seed) {
  const int N = 19, in = 96, out = 45;
  const int L = q8_act_levels();
  auto x = randn(size_t(N) * in, seed), w = randn(size_t(out) * in, seed + 1, 0.05f);
  x[5] = 8.0f;  // an outlier in one token: its own scale, the other rows unaffected
  auto wb = q8(w, out, in);
  std::vector<char> xs(x.size() * dtype_size(xt));
  convert(xs.data(), xt, x.data(), DType::F32, x.size());
  std::vector<float> xr(x.size());  // x as the GEMM sees it (16-bit rounding included)
  convert(xr.data(), DType::F32, xs.data(), xt, x.size());
  std::vector<float> y(size_t(N) * out, 0.0f);
  linear_forward(Exec{}, host_tensor(y), Tensor(xs.data(), x.size(), xt), q8_tensor(wb, scheme), N,
                 in, out);
  for (int n = 0; n < N; n++) {
    float amax = 0;
    for (int k = 0; k < in; k++) amax = std::max(amax, std::fabs(xr[n * in + k]));
    const double sx = scheme == DType::W8A8 ? amax / L : 0.0;
    for (int o = 0; o < out; o++) {
      const double sw = cpu::q8_scale(wb.data(), in, o);
      double exact = 0, bound = 0, mag = 0;
      for (int k = 0; k < in; k++) {
        const double xv = xr[n * in + k], wv = w[o * in + k];
        exact += xv * wv;
        bound += std::fabs(xv) * sw / 2 + std::fabs(wv) * sx / 2 + sx * sw / 4;
        mag += std::fabs(xv * wv);
      }
      // rounding: fp32 sums (K eps), plus a bf16/f16 operand product rounded in the GEMM
      const double eps = xt == DType::F32 ? 1e-6 : 1e-2;
      ASSERT_LE(std::fabs(y[n * out + o] - exact), bound * 1.0001 + eps * mag + 1e-6)
          << dtype_name(scheme) << " " << dtype_name(xt) << " n " << n << " o " << o;
    }
  }
}

TEST(Int8, LinearW8A8WithinQuantisationBound) {
  check_linear(DType::W8A8, DType::F32, 10);
  check_linear(DType::W8A8, DType::BF16, 20);
}

TEST(Int8, LinearW8A16WithinQuantisationBound) {
  check_linear(DType::W8A16, DType::F32, 30);
  check_linear(DType::W8A16, DType::BF16, 40);
  check_linear(DType::W8A16, DType::F16, 50);
}

// W8A16 in fp32 is the float GEMM on the dequantised weights: the same up to fp32 rounding.
// W8A8 equals the integer reference exactly (then one fp32 scaling).
TEST(Int8, LinearMatchesItsDefinition) {
  const int N = 7, in = 64, out = 33, L = q8_act_levels();
  auto x = randn(size_t(N) * in, 5), w = randn(size_t(out) * in, 6);
  auto wb = q8(w, out, in);
  std::vector<float> wd(w.size());
  cpu::q8_dequantize(wd.data(), in, wb.data(), out, in);
  std::vector<float> y16(size_t(N) * out), y8(size_t(N) * out), ref(size_t(N) * out);
  linear_forward(Exec{}, host_tensor(y16), host_tensor(x), q8_tensor(wb, DType::W8A16), N, in, out);
  linear_forward(Exec{}, host_tensor(ref), host_tensor(x), host_tensor(wd), N, in, out);
  EXPECT_LT(test::rel_error(y16, ref), 1e-6);
  linear_forward(Exec{}, host_tensor(y8), host_tensor(x), q8_tensor(wb, DType::W8A8), N, in, out);
  std::vector<uint8_t> a(in);
  for (int n = 0; n < N; n++) {
    const float sx = cpu::quantize_row(a.data(), x.data() + n * in, in, L, L + 1);
    for (int o = 0; o < out; o++) {
      int64_t s = 0;
      for (int k = 0; k < in; k++) s += int64_t(int(a[k]) - (L + 1)) * q8_row(wb, in, o)[k];
      EXPECT_EQ(y8[n * out + o], float(s) * sx * cpu::q8_scale(wb.data(), in, o)) << n << "," << o;
    }
  }
  // accumulate mode adds
  std::vector<float> acc(y8.size(), 1.0f);
  linear_forward(Exec{}, host_tensor(acc), host_tensor(x), q8_tensor(wb, DType::W8A8), N, in, out,
                 Write::Accumulate);
  for (size_t i = 0; i < acc.size(); i++) EXPECT_FLOAT_EQ(acc[i], 1.0f + y8[i]);  // an FMA may fuse
}

// The experts as one grouped call equal each expert's own linear_forward.
TEST(Int8, GroupedEqualsPerExpert) {
  const int E = 5, in = 48, out = 40;
  const size_t stride = q8_matrix_bytes(out, in) + 64;  // experts spaced as a layer lays them out
  for (DType scheme : {DType::W8A8, DType::W8A16}) {
    std::vector<uint8_t> w(stride * E);
    for (int e = 0; e < E; e++) {
      const auto we = q8(randn(size_t(out) * in, 100 + e), out, in);
      std::copy(we.begin(), we.end(), w.begin() + e * stride);
    }
    const std::vector<int32_t> offsets = {0, 3, 3, 10, 11, 17};  // expert 1 gets no rows
    const int rows = offsets.back();
    auto x = randn(size_t(rows) * in, 7);
    std::vector<float> y(size_t(rows) * out);
    grouped_linear_forward(Exec{}, host_tensor(y), host_tensor(x), Tensor(w.data(), w.size(), scheme),
                           host_tensor(offsets), {E, in, out, stride});
    for (int e = 0; e < E; e++) {
      const int n = offsets[e + 1] - offsets[e];
      if (n == 0) continue;
      std::vector<float> ye(size_t(n) * out);
      linear_forward(Exec{}, host_tensor(ye), host_tensor(x.data() + offsets[e] * in, size_t(n) * in),
                     Tensor(w.data() + e * stride, q8_matrix_bytes(out, in), scheme), n, in, out);
      for (size_t i = 0; i < ye.size(); i++) ASSERT_EQ(y[offsets[e] * out + i], ye[i]) << e;
    }
  }
}

// dx = dy W with int8 W (a decoder's absorbed projections use this form): the fp64 product with
// the dequantised weights, to fp32 rounding; and int8 weights refuse a weight gradient.
TEST(Int8, InputGradientAndNoWeightGradient) {
  const int N = 6, in = 40, out = 24;
  auto dy = randn(size_t(N) * out, 8), w = randn(size_t(out) * in, 9);
  auto wb = q8(w, out, in);
  std::vector<float> wd(w.size()), dx(size_t(N) * in, 0.5f);
  cpu::q8_dequantize(wd.data(), in, wb.data(), out, in);
  linear_backward(Exec{}, host_tensor(dx), {}, host_tensor(dy), {}, q8_tensor(wb, DType::W8A16), N,
                  in, out);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < in; k++) {
      double s = 0.5;
      for (int o = 0; o < out; o++) s += double(dy[n * out + o]) * wd[o * in + k];
      EXPECT_NEAR(dx[n * in + k], s, 1e-5 * (1 + std::fabs(s)));
    }
  std::vector<float> dw(w.size()), x(size_t(N) * in);
  EXPECT_THROW(linear_backward(Exec{}, host_tensor(dx), host_tensor(dw), host_tensor(dy),
                               host_tensor(x), q8_tensor(wb, DType::W8A8), N, in, out),
               Error);
}

// ---- models -------------------------------------------------------------------------------

using test::init_weights;
using test::random_tokens;
using test::small_config;
std::vector<float> logits_of(const ModelWeights& w, Dims d, const std::vector<int32_t>& tokens,
                             LossReport* rep = nullptr) {
  WorkspaceConfig wc;
  wc.max = d;
  wc.backward = false;
  Workspace ws(w.config(), w.dtype(), Device::CPU, wc);
  std::vector<float> logits(size_t(d.N()) * w.config().vocab);
  ForwardOptions o;
  o.logits = logits.data();
  const LossReport r = forward(w, ws, TrainingLossConfig{}, {d, tokens.data()}, o);
  if (rep) *rep = r;
  return logits;
}

// An int8 model runs the ordinary passes: W8A16 gives the logits of the fp32 model holding the
// dequantised weights (to fp32 rounding), W8A8 stays close to them; embedding, head, routers and
// norms are the fp32 values; to_host() gives the dequantised weights back.
TEST(Int8Model, PassesReadTheInt8Weights) {
  const ModelConfig c = small_config();
  const Dims d{2, 16};
  const auto tokens = random_tokens(c, d, 3);
  const auto p = init_weights(c, 11);
  const QuantizedParams q = quantize_params(c, QuantScheme::W8A16, p);
  const std::vector<float> deq = dequantize_params(c, q);
  ModelWeights ref(c, DType::F32);
  ref.load(deq);
  const auto want = logits_of(ref, d, tokens);
  for (QuantScheme s : {QuantScheme::W8A16, QuantScheme::W8A8}) {
    ModelWeights w(c, DType::F32, Device::CPU, {}, s);
    w.load(p);  // quantises on the way in
    EXPECT_LT(w.bytes(), ref.bytes() / 2) << "int8 linears take a quarter of fp32's bytes";
    EXPECT_EQ(w.to_host(), deq);
    const auto got = logits_of(w, d, tokens);
    EXPECT_LT(test::rel_error(got, want), s == QuantScheme::W8A16 ? 1e-5 : 2e-2) << quant_scheme_name(s);
  }
  // the weights that stay high precision are exact
  const ParamTable table = build_param_table(c);
  for (const auto& info : table.list) {
    if (is_quantized_param(info)) continue;
    for (size_t i = 0; i < info.numel; i++) ASSERT_EQ(deq[info.offset + i], p[info.offset + i]) << info.name;
  }
  // bf16 activations with int8 weights run too
  ModelWeights wb(c, DType::BF16, Device::CPU, {}, QuantScheme::W8A8);
  wb.load(p);
  EXPECT_LT(test::rel_error(logits_of(wb, d, tokens), want), 5e-2);
}

TEST(Int8Model, CannotBeTrained) {
  const ModelConfig c = small_config();
  ModelWeights w(c, DType::F32, Device::CPU, {}, QuantScheme::W8A8);
  try {
    TrainState st(w, {}, {});
    FAIL() << "an int8 model was accepted for training";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be trained"), std::string::npos) << e.what();
  }
}

// ---- the int8 file -----------------------------------------------------------------------

std::string expect_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(Int8File, RoundTripAndRefusals) {
  const auto dir = test::temp_dir("int8file");
  const ModelConfig c = small_config();
  const QuantizedParams q = quantize_params(c, QuantScheme::W8A8, init_weights(c, 2));
  const std::string path = (dir / "m.dsv3q").string();
  save_int8_model(path, c, q, "test");
  const Int8Model m = load_int8_model(path);
  EXPECT_EQ(m.params.scheme, QuantScheme::W8A8);
  EXPECT_EQ(m.params.high, q.high);
  EXPECT_EQ(m.params.int8, q.int8);
  EXPECT_EQ(m.source, "test");
  // load_model_any and load_model_weights take it like any model
  const LoadedModel lm = load_model_any(path);
  EXPECT_EQ(lm.params, dequantize_params(c, q));
  EXPECT_EQ(lm.int8.scheme, QuantScheme::W8A8);
  auto w = load_model_weights(path, DType::F32);
  EXPECT_EQ(w->quant(), QuantScheme::W8A8);

  const std::string bytes = test::read_file_bytes(path);
  auto write = [&](const std::string& name, const std::string& b) {
    const std::string p = (dir / name).string();
    std::FILE* f = std::fopen(p.c_str(), "wb");
    std::fwrite(b.data(), 1, b.size(), f);
    std::fclose(f);
    return p;
  };
  // truncated anywhere: a clear error, never a crash
  for (size_t cut : {size_t(0), size_t(10), size_t(30), bytes.size() / 2, bytes.size() - 1}) {
    const std::string e = expect_error([&] { load_int8_model(write("cut", bytes.substr(0, cut))); });
    EXPECT_TRUE(e.find("truncated") != std::string::npos || e.find("too short") != std::string::npos ||
                e.find("end of file") != std::string::npos)
        << cut << " of " << bytes.size() << ": " << e;
  }
  EXPECT_NE(expect_error([&] { load_model_any(write("cut.dsv3q", bytes.substr(0, bytes.size() - 7))); })
                .find("truncated"),
            std::string::npos);
  // a payload byte flipped: the checksum says so
  std::string flipped = bytes;
  flipped[bytes.size() - 3] ^= 0x40;
  EXPECT_NE(expect_error([&] { load_int8_model(write("flip", flipped)); }).find("checksum"), std::string::npos);
  // random corruption of any byte: an Error every time
  Rng r(5);
  for (int i = 0; i < 200; i++) {
    std::string b = bytes;
    b[r.below(b.size())] ^= char(1 + r.below(255));
    EXPECT_THROW(load_int8_model(write("fuzz", b)), Error);
  }
  // foreign files
  const std::string ckpt = (dir / "c.dsv3").string();
  save_checkpoint(ckpt, c, nlohmann::json::object(), init_weights(c, 2).data(), nullptr, nullptr,
                  build_param_table(c).total);
  EXPECT_NE(expect_error([&] { load_int8_model(ckpt); }).find("a dsv3 checkpoint"), std::string::npos);
  EXPECT_NE(expect_error([&] { load_int8_model(write("text", "hello world\n")); }).find("not a dsv3 int8 model"),
            std::string::npos);
  // a scale that is not finite is refused by name
  QuantizedParams bad = q;
  const QuantLayout layout = quant_layout(c);
  const QuantUnit& u = layout.units[0];
  const float nan = NAN;
  std::memcpy(bad.int8.data() + u.offset + (size_t(u.cols) + 3) / 4 * 4, &nan, 4);
  save_int8_model(path, c, bad, "bad");
  const std::string nan_error = expect_error([&] { load_int8_model(path); });
  EXPECT_NE(nan_error.find(u.name), std::string::npos) << nan_error;
}

// ---- quantisation-aware training ----------------------------------------------------------

// With --qat the passes see fake_quant(master) and the gradient reaches the master unchanged
// (straight-through): it equals the gradient of an ordinary run whose weights are the
// fake-quantised ones, bit for bit; the update then moves the fp32 master.
TEST(Qat, GradientIsTheStraightThroughOne) {
  const ModelConfig c = small_config();
  const Dims d{2, 12};
  const auto tokens = random_tokens(c, d, 9);
  const auto p = init_weights(c, 4);
  std::vector<float> fq = p;  // fake_quant of every quantised linear, by its definition
  const ParamTable qt = build_param_table(c);
  for (const auto& info : qt.list)
    if (is_quantized_param(info)) {
      const int rows = int(info.shape[0]), cols = int(info.shape[1]);
      std::vector<uint8_t> b(q8_matrix_bytes(rows, cols));
      cpu::q8_quantize(b.data(), p.data() + info.offset, rows, cols, size_t(cols));
      cpu::q8_dequantize(fq.data() + info.offset, size_t(cols), b.data(), rows, cols);
    }
  WorkspaceConfig wc;
  wc.max = d;
  auto grads_of = [&](bool qat, const std::vector<float>& init, std::vector<float>* compute) {
    ModelWeights w(c, DType::F32);
    TrainState st(w, {}, {}, qat);
    st.load_weights(init);
    if (compute) *compute = w.to_host();
    Workspace ws(c, DType::F32, Device::CPU, wc);
    st.zero_grads();
    forward_backward(w, ws, TrainingLossConfig{}, st.grad_view(), {d, tokens.data()}, 1.0f);
    std::vector<float> g(st.grads().numel);
    backend::copy(Exec{}, host_tensor(g), st.grads());
    return g;
  };
  std::vector<float> compute;
  const auto g_qat = grads_of(true, p, &compute);
  EXPECT_EQ(compute, fq) << "the compute copy is fake_quant(master)";
  const auto g_ref = grads_of(false, fq, nullptr);
  EXPECT_EQ(g_qat, g_ref);
  // fake_quant_forward itself equals quantise-then-dequantise, also into bf16
  const ParamTable table = build_param_table(c);
  const ParamInfo& info = table.at("model.layers.1.self_attn.kv_b_proj.weight");
  std::vector<uint16_t> b16(info.numel);
  fake_quant_forward(Exec{}, Tensor(b16.data(), b16.size(), DType::BF16),
                     host_tensor(p.data() + info.offset, info.numel), int(info.shape[0]), int(info.shape[1]));
  for (size_t i = 0; i < info.numel; i++) ASSERT_EQ(b16[i], f32_to_bf16(fq[info.offset + i]));
}

}  // namespace
}  // namespace dsv3
