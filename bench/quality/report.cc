#include "bench/quality/report.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace longread::bench {
namespace {

std::string SourceDir() {
  const char* src = std::getenv("LONGREAD_SOURCE_DIR");
  return src != nullptr ? src : ".";
}

std::string FirstLine(const std::string& path, const std::string& prefix) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line
                                        : line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "";
}

std::string CommandOutput(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return "";
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, pipe.get()) != nullptr) out += buf;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string Num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

// Accuracy of one method at one (length[, depth]) and how it compares with dense attention on
// the same documents.
struct Cell {
  int64_t trials = 0, correct = 0, impossible = 0;
  int64_t dense_correct_docs = 0, kept_of_dense = 0;  // documents dense got right; of those, ours
  double tok_per_s_sum = 0, decode_tok_per_s_sum = 0;
  double key_held_sum = 0;  // over trials where the key's tokens were located
  int64_t key_held_trials = 0;
  double key_held() const { return key_held_trials > 0 ? key_held_sum / key_held_trials : -1; }
  double accuracy() const { return trials > 0 ? static_cast<double>(correct) / trials : 0; }
};

using DocKey = std::tuple<int64_t, double, int>;  // length, depth, trial

struct Summary {
  std::vector<std::string> methods;
  std::vector<int64_t> lengths;
  std::map<std::pair<std::string, int64_t>, Cell> by_length;
  std::map<std::tuple<std::string, int64_t, double>, Cell> by_depth;
};

Summary Summarize(const std::vector<PasskeyTrial>& trials) {
  Summary s;
  std::map<DocKey, bool> dense_ok;
  for (const PasskeyTrial& t : trials) {
    if (t.method == "dense" && t.possible) dense_ok[{t.length, t.depth, t.trial}] = t.correct;
  }
  for (const PasskeyTrial& t : trials) {
    if (std::find(s.methods.begin(), s.methods.end(), t.method) == s.methods.end()) {
      s.methods.push_back(t.method);
    }
    if (std::find(s.lengths.begin(), s.lengths.end(), t.length) == s.lengths.end()) {
      s.lengths.push_back(t.length);
    }
    for (Cell* c :
         {&s.by_length[{t.method, t.length}], &s.by_depth[{t.method, t.length, t.depth}]}) {
      if (!t.possible) {
        ++c->impossible;
        continue;
      }
      ++c->trials;
      c->correct += t.correct;
      c->tok_per_s_sum += t.read_seconds > 0 ? t.read_tokens / t.read_seconds : 0;
      c->decode_tok_per_s_sum +=
          t.generate_seconds > 0 ? t.generated_tokens / t.generate_seconds : 0;
      if (t.key_held_share >= 0) {
        c->key_held_sum += t.key_held_share;
        ++c->key_held_trials;
      }
      auto d = dense_ok.find({t.length, t.depth, t.trial});
      if (d != dense_ok.end() && d->second) {
        ++c->dense_correct_docs;
        c->kept_of_dense += t.correct;
      }
    }
  }
  std::sort(s.lengths.begin(), s.lengths.end());
  return s;
}

std::string CellJson(const std::string& method, int64_t length, const Cell& c, const Cell* dense) {
  std::string j = absl::StrCat("{\"method\":", JsonString(method), ",\"length\":", length,
                               ",\"trials\":", c.trials, ",\"correct\":", c.correct);
  if (c.trials == 0) return absl::StrCat(j, ",\"possible\":false}");
  absl::StrAppend(&j, ",\"accuracy\":", Num(c.accuracy()));
  if (dense != nullptr && dense->trials > 0 && dense->correct > 0) {
    absl::StrAppend(&j, ",\"share_of_dense\":", Num(c.accuracy() / dense->accuracy()),
                    ",\"dense_correct_documents\":", c.dense_correct_docs,
                    ",\"of_those_correct\":", c.kept_of_dense);
  }
  absl::StrAppend(&j, ",\"mean_key_held_share\":", Num(c.key_held()));
  absl::StrAppend(&j, ",\"mean_read_tokens_per_s\":", Num(c.tok_per_s_sum / c.trials),
                  ",\"mean_decode_tokens_per_s\":", Num(c.decode_tok_per_s_sum / c.trials), "}");
  return j;
}

}  // namespace

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out.append("\\n");
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out.append(buf);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out + "\"";
}

void Report::FillEnvironment() {
  const std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", std::localtime(&now));
  date = buf;
  device =
      absl::StrCat("CPU: ", FirstLine("/proc/cpuinfo", "model name"), ", ",
                   std::thread::hardware_concurrency(), " hardware threads, ", threads, " used");
  std::ifstream loadavg("/proc/loadavg");
  std::getline(loadavg, load_average);
  git_commit = CommandOutput(absl::StrCat("git -C '", SourceDir(), "' rev-parse HEAD 2>/dev/null"));
  if (git_commit.empty()) git_commit = "unknown";
}

void Report::PrintTables() const {
  const Summary s = Summarize(passkey);
  if (!s.methods.empty()) {
    std::printf("\npasskey retrieval (scorer: %s)%s\n", scorer.c_str(),
                stopped_early ? "  [stopped early by --max-seconds]" : "");
    std::printf("%8s  %-19s %15s %9s %15s %9s %12s\n", "length", "method", "correct/trials",
                "accuracy", "share of dense", "key held", "read tok/s");
    for (int64_t length : s.lengths) {
      const auto dense = s.by_length.find({"dense", length});
      for (const std::string& m : s.methods) {
        auto it = s.by_length.find({m, length});
        if (it == s.by_length.end()) continue;
        const Cell& c = it->second;
        if (c.trials == 0) {
          std::printf("%8lld  %-19s %15s\n", static_cast<long long>(length), m.c_str(),
                      "not possible");
          continue;
        }
        std::string share = "-";
        if (dense != s.by_length.end() && dense->second.correct > 0) {
          share = absl::StrCat(
              static_cast<int>(100 * c.accuracy() / dense->second.accuracy() + 0.5), "%");
        }
        std::printf("%8lld  %-19s %15s %8.0f%% %15s %8.0f%% %12.0f\n",
                    static_cast<long long>(length), m.c_str(),
                    absl::StrCat(c.correct, "/", c.trials).c_str(), 100 * c.accuracy(),
                    share.c_str(), 100 * c.key_held(), c.tok_per_s_sum / c.trials);
      }
    }
  }
  if (!perplexity.empty()) {
    std::printf("\nperplexity (NLL over positions >= first segment)\n%-17s %8s %10s %10s %8s\n",
                "method", "tokens", "mean NLL", "ppl", "seconds");
    for (const PerplexityResult& r : perplexity) {
      if (!r.possible) {
        std::printf("%-17s %8lld  not possible\n", r.method.c_str(),
                    static_cast<long long>(r.tokens));
      } else {
        std::printf("%-17s %8lld %10.4f %10.3f %8.0f\n", r.method.c_str(),
                    static_cast<long long>(r.tokens), r.mean_nll, r.perplexity, r.seconds);
      }
    }
  }
  if (!facts.empty()) {
    std::printf("\nplanted facts mentioned in the summary\n");
    for (const FactsResult& r : facts) {
      if (!r.possible) {
        std::printf("%-17s not possible at %lld tokens\n", r.method.c_str(),
                    static_cast<long long>(r.total_tokens));
      } else {
        std::printf("%-17s %d/%zu\n", r.method.c_str(), r.mentioned_count, r.facts.size());
      }
    }
  }
  std::fflush(stdout);
}

std::string Report::WriteJson(const std::string& requested) const {
  std::string path = requested;
  if (path.empty()) {
    path = absl::StrCat(SourceDir(), "/bench/results/quality-", date.substr(0, 10), ".json");
  }
  std::ostringstream j;
  j << "{\n  \"bench\": \"quality\",\n  \"date\": " << JsonString(date)
    << ",\n  \"device\": " << JsonString(device)
    << ",\n  \"load_average_at_start\": " << JsonString(load_average)
    << ",\n  \"command\": " << JsonString(command)
    << ",\n  \"git_commit\": " << JsonString(git_commit) << ",\n  \"model\": " << JsonString(model)
    << ",\n  \"model_fingerprint\": " << JsonString(model_fingerprint)
    << ",\n  \"context_length\": " << context_length << ",\n  \"scorer\": " << JsonString(scorer)
    << ",\n  \"scorer_provenance\": " << JsonString(scorer_provenance)
    << ",\n  \"method_scorers\": {";
  for (size_t i = 0; i < method_scorers.size(); ++i) {
    j << (i ? ", " : "") << JsonString(method_scorers[i].first) << ": "
      << JsonString(method_scorers[i].second);
  }
  j << "},\n  \"config_notes\": [";
  for (size_t i = 0; i < config_notes.size(); ++i) {
    j << (i ? ", " : "") << JsonString(config_notes[i]);
  }
  j << "],\n  \"config\": {";
  for (size_t i = 0; i < config.size(); ++i) {
    j << (i ? ", " : "") << JsonString(config[i].first) << ": " << config[i].second;
  }
  j << "},\n  \"corpus\": [";
  for (size_t i = 0; i < corpus.size(); ++i) {
    j << (i ? ", " : "") << "{\"dir\": " << JsonString(corpus[i].first)
      << ", \"files\": " << corpus[i].second << "}";
  }
  j << "],\n  \"corpus_skipped\": [";
  for (size_t i = 0; i < corpus_skipped.size(); ++i) {
    j << (i ? ", " : "") << JsonString(corpus_skipped[i]);
  }
  j << "],\n  \"stopped_early\": " << (stopped_early ? "true" : "false")
    << ",\n  \"elapsed_seconds\": " << Num(elapsed_seconds)
    << ",\n  \"error\": " << JsonString(error);

  const Summary s = Summarize(passkey);
  j << ",\n  \"passkey_summary\": [";
  bool first = true;
  for (int64_t length : s.lengths) {
    const auto dense = s.by_length.find({"dense", length});
    for (const std::string& m : s.methods) {
      auto it = s.by_length.find({m, length});
      if (it == s.by_length.end()) continue;
      j << (first ? "\n    " : ",\n    ")
        << CellJson(m, length, it->second, dense == s.by_length.end() ? nullptr : &dense->second);
      first = false;
    }
  }
  j << "\n  ],\n  \"passkey_by_depth\": [";
  first = true;
  for (const auto& [key, cell] : s.by_depth) {
    const auto& [m, length, depth] = key;
    const auto dense = s.by_depth.find({"dense", length, depth});
    std::string c = CellJson(m, length, cell, dense == s.by_depth.end() ? nullptr : &dense->second);
    c.insert(1, absl::StrCat("\"depth\":", Num(depth), ","));
    j << (first ? "\n    " : ",\n    ") << c;
    first = false;
  }
  j << "\n  ],\n  \"passkey_trials\": [";
  for (size_t i = 0; i < passkey.size(); ++i) {
    const PasskeyTrial& t = passkey[i];
    j << (i ? ",\n    " : "\n    ") << "{\"method\":" << JsonString(t.method)
      << ",\"length\":" << t.length << ",\"depth\":" << Num(t.depth) << ",\"trial\":" << t.trial
      << ",\"key\":" << JsonString(t.key) << ",\"phrasing\":" << t.phrasing
      << ",\"document_tokens\":" << t.document_tokens << ",\"needle_at\":" << t.needle_at
      << ",\"document_hash\":\"" << absl::StrCat(absl::Hex(t.document_hash, absl::kZeroPad16))
      << "\""
      << ",\"possible\":" << (t.possible ? "true" : "false");
    if (t.possible) {
      j << ",\"answer\":" << JsonString(t.answer)
        << ",\"correct\":" << (t.correct ? "true" : "false") << ",\"read_tokens\":" << t.read_tokens
        << ",\"read_seconds\":" << Num(t.read_seconds)
        << ",\"generated_tokens\":" << t.generated_tokens
        << ",\"generate_seconds\":" << Num(t.generate_seconds)
        << ",\"recalled_slots\":" << t.recalled_slots
        << ",\"key_held_share\":" << Num(t.key_held_share);
      if (!t.recall_error.empty()) j << ",\"recall_error\":" << JsonString(t.recall_error);
      if (t.compared) {
        j << ",\"compared_answer\":" << JsonString(t.compared_answer)
          << ",\"compared_correct\":" << (t.compared_correct ? "true" : "false");
      }
    }
    j << "}";
  }
  j << "\n  ],\n  \"perplexity\": [";
  for (size_t i = 0; i < perplexity.size(); ++i) {
    const PerplexityResult& r = perplexity[i];
    j << (i ? ",\n    " : "\n    ") << "{\"method\":" << JsonString(r.method)
      << ",\"source\":" << JsonString(r.source) << ",\"tokens\":" << r.tokens
      << ",\"first_counted_position\":" << r.first_counted
      << ",\"possible\":" << (r.possible ? "true" : "false");
    if (r.possible) {
      j << ",\"counted_tokens\":" << r.counted_tokens << ",\"mean_nll\":" << Num(r.mean_nll)
        << ",\"perplexity\":" << Num(r.perplexity) << ",\"seconds\":" << Num(r.seconds);
    }
    j << "}";
  }
  j << "\n  ],\n  \"facts\": [";
  for (size_t i = 0; i < facts.size(); ++i) {
    const FactsResult& r = facts[i];
    j << (i ? ",\n    " : "\n    ") << "{\"method\":" << JsonString(r.method)
      << ",\"total_tokens\":" << r.total_tokens
      << ",\"possible\":" << (r.possible ? "true" : "false") << ",\"facts\":" << r.facts.size();
    if (r.possible) {
      j << ",\"mentioned\":" << r.mentioned_count << ",\"summary\":" << JsonString(r.summary)
        << ",\"planted\":[";
      for (size_t f = 0; f < r.facts.size(); ++f) {
        j << (f ? "," : "") << "{\"sentence\":" << JsonString(r.facts[f].sentence)
          << ",\"mentioned\":" << (r.mentioned[f] ? "true" : "false") << "}";
      }
      j << "]";
    }
    j << "}";
  }
  j << "\n  ]\n}\n";
  std::ofstream out(path);
  out << j.str();
  return out ? path : absl::StrCat(path, " (FAILED to write)");
}

}  // namespace longread::bench
