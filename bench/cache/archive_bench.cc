// The archive of evicted blocks (cache/block_archive_store.h) on synthetic blocks: bytes per
// archived token (fp32 vs bf16), Put latency and write throughput for the default model's shape
// (30 layers x 3 KV heads x head_dim 64, blocks of 32 tokens), and Recall latency of R = 8 blocks
// with 1K / 10K / 100K archived blocks in one head. Appends a run to
// bench/results/archive-<date>.json.
//
//   archive_bench [--quick] [--out=<json path>]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cache/block_archive_store.h"
#include "nlohmann/json.hpp"

namespace longread::cache {
namespace {

namespace fs = std::filesystem;
using engine::ArchivedBlock;
using Json = nlohmann::json;

double NowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.starts_with("model name")) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// Pre-RoPE-like keys: gaussian with per-dimension scales (a few large dims), gaussian values.
class BlockMaker {
 public:
  BlockMaker(int64_t head_dim, int64_t block_tokens)
      : head_dim_(head_dim), block_tokens_(block_tokens), rng_(7), scale_(head_dim) {
    std::lognormal_distribution<float> lognormal(0.0f, 0.7f);
    for (float& s : scale_) s = lognormal(rng_);
  }
  ArchivedBlock Make(int32_t layer, int32_t kv_head, int64_t id) {
    ArchivedBlock b;
    b.layer = layer;
    b.kv_head = kv_head;
    b.block_id = id;
    for (int64_t t = 0; t < block_tokens_; ++t) {
      b.positions.push_back(id * block_tokens_ + t);
      b.scores.push_back(normal_(rng_));
      for (int64_t e = 0; e < head_dim_; ++e) {
        b.keys.push_back(normal_(rng_) * scale_[e]);
        b.values.push_back(normal_(rng_));
      }
    }
    return b;
  }

 private:
  int64_t head_dim_, block_tokens_;
  std::mt19937_64 rng_;
  std::normal_distribution<float> normal_;
  std::vector<float> scale_;
};

std::unique_ptr<CacheDb> OpenDb(const fs::path& path) {
  auto db = CacheDb::Open(path.string());
  if (!db.ok()) {
    std::fprintf(stderr, "%s\n", db.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(db);
}

std::unique_ptr<RocksDbBlockArchive> OpenArchive(CacheDb* db, int32_t layers, int32_t heads,
                                                 int64_t head_dim, BlockArchiveOptions options) {
  auto archive = RocksDbBlockArchive::Open(db, "doc", layers, heads, head_dim, options);
  if (!archive.ok()) {
    std::fprintf(stderr, "%s\n", archive.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(archive);
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
}

// Writes `blocks_per_head` blocks of every head of the default model's shape; returns sizes and
// Put latencies (what the reading thread pays, batch writes included).
Json WriteCase(const fs::path& root, ArchivePrecision precision, int64_t blocks_per_head) {
  const int32_t layers = 30, heads = 3;
  const int64_t head_dim = 64, block_tokens = 32;
  fs::remove_all(root);
  std::unique_ptr<CacheDb> db = OpenDb(root);
  BlockArchiveOptions options;
  options.precision = precision;
  auto archive = OpenArchive(db.get(), layers, heads, head_dim, options);
  BlockMaker maker(head_dim, block_tokens);
  // Blocks made up front so that only Put is timed; evicted in reading order, head by head.
  std::vector<ArchivedBlock> blocks;
  for (int64_t id = 0; id < blocks_per_head; ++id) {
    for (int32_t l = 0; l < layers; ++l) {
      for (int32_t g = 0; g < heads; ++g) blocks.push_back(maker.Make(l, g, id));
    }
  }
  std::vector<double> put_ms;
  const double t0 = NowMs();
  for (ArchivedBlock& b : blocks) {
    const double t = NowMs();
    Check(archive->Put(std::move(b)));
    put_ms.push_back(NowMs() - t);
  }
  Check(archive->Flush());
  const double total_ms = NowMs() - t0;
  const BlockArchiveStats s = archive->stats();
  const double bytes = static_cast<double>(archive->stored_bytes());
  return {
      {"precision", precision == ArchivePrecision::kFp32 ? "fp32" : "bf16"},
      {"n_layers", layers},
      {"n_kv_heads", heads},
      {"head_dim", head_dim},
      {"block_tokens", block_tokens},
      {"blocks", s.blocks_stored},
      {"tokens_per_head", s.tokens_stored / (layers * heads)},
      {"stored_bytes", bytes},
      {"bytes_per_token_per_head", bytes / static_cast<double>(s.tokens_stored)},
      {"bytes_per_document_token", bytes / static_cast<double>(s.tokens_stored / (layers * heads))},
      {"payload_bytes", s.payload_bytes},
      {"representative_bytes", s.representative_bytes},
      {"batches", s.batches_written},
      {"put_p50_ms", Percentile(put_ms, 0.5)},
      {"put_p99_ms", Percentile(put_ms, 0.99)},
      {"put_max_ms", Percentile(put_ms, 1.0)},
      {"total_ms", total_ms},
      {"write_mb_per_s", bytes / 1e6 / (total_ms / 1e3)},
      {"blocks_per_s", static_cast<double>(s.blocks_stored) / (total_ms / 1e3)}};
}

// Recall of R = 8 blocks of one head at growing archive sizes; queries: a 16-token question x 3
// query heads per KV head.
Json RecallCase(const fs::path& root, const std::vector<int64_t>& sizes, int64_t block_tokens) {
  const int64_t head_dim = 64, n_queries = 48, r = 8;
  fs::remove_all(root);
  std::unique_ptr<CacheDb> db = OpenDb(root);
  BlockArchiveOptions options;  // bf16
  options.max_bytes = 0;
  auto archive = OpenArchive(db.get(), 1, 1, head_dim, options);
  BlockMaker maker(head_dim, block_tokens);
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> queries(n_queries * head_dim);
  Json rows = Json::array();
  int64_t have = 0;
  for (int64_t size : sizes) {
    for (; have < size; ++have) Check(archive->Put(maker.Make(0, 0, have)));
    Check(archive->Flush());
    std::vector<double> warm;
    for (int rep = 0; rep < 20; ++rep) {
      for (float& x : queries) x = normal(rng);
      const double t = NowMs();
      auto got = archive->Recall(0, 0, queries, n_queries, r);
      warm.push_back(NowMs() - t);
      if (!got.ok() || static_cast<int64_t>(got->size()) != r) Check(got.status());
    }
    // From RocksDB alone: a fresh archive (restart) loads the index, then recalls by scanning
    // the representative records.
    BlockArchiveOptions scan_options = options;
    scan_options.keep_representatives_in_ram = false;
    const double t_open = NowMs();
    auto cold = OpenArchive(db.get(), 1, 1, head_dim, scan_options);
    const double open_ms = NowMs() - t_open;
    std::vector<double> scan;
    for (int rep = 0; rep < 5; ++rep) {
      const double t = NowMs();
      auto got = cold->Recall(0, 0, queries, n_queries, r);
      scan.push_back(NowMs() - t);
      if (!got.ok()) Check(got.status());
    }
    rows.push_back({{"blocks_per_head", size},
                    {"block_tokens", block_tokens},
                    {"r", r},
                    {"n_queries", n_queries},
                    {"recall_ram_p50_ms", Percentile(warm, 0.5)},
                    {"recall_ram_p99_ms", Percentile(warm, 0.99)},
                    {"reopen_load_ms", open_ms},
                    {"recall_scan_p50_ms", Percentile(scan, 0.5)},
                    {"stored_bytes", archive->stored_bytes()}});
    std::fprintf(stderr, "recall at %lld blocks done\n", static_cast<long long>(size));
  }
  return rows;
}

int Main(int argc, char** argv) {
  bool quick = false;
  std::string out_path, command;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (i > 0) command.push_back(' ');
    command.append(i > 0 ? a : fs::path(a).filename().string());
    if (a == "--quick") quick = true;
    if (a.starts_with("--out=")) out_path = a.substr(6);
  }
  const std::string date = absl::FormatTime("%Y-%m-%d", absl::Now(), absl::UTCTimeZone());
  if (out_path.empty()) {
    const char* src = std::getenv("LONGREAD_SOURCE_DIR");
    out_path =
        (fs::path(src ? src : ".") / "bench" / "results" / ("archive-" + date + ".json")).string();
  }
  const fs::path root = fs::temp_directory_path() / "longread-archive-bench";
  const int64_t blocks_per_head = quick ? 8 : 32;  // x 32 tokens: 1K tokens/head per 32 blocks
  Json writes = Json::array();
  for (ArchivePrecision p : {ArchivePrecision::kFp32, ArchivePrecision::kBf16}) {
    writes.push_back(WriteCase(root, p, blocks_per_head));
  }
  const std::vector<int64_t> sizes =
      quick ? std::vector<int64_t>{1000, 10000} : std::vector<int64_t>{1000, 10000, 100000};
  Json recalls = RecallCase(root, sizes, /*block_tokens=*/8);
  fs::remove_all(root);

  Json run = {{"date", date},       {"cpu", CpuModel()},
              {"command", command}, {"data", "synthetic gaussian blocks, not real model keys"},
              {"writes", writes},   {"recall", recalls}};
  Json report = {{"benchmark", "archive"}, {"runs", Json::array()}};
  if (std::ifstream in(out_path); in) {
    Json old = Json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (old.is_object() && old.contains("runs") && old["runs"].is_array()) report = old;
  }
  report["runs"].push_back(run);

  std::printf("%-5s %8s %12s %14s %10s %10s %10s %9s\n", "prec", "blocks", "B/token/head",
              "B/doc token", "put p50", "put p99", "put max", "MB/s");
  for (const Json& w : writes) {
    std::printf("%-5s %8llu %12.1f %14.0f %10.4f %10.3f %10.1f %9.1f\n",
                w["precision"].get<std::string>().c_str(),
                static_cast<unsigned long long>(w["blocks"].get<uint64_t>()),
                w["bytes_per_token_per_head"].get<double>(),
                w["bytes_per_document_token"].get<double>(), w["put_p50_ms"].get<double>(),
                w["put_p99_ms"].get<double>(), w["put_max_ms"].get<double>(),
                w["write_mb_per_s"].get<double>());
  }
  std::printf("\n%10s %14s %14s %12s %14s\n", "blocks/head", "recall RAM ms", "p99 ms", "reopen ms",
              "recall scan ms");
  for (const Json& r : recalls) {
    std::printf("%10lld %14.2f %14.2f %12.1f %14.1f\n",
                static_cast<long long>(r["blocks_per_head"].get<int64_t>()),
                r["recall_ram_p50_ms"].get<double>(), r["recall_ram_p99_ms"].get<double>(),
                r["reopen_load_ms"].get<double>(), r["recall_scan_p50_ms"].get<double>());
  }
  fs::create_directories(fs::path(out_path).parent_path());
  std::ofstream(out_path) << report.dump(2) << "\n";
  std::printf("\nwrote %s\n", out_path.c_str());
  return 0;
}

}  // namespace
}  // namespace longread::cache

int main(int argc, char** argv) { return longread::cache::Main(argc, argv); }
