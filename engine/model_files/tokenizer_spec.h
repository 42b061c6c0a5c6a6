// Everything a byte-level BPE tokenizer needs, as read from a model file (GGUF tokenizer.ggml.*
// metadata or a Hugging Face tokenizer.json). Plain data: the tokenizer is built from it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace longread::engine {

struct TokenizerSpec {
  std::string model;  // "gpt2" (byte-level BPE); anything else is refused by the tokenizer
  // Pre-tokenizer name as GGUF's tokenizer.ggml.pre spells it: "smollm", "llama-bpe", "qwen2",
  // "gpt2", "default", ... A tokenizer.json reader maps its pre_tokenizer config to one of these.
  std::string pre;
  std::vector<std::string> tokens;  // id -> token text (byte-level: bytes mapped to unicode)
  // id -> GGUF token type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
  std::vector<int32_t> token_types;
  std::vector<std::string> merges;  // rank order, each "left right"
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;       // prepend BOS when encoding a whole prompt
  std::string chat_template;  // Jinja source from the file, empty if none
};

}  // namespace longread::engine
