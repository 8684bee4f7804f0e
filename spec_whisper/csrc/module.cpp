// The CPU kernels as one extension module (`spec_whisper/cpu_kernels.py` builds it).
#include <torch/extension.h>

torch::Tensor decoder_self_attention(const torch::Tensor& qkv, torch::Tensor& cache_k, torch::Tensor& cache_v,
                                     const torch::Tensor& start, double scale);
torch::Tensor decoder_cross_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      double scale, const c10::optional<torch::Tensor>& frames);
bool encoder_attention_supported();
torch::Tensor encoder_attention(const torch::Tensor& qkv, int64_t heads);
bool few_rows_linear_supported();
std::vector<torch::Tensor> few_rows_linear_pack(const torch::Tensor& weight, const torch::Tensor& bias,
                                                const c10::optional<torch::Tensor>& scale);
bool few_rows_linear_bytes_supported();
std::vector<torch::Tensor> few_rows_linear_pack_bytes(const torch::Tensor& weight, const torch::Tensor& bias,
                                                      const torch::Tensor& step);
torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& bias,
                              const c10::optional<torch::Tensor>& scale, int64_t out_features, bool stream);
torch::Tensor screened_argmax(const torch::Tensor& scores, const torch::Tensor& states, const torch::Tensor& weight,
                              const c10::optional<torch::Tensor>& bias, const torch::Tensor& half_step,
                              const torch::Tensor& l1, const torch::Tensor& slack, int64_t max_candidates);
torch::Tensor kernel_order_logits(const torch::Tensor& states, const torch::Tensor& weight,
                                  const torch::Tensor& tokens);
void bind_decoder_layer(pybind11::module& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decoder_self_attention", &decoder_self_attention,
        "a decoder layer's self-attention from its fused q, k, v, writing the new keys and values to its cache");
  m.def("decoder_cross_attention", &decoder_cross_attention, "cross-attention from and to the merged heads");
  m.def("encoder_attention_supported", &encoder_attention_supported,
        "whether encoder_attention was built for vectors its tiles are sized for (AVX-512, or AVX2 with FMA)");
  m.def("encoder_attention", &encoder_attention, "an encoder's self-attention from its fused q, k, v");
  m.def("few_rows_linear_supported", &few_rows_linear_supported,
        "whether the product was built (AVX-512, or AVX2 with FMA and F16C)");
  m.def("few_rows_linear_pack", &few_rows_linear_pack, "weights and bias packed for few_rows_linear");
  m.def("few_rows_linear_bytes_supported", &few_rows_linear_bytes_supported,
        "whether int8 weights can meet int8 activations (AVX-512 VNNI)");
  m.def("few_rows_linear_pack_bytes", &few_rows_linear_pack_bytes,
        "int8 weights, bias and steps packed for few_rows_linear with int8 activations");
  m.def("few_rows_linear", &few_rows_linear, "x W^T + b for a decoder pass's few rows");
  m.def("screened_argmax", &screened_argmax, "the screened head's candidates and their fp32 argmax");
  m.def("kernel_order_logits", &kernel_order_logits, "fp32 logits summed in few_rows_linear's order");
  bind_decoder_layer(m);
}
