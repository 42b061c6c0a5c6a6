// libFuzzer target: StreamingEncoder's output equals Tokenizer::Encode of the whole text for
// fuzzer-chosen text and chunk boundaries. Input: byte 0 picks the tokenizer (the boundary-test
// vocabulary under each pre-tokenizer, or the default model's when models/ has it, relative to
// the working directory as scripts/run_fuzzers.sh runs) and the drain schedule; byte 1 the number
// of cuts (mod 32); then two bytes per cut (little-endian offset, mod text size + 1); the rest is
// the text. A mismatch aborts with both token lists' sizes and the first difference.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string_view>
#include <vector>

#include "engine/model_files/model_file.h"
#include "engine/tokenizer/streaming_encoder.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/engine/tokenizer/tiny_spec.h"

namespace {

using longread::engine::Tokenizer;

std::vector<std::unique_ptr<Tokenizer>> MakeTokenizers() {
  std::vector<std::unique_ptr<Tokenizer>> tokenizers;
  for (const char* pre : {"gpt2", "smollm", "llama-bpe", "qwen2"}) {
    auto t = Tokenizer::Create(longread::engine::BoundarySpec(pre));
    if (!t.ok()) std::abort();
    tokenizers.push_back(std::move(*t));
  }
  const char* path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (std::filesystem::exists(path)) {
    auto file = longread::engine::ModelFile::Open(path);
    if (file.ok()) {
      auto t = Tokenizer::Create((*file)->tokenizer());
      if (t.ok()) tokenizers.push_back(std::move(*t));
    }
  }
  return tokenizers;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::unique_ptr<Tokenizer>> tokenizers = MakeTokenizers();
  if (size < 2) return 0;
  const Tokenizer& tokenizer = *tokenizers[data[0] % tokenizers.size()];
  const bool drain_always = (data[0] & 0x80) != 0;
  size_t n_cuts = data[1] % 32;
  size_t at = 2;
  std::vector<size_t> cuts;
  for (; n_cuts > 0 && at + 2 <= size; --n_cuts, at += 2) {
    cuts.push_back(static_cast<size_t>(data[at]) | static_cast<size_t>(data[at + 1]) << 8);
  }
  const std::string_view text(reinterpret_cast<const char*>(data + at), size - at);
  for (size_t& c : cuts) c %= text.size() + 1;
  cuts.push_back(0);
  cuts.push_back(text.size());
  std::sort(cuts.begin(), cuts.end());

  longread::engine::StreamingEncoderOptions options;
  if (drain_always) options.drain_every_bytes = 1;
  longread::engine::StreamingEncoder encoder(tokenizer, options);
  std::vector<int32_t> streamed;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    encoder.Push(text.substr(cuts[i], cuts[i + 1] - cuts[i]), &streamed);
  }
  encoder.Finish(&streamed);
  const std::vector<int32_t> whole = tokenizer.Encode(text, /*parse_special=*/false);
  if (streamed != whole) {
    size_t first = 0;
    while (first < streamed.size() && first < whole.size() && streamed[first] == whole[first]) {
      ++first;
    }
    std::fprintf(stderr, "streamed %zu tokens, whole %zu, first difference at %zu\n",
                 streamed.size(), whole.size(), first);
    std::abort();
  }
  return 0;
}
