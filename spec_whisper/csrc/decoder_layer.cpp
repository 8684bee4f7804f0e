// One Whisper decoder layer for a pass's few tokens, in one call from Python.
//
// A layer is about fifteen operators: three layer norms, six products, two attentions, a GELU and
// three residual additions. From Python each costs a few microseconds of dispatch beyond its
// arithmetic, and a draft step of the 2-layer assistant does little arithmetic: about a third of a
// back-to-back step was that overhead (docs/benchmarks.md). Here the same operators run in the same
// order on the same kernels (`few_rows_linear.cpp`, `decoder_attention.cpp`) and ATen's layer norm
// and GELU, so a layer gives the bits that `decoder.py`'s operator-by-operator path gives.

#include <torch/extension.h>

#include <tuple>
#include <utility>
#include <vector>

torch::Tensor decoder_self_attention(const torch::Tensor& qkv, torch::Tensor& cache_k, torch::Tensor& cache_v,
                                     const torch::Tensor& start, double scale);
torch::Tensor decoder_cross_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      double scale, const c10::optional<torch::Tensor>& frames);
torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& bias,
                              const c10::optional<torch::Tensor>& scale, int64_t out_features, bool stream);

namespace {

// `FewRowsLinear`'s state: packed weights, padded bias, int8 scale or none, outputs, streaming.
using ProductState = std::tuple<torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, int64_t, bool>;
using NormState = std::tuple<torch::Tensor, torch::Tensor, double>;  // weight, bias, eps

struct Product {
  torch::Tensor packed, bias;
  c10::optional<torch::Tensor> scale;
  int64_t out;
  bool stream;

  explicit Product(const ProductState& s)
      : packed(std::get<0>(s)), bias(std::get<1>(s)), scale(std::get<2>(s)), out(std::get<3>(s)),
        stream(std::get<4>(s)) {}

  // x [B, T, K] contiguous -> [B, T, out]
  torch::Tensor operator()(const torch::Tensor& x) const {
    const auto rows = x.view({-1, x.size(-1)});
    return few_rows_linear(rows, packed, bias, scale, out, stream).view({x.size(0), x.size(1), out});
  }
};

struct Norm {
  torch::Tensor weight, bias;
  double eps;

  explicit Norm(const NormState& s) : weight(std::get<0>(s)), bias(std::get<1>(s)), eps(std::get<2>(s)) {}

  torch::Tensor operator()(const torch::Tensor& x) const {
    return at::layer_norm(x, {weight.size(0)}, weight, bias, eps);
  }
};

}  // namespace

// Products in the order self_qkv, self_out, cross_q, cross_out, fc1, fc2; norms self, cross, final.
class DecoderLayer {
 public:
  DecoderLayer(const std::vector<ProductState>& products, const std::vector<NormState>& norms, double scale)
      : self_qkv_(products.at(0)), self_out_(products.at(1)), cross_q_(products.at(2)),
        cross_out_(products.at(3)), fc1_(products.at(4)), fc2_(products.at(5)), self_norm_(norms.at(0)),
        cross_norm_(norms.at(1)), final_norm_(norms.at(2)), scale_(scale) {
    TORCH_CHECK(products.size() == 6 && norms.size() == 3, "DecoderLayer takes 6 products and 3 norms");
  }

  // x [B, T, width] fp32 contiguous; the layer's self-attention cache (written at start[b] + t) and
  // cross-attention keys, values and frames per row, as `cpu_attention.py`'s kernels take them
  // -> [B, T, width].
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor& self_k, torch::Tensor& self_v,
                        const torch::Tensor& cross_k, const torch::Tensor& cross_v, const torch::Tensor& start,
                        const c10::optional<torch::Tensor>& cross_frames) const {
    TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
                "DecoderLayer takes contiguous fp32 states [B, T, width]");
    auto attended = decoder_self_attention(self_qkv_(self_norm_(x)), self_k, self_v, start, scale_);
    auto out = x + self_out_(attended);
    attended = decoder_cross_attention(cross_q_(cross_norm_(out)), cross_k, cross_v, scale_, cross_frames);
    out.add_(cross_out_(attended));
    out.add_(fc2_(at::gelu(fc1_(final_norm_(out)))));
    return out;
  }

 private:
  Product self_qkv_, self_out_, cross_q_, cross_out_, fc1_, fc2_;
  Norm self_norm_, cross_norm_, final_norm_;
  double scale_;
};

void bind_decoder_layer(pybind11::module& m) {
  pybind11::class_<DecoderLayer>(m, "DecoderLayer", "a Whisper decoder layer's pass in one call")
      .def(pybind11::init<const std::vector<ProductState>&, const std::vector<NormState>&, double>())
      .def("__call__", &DecoderLayer::forward);
}
