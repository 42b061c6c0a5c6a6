#include "bench/quality/haystack.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace longread::bench {
namespace {

namespace fs = std::filesystem;

constexpr char kFillerSentence[] =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";

bool IsTextFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  char head[4096];
  in.read(head, sizeof head);
  const std::streamsize n = in.gcount();
  return n >= 256 && std::find(head, head + n, '\0') == head + n;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int64_t Uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

bool EndsLine(const engine::Tokenizer& tokenizer, int32_t token) {
  const std::string_view bytes = tokenizer.TokenBytes(token);
  return !bytes.empty() && bytes.back() == '\n';
}

}  // namespace

absl::StatusOr<CorpusSource> ParseCorpusSource(const std::string& spec) {
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  if (parts.empty() || parts[0].empty() || parts.size() > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("--haystack-dir: expected DIR[:NAME[:MAX_FILES]], got '", spec, "'"));
  }
  CorpusSource source{parts[0], parts.size() > 1 ? parts[1] : "", 400};
  if (parts.size() > 2 &&
      (!absl::SimpleAtoi(parts[2], &source.max_files) || source.max_files < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--haystack-dir: MAX_FILES must be an integer >= 1 in '", spec, "'"));
  }
  return source;
}

absl::StatusOr<Corpus> Corpus::Build(const std::vector<CorpusSource>& sources) {
  Corpus corpus;
  for (const CorpusSource& source : sources) {
    std::error_code ec;
    if (!fs::is_directory(source.dir, ec)) {
      corpus.skipped_.push_back(source.dir);
      continue;
    }
    std::vector<std::string> all;
    for (auto it = fs::recursive_directory_iterator(
             source.dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      if (!source.name.empty() && it->path().filename() != source.name) continue;
      all.push_back(it->path().string());
    }
    std::sort(all.begin(), all.end());
    std::vector<std::string> text;
    for (const std::string& f : all) {
      if (IsTextFile(f)) text.push_back(f);
    }
    std::vector<std::string> kept;
    const int64_t n = static_cast<int64_t>(text.size());
    const int64_t take = std::min(n, source.max_files);
    for (int64_t i = 0; i < take; ++i) kept.push_back(text[i * n / take]);
    if (kept.empty()) {
      corpus.skipped_.push_back(source.dir);
      continue;
    }
    corpus.source_dirs_.push_back(source.dir);
    corpus.files_.push_back(std::move(kept));
  }
  if (corpus.files_.empty()) {
    return absl::NotFoundError("haystack corpus: no text files found in any --haystack-dir");
  }
  return corpus;
}

int64_t Corpus::file_count() const {
  int64_t n = 0;
  for (const auto& f : files_) n += static_cast<int64_t>(f.size());
  return n;
}

std::vector<std::pair<std::string, int64_t>> Corpus::Summary() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (size_t i = 0; i < files_.size(); ++i) {
    out.emplace_back(source_dirs_[i], static_cast<int64_t>(files_[i].size()));
  }
  return out;
}

std::string Corpus::Sample(std::mt19937_64& rng, int64_t min_bytes) const {
  std::string out;
  while (static_cast<int64_t>(out.size()) < min_bytes) {
    const auto& files = files_[Uniform(rng, 0, static_cast<int64_t>(files_.size()) - 1)];
    const std::string text =
        ReadFile(files[Uniform(rng, 0, static_cast<int64_t>(files.size()) - 1)]);
    if (text.empty()) continue;
    const int64_t want = Uniform(rng, 1024, 4096);
    size_t begin = static_cast<size_t>(Uniform(rng, 0, static_cast<int64_t>(text.size()) - 1));
    begin = begin == 0 ? 0 : text.find('\n', begin);
    if (begin == std::string::npos) begin = 0;
    if (begin > 0) ++begin;
    size_t end = text.find('\n', std::min(text.size(), begin + static_cast<size_t>(want)));
    end = end == std::string::npos ? text.size() : end + 1;
    if (end <= begin) continue;
    out.append(text, begin, end - begin);
    if (out.back() != '\n') out.push_back('\n');
    out.push_back('\n');
  }
  return out;
}

std::vector<int32_t> HaystackTokens(const engine::Tokenizer& tokenizer, HaystackKind kind,
                                    const Corpus* corpus, std::mt19937_64& rng, int64_t n_tokens) {
  std::vector<int32_t> tokens;
  if (kind == HaystackKind::kFiller) {
    const std::vector<int32_t> sentence = tokenizer.Encode(kFillerSentence, false);
    while (static_cast<int64_t>(tokens.size()) < n_tokens) {
      tokens.insert(tokens.end(), sentence.begin(), sentence.end());
    }
  } else {
    // Real text runs about 3–4 bytes per token; sample more until there are enough tokens.
    while (static_cast<int64_t>(tokens.size()) < n_tokens) {
      const int64_t missing = n_tokens - static_cast<int64_t>(tokens.size());
      const std::vector<int32_t> more =
          tokenizer.Encode(corpus->Sample(rng, 4 * missing + 1024), false);
      tokens.insert(tokens.end(), more.begin(), more.end());
    }
  }
  tokens.resize(static_cast<size_t>(n_tokens));
  return tokens;
}

int NeedlePhrasingCount() { return 5; }

std::string NeedleText(int phrasing, const std::string& key) {
  switch (phrasing % NeedlePhrasingCount()) {
    case 0:
      return absl::StrCat("The pass key is ", key, ". Remember it. ", key, " is the pass key.");
    case 1:
      return absl::StrCat("Important: the pass key is ", key, ". Keep it in mind.");
    case 2:
      return absl::StrCat("Note for the reader: the secret pass key is ", key, ".");
    case 3:
      return absl::StrCat("The pass key for this document is ", key, ". Do not forget it.");
    default:
      return absl::StrCat("Remember this pass key: ", key, ". The pass key is ", key, ".");
  }
}

int64_t InsertAtLineStart(const engine::Tokenizer& tokenizer, std::vector<int32_t>* haystack,
                          const std::vector<int32_t>& insert, double depth) {
  const int64_t n = static_cast<int64_t>(haystack->size());
  const int64_t room = std::max<int64_t>(0, n - static_cast<int64_t>(insert.size()));
  const int64_t target = std::llround(std::clamp(depth, 0.0, 1.0) * static_cast<double>(room));
  // The nearest position p <= room whose previous token ends a line (p = 0 always qualifies).
  int64_t at = 0;
  for (int64_t d = 0; d <= room; ++d) {
    const int64_t lo = target - d, hi = target + d;
    if (lo >= 0 && (lo == 0 || EndsLine(tokenizer, (*haystack)[lo - 1]))) {
      at = lo;
      break;
    }
    if (hi <= room && EndsLine(tokenizer, (*haystack)[hi - 1])) {
      at = hi;
      break;
    }
  }
  haystack->insert(haystack->begin() + at, insert.begin(), insert.end());
  haystack->resize(static_cast<size_t>(n));
  return at;
}

PasskeyDocument MakePasskeyDocument(const engine::Tokenizer& tokenizer, HaystackKind kind,
                                    const Corpus* corpus, std::mt19937_64& rng, int64_t n_tokens,
                                    double depth) {
  PasskeyDocument doc;
  doc.key = std::to_string(Uniform(rng, 10000, 99999));
  doc.phrasing = static_cast<int>(Uniform(rng, 0, NeedlePhrasingCount() - 1));
  doc.tokens = HaystackTokens(tokenizer, kind, corpus, rng, n_tokens);
  const std::vector<int32_t> needle =
      tokenizer.Encode(NeedleText(doc.phrasing, doc.key) + "\n", false);
  doc.needle_at = InsertAtLineStart(tokenizer, &doc.tokens, needle, depth);
  return doc;
}

std::vector<Fact> MakeFacts(std::mt19937_64& rng, int count) {
  static constexpr const char* kOnsets[] = {"Mar",  "Tes", "Quil", "Vor",  "Bren", "Ald",
                                            "Kest", "Orm", "Sel",  "Thal", "Wyn",  "Dro",
                                            "Fen",  "Gal", "Hask", "Ivel"};
  static constexpr const char* kCodas[] = {"wick", "aly",  "ford", "enna",  "oran", "isse",
                                           "mont", "avel", "ric",  "undra", "esh",  "olt"};
  static constexpr const char* kFirst[] = {"Ilsa",  "Tomas",  "Greta", "Oskar",  "Mirela",
                                           "Anouk", "Bertil", "Calla", "Dmitri", "Elin"};
  static constexpr const char* kRoles[] = {"Captain", "Doctor",  "Professor", "Engineer",
                                           "Mayor",   "Admiral", "Judge",     "Sister"};
  static constexpr const char* kEvents[] = {
      "founded the harbor of",         "discovered a copper mine near",
      "signed the peace treaty of",    "built the first stone bridge of",
      "won the chess championship of", "mapped the northern coast of",
      "opened the first library of",   "survived the great flood of"};
  auto name = [&] {
    return absl::StrCat(kOnsets[Uniform(rng, 0, std::size(kOnsets) - 1)],
                        kCodas[Uniform(rng, 0, std::size(kCodas) - 1)]);
  };
  std::set<std::string> used_names;
  std::set<int64_t> used_years;
  std::vector<Fact> facts;
  count = std::min<int>(count, 100);  // distinct surnames and years stay plentiful
  while (static_cast<int>(facts.size()) < count) {
    std::string surname = name();
    const int64_t year = Uniform(rng, 1520, 1899);
    if (!used_names.insert(surname).second || !used_years.insert(year).second) continue;
    Fact fact;
    fact.name = surname;
    fact.number = std::to_string(year);
    fact.sentence = absl::StrCat(kRoles[Uniform(rng, 0, std::size(kRoles) - 1)], " ",
                                 kFirst[Uniform(rng, 0, std::size(kFirst) - 1)], " ", surname, " ",
                                 kEvents[Uniform(rng, 0, std::size(kEvents) - 1)], " ", name(),
                                 " in ", fact.number, ".");
    facts.push_back(std::move(fact));
  }
  return facts;
}

std::vector<int32_t> MakeFactsDocument(const engine::Tokenizer& tokenizer, const Corpus& corpus,
                                       std::mt19937_64& rng, int64_t n_tokens,
                                       const std::vector<Fact>& facts) {
  std::vector<int32_t> doc = HaystackTokens(tokenizer, HaystackKind::kReal, &corpus, rng, n_tokens);
  const double n = static_cast<double>(facts.size());
  for (size_t i = 0; i < facts.size(); ++i) {
    InsertAtLineStart(tokenizer, &doc, tokenizer.Encode(facts[i].sentence + "\n", false),
                      (static_cast<double>(i) + 0.5) / n);
  }
  return doc;
}

int CountMentionedFacts(const std::string& text, const std::vector<Fact>& facts,
                        std::vector<bool>* mentioned) {
  mentioned->assign(facts.size(), false);
  int count = 0;
  for (size_t i = 0; i < facts.size(); ++i) {
    if (text.find(facts[i].name) != std::string::npos ||
        text.find(facts[i].number) != std::string::npos) {
      (*mentioned)[i] = true;
      ++count;
    }
  }
  return count;
}

}  // namespace longread::bench
