// The CPU attention kernels as one extension module (`spec_whisper/cpu_attention.py` builds it).
#include <torch/extension.h>

torch::Tensor decoder_self_attention(const torch::Tensor& qkv, torch::Tensor& cache_k, torch::Tensor& cache_v,
                                     const torch::Tensor& start, double scale);
torch::Tensor decoder_cross_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      double scale);
torch::Tensor encoder_attention(const torch::Tensor& qkv, int64_t heads);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decoder_self_attention", &decoder_self_attention,
        "a decoder layer's self-attention from its fused q, k, v, writing the new keys and values to its cache");
  m.def("decoder_cross_attention", &decoder_cross_attention, "cross-attention from and to the merged heads");
  m.def("encoder_attention", &encoder_attention, "an encoder's self-attention from its fused q, k, v");
}
