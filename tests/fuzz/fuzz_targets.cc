#include "tests/fuzz/fuzz_targets.h"

#include <string>
#include <string_view>

#include "engine/model_files/gguf.h"
#include "engine/model_files/hf_json.h"
#include "engine/model_files/model_file.h"
#include "engine/model_files/safetensors.h"

namespace longread::fuzz {
namespace {

using engine::GgufValue;

// Reads the first and last byte of a range so that ASan checks the bounds the parser promised.
volatile uint8_t sink;
void Touch(const void* data, uint64_t bytes) {
  if (bytes == 0) return;
  const auto* p = static_cast<const uint8_t*>(data);
  sink = p[0];
  sink = p[bytes - 1];
}

void Exercise(const GgufValue& v, int depth) {
  (void)v.AsU64();
  (void)v.AsI64();
  (void)v.AsF64();
  (void)v.AsBool();
  (void)v.AsString();
  if (!v.is_array() || depth > 20) return;
  (void)v.ArrayStrings();
  (void)v.ArrayI64();
  (void)v.ArrayF64();
  if (v.size() > 0) {
    for (uint64_t i : {uint64_t{0}, v.size() - 1}) {
      auto e = v.At(i);
      if (e.ok()) Exercise(*e, depth + 1);
    }
  }
  (void)v.At(v.size());
}

}  // namespace

void FuzzGguf(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto file = engine::GgufFile::Parse(bytes);
  if (file.ok()) {
    for (const auto& [key, value] : (*file)->metadata()) {
      Exercise(value, 0);
      (void)(*file)->GetString(key);
      (void)(*file)->GetU32(key);
      (void)(*file)->GetF32(key);
    }
    for (const engine::GgufTensorInfo& t : (*file)->tensors()) {
      Touch(t.data, t.bytes);
      (void)(*file)->FindTensor(t.name);
    }
  }
  auto model = engine::ModelFile::ParseGguf(bytes);
  if (model.ok()) {
    for (const std::string& name : (*model)->TensorNames()) {
      auto t = (*model)->Tensor(name);
      if (t.ok()) Touch(t->data, t->bytes);
    }
    (void)(*model)->Describe();
  }
}

void FuzzSafetensors(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto file = engine::SafetensorsFile::Parse(bytes);
  if (!file.ok()) return;
  for (const engine::SafetensorsTensor& t : (*file)->tensors()) {
    Touch(t.data, t.bytes());
    (void)engine::GgufNameFromHf(t.name);
    (void)engine::SafetensorsComputeType(t.dtype);
    (void)(*file)->Find(t.name);
  }
}

void FuzzHfJson(const uint8_t* data, size_t size) {
  if (size == 0) return;
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0: {
      auto config = engine::ParseHfConfig(text);
      if (config.ok()) (void)engine::ValidateModelConfig(config->model);
      break;
    }
    case 1:
      (void)engine::ParseHfTokenizer(text, "");
      break;
    default: {
      size_t nul = text.find('\0');
      if (nul == std::string_view::npos) nul = text.size();
      (void)engine::ParseHfTokenizer(text.substr(0, nul),
                                     text.substr(std::min(nul + 1, text.size())));
      break;
    }
  }
}

}  // namespace longread::fuzz
