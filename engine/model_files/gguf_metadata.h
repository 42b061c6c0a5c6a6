// Model hyper-parameters and tokenizer data from GGUF metadata (llama.cpp's key names).
#pragma once

#include "absl/status/statusor.h"
#include "engine/model_files/gguf.h"
#include "engine/model_files/model_config.h"
#include "engine/model_files/tokenizer_spec.h"

namespace longread::engine {

// Reads general.architecture ("llama", "mistral", "qwen2"; others are refused) and the
// <arch>.* keys. vocab_size falls back to the token list length, tie_embeddings is the absence of
// an output.weight tensor. The result is not yet range-checked: see ValidateModelConfig.
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file);

// Reads tokenizer.ggml.* and tokenizer.chat_template.
absl::StatusOr<TokenizerSpec> TokenizerSpecFromGguf(const GgufFile& file);

}  // namespace longread::engine
