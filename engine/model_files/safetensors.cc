#include "engine/model_files/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "engine/model_files/internal.h"
#include "engine/model_files/json_util.h"

namespace longread::engine {
namespace {

constexpr size_t kMaxRank = 8;

absl::Status HeaderError(std::string_view what) {
  return absl::InvalidArgumentError(mf::Cat("safetensors: ", what));
}

absl::StatusOr<SafetensorsTensor> ParseTensorEntry(const std::string& name,
                                                   const nlohmann::json& entry,
                                                   uint64_t data_size) {
  std::string field = mf::Cat("safetensors: tensor '", name, "'");
  if (!entry.is_object()) return HeaderError(mf::Cat("tensor '", name, "' is not an object"));
  SafetensorsTensor t;
  t.name = name;
  MF_ASSIGN_OR_RETURN(t.dtype, mf::JsonString(entry, "dtype", std::nullopt, field));
  int64_t elem_size = SafetensorsElementSize(t.dtype);
  if (elem_size == 0) {
    return HeaderError(mf::Cat("tensor '", name, "' has unknown dtype '", t.dtype, "'"));
  }
  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array() || shape->size() > kMaxRank) {
    return HeaderError(
        mf::Cat("tensor '", name, "': 'shape' must be an array of at most ", kMaxRank, " dims"));
  }
  int64_t elements = 1;
  for (const nlohmann::json& d : *shape) {
    if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
      return HeaderError(
          mf::Cat("tensor '", name, "': shape entry ", d.dump(), " is not a non-negative integer"));
    }
    uint64_t u = d.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(elements, static_cast<int64_t>(u), &elements)) {
      return HeaderError(mf::Cat("tensor '", name, "': element count overflows"));
    }
    t.shape.push_back(static_cast<int64_t>(u));
  }
  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return HeaderError(
        mf::Cat("tensor '", name, "': 'data_offsets' must be two non-negative integers"));
  }
  t.begin = (*offsets)[0].get<uint64_t>();
  t.end = (*offsets)[1].get<uint64_t>();
  if (t.begin > t.end || t.end > data_size) {
    return absl::DataLossError(mf::Cat("safetensors: tensor '", name, "' data_offsets [", t.begin,
                                       ", ", t.end, ") lie outside the data section (", data_size,
                                       " bytes)"));
  }
  int64_t expected = 0;
  if (__builtin_mul_overflow(elements, elem_size, &expected) ||
      static_cast<uint64_t>(expected) != t.end - t.begin) {
    return HeaderError(mf::Cat("tensor '", name, "' holds ", t.end - t.begin,
                               " bytes but its shape and dtype ", t.dtype, " need ", elements,
                               " x ", elem_size));
  }
  return t;
}

}  // namespace

int64_t SafetensorsElementSize(std::string_view dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" ||
      dtype == "F8_E5M2") {
    return 1;
  }
  return 0;
}

absl::StatusOr<kernels::DType> SafetensorsComputeType(std::string_view dtype) {
  if (dtype == "F32") return kernels::DType::kF32;
  if (dtype == "F16") return kernels::DType::kF16;
  if (dtype == "BF16") return kernels::DType::kBF16;
  return absl::UnimplementedError(
      mf::Cat("safetensors dtype '", dtype, "' cannot be computed (F32, F16, BF16)"));
}

std::optional<std::string> GgufNameFromHf(std::string_view hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  constexpr std::string_view kLayers = "model.layers.";
  if (hf.substr(0, kLayers.size()) != kLayers) return std::nullopt;
  std::string_view rest = hf.substr(kLayers.size());
  size_t dot = rest.find('.');
  if (dot == 0 || dot == std::string_view::npos || dot > 6) return std::nullopt;
  std::string_view layer = rest.substr(0, dot);
  if (!std::all_of(layer.begin(), layer.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      (layer.size() > 1 && layer[0] == '0')) {
    return std::nullopt;
  }
  std::string_view part = rest.substr(dot + 1);
  static constexpr std::pair<std::string_view, std::string_view> kParts[] = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  for (const auto& [from, to] : kParts) {
    if (part == from) return mf::Cat("blk.", layer, ".", to);
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  MF_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->bytes_ = mapping->bytes();
  file->mapping_ = std::move(mapping);
  absl::Status s = file->ParseHeader();
  if (!s.ok()) return mf::Annotate(s, mf::Cat("'", path, "': "));
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(std::string_view bytes) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->bytes_ = bytes;
  MF_RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

absl::Status SafetensorsFile::ParseHeader() {
  if (bytes_.size() < 8) {
    return absl::DataLossError(
        mf::Cat("safetensors: file of ", bytes_.size(), " bytes has no 8-byte header length"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes_.data(), 8);
  if (header_len > kMaxSafetensorsHeaderBytes || header_len > bytes_.size() - 8) {
    return absl::DataLossError(
        mf::Cat("safetensors: header length ", header_len, " at offset 0 exceeds the limit (",
                kMaxSafetensorsHeaderBytes, ") or the file (", bytes_.size(), " bytes)"));
  }
  data_offset_ = 8 + header_len;
  const uint64_t data_size = bytes_.size() - data_offset_;
  MF_ASSIGN_OR_RETURN(nlohmann::json header,
                      mf::ParseJson(bytes_.substr(8, header_len), "safetensors header",
                                    kMaxSafetensorsHeaderBytes));
  if (!header.is_object()) return HeaderError("header is not a JSON object");
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return HeaderError("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return HeaderError(mf::Cat("__metadata__ value '", m.key(), "' is not a string"));
        }
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    MF_ASSIGN_OR_RETURN(SafetensorsTensor t, ParseTensorEntry(it.key(), *it, data_size));
    t.data = reinterpret_cast<const uint8_t*>(bytes_.data()) + data_offset_ + t.begin;
    tensors_.push_back(std::move(t));
  }
  // nlohmann::json keeps object keys sorted and unique, so names are already in order; data
  // ranges are checked for overlap in offset order.
  std::vector<const SafetensorsTensor*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const SafetensorsTensor& t : tensors_) {
    if (t.bytes() > 0) by_offset.push_back(&t);
  }
  std::sort(
      by_offset.begin(), by_offset.end(),
      [](const SafetensorsTensor* a, const SafetensorsTensor* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i - 1]->end > by_offset[i]->begin) {
      return HeaderError(mf::Cat("tensor '", by_offset[i]->name, "' data [", by_offset[i]->begin,
                                 ", ", by_offset[i]->end, ") overlaps tensor '",
                                 by_offset[i - 1]->name, "' [", by_offset[i - 1]->begin, ", ",
                                 by_offset[i - 1]->end, ")"));
    }
  }
  return absl::OkStatus();
}

const SafetensorsTensor* SafetensorsFile::Find(std::string_view name) const {
  auto it =
      std::lower_bound(tensors_.begin(), tensors_.end(), name,
                       [](const SafetensorsTensor& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

}  // namespace longread::engine
