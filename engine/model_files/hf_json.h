// Hugging Face config.json and tokenizer.json (+ tokenizer_config.json) for Llama-family models.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model_files/model_config.h"
#include "engine/model_files/tokenizer_spec.h"

namespace longread::engine {

constexpr uint64_t kMaxConfigJsonBytes = uint64_t{1} << 20;
constexpr uint64_t kMaxTokenizerJsonBytes = uint64_t{64} << 20;

struct HfConfig {
  ModelConfig model;
  int32_t bos_id = -1;  // bos_token_id / eos_token_id (the first, when a list)
  int32_t eos_id = -1;
};

// model_type "llama", "mistral" or "qwen2" (Qwen2 gets attn_qkv_bias); rope_style is kHalf.
// Not yet range-checked beyond field types: see ValidateModelConfig.
absl::StatusOr<HfConfig> ParseHfConfig(std::string_view config_json);

// A byte-level BPE tokenizer.json; `tokenizer_config_json` (may be empty) adds add_bos_token,
// bos/eos tokens and chat_template. The pre-tokenizer is mapped to a GGUF-style name ("smollm",
// "gpt2", "llama-bpe", "qwen2"); unknown ones are refused. Ids missing between 0 and the largest
// id become "[PAD<id>]" tokens of type 5 (unused).
absl::StatusOr<TokenizerSpec> ParseHfTokenizer(std::string_view tokenizer_json,
                                               std::string_view tokenizer_config_json);

}  // namespace longread::engine
