// Snapshot bytes and write latency for the default model's memory (30 layers x 3 KV heads x
// head_dim 64, sink 4, segment L = 1024). Memories are synthetic (cache/synthetic_document.h:
// gaussian values, keys with per-dimension scales and outlier dims) because the runner did not
// produce real ones yet. Prints a table and writes bench/results/snapshot-<date>.json.
//
//   snapshot_bench [--quick] [--segment_ms=<CPU segment time, ms>] [--out=<json path>]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cache/snapshot_store.h"
#include "cache/synthetic_document.h"
#include "nlohmann/json.hpp"

namespace longread::cache {
namespace {

namespace fs = std::filesystem;
using engine::MemorySnapshot;
using Json = nlohmann::json;

double NowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.starts_with("model name")) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

uint16_t ToFp16(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

uint16_t ToBf16(float f) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// The slot data of a snapshot as one buffer: positions and scores as stored, keys and values in
// the given precision (what a `precision=` option would write).
std::string SlotBytes(const MemorySnapshot& s, std::string_view precision) {
  std::string out;
  auto put = [&out](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  for (const auto& head : s.heads) {
    put(head.positions.data(), head.positions.size() * 8);
    put(head.scores.data(), head.scores.size() * 4);
    for (const std::vector<float>* v : {&head.keys, &head.values}) {
      if (precision == "fp32") {
        put(v->data(), v->size() * 4);
      } else {
        for (float x : *v) {
          const uint16_t h = precision == "fp16" ? ToFp16(x) : ToBf16(x);
          put(&h, 2);
        }
      }
    }
  }
  out.resize((out.size() + 3) / 4 * 4, '\0');
  return out;
}

struct MemoryConfig {
  int top_k;
  int window;
};

Json CompressionTable(const MemorySnapshot& s) {
  Json rows = Json::array();
  struct Codecs {
    const char* name;
    Codec codec;
    int level;
  };
  const Codecs codecs[] = {
      {"lz4", Codec::kLz4, 0}, {"zstd-1", Codec::kZstd, 1}, {"zstd-3", Codec::kZstd, 3}};
  for (const char* precision : {"fp32", "fp16", "bf16"}) {
    const std::string raw = SlotBytes(s, precision);
    for (const Codecs& c : codecs) {
      for (bool shuffle : {false, true}) {
        const double t0 = NowMs();
        const std::string input = shuffle ? ShuffleWords(raw) : raw;
        absl::StatusOr<std::string> packed = Compress(c.codec, c.level, input);
        const double ms = NowMs() - t0;
        if (!packed.ok()) continue;
        const double t1 = NowMs();
        absl::StatusOr<std::string> unpacked = Decompress(c.codec, *packed, input.size());
        const double dms = NowMs() - t1;
        rows.push_back({{"precision", precision},
                        {"codec", c.name},
                        {"shuffle", shuffle},
                        {"raw_bytes", raw.size()},
                        {"stored_bytes", packed->size()},
                        {"ratio_vs_fp32_raw", static_cast<double>(packed->size()) /
                                                  static_cast<double>(SlotBytes(s, "fp32").size())},
                        {"compress_ms", ms},
                        {"decompress_ms", unpacked.ok() ? dms : -1.0}});
      }
    }
  }
  return rows;
}

Json RunConfig(const MemoryConfig& mc, int segments, int rounds, const fs::path& db_root,
               bool blob_files) {
  SyntheticShape shape;
  shape.top_k = mc.top_k;
  shape.window = mc.window;
  SyntheticDocument doc(shape);
  // Enough segments that the top-k is full and has churned.
  const int64_t first = (mc.top_k + mc.window) / shape.segment_len + 4;
  std::vector<MemorySnapshot> snaps;
  for (int64_t seg = first; seg < first + segments; ++seg) {
    doc.AdvanceTo(seg);
    snaps.push_back(doc.Snapshot());
  }
  Json out = {{"n_layers", shape.n_layers},
              {"n_kv_heads", shape.n_kv_heads},
              {"head_dim", shape.head_dim},
              {"sink", shape.sink},
              {"top_k", mc.top_k},
              {"window", mc.window},
              {"segment_len", shape.segment_len},
              {"slots_per_head", snaps.back().heads[0].positions.size()}};

  // Sizes: a full record vs a delta against the previous segment.
  std::vector<double> full_bytes, delta_bytes;
  for (size_t i = 1; i < snaps.size(); ++i) {
    std::vector<std::vector<int64_t>> base;
    for (const auto& h : snaps[i - 1].heads) base.push_back(h.positions);
    uint64_t raw = 0;
    EncodeDeltaRecord(snaps[i], base, 1, 0, {}, &raw);
    full_bytes.push_back(static_cast<double>(FullPayloadBytes(snaps[i])));
    delta_bytes.push_back(static_cast<double>(raw));
  }
  out["full_bytes"] = Percentile(full_bytes, 0.5);
  out["delta_bytes"] = Percentile(delta_bytes, 0.5);
  out["compression"] = CompressionTable(snaps.back());

  // The engine-side cost: the copy handed to the writer (the runner keeps its own memory).
  {
    const double t0 = NowMs();
    MemorySnapshot copy = snaps.back();
    out["handover_copy_ms"] = NowMs() - t0;
    if (copy.heads.empty()) std::abort();
  }

  // CPU parts of a Put, without RocksDB.
  {
    const MemorySnapshot& s = snaps.back();
    double t0 = NowMs();
    const uint64_t hash = ContentHash(s);
    out["content_hash_ms"] = NowMs() - t0;
    t0 = NowMs();
    const std::string record = EncodeFullRecord(s, hash, {});
    out["encode_full_ms"] = NowMs() - t0;
    t0 = NowMs();
    absl::StatusOr<DecodedRecord> decoded = DecodeRecord(record);
    out["decode_full_ms"] = NowMs() - t0;
    if (!decoded.ok()) std::abort();
  }

  // Write latency through SnapshotStore::Put (full every 9th record, deltas between).
  for (bool sync : {false, true}) {
    const fs::path path = db_root / absl::StrCat("db-", mc.top_k, "-", mc.window, "-", sync);
    fs::remove_all(path);
    CacheDbOptions db_options;
    db_options.snapshot_blob_files = blob_files;
    auto db = CacheDb::Open(path.string(), db_options);
    if (!db.ok()) {
      std::fprintf(stderr, "%s\n", std::string(db.status().message()).c_str());
      std::exit(1);
    }
    SnapshotStore store(db->get());
    std::vector<double> all, full_ms, delta_ms, read_ms;
    uint64_t stored = 0, puts = 0;
    for (int r = 0; r < rounds; ++r) {
      const std::string doc_id = absl::StrCat("doc-", r);
      for (const MemorySnapshot& s : snaps) {
        const double t0 = NowMs();
        PutOptions options;
        options.sync = sync;
        absl::StatusOr<PutResult> put = store.Put(doc_id, s, options);
        const double ms = NowMs() - t0;
        if (!put.ok()) {
          std::fprintf(stderr, "put: %s\n", std::string(put.status().message()).c_str());
          std::exit(1);
        }
        all.push_back(ms);
        (put->kind == RecordKind::kFull ? full_ms : delta_ms).push_back(ms);
        stored += put->record_bytes;
        ++puts;
      }
      const double t0 = NowMs();
      absl::StatusOr<MemorySnapshot> latest =
          store.GetLatest(doc_id, {shape.model_fingerprint, shape.config_hash});
      read_ms.push_back(NowMs() - t0);
      if (!latest.ok()) std::exit(1);
      (void)store.DeleteDocument(doc_id);
    }
    db->reset();
    fs::remove_all(path);
    out[sync ? "write_sync" : "write_nosync"] = {
        {"samples", all.size()},
        {"p50_ms", Percentile(all, 0.5)},
        {"p99_ms", Percentile(all, 0.99)},
        {"full_p50_ms", Percentile(full_ms, 0.5)},
        {"delta_p50_ms", Percentile(delta_ms, 0.5)},
        {"mean_bytes_per_segment", static_cast<double>(stored) / static_cast<double>(puts)},
        {"get_latest_p50_ms", Percentile(read_ms, 0.5)}};
  }
  return out;
}

int Main(int argc, char** argv) {
  bool quick = false;
  bool blob_files = true;
  double segment_ms = 0;
  std::string out_path;
  std::string command;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (i > 0) command.push_back(' ');
    command.append(i > 0 ? a : fs::path(a).filename().string());
    if (a == "--quick") quick = true;
    if (a == "--no_blob_files") blob_files = false;
    if (a.starts_with("--segment_ms=")) segment_ms = std::atof(a.c_str() + 13);
    if (a.starts_with("--out=")) out_path = a.substr(6);
  }
  const std::string date = absl::FormatTime("%Y-%m-%d", absl::Now(), absl::UTCTimeZone());
  if (out_path.empty()) {
    const char* src = std::getenv("LONGREAD_SOURCE_DIR");
    out_path =
        (fs::path(src ? src : ".") / "bench" / "results" / ("snapshot-" + date + ".json")).string();
  }
  const std::vector<MemoryConfig> configs =
      quick ? std::vector<MemoryConfig>{{1024, 256}}
            : std::vector<MemoryConfig>{{1024, 256}, {1024, 1024}, {2048, 1024}};
  const int segments = quick ? 10 : 18;  // 18: two full chains of 1 full + 8 deltas
  const int rounds = quick ? 1 : 3;
  const fs::path db_root = fs::temp_directory_path() / "longread-snapshot-bench";
  fs::create_directories(db_root);

  Json results = Json::array();
  for (const MemoryConfig& mc : configs) {
    std::fprintf(stderr, "k=%d w=%d ...\n", mc.top_k, mc.window);
    results.push_back(RunConfig(mc, segments, rounds, db_root, blob_files));
  }
  fs::remove_all(db_root);

  Json report = {{"benchmark", "snapshot"},
                 {"date", date},
                 {"cpu", CpuModel()},
                 {"command", command},
                 {"data", "synthetic (cache/synthetic_document.h), not real model memories"},
                 {"rocksdb_blob_files", blob_files},
                 {"segment_compute_ms_cpu", segment_ms > 0 ? Json(segment_ms) : Json(nullptr)},
                 {"configs", results}};

  std::printf("\n%-11s %6s %10s %10s %7s | %9s %9s %9s %9s | %8s %8s | %8s\n", "k/w", "slots",
              "full MB", "delta MB", "delta%", "p50 ms", "p99 ms", "sync p50", "sync p99",
              "read ms", "copy ms", "overhead");
  for (const Json& r : results) {
    const double full = r["full_bytes"].get<double>(), delta = r["delta_bytes"].get<double>();
    const double p50 = r["write_nosync"]["p50_ms"].get<double>();
    std::string overhead = "n/a";
    if (segment_ms > 0) {
      overhead = absl::StrCat(
          static_cast<int>(100 * r["handover_copy_ms"].get<double>() / segment_ms * 100) / 100.0,
          "%");
    }
    std::printf("%-11s %6d %10.1f %10.1f %6.0f%% | %9.1f %9.1f %9.1f %9.1f | %8.1f %8.1f | %8s\n",
                absl::StrCat(r["top_k"].get<int>(), "/", r["window"].get<int>()).c_str(),
                r["slots_per_head"].get<int>(), full / 1e6, delta / 1e6, 100 * delta / full, p50,
                r["write_nosync"]["p99_ms"].get<double>(), r["write_sync"]["p50_ms"].get<double>(),
                r["write_sync"]["p99_ms"].get<double>(),
                r["write_nosync"]["get_latest_p50_ms"].get<double>(),
                r["handover_copy_ms"].get<double>(), overhead.c_str());
  }
  std::printf("\ncompression of the slot data (k/w = %d/%d), stored / fp32 raw:\n",
              results.back()["top_k"].get<int>(), results.back()["window"].get<int>());
  std::printf("%-6s %-8s %-8s %8s %12s %12s\n", "prec", "codec", "shuffle", "ratio", "comp ms",
              "decomp ms");
  for (const Json& c : results.back()["compression"]) {
    std::printf("%-6s %-8s %-8s %8.3f %12.1f %12.1f\n", c["precision"].get<std::string>().c_str(),
                c["codec"].get<std::string>().c_str(), c["shuffle"].get<bool>() ? "yes" : "no",
                c["ratio_vs_fp32_raw"].get<double>(), c["compress_ms"].get<double>(),
                c["decompress_ms"].get<double>());
  }
  fs::create_directories(fs::path(out_path).parent_path());
  std::ofstream(out_path) << report.dump(2) << "\n";
  std::printf("\nwrote %s\n", out_path.c_str());
  return 0;
}

}  // namespace
}  // namespace longread::cache

int main(int argc, char** argv) { return longread::cache::Main(argc, argv); }
