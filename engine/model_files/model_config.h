// Hyper-parameters of a Llama-family decoder, read from a GGUF file or a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <string>

namespace longread::engine {

// How RoPE pairs the dimensions of a head. GGUF "llama" files store Q/K rows permuted so that
// adjacent pairs (2i, 2i+1) rotate together; Hugging Face checkpoints and GGUF "qwen2" pair
// dimension i with i + d/2 ("rotate_half").
enum class RopeStyle { kInterleaved, kHalf };

struct ModelConfig {
  std::string architecture;  // "llama", "qwen2", "mistral" (as the file names it)
  int32_t n_layers = 0;
  int32_t d_model = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t d_ff = 0;
  int32_t vocab_size = 0;
  int32_t context_length = 0;  // trained context
  float rope_theta = 10000.0f;
  float rms_eps = 1e-5f;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  bool tie_embeddings = false;  // no separate output.weight: the LM head is token_embd
  bool attn_qkv_bias = false;   // Qwen2 has biases on Q, K and V
};

}  // namespace longread::engine
