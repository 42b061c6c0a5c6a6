// The put rate of the archive chain that reading feeds (issue 19): every block of every (layer, KV
// head) is evicted once per document, so the chain must take n_layers x n_kv_heads rows per token
// read. Starts from what the GPU memory's writer thread holds after a segment (bf16 key/value
// rows, fp32 scores, int64 positions, per (layer, head) in key order) and times, per stage:
//   widen      the writer building fp32 ArchivedBlocks from those rows (nothing put)
//   in_ram     widen + engine::InMemoryBlockArchive::Put
//   rocksdb    widen + RocksDbBlockArchive::Put (bf16, default options) + Flush per segment
//   chain      widen + RecordingBlockArchive over RocksDbBlockArchive, TakeRecorded per segment
//              (the worker's chain: a checkpoint takes the delta)
//   batch      the chain fed one PutBatch per layer, encoded on --encode-threads
//   rows       RocksDbBlockArchive::PutRows of the bf16 rows as they are, one call per layer (no
//              fp32 blocks; the GPU memory's writer since v6), Flush per segment
//   rows_chain rows through the worker's chain (RecordingBlockArchive over RocksDB), TakeRecorded
//              per segment (which widens the recorded rows: counted here)
//   rows_mt    rows_chain encoded on --encode-threads
// Shape: the default model (30 layers x 3 KV heads x head_dim 64), `longread run`'s defaults
// (blocks of 32, segments of 2048 tokens). Prints wall and calling-thread CPU seconds and, per CPU
// second, the blocks, rows and reading rate (tokens/s) each stage sustains on one thread.
//
//   archive_chain_bench [--segments N] [--block-tokens B] [--encode-threads 4] [--wal 0|1]
//                       [--only STAGE] [--json PATH]
// --wal follows BlockArchiveOptions::write_ahead_log (off by default since v6).
#include <rocksdb/db.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cache/block_archive_store.h"
#include "engine/memory/block_archive.h"
#include "engine/memory/recording_archive.h"
#include "kernels/half.h"

namespace longread::cache {
namespace {

namespace fs = std::filesystem;
using engine::ArchivedBlock;

constexpr int32_t kLayers = 30, kHeads = 3;
constexpr int64_t kHeadDim = 64, kSegmentTokens = 2048;

// One segment's evicted rows for every (layer, head): kSegmentTokens rows each, in key order.
struct SegmentRows {
  std::vector<int64_t> positions;  // [head][row]
  std::vector<float> scores;
  std::vector<uint16_t> keys, values;  // [head][row][d], bf16 bits
};

SegmentRows MakeRows() {
  SegmentRows r;
  const size_t rows = size_t{kLayers} * kHeads * kSegmentTokens;
  r.positions.resize(rows);
  r.scores.resize(rows);
  r.keys.resize(rows * kHeadDim);
  r.values.resize(rows * kHeadDim);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < rows; ++i) r.scores[i] = normal(rng);
  for (size_t i = 0; i < r.keys.size(); ++i) {
    r.keys[i] = kernels::FloatToBFloat16(normal(rng));
    r.values[i] = kernels::FloatToBFloat16(normal(rng));
  }
  return r;
}

// The writer's loop (CudaSparseKMemory::PutLayer): one block per run of rows of one block id.
template <typename PutFn>
void WidenAndPut(const SegmentRows& r, int64_t segment, int64_t block_tokens, PutFn put) {
  const int64_t d = kHeadDim;
  for (int64_t h = 0; h < kLayers * kHeads; ++h) {
    ArchivedBlock block;
    for (int64_t e = 0; e < kSegmentTokens; ++e) {
      const int64_t row = h * kSegmentTokens + e;
      const int64_t pos = segment * kSegmentTokens + e;
      if (!block.positions.empty() && pos / block_tokens != block.block_id) {
        put(std::move(block));
        block = ArchivedBlock();
      }
      if (block.positions.empty()) {
        block.layer = static_cast<int32_t>(h / kHeads);
        block.kv_head = static_cast<int32_t>(h % kHeads);
        block.block_id = pos / block_tokens;
        block.positions.reserve(block_tokens);
        block.scores.reserve(block_tokens);
        block.keys.reserve(block_tokens * d);
        block.values.reserve(block_tokens * d);
      }
      block.positions.push_back(pos);
      block.scores.push_back(r.scores[row]);
      const size_t at = block.keys.size();
      block.keys.resize(at + d);
      block.values.resize(at + d);
      for (int64_t i = 0; i < d; ++i) {
        block.keys[at + i] = kernels::BFloat16ToFloat(r.keys[row * d + i]);
        block.values[at + i] = kernels::BFloat16ToFloat(r.values[row * d + i]);
      }
    }
    if (!block.positions.empty()) put(std::move(block));
  }
}

// The writer's bf16 blocks of one layer, pointing into the segment's rows (no copy).
void LayerRows(const SegmentRows& r, int64_t segment, int64_t block_tokens, int32_t layer,
               std::vector<int64_t>* positions, std::vector<engine::Bf16BlockRows>* out) {
  const int64_t d = kHeadDim;
  out->clear();
  positions->resize(kHeads * kSegmentTokens);
  for (int32_t g = 0; g < kHeads; ++g) {
    const int64_t h = int64_t{layer} * kHeads + g;
    int64_t* pos = positions->data() + g * kSegmentTokens;
    for (int64_t e = 0; e < kSegmentTokens; ++e) pos[e] = segment * kSegmentTokens + e;
    for (int64_t e = 0; e < kSegmentTokens;) {
      const int64_t id = pos[e] / block_tokens;
      int64_t end = e + 1;
      while (end < kSegmentTokens && pos[end] / block_tokens == id) ++end;
      const int64_t row = h * kSegmentTokens + e, n = end - e;
      engine::Bf16BlockRows& b = out->emplace_back();
      b.layer = layer;
      b.kv_head = g;
      b.block_id = id;
      b.positions = {pos + e, static_cast<size_t>(n)};
      b.scores = {r.scores.data() + row, static_cast<size_t>(n)};
      b.keys = {r.keys.data() + row * d, static_cast<size_t>(n * d)};
      b.values = {r.values.data() + row * d, static_cast<size_t>(n * d)};
      e = end;
    }
  }
}

// Bytes this process has caused to be written to storage so far (flushes and compactions
// included), from /proc/self/io; 0 where it cannot be read.
double WrittenBytes() {
  std::ifstream io("/proc/self/io");
  std::string key;
  double value = 0;
  while (io >> key >> value) {
    if (key == "write_bytes:") return value;
  }
  return 0;
}

double ProcessCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double ThreadCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Wall time and the calling thread's CPU time (the writer thread's own cost, which a loaded
// machine's wall clock blurs; RocksDB's flushes and compactions run on its own threads).
struct Timing {
  double wall = 0, cpu = 0;
};

Timing Seconds(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = ThreadCpuSeconds();
  fn();
  return {std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
          ThreadCpuSeconds() - c0};
}

void Fail(const absl::Status& s) {
  if (s.ok()) return;
  std::fprintf(stderr, "archive_chain_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

int Main(int argc, char** argv) {
  int64_t segments = 8;
  int64_t block_tokens = 32;
  int encode_threads = 4;
  std::string json_path;
  bool wal = false;
  std::string only;  // one stage (for a profile)
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--segments") == 0) segments = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--block-tokens") == 0) block_tokens = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--encode-threads") == 0) encode_threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--json") == 0) json_path = argv[i + 1];
    if (std::strcmp(argv[i], "--only") == 0) only = argv[i + 1];
    if (std::strcmp(argv[i], "--wal") == 0) wal = std::atoi(argv[i + 1]) != 0;
  }
  const SegmentRows rows = MakeRows();
  const double total_rows = double(segments) * kLayers * kHeads * kSegmentTokens;
  const double total_blocks = total_rows / block_tokens;
  std::string json = "[";
  auto skip = [&](const char* stage) { return !only.empty() && only != stage; };
  auto report = [&](const char* stage, Timing t, Timing minus = {}) {
    t.wall += minus.wall;
    t.cpu += minus.cpu;
    std::printf("%-8s wall %6.3f s cpu %6.3f s  per cpu s: %8.0f blocks %10.0f rows %8.0f tokens\n",
                stage, t.wall, t.cpu, total_blocks / t.cpu, total_rows / t.cpu,
                total_rows / t.cpu / (kLayers * kHeads));
    if (json.size() > 1) json += ",";
    json += "{\"stage\":\"" + std::string(stage) + "\",\"wall_s\":" + std::to_string(t.wall) +
            ",\"thread_cpu_s\":" + std::to_string(t.cpu) +
            ",\"blocks_per_cpu_s\":" + std::to_string(total_blocks / t.cpu) +
            ",\"rows_per_cpu_s\":" + std::to_string(total_rows / t.cpu) +
            ",\"tokens_per_cpu_s\":" + std::to_string(total_rows / t.cpu / (kLayers * kHeads)) +
            "}";
  };
  std::printf(
      "%lld segments of %lld tokens, %d layers x %d KV heads, head_dim %lld, blocks of "
      "%lld\n",
      static_cast<long long>(segments), static_cast<long long>(kSegmentTokens), kLayers, kHeads,
      static_cast<long long>(kHeadDim), static_cast<long long>(block_tokens));

  int64_t sink = 0;
  if (!skip("widen"))
    report("widen", Seconds([&] {
             for (int64_t s = 0; s < segments; ++s) {
               WidenAndPut(rows, s, block_tokens,
                           [&](ArchivedBlock b) { sink += static_cast<int64_t>(b.keys.size()); });
             }
           }));
  if (!skip("in_ram")) {
    engine::InMemoryBlockArchive archive(kLayers, kHeads, kHeadDim);
    report("in_ram", Seconds([&] {
             for (int64_t s = 0; s < segments; ++s) {
               WidenAndPut(rows, s, block_tokens,
                           [&](ArchivedBlock b) { Fail(archive.Put(std::move(b))); });
             }
           }));
    sink += archive.stored_bytes();
  }
  const fs::path root = fs::temp_directory_path() / "longread-archive-chain-bench";
  // rocksdb, chain: a Put per block on this thread; batch: the chain with one PutBatch per layer
  // (as CudaSparseKMemory's writer does), encoded on `encode_threads` (the CPU column then
  // counts this thread only: compare wall).
  for (const char* stage : {"rocksdb", "chain", "batch"}) {
    if (skip(stage)) continue;
    const bool recording = std::strcmp(stage, "rocksdb") != 0;
    const bool batch = std::strcmp(stage, "batch") == 0;
    fs::remove_all(root);
    auto db = CacheDb::Open(root.string());
    Fail(db.status());
    BlockArchiveOptions options;
    options.max_bytes = 0;  // the chain's own cost, not the cap's deletions
    options.write_ahead_log = wal;
    if (batch) options.encode_threads = encode_threads;
    auto archive = RocksDbBlockArchive::Open(db->get(), "doc", kLayers, kHeads, kHeadDim, options);
    Fail(archive.status());
    engine::RecordingBlockArchive recorder(archive->get());
    engine::BlockArchive* target =
        recording ? static_cast<engine::BlockArchive*>(&recorder) : archive->get();
    std::vector<ArchivedBlock> layer;
    auto put_layer = [&] {
      Fail(target->PutBatch(layer));
      layer.clear();
    };
    report(stage, Seconds([&] {
             for (int64_t s = 0; s < segments; ++s) {
               WidenAndPut(rows, s, block_tokens, [&](ArchivedBlock b) {
                 if (!batch) return Fail(target->Put(std::move(b)));
                 if (!layer.empty() && layer.back().layer != b.layer) put_layer();
                 layer.push_back(std::move(b));
               });
               if (!layer.empty()) put_layer();
               Fail((*archive)->Flush());
               if (recording) sink += static_cast<int64_t>(recorder.TakeRecorded().size());
             }
           }));
    archive->reset();
    db->reset();
    fs::remove_all(root);
  }
  // The bf16 path: the rows go in as they are.
  for (const char* stage : {"rows", "rows_chain", "rows_mt"}) {
    if (skip(stage)) continue;
    const bool recording = std::strcmp(stage, "rows") != 0;
    fs::remove_all(root);
    auto db = CacheDb::Open(root.string());
    Fail(db.status());
    BlockArchiveOptions options;
    options.max_bytes = 0;
    options.write_ahead_log = wal;
    if (std::strcmp(stage, "rows_mt") == 0) options.encode_threads = encode_threads;
    auto archive = RocksDbBlockArchive::Open(db->get(), "doc", kLayers, kHeads, kHeadDim, options);
    Fail(archive.status());
    engine::RecordingBlockArchive recorder(archive->get());
    engine::BlockArchive* target =
        recording ? static_cast<engine::BlockArchive*>(&recorder) : archive->get();
    std::vector<int64_t> positions;
    std::vector<engine::Bf16BlockRows> layer;
    Timing take;
    const double written0 = WrittenBytes(), process0 = ProcessCpuSeconds();
    report(stage, Seconds([&] {
             for (int64_t s = 0; s < segments; ++s) {
               for (int32_t l = 0; l < kLayers; ++l) {
                 LayerRows(rows, s, block_tokens, l, &positions, &layer);
                 Fail(target->PutRows(layer));
               }
               Fail((*archive)->Flush());
               if (!recording) continue;
               // A checkpoint's TakeRecorded runs on the reading thread, not the writer's:
               // timed apart.
               const Timing t = Seconds(
                   [&] { sink += static_cast<int64_t>(recorder.TakeRecordedBlocks().size()); });
               take.wall -= t.wall;
               take.cpu -= t.cpu;
             }
           }),
           take);
    const double writes = (*archive)->stats().write_thread_cpu_seconds;
    std::string stalls;
    (*db)->db()->GetProperty((*db)->block_archive(), "rocksdb.stats", &stalls);
    const size_t at = stalls.find("Cumulative stall:");
    std::printf(
        "         process cpu %6.3f s (RocksDB's threads too), %.0f MB to storage (%.2f x "
        "the archive's), %s",
        ProcessCpuSeconds() - process0, (WrittenBytes() - written0) / 1e6,
        (WrittenBytes() - written0) /
            std::max<double>(
                1, (*archive)->stats().payload_bytes + (*archive)->stats().representative_bytes),
        at == std::string::npos ? "\n" : stalls.substr(at, stalls.find('\n', at) - at + 1).c_str());
    std::printf("         + RocksDB write thread cpu %6.3f s; TakeRecorded cpu %6.3f s\n", writes,
                -take.cpu);
    archive->reset();
    db->reset();
    fs::remove_all(root);
  }
  json += "]";
  std::printf("(checksum %lld)\n", static_cast<long long>(sink));
  if (!json_path.empty()) std::ofstream(json_path) << json << "\n";
  return 0;
}

}  // namespace
}  // namespace longread::cache

int main(int argc, char** argv) { return longread::cache::Main(argc, argv); }
