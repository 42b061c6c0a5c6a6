#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"

namespace longread::engine {
namespace {

constexpr int32_t kTypeNormal = 1;
constexpr int32_t kTypeControl = 3;
constexpr int32_t kTypeUserDefined = 4;
constexpr int32_t kTypeByte = 6;
constexpr size_t kMaxCachedWords = 1 << 16;

// GPT-2's reversible byte -> character map: printable Latin-1 bytes stand for themselves, the
// rest take the code points from U+0100 up in byte order, so every token is printable text.
std::array<char32_t, 256> ByteToChar() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    map[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

// Debian's Abseil has its own string_view type; hashed lookups need it.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// The bytes a byte-level token stands for; a character outside the byte map keeps its UTF-8.
std::string UnmapToken(std::string_view text, const absl::flat_hash_map<char32_t, uint8_t>& inv) {
  if (!unicode::IsValidUtf8(text)) return std::string(text);
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    int len;
    const char32_t c = unicode::DecodeValid(text, pos, &len);
    auto it = inv.find(c);
    if (it != inv.end()) {
      out.push_back(static_cast<char>(it->second));
    } else {
      out.append(text.substr(pos, len));
    }
    pos += len;
  }
  return out;
}

absl::Status CheckSpecialId(std::string_view field, int32_t id, size_t n) {
  if (id < -1 || id >= static_cast<int64_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer spec: ", std::string(field), " = ",
                                                   id, " is outside the vocabulary [0, ", n, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

// Per-call working memory, reused across the words of one Encode call.
struct Tokenizer::Scratch {
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;  // index of the left symbol
    int32_t left;
    int32_t right;
    int32_t result;
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::string mapped;
  // piece -> its ids, stored as a range of the output (which only grows during the call).
  absl::flat_hash_map<absl::string_view, std::pair<uint32_t, uint32_t>> cache;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(const TokenizerSpec& spec) {
  if (spec.model != "gpt2") {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.ggml.model: \"", spec.model,
                     "\" is not supported (only byte-level BPE, \"gpt2\")"));
  }
  auto pre = PreTokenizerFromName(spec.pre);
  if (!pre.ok()) return pre.status();
  const size_t n = spec.tokens.size();
  if (n == 0 || n > (1u << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.ggml.tokens: vocabulary size ", n, " is not in [1, 2^30]"));
  }
  if (!spec.token_types.empty() && spec.token_types.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.ggml.token_type: has ", spec.token_types.size(), " entries for ", n, " tokens"));
  }
  for (auto [field, id] : {std::pair<std::string_view, int32_t>{"bos_token_id", spec.bos_id},
                           {"eos_token_id", spec.eos_id},
                           {"unknown_token_id", spec.unk_id},
                           {"padding_token_id", spec.pad_id}}) {
    if (absl::Status s = CheckSpecialId(field, id, n); !s.ok()) return s;
  }

  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  tok->pre_ = *pre;
  tok->ignore_merges_ = *pre == PreTokenizerKind::kLlama3;
  tok->bos_id_ = spec.bos_id;
  tok->eos_id_ = spec.eos_id;
  tok->add_bos_ = spec.add_bos;
  tok->token_types_ =
      spec.token_types.empty() ? std::vector<int32_t>(n, kTypeNormal) : spec.token_types;
  tok->token_ids_.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    const int32_t type = tok->token_types_[id];
    if (type < 1 || type > 6) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.token_type[", id, "] = ", type,
                                                     " is not a token type (1..6)"));
    }
    if (spec.tokens[id].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.tokens[", id, "] is empty"));
    }
    auto [it, inserted] = tok->token_ids_.emplace(spec.tokens[id], static_cast<int32_t>(id));
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.tokens[", id, "] \"",
                                                     spec.tokens[id], "\" duplicates token ",
                                                     it->second));
    }
  }

  const std::array<char32_t, 256> byte_to_char = ByteToChar();
  absl::flat_hash_map<char32_t, uint8_t> char_to_byte;
  for (int b = 0; b < 256; ++b) {
    char_to_byte[byte_to_char[b]] = static_cast<uint8_t>(b);
    std::string ch;
    unicode::AppendUtf8(byte_to_char[b], &ch);
    auto it = tok->token_ids_.find(ch);
    tok->byte_token_[b] = it == tok->token_ids_.end() ? -1 : it->second;
  }

  tok->decoded_offset_.reserve(n + 1);
  for (size_t id = 0; id < n; ++id) {
    tok->decoded_offset_.push_back(static_cast<uint32_t>(tok->decoded_.size()));
    const int32_t type = tok->token_types_[id];
    if (type == kTypeControl || type == kTypeUserDefined || type == kTypeByte) {
      tok->decoded_ += spec.tokens[id];
    } else {
      tok->decoded_ += UnmapToken(spec.tokens[id], char_to_byte);
    }
    if (tok->decoded_.size() > (1u << 31)) {
      return absl::InvalidArgumentError("tokenizer.ggml.tokens: total text exceeds 2 GiB");
    }
    if (type == kTypeControl || type == kTypeUserDefined) {
      tok->specials_.push_back({spec.tokens[id], static_cast<int32_t>(id), type == kTypeControl});
      tok->special_first_byte_[static_cast<uint8_t>(spec.tokens[id][0])] = true;
    }
  }
  tok->decoded_offset_.push_back(static_cast<uint32_t>(tok->decoded_.size()));
  std::stable_sort(
      tok->specials_.begin(), tok->specials_.end(),
      [](const SpecialToken& a, const SpecialToken& b) { return a.text.size() > b.text.size(); });

  tok->merges_.reserve(spec.merges.size());
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const std::string& m = spec.merges[rank];
    const size_t space = m.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == m.size() ||
        m.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.ggml.merges[", rank, "] \"", m, "\" is not \"left right\""));
    }
    const absl::string_view left(m.data(), space);
    const absl::string_view right(m.data() + space + 1, m.size() - space - 1);
    auto l = tok->token_ids_.find(left);
    auto r = tok->token_ids_.find(right);
    auto result = tok->token_ids_.find(absl::StrCat(left, right));
    if (l == tok->token_ids_.end() || r == tok->token_ids_.end() ||
        result == tok->token_ids_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.merges[", rank, "] \"", m,
                                                     "\" names a token not in the vocabulary (",
                                                     l == tok->token_ids_.end()   ? "left"
                                                     : r == tok->token_ids_.end() ? "right"
                                                                                  : "merged",
                                                     ")"));
    }
    auto [it, inserted] = tok->merges_.emplace(PairKey(l->second, r->second),
                                               Merge{static_cast<int32_t>(rank), result->second});
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.merges[", rank, "] \"", m,
                                                     "\" duplicates merge ", it->second.rank));
    }
  }
  return tok;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special) const {
  std::string replaced;
  if (!unicode::IsValidUtf8(text)) {
    replaced = unicode::ReplaceInvalidUtf8(text);
    text = replaced;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  Scratch scratch;
  size_t segment = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!special_first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t id;
    const size_t length = MatchSpecialAt(text, pos, parse_special, &id);
    if (length == 0) {
      ++pos;
      continue;
    }
    EncodeText(text.substr(segment, pos - segment), &scratch, &out);
    out.push_back(id);
    pos += length;
    segment = pos;
  }
  EncodeText(text.substr(segment), &scratch, &out);
  return out;
}

size_t Tokenizer::MatchSpecialAt(std::string_view text, size_t pos, bool parse_special,
                                 int32_t* id) const {
  if (pos >= text.size() || !special_first_byte_[static_cast<uint8_t>(text[pos])]) return 0;
  for (const SpecialToken& s : specials_) {
    if ((parse_special || !s.control) && text.substr(pos).starts_with(s.text)) {
      *id = s.id;
      return s.text.size();
    }
  }
  return 0;
}

void Tokenizer::EncodeText(std::string_view text, Scratch* scratch,
                           std::vector<int32_t>* out) const {
  if (text.empty()) return;
  PreTokenize(pre_, text, [&](std::string_view piece) { EncodePiece(piece, scratch, out); });
}

void Tokenizer::EncodePieces(const std::vector<std::string_view>& pieces, WordCache* cache,
                             std::vector<int32_t>* out) const {
  Scratch scratch;
  for (std::string_view piece : pieces) {
    if (piece.size() == 1) {
      const int32_t id = byte_token_[static_cast<uint8_t>(piece[0])];
      if (id >= 0) out->push_back(id);
      continue;
    }
    if (auto it = cache->find(AsAbsl(piece)); it != cache->end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      continue;
    }
    const size_t start = out->size();
    Bpe(piece, &scratch, out);
    if (cache->size() < kMaxCachedWords) {
      cache->emplace(std::string(piece), std::vector<int32_t>(out->begin() + start, out->end()));
    }
  }
}

void Tokenizer::EncodePiece(std::string_view piece, Scratch* scratch,
                            std::vector<int32_t>* out) const {
  if (piece.size() == 1) {
    const int32_t id = byte_token_[static_cast<uint8_t>(piece[0])];
    if (id >= 0) out->push_back(id);
    return;
  }
  if (auto it = scratch->cache.find(AsAbsl(piece)); it != scratch->cache.end()) {
    const auto [offset, count] = it->second;
    out->reserve(out->size() + count);
    for (uint32_t k = 0; k < count; ++k) out->push_back((*out)[offset + k]);
    return;
  }
  const size_t start = out->size();
  Bpe(piece, scratch, out);
  if (scratch->cache.size() < kMaxCachedWords) {
    scratch->cache.emplace(AsAbsl(piece), std::pair<uint32_t, uint32_t>(
                                              static_cast<uint32_t>(start), out->size() - start));
  }
}

void Tokenizer::Bpe(std::string_view piece, Scratch* scratch, std::vector<int32_t>* out) const {
  if (ignore_merges_) {
    static const std::array<char32_t, 256> kByteToChar = ByteToChar();
    scratch->mapped.clear();
    for (char c : piece)
      unicode::AppendUtf8(kByteToChar[static_cast<uint8_t>(c)], &scratch->mapped);
    auto it = token_ids_.find(scratch->mapped);
    if (it != token_ids_.end() && token_types_[it->second] == kTypeNormal) {
      out->push_back(it->second);
      return;
    }
  }
  auto& symbols = scratch->symbols;
  auto& heap = scratch->heap;
  symbols.clear();
  heap.clear();
  for (char c : piece) {
    const int32_t id = byte_token_[static_cast<uint8_t>(c)];
    if (id < 0) continue;  // no token for this byte: dropped, as the reference does
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // Min-heap on (rank, position): the lowest-ranked merge first, leftmost among equals.
  auto later = [](const Scratch::Candidate& a, const Scratch::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto consider = [&](int32_t left_pos) {
    const int32_t left = symbols[left_pos].id;
    const int32_t right = symbols[symbols[left_pos].next].id;
    auto it = merges_.find(PairKey(left, right));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left_pos, left, right, it->second.result});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Scratch::Candidate c = heap.back();
    heap.pop_back();
    Scratch::Symbol& sym = symbols[c.pos];
    // Stale when either side has merged since: token ids only grow, so ids identify the pair.
    if (sym.id != c.left || sym.next < 0 || symbols[sym.next].id != c.right) continue;
    Scratch::Symbol& right = symbols[sym.next];
    sym.id = c.result;
    right.id = -1;
    sym.next = right.next;
    if (sym.next >= 0) symbols[sym.next].prev = c.pos;
    if (sym.prev >= 0) consider(sym.prev);
    if (sym.next >= 0) consider(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out->push_back(symbols[i].id);
}

std::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return std::string_view(decoded_).substr(decoded_offset_[id],
                                           decoded_offset_[id + 1] - decoded_offset_[id]);
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      unicode::AppendUtf8(unicode::kReplacementChar, &out);
    } else {
      out.append(TokenBytes(id));
    }
  }
  return out;
}

bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && id < vocab_size() && token_types_[id] == kTypeControl;
}

int32_t Tokenizer::TokenId(std::string_view spec_text) const {
  auto it = token_ids_.find(AsAbsl(spec_text));
  return it == token_ids_.end() ? -1 : it->second;
}

std::string TokenDecoder::Push(int32_t id) {
  if (id < 0 || id >= tokenizer_.vocab_size()) {
    pending_ += "\xEF\xBF\xBD";
  } else {
    pending_.append(tokenizer_.TokenBytes(id));
  }
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const unicode::Utf8Prefix p = unicode::ScanUtf8(std::string_view(pending_).substr(pos));
    if (p.complete) {
      out.append(pending_, pos, p.length);
    } else if (p.truncated) {
      break;  // may complete with the next token
    } else {
      unicode::AppendUtf8(unicode::kReplacementChar, &out);
    }
    pos += p.length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string TokenDecoder::Flush() {
  std::string out = pending_.empty() ? "" : unicode::ReplaceInvalidUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace longread::engine
