// The CPU attention kernels as one extension module (`spec_whisper/cpu_attention.py` builds it).
#include <torch/extension.h>

torch::Tensor cross_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
torch::Tensor encoder_attention(const torch::Tensor& qkv, int64_t heads);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cross_attention", &cross_attention, "softmax(q k^T) v, each key and value row read once");
  m.def("encoder_attention", &encoder_attention, "an encoder's self-attention from its fused q, k, v");
}
