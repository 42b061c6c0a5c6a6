#include "engine/model_files/hf_json.h"

#include <limits>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "engine/model_files/internal.h"
#include "engine/model_files/json_util.h"

namespace longread::engine {
namespace {

using nlohmann::json;

constexpr int64_t kI32Max = std::numeric_limits<int32_t>::max();
// Token ids may leave a few gaps (filled with unused tokens), never a sparse range that would
// allocate far more than the file describes.
constexpr int64_t kMaxIdGap = 1024;
constexpr int64_t kMaxTokens = int64_t{1} << 20;

constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

absl::Status Refuse(std::string_view what) {
  return absl::InvalidArgumentError(mf::Cat("tokenizer.json: ", what));
}

std::string TypeOf(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// The Split/Regex pattern of a pre-tokenizer step, or "" when it is not one.
std::string SplitRegex(const json& step) {
  if (TypeOf(step) != "Split") return "";
  auto pattern = step.find("pattern");
  if (pattern == step.end() || !pattern->is_object()) return "";
  auto regex = pattern->find("Regex");
  return regex != pattern->end() && regex->is_string() ? regex->get<std::string>() : "";
}

bool SplitsDigitsOneByOne(const json& step) {
  if (TypeOf(step) == "Digits") {
    auto it = step.find("individual_digits");
    return it != step.end() && it->is_boolean() && it->get<bool>();
  }
  std::string regex = SplitRegex(step);
  auto behavior = step.find("behavior");
  bool isolated =
      behavior != step.end() && behavior->is_string() && behavior->get<std::string>() == "Isolated";
  return isolated && (regex == R"(\p{N})" || regex == R"(\d)" || regex == "[0-9]");
}

// ByteLevel's use_regex (default true); errors when it adds a prefix space, which no GGUF
// pre-tokenizer name expresses.
absl::StatusOr<bool> ByteLevelUsesRegex(const json& step) {
  MF_ASSIGN_OR_RETURN(bool prefix,
                      mf::JsonBool(step, "add_prefix_space", false, "tokenizer.json ByteLevel"));
  if (prefix) return Refuse("ByteLevel with add_prefix_space = true is not supported");
  return mf::JsonBool(step, "use_regex", true, "tokenizer.json ByteLevel");
}

absl::StatusOr<std::string> PreTokenizerName(const json& root) {
  auto pre = root.find("pre_tokenizer");
  if (pre == root.end() || pre->is_null()) {
    return Refuse("no pre_tokenizer (only byte-level BPE is supported)");
  }
  if (TypeOf(*pre) == "ByteLevel") {
    MF_ASSIGN_OR_RETURN(bool regex, ByteLevelUsesRegex(*pre));
    if (!regex) return Refuse("ByteLevel with use_regex = false alone is not supported");
    return std::string("gpt2");
  }
  auto steps = pre->find("pretokenizers");
  if (TypeOf(*pre) != "Sequence" || steps == pre->end() || !steps->is_array() ||
      steps->size() != 2 || TypeOf((*steps)[1]) != "ByteLevel") {
    return Refuse(
        mf::Cat("pre_tokenizer ", pre->dump().substr(0, 200), " is not a known byte-level layout"));
  }
  const json& first = (*steps)[0];
  MF_ASSIGN_OR_RETURN(bool regex, ByteLevelUsesRegex((*steps)[1]));
  if (regex && SplitsDigitsOneByOne(first)) return std::string("smollm");
  if (!regex) {
    std::string split = SplitRegex(first);
    if (split == kLlama3Regex) return std::string("llama-bpe");
    if (split == kQwen2Regex) return std::string("qwen2");
  }
  return Refuse(
      mf::Cat("pre_tokenizer ", pre->dump().substr(0, 200), " is not a known byte-level layout"));
}

// A special-token field of tokenizer_config.json: a string or {"content": string}.
std::optional<std::string> TokenContent(const json& config, std::string_view key) {
  auto it = config.find(std::string(key));
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return std::nullopt;
}

absl::Status ApplyTokenizerConfig(std::string_view text,
                                  const absl::flat_hash_map<std::string, int32_t>& ids,
                                  TokenizerSpec* spec) {
  constexpr std::string_view kWhat = "tokenizer_config.json";
  MF_ASSIGN_OR_RETURN(json config, mf::ParseJson(text, kWhat, kMaxTokenizerJsonBytes));
  if (!config.is_object())
    return absl::InvalidArgumentError("tokenizer_config.json: not an object");
  MF_ASSIGN_OR_RETURN(spec->add_bos, mf::JsonBool(config, "add_bos_token", spec->add_bos, kWhat));
  struct Special {
    const char* key;
    int32_t* id;
  } specials[] = {{"bos_token", &spec->bos_id},
                  {"eos_token", &spec->eos_id},
                  {"unk_token", &spec->unk_id},
                  {"pad_token", &spec->pad_id}};
  for (const Special& s : specials) {
    std::optional<std::string> content = TokenContent(config, s.key);
    if (!content) continue;
    auto it = ids.find(*content);
    if (it == ids.end()) {
      return absl::InvalidArgumentError(
          mf::Cat("tokenizer_config.json: ", s.key, " '", *content, "' is not in the vocabulary"));
    }
    *s.id = it->second;
  }
  auto chat = config.find("chat_template");
  if (chat != config.end() && chat->is_string()) {
    spec->chat_template = chat->get<std::string>();
  } else if (chat != config.end() && chat->is_array()) {
    for (const json& named : *chat) {  // [{"name": "default", "template": "..."}, ...]
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string()) {
        spec->chat_template = named["template"].get<std::string>();
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HfConfig> ParseHfConfig(std::string_view text) {
  constexpr std::string_view kWhat = "config.json";
  MF_ASSIGN_OR_RETURN(json j, mf::ParseJson(text, kWhat, kMaxConfigJsonBytes));
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  HfConfig out;
  ModelConfig& c = out.model;
  MF_ASSIGN_OR_RETURN(c.architecture, mf::JsonString(j, "model_type", std::nullopt, kWhat));
  if (c.architecture != "llama" && c.architecture != "mistral" && c.architecture != "qwen2") {
    return absl::InvalidArgumentError(mf::Cat("config.json: model_type '", c.architecture,
                                              "' is not supported (llama, mistral, qwen2)"));
  }
  auto int_field = [&](std::string_view key, std::optional<int64_t> fallback,
                       int32_t* out) -> absl::Status {
    MF_ASSIGN_OR_RETURN(int64_t v, mf::JsonInt(j, key, 0, kI32Max, fallback, kWhat));
    *out = static_cast<int32_t>(v);
    return absl::OkStatus();
  };
  MF_RETURN_IF_ERROR(int_field("num_hidden_layers", std::nullopt, &c.n_layers));
  MF_RETURN_IF_ERROR(int_field("hidden_size", std::nullopt, &c.d_model));
  MF_RETURN_IF_ERROR(int_field("num_attention_heads", std::nullopt, &c.n_heads));
  MF_RETURN_IF_ERROR(int_field("num_key_value_heads", c.n_heads, &c.n_kv_heads));
  MF_RETURN_IF_ERROR(int_field("head_dim", c.n_heads > 0 ? c.d_model / c.n_heads : 0, &c.head_dim));
  MF_RETURN_IF_ERROR(int_field("intermediate_size", std::nullopt, &c.d_ff));
  MF_RETURN_IF_ERROR(int_field("vocab_size", std::nullopt, &c.vocab_size));
  MF_RETURN_IF_ERROR(int_field("max_position_embeddings", std::nullopt, &c.context_length));
  MF_ASSIGN_OR_RETURN(double theta, mf::JsonNumber(j, "rope_theta", 10000.0, kWhat));
  MF_ASSIGN_OR_RETURN(double eps, mf::JsonNumber(j, "rms_norm_eps", 1e-6, kWhat));
  MF_ASSIGN_OR_RETURN(c.rope_theta, mf::NarrowToFloat(theta, "config.json: rope_theta"));
  MF_ASSIGN_OR_RETURN(c.rms_eps, mf::NarrowToFloat(eps, "config.json: rms_norm_eps"));
  MF_ASSIGN_OR_RETURN(c.tie_embeddings, mf::JsonBool(j, "tie_word_embeddings", false, kWhat));
  c.rope_style = RopeStyle::kHalf;
  c.attn_qkv_bias = c.architecture == "qwen2";
  if (auto scaling = j.find("rope_scaling"); scaling != j.end() && !scaling->is_null()) {
    return absl::InvalidArgumentError(
        mf::Cat("config.json: rope_scaling ", scaling->dump().substr(0, 200), " is not supported"));
  }
  for (auto [key, out_id] :
       {std::pair{"bos_token_id", &out.bos_id}, std::pair{"eos_token_id", &out.eos_id}}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    const json& v = it->is_array() && !it->empty() ? (*it)[0] : *it;
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kI32Max) {
      return absl::InvalidArgumentError(mf::Cat("config.json: ", key, " is not a token id"));
    }
    *out_id = static_cast<int32_t>(v.get<int64_t>());
  }
  return out;
}

absl::StatusOr<TokenizerSpec> ParseHfTokenizer(std::string_view tokenizer_json,
                                               std::string_view tokenizer_config_json) {
  constexpr std::string_view kWhat = "tokenizer.json";
  MF_ASSIGN_OR_RETURN(json root, mf::ParseJson(tokenizer_json, kWhat, kMaxTokenizerJsonBytes));
  if (!root.is_object()) return Refuse("not a JSON object");
  auto model = root.find("model");
  if (model == root.end() || !model->is_object()) return Refuse("no 'model' object");
  if (TypeOf(*model) != "BPE") {
    return Refuse(mf::Cat("model.type '", TypeOf(*model), "' is not BPE"));
  }
  TokenizerSpec spec;
  spec.model = "gpt2";
  MF_ASSIGN_OR_RETURN(spec.pre, PreTokenizerName(root));

  // id -> text, from the vocab and then the added tokens (which may restate vocab entries).
  auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object()) return Refuse("model.vocab is not an object");
  auto added = root.find("added_tokens");
  if (added != root.end() && !added->is_null() && !added->is_array()) {
    return Refuse("added_tokens is not an array");
  }
  const int64_t n_added = added != root.end() && added->is_array() ? added->size() : 0;
  const int64_t max_id = std::min<int64_t>(kMaxTokens, vocab->size() + n_added + kMaxIdGap) - 1;
  std::vector<std::optional<std::string>> by_id;
  std::vector<int32_t> types;
  absl::flat_hash_map<std::string, int32_t> ids;
  auto place = [&](const std::string& text, int64_t id, int32_t type,
                   bool may_restate) -> absl::Status {
    if (id < 0 || id > max_id) {
      return Refuse(mf::Cat("token '", text.substr(0, 64), "' has id ", id, ", outside [0, ",
                            max_id, "] (ids must be dense)"));
    }
    if (static_cast<size_t>(id) >= by_id.size()) {
      by_id.resize(id + 1);
      types.resize(id + 1, 5);
    }
    if (by_id[id] && !(may_restate && *by_id[id] == text)) {
      return Refuse(mf::Cat("id ", id, " is given to both '", by_id[id]->substr(0, 64), "' and '",
                            text.substr(0, 64), "'"));
    }
    by_id[id] = text;
    types[id] = type;
    ids[text] = static_cast<int32_t>(id);
    return absl::OkStatus();
  };
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it->is_number_integer())
      return Refuse(mf::Cat("vocab entry '", it.key(), "' is not an id"));
    MF_RETURN_IF_ERROR(place(it.key(), it->get<int64_t>(), 1, false));
  }
  if (n_added > 0) {
    for (const json& a : *added) {
      constexpr std::string_view kAdded = "tokenizer.json added_tokens";
      MF_ASSIGN_OR_RETURN(std::string content, mf::JsonString(a, "content", std::nullopt, kAdded));
      MF_ASSIGN_OR_RETURN(int64_t id, mf::JsonInt(a, "id", 0, max_id, std::nullopt, kAdded));
      MF_ASSIGN_OR_RETURN(bool special, mf::JsonBool(a, "special", false, kAdded));
      MF_RETURN_IF_ERROR(place(content, id, special ? 3 : 4, true));
    }
  }
  spec.tokens.reserve(by_id.size());
  for (size_t id = 0; id < by_id.size(); ++id) {
    spec.tokens.push_back(by_id[id] ? *by_id[id] : mf::Cat("[PAD", id, "]"));
  }
  spec.token_types = std::move(types);

  auto merges = model->find("merges");
  if (merges != model->end() && !merges->is_null()) {
    if (!merges->is_array()) return Refuse("model.merges is not an array");
    spec.merges.reserve(merges->size());
    for (const json& m : *merges) {
      std::string merge;
      if (m.is_string()) {
        merge = m.get<std::string>();
        size_t space = merge.find(' ');
        if (space == 0 || space == std::string::npos || space + 1 == merge.size() ||
            merge.find(' ', space + 1) != std::string::npos) {
          return Refuse(mf::Cat("merge #", spec.merges.size(), " '", merge.substr(0, 64),
                                "' is not two tokens separated by one space"));
        }
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string() &&
                 !m[0].get<std::string>().empty() && !m[1].get<std::string>().empty()) {
        merge = mf::Cat(m[0].get<std::string>(), " ", m[1].get<std::string>());
      } else {
        return Refuse(mf::Cat("merge #", spec.merges.size(), " is neither \"a b\" nor [a, b]"));
      }
      spec.merges.push_back(std::move(merge));
    }
  }
  if (auto unk = model->find("unk_token"); unk != model->end() && unk->is_string()) {
    if (auto it = ids.find(unk->get<std::string>()); it != ids.end()) spec.unk_id = it->second;
  }
  // A post-processor template starting with a special token means BOS is prepended.
  if (auto post = root.find("post_processor");
      post != root.end() && TypeOf(*post) == "TemplateProcessing") {
    auto single = post->find("single");
    if (single != post->end() && single->is_array() && !single->empty() &&
        (*single)[0].is_object() && (*single)[0].contains("SpecialToken")) {
      spec.add_bos = true;
    }
  }
  if (!tokenizer_config_json.empty()) {
    MF_RETURN_IF_ERROR(ApplyTokenizerConfig(tokenizer_config_json, ids, &spec));
  }
  return spec;
}

}  // namespace longread::engine
