// Bodies of the libFuzzer targets, shared with the GoogleTest replay of the seed corpus so that
// gcc builds exercise the same paths. Each must never crash, leak or allocate without bound,
// whatever the input.
#pragma once

#include <cstddef>
#include <cstdint>

namespace longread::fuzz {

// A GGUF file: parsed, every value converted, every tensor's bytes touched, then read as a model.
void FuzzGguf(const uint8_t* data, size_t size);
// A safetensors file.
void FuzzSafetensors(const uint8_t* data, size_t size);
// First byte picks the document: 0 config.json, 1 tokenizer.json, 2 tokenizer.json NUL
// tokenizer_config.json.
void FuzzHfJson(const uint8_t* data, size_t size);

}  // namespace longread::fuzz
