// The CPU attention kernels as one extension module (`spec_whisper/cpu_attention.py` builds it).
#include <torch/extension.h>

#include <optional>

torch::Tensor decoder_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const std::optional<torch::Tensor>& lengths);
torch::Tensor encoder_attention(const torch::Tensor& qkv, int64_t heads);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decoder_attention", &decoder_attention,
        "softmax(q k^T) v over each query's first `lengths` keys, each key and value row read once");
  m.def("encoder_attention", &encoder_attention, "an encoder's self-attention from its fused q, k, v");
}
