// Writes our token ids for every file of a corpus directory, in the format of
// scripts/tokenizer_oracle.py: one line per file, sorted by path, "path<TAB>id id ...". Files
// under special/ are encoded with special-token parsing, all others as document text.
//
//   longread_tokenize --model GGUF --corpus DIR --out FILE
//   longread_tokenize --pieces PRE --corpus DIR --out FILE   (pre-tokenizer piece byte lengths)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "engine/model_files/model_file.h"
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"

namespace {

int Usage() {
  std::cerr << "usage: longread_tokenize (--model GGUF | --pieces PRE) --corpus DIR --out FILE\n";
  return 2;
}

std::vector<std::string> CorpusFiles(const std::string& corpus) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths;
  for (const auto& entry : fs::recursive_directory_iterator(corpus)) {
    if (entry.is_regular_file()) paths.push_back(fs::relative(entry.path(), corpus).string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::string ReadFile(const std::string& corpus, const std::string& rel) {
  std::ifstream in(std::filesystem::path(corpus) / rel, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int WritePieces(const std::string& pre, const std::string& corpus, const std::string& out_path) {
  auto kind = longread::engine::PreTokenizerFromName(pre);
  if (!kind.ok()) {
    std::cerr << "longread_tokenize: " << kind.status() << "\n";
    return 1;
  }
  std::ofstream out(out_path);
  for (const std::string& rel : CorpusFiles(corpus)) {
    const std::string text = longread::engine::unicode::ReplaceInvalidUtf8(ReadFile(corpus, rel));
    out << rel << '\t';
    size_t n = 0;
    longread::engine::PreTokenize(
        *kind, text, [&](std::string_view piece) { out << (n++ ? " " : "") << piece.size(); });
    out << '\n';
  }
  return out.good() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, pieces, corpus, out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--model") {
      model = argv[i + 1];
    } else if (flag == "--pieces") {
      pieces = argv[i + 1];
    } else if (flag == "--corpus") {
      corpus = argv[i + 1];
    } else if (flag == "--out") {
      out_path = argv[i + 1];
    } else {
      return Usage();
    }
  }
  if (model.empty() == pieces.empty() || corpus.empty() || out_path.empty()) return Usage();
  if (!pieces.empty()) return WritePieces(pieces, corpus, out_path);

  auto file = longread::engine::ModelFile::Open(model);
  if (!file.ok()) {
    std::cerr << "longread_tokenize: " << file.status() << "\n";
    return 1;
  }
  auto tokenizer = longread::engine::Tokenizer::Create((*file)->tokenizer());
  if (!tokenizer.ok()) {
    std::cerr << "longread_tokenize: " << tokenizer.status() << "\n";
    return 1;
  }

  const std::vector<std::string> paths = CorpusFiles(corpus);

  std::ofstream out(out_path);
  size_t bytes = 0;
  double seconds = 0;
  for (const std::string& rel : paths) {
    const std::string text = ReadFile(corpus, rel);
    const bool parse_special = rel.rfind("special/", 0) == 0;
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = (*tokenizer)->Encode(text, parse_special);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bytes += text.size();
    out << rel << '\t';
    for (size_t k = 0; k < ids.size(); ++k) out << (k ? " " : "") << ids[k];
    out << '\n';
  }
  if (!out.good()) {
    std::cerr << "longread_tokenize: cannot write " << out_path << "\n";
    return 1;
  }
  std::fprintf(stderr, "longread_tokenize: %zu files, %zu bytes, %.3f s encoding, %.2f MB/s\n",
               paths.size(), bytes, seconds, seconds > 0 ? bytes / seconds / 1e6 : 0.0);
  return 0;
}
