// Reading a real document on the GPU through the whole product path of a segment: the real
// model (CudaLlamaModel, bf16) and the SparseK memory on the device (CudaSparseKMemory: scorer,
// task term, selection, eviction, archive writes), with the product defaults of `longread run`
// (segment 2048, sinks 4, k 2048, window 1024, blocks of 32, the default scorer, a task). Prints
// and writes tokens/s and device memory per length; with --compare N, also the CPU engine on the
// first N tokens and the mean KL of the two engines' next-token distributions.
//
//   memory_read_bench --model M.gguf --scorer M.lrscorer --text FILE [--tokens 32768,131072]
//                     [--archive 1|0|both] [--store ram|rocksdb] [--encode-threads 8]
//                     [--compare 0] [--json PATH]
//
// With the archive, lengths up to 131072 tokens keep it in RAM (InMemoryBlockArchive, as the
// tests do); longer ones would need ~46 KB per token (fp32 rows of 30 layers x 3 heads), so they
// put into a CountingArchive that takes every block through the same path and keeps its size
// only. --store rocksdb puts instead into the worker's chain: engine::RecordingBlockArchive over
// cache::RocksDbBlockArchive (bf16, default cap, `--encode-threads` encoding each layer's batch)
// in a fresh database under the system's temp directory, the recorded blocks taken after every
// segment as a checkpoint would. The time includes waiting for the last puts (archive_status()).
// Peak device memory is the largest cudaMemGetInfo "in use" seen after any segment.
//
// With --documents D1,D2,... (e.g. 1,16) it measures instead many documents read at once through
// the product seam (CudaReadingBackend::ReadSegments: one forward pass per segment of every
// document, each memory on its own stream): for each count D and length N, D documents of N
// tokens each (each from its own place in the text, the same task, no archive) read in passes of
// one segment per document; aggregate tokens/s (D x N over the wall time of all passes, and over
// the passes after the first, which grows buffers and plans GEMMs) and peak device memory.
// --batcher-tokens N adds, for each count D > 1, D documents of N tokens read the way a worker
// reads them: each by its own RecurrentRunner on its own thread, all through one SegmentBatcher.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <latch>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/memory/cuda_backend.h"
#include "engine/memory/cuda_sparsek_memory.h"
#include "engine/memory/recording_archive.h"
#include "engine/memory/segment_batcher.h"
#ifdef LONGREAD_BENCH_ROCKSDB  // not in engine-only builds
#include "cache/block_archive_store.h"
#endif
#include "engine/memory/runner.h"
#include "engine/model/cuda_llama_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace longread {
namespace {

namespace cu = kernels::cuda;
using engine::CudaLlamaModel;
using engine::CudaSparseKMemory;

// Takes every block (the memory's whole archive path runs) and keeps only the byte count.
class CountingArchive : public engine::BlockArchive {
 public:
  absl::Status Put(engine::ArchivedBlock block) override { return PutCopyOf(block); }
  absl::Status PutCopyOf(const engine::ArchivedBlock& block) override {
    bytes_ += static_cast<int64_t>((block.keys.size() + block.values.size() + block.scores.size()) *
                                       sizeof(float) +
                                   block.positions.size() * sizeof(int64_t));
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<engine::ArchivedBlock>> Recall(int32_t, int32_t,
                                                            std::span<const float>, int64_t,
                                                            int64_t) override {
    return absl::UnimplementedError("counting archive");
  }
  absl::StatusOr<std::vector<engine::ArchivedBlock>> Fetch(int32_t, int32_t,
                                                           std::span<const int64_t>) override {
    return absl::UnimplementedError("counting archive");
  }
  int64_t stored_bytes() const override { return bytes_; }

 private:
  int64_t bytes_ = 0;
};

double UsedGib() {
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  return static_cast<double>(total_bytes - free_bytes) / (1 << 30);
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

double MeanKl(const std::vector<float>& p_all, const std::vector<float>& q_all, int64_t vocab) {
  const int64_t rows = static_cast<int64_t>(p_all.size()) / vocab;
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = &p_all[r * vocab];
    const float* q = &q_all[r * vocab];
    double pm = p[0], qm = q[0];
    for (int64_t i = 1; i < vocab; ++i)
      pm = std::max<double>(pm, p[i]), qm = std::max<double>(qm, q[i]);
    double ps = 0, qs = 0;
    for (int64_t i = 0; i < vocab; ++i) ps += std::exp(p[i] - pm), qs += std::exp(q[i] - qm);
    const double pz = pm + std::log(ps), qz = qm + std::log(qs);
    double kl = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const double lp = p[i] - pz, lq = q[i] - qz;
      kl += std::exp(lp) * (lp - lq);
    }
    total += kl;
  }
  return total / std::max<int64_t>(rows, 1);
}

// --documents: D documents of N tokens at once, for each D and N; the JSON's "batched" rows.
absl::StatusOr<std::string> RunBatched(
    const engine::LlamaModel& model, const engine::RunnerConfig& config,
    std::shared_ptr<const engine::ScorerWeights> scorer, const std::vector<int32_t>& text,
    std::span<const int32_t> task, const std::vector<int64_t>& documents,
    const std::vector<int64_t>& lengths, int64_t batcher_tokens) {
  auto backend = engine::CudaReadingBackend::Create(&model);
  if (!backend.ok()) return backend.status();
  std::vector<std::vector<float>> task_queries;
  if (auto s = (*backend)->CaptureQueries(task, nullptr, &task_queries); !s.ok()) return s;
  const int64_t L = config.segment_tokens, text_n = static_cast<int64_t>(text.size());
  std::string rows;
  for (const int64_t D : documents) {
    for (const int64_t n : lengths) {
      std::vector<std::vector<int32_t>> ids(D);
      std::vector<std::unique_ptr<engine::DocumentState>> states;
      for (int64_t i = 0; i < D; ++i) {
        for (int64_t t = 0; t < n; ++t) ids[i].push_back(text[(i * 7919 + t) % text_n]);
        auto state = (*backend)->NewDocument(config.memory, scorer, nullptr);
        if (!state.ok()) return state.status();
        (*state)->SetTaskQueries(task_queries, static_cast<int64_t>(task.size()));
        states.push_back(std::move(*state));
      }
      double peak_gib = UsedGib(), first_pass = 0;
      const auto start = std::chrono::steady_clock::now();
      for (int64_t at = 0; at < n; at += L) {
        std::vector<engine::SegmentRead> reads;
        for (int64_t i = 0; i < D; ++i) {
          reads.push_back(
              {states[i].get(), std::span<const int32_t>(ids[i]).subspan(at, std::min(L, n - at))});
        }
        if (auto s = (*backend)->ReadSegments(reads); !s.ok()) return s;
        if (at == 0) first_pass = Seconds(start);
        peak_gib = std::max(peak_gib, UsedGib());
      }
      const double seconds = Seconds(start);
      const int64_t passes = (n + L - 1) / L;
      const double steady =
          passes > 1 ? static_cast<double>(D * (n - L)) / (seconds - first_pass) : 0;
      const double resident_mb = states[0]->resident_bytes() / 1e6;
      std::printf(
          "batched %lld documents x %lld tokens: %.3f s, %.0f tokens/s (after the first pass "
          "%.0f), %.2f ms per pass, device memory peak %.2f GiB (one memory %.1f MB)\n",
          static_cast<long long>(D), static_cast<long long>(n), seconds, D * n / seconds, steady,
          1e3 * seconds / passes, peak_gib, resident_mb);
      std::fflush(stdout);
      if (!rows.empty()) rows += ",";
      rows += "{\"documents\":" + std::to_string(D) + ",\"tokens_each\":" + std::to_string(n) +
              ",\"seconds\":" + std::to_string(seconds) +
              ",\"tokens_per_s\":" + std::to_string(D * n / seconds) +
              ",\"tokens_per_s_after_first_pass\":" + std::to_string(steady) +
              ",\"ms_per_pass\":" + std::to_string(1e3 * seconds / passes) +
              ",\"device_gib_peak\":" + std::to_string(peak_gib) +
              ",\"memory_resident_mb_each\":" + std::to_string(resident_mb) + "}";
    }
    if (D < 2 || batcher_tokens <= 0) continue;
    // The worker's way: a runner per document on its own thread, one batcher.
    const int64_t n = batcher_tokens;
    engine::SegmentBatcher batcher(backend->get(), D);
    std::vector<std::unique_ptr<engine::RecurrentRunner>> runners;
    std::vector<std::vector<int32_t>> ids(D);
    for (int64_t i = 0; i < D; ++i) {
      for (int64_t t = 0; t < n; ++t) ids[i].push_back(text[(i * 7919 + t) % text_n]);
      auto runner = engine::RecurrentRunner::Create(backend->get(), config, scorer, nullptr);
      if (!runner.ok()) return runner.status();
      if (auto s = (*runner)->SetTask(task); !s.ok()) return s;
      (*runner)->set_batcher(&batcher);
      runners.push_back(std::move(*runner));
    }
    std::vector<absl::Status> status(D);
    std::latch ready(D + 1);
    std::vector<std::thread> threads;
    for (int64_t i = 0; i < D; ++i) {
      threads.emplace_back([&, i] {
        ready.arrive_and_wait();
        status[i] = runners[i]->Feed(ids[i]);
        if (status[i].ok()) status[i] = runners[i]->Flush();
      });
    }
    const auto start = std::chrono::steady_clock::now();
    ready.arrive_and_wait();
    for (auto& t : threads) t.join();
    const double seconds = Seconds(start);
    for (const absl::Status& s : status) {
      if (!s.ok()) return s;
    }
    const double mean_pass = static_cast<double>(batcher.segments()) / batcher.passes();
    std::printf(
        "batcher %lld documents x %lld tokens (a thread each): %.3f s, %.0f tokens/s, %lld passes, "
        "%.2f documents per pass\n",
        static_cast<long long>(D), static_cast<long long>(n), seconds, D * n / seconds,
        static_cast<long long>(batcher.passes()), mean_pass);
    std::fflush(stdout);
    rows += ",{\"documents\":" + std::to_string(D) + ",\"tokens_each\":" + std::to_string(n) +
            ",\"via\":\"SegmentBatcher, a thread per document\",\"seconds\":" +
            std::to_string(seconds) + ",\"tokens_per_s\":" + std::to_string(D * n / seconds) +
            ",\"passes\":" + std::to_string(batcher.passes()) +
            ",\"documents_per_pass\":" + std::to_string(mean_pass) + "}";
  }
  return rows;
}

int Main(int argc, char** argv) {
  std::string model_path, scorer_path, text_path, json, tokens_arg = "32768,131072";
  std::string archive_arg = "1", store_arg = "ram", documents_arg;
  int64_t batcher_tokens = 0;
  int encode_threads = 8;
  int64_t compare = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") model_path = value;
    if (flag == "--scorer") scorer_path = value;
    if (flag == "--text") text_path = value;
    if (flag == "--tokens") tokens_arg = value;
    if (flag == "--json") json = value;
    if (flag == "--archive") archive_arg = value;
    if (flag == "--compare") compare = std::stoll(value);
    if (flag == "--store") store_arg = value;
    if (flag == "--encode-threads") encode_threads = std::stoi(value);
    if (flag == "--documents") documents_arg = value;
    if (flag == "--batcher-tokens") batcher_tokens = std::stoll(value);
  }
  auto file = engine::ModelFile::Open(model_path);
  if (!file.ok()) return std::fprintf(stderr, "%s\n", file.status().ToString().c_str()), 1;
  auto model = engine::LlamaModel::Load(std::move(*file));
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  const engine::ModelConfig& c = (*model)->config();
  auto weights = engine::LoadScorerWeights(scorer_path, (*model)->fingerprint(), c.n_layers,
                                           c.n_kv_heads, c.d_model);
  if (!weights.ok()) return std::fprintf(stderr, "%s\n", weights.status().ToString().c_str()), 1;
  auto scorer = std::make_shared<const engine::ScorerWeights>(std::move(*weights));
  auto tokenizer = engine::Tokenizer::Create((*model)->file().tokenizer());
  if (!tokenizer.ok()) return 1;
  std::ifstream in(text_path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int32_t> text = (*tokenizer)->Encode(ss.str(), false);
  if (text.empty()) return std::fprintf(stderr, "empty text\n"), 1;
  const std::vector<int32_t> task =
      (*tokenizer)->Encode("What does the document say about the license terms?", false);

  // The product defaults (longread run): RunnerConfig's, blocks of 32.
  engine::RunnerConfig config;
  config.memory.block_tokens = 32;
  kernels::ThreadPool pool(16);
  // The task's query vectors come from the CPU engine (one short forward pass), as in a job.
  engine::RecurrentRunner task_runner(model->get(), config, scorer, &pool);
  if (!task_runner.SetTask(task).ok()) return 1;
  const auto& task_queries = task_runner.memory().task_queries();
  const int64_t n_task = static_cast<int64_t>(task.size());

  if (!documents_arg.empty()) {
    std::vector<int64_t> documents, lengths;
    for (const auto& part : absl::StrSplit(documents_arg, ',')) {
      int64_t v = 0;
      if (absl::SimpleAtoi(part, &v) && v > 0) documents.push_back(v);
    }
    for (const auto& part : absl::StrSplit(tokens_arg, ',')) {
      int64_t v = 0;
      if (absl::SimpleAtoi(part, &v) && v > 0) lengths.push_back(v);
    }
    auto rows = RunBatched(**model, config, scorer, text, task, documents, lengths, batcher_tokens);
    if (!rows.ok()) return std::fprintf(stderr, "%s\n", rows.status().ToString().c_str()), 1;
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    if (!json.empty()) {
      std::ofstream f(json);
      f << "{\"device\":\"" << prop.name
        << "\",\"config\":{\"segment_tokens\":" << config.segment_tokens
        << ",\"sinks\":" << config.memory.sinks << ",\"top_k\":" << config.memory.top_k
        << ",\"window\":" << config.memory.window
        << ",\"block_tokens\":" << config.memory.block_tokens << ",\"task_tokens\":" << n_task
        << ",\"archive\":\"off\"},\"batched\":[" << *rows << "]}\n";
    }
    return 0;
  }

  auto ctx = cu::Context::Create();
  if (!ctx.ok()) return std::fprintf(stderr, "%s\n", ctx.status().ToString().c_str()), 4;
  auto gpu_model = CudaLlamaModel::Create(**model, ctx->get());
  if (!gpu_model.ok())
    return std::fprintf(stderr, "%s\n", gpu_model.status().ToString().c_str()), 1;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);

  std::vector<bool> archive_modes;
  if (archive_arg != "0") archive_modes.push_back(true);
  if (archive_arg == "0" || archive_arg == "both") archive_modes.push_back(false);
  std::string rows;
  for (const auto& part : absl::StrSplit(tokens_arg, ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(part, &n) || n <= 0) continue;
    std::vector<int32_t> ids;
    while (static_cast<int64_t>(ids.size()) < n) ids.insert(ids.end(), text.begin(), text.end());
    ids.resize(n);
    for (const bool archive : archive_modes) {
      auto memory = CudaSparseKMemory::Create(ctx->get(), c, config.memory, scorer);
      if (!memory.ok()) return std::fprintf(stderr, "%s\n", memory.status().ToString().c_str()), 1;
      (*memory)->SetTaskQueries(task_queries, n_task);
      const bool rocks = store_arg == "rocksdb";
      const bool in_ram = !rocks && n <= 131072;
      engine::InMemoryBlockArchive ram(c.n_layers, c.n_kv_heads, c.head_dim);
      CountingArchive counting;
      engine::BlockArchive* store = in_ram ? static_cast<engine::BlockArchive*>(&ram) : &counting;
      std::unique_ptr<engine::RecordingBlockArchive> recorder;
#ifdef LONGREAD_BENCH_ROCKSDB
      std::unique_ptr<cache::CacheDb> db;
      std::unique_ptr<cache::RocksDbBlockArchive> rocks_archive;
      const std::filesystem::path db_dir =
          std::filesystem::temp_directory_path() / "longread-memory-read-bench-db";
      if (rocks && archive) {
        std::filesystem::remove_all(db_dir);
        auto opened_db = cache::CacheDb::Open(db_dir.string());
        if (!opened_db.ok())
          return std::fprintf(stderr, "%s\n", opened_db.status().ToString().c_str()), 1;
        db = std::move(*opened_db);
        cache::BlockArchiveOptions options;
        options.encode_threads = encode_threads;
        auto opened = cache::RocksDbBlockArchive::Open(db.get(), "bench", c.n_layers, c.n_kv_heads,
                                                       c.head_dim, options);
        if (!opened.ok())
          return std::fprintf(stderr, "%s\n", opened.status().ToString().c_str()), 1;
        rocks_archive = std::move(*opened);
        recorder = std::make_unique<engine::RecordingBlockArchive>(rocks_archive.get());
        store = recorder.get();
      }
#else
      if (rocks) return std::fprintf(stderr, "--store rocksdb: built without RocksDB\n"), 1;
#endif
      if (archive) (*memory)->set_archive(store);
      std::vector<float> logits;
      size_t recorded_blocks = 0;
      double peak_gib = UsedGib();
      const auto start = std::chrono::steady_clock::now();
      for (int64_t at = 0; at < n; at += config.segment_tokens) {
        const std::span<const int32_t> segment(ids.data() + at,
                                               std::min<int64_t>(config.segment_tokens, n - at));
        const engine::LogitsMode mode =
            at + config.segment_tokens >= n ? engine::LogitsMode::kLast : engine::LogitsMode::kNone;
        if (auto s = (*gpu_model)->Forward(segment, **memory, mode, &logits); !s.ok()) {
          return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
        }
        if ((at / config.segment_tokens) % 8 == 0) peak_gib = std::max(peak_gib, UsedGib());
        if (recorder != nullptr) recorded_blocks += recorder->TakeRecorded().size();
      }
      if (auto s = (*memory)->archive_status(); !s.ok()) {
        return std::fprintf(stderr, "archive: %s\n", s.ToString().c_str()), 1;
      }
#ifdef LONGREAD_BENCH_ROCKSDB
      if (rocks_archive != nullptr) {
        if (auto s = rocks_archive->Flush(); !s.ok()) {
          return std::fprintf(stderr, "archive: %s\n", s.ToString().c_str()), 1;
        }
      }
#endif
      const double seconds = Seconds(start);
      if (recorder != nullptr) recorded_blocks += recorder->TakeRecorded().size();
      peak_gib = std::max(peak_gib, UsedGib());
      const char* kind = !archive ? "off" : rocks ? "rocksdb chain" : in_ram ? "in RAM" : "counted";
      std::printf(
          "read %lld tokens: %.3f s, %.0f tokens/s, device memory in use: peak %.2f GiB (memory "
          "%.1f MB), archive %s %.1f MB\n",
          static_cast<long long>(n), seconds, n / seconds, peak_gib,
          (*memory)->resident_bytes() / 1e6, kind, store->stored_bytes() / 1e6);
#ifdef LONGREAD_BENCH_ROCKSDB
      if (rocks_archive != nullptr) {
        const cache::BlockArchiveStats st = rocks_archive->stats();
        std::printf(
            "  rocksdb: %llu blocks put, %llu stored, %llu deleted for the cap, %zu recorded\n",
            static_cast<unsigned long long>(st.blocks_put),
            static_cast<unsigned long long>(st.blocks_stored),
            static_cast<unsigned long long>(st.evicted_for_cap), recorded_blocks);
      }
#endif
      std::fflush(stdout);
      if (!rows.empty()) rows += ",";
      rows += "{\"tokens\":" + std::to_string(n) + ",\"seconds\":" + std::to_string(seconds) +
              ",\"tokens_per_s\":" + std::to_string(n / seconds) +
              ",\"device_gib_peak\":" + std::to_string(peak_gib) +
              ",\"memory_resident_mb\":" + std::to_string((*memory)->resident_bytes() / 1e6) +
              ",\"archive\":\"" + kind + "\"" +
              (rocks && archive ? ",\"encode_threads\":" + std::to_string(encode_threads) : "") +
              ",\"archive_mb\":" + std::to_string(store->stored_bytes() / 1e6) + "}";
    }
  }

  std::string comparison = "null";
  if (compare > 0) {
    std::vector<int32_t> ids(text.begin(), text.begin() + std::min<int64_t>(compare, text.size()));
    const int64_t n = static_cast<int64_t>(ids.size());
    engine::RecurrentRunner cpu(model->get(), config, scorer, &pool);
    if (!cpu.SetTask(task).ok()) return 1;
    std::vector<float> cpu_logits, gpu_logits, part;
    const auto cpu_start = std::chrono::steady_clock::now();
    if (auto s = cpu.ReadWithLogits(ids, &cpu_logits); !s.ok()) return 1;
    const double cpu_seconds = Seconds(cpu_start);
    auto memory = CudaSparseKMemory::Create(ctx->get(), c, config.memory, scorer);
    (*memory)->SetTaskQueries(task_queries, n_task);
    for (int64_t at = 0; at < n; at += config.segment_tokens) {
      const std::span<const int32_t> segment(ids.data() + at,
                                             std::min<int64_t>(config.segment_tokens, n - at));
      if (auto s = (*gpu_model)->Forward(segment, **memory, engine::LogitsMode::kAll, &part);
          !s.ok()) {
        return 1;
      }
      gpu_logits.insert(gpu_logits.end(), part.begin(), part.end());
    }
    int64_t same = 0, total = 0;
    for (int32_t l = 0; l < c.n_layers; ++l) {
      for (int32_t g = 0; g < c.n_kv_heads; ++g) {
        const auto& want = cpu.memory().held(l, g).positions;
        const auto& got = (*memory)->positions(l, g);
        std::vector<int64_t> both;
        std::set_intersection(want.begin(), want.end(), got.begin(), got.end(),
                              std::back_inserter(both));
        same += static_cast<int64_t>(both.size());
        total += static_cast<int64_t>(want.size());
      }
    }
    const double kl = MeanKl(cpu_logits, gpu_logits, c.vocab_size);
    std::printf(
        "compare %lld tokens: cpu %.1f s (16 threads), mean KL %.3g nats, slots in common "
        "%lld/%lld\n",
        static_cast<long long>(n), cpu_seconds, kl, static_cast<long long>(same),
        static_cast<long long>(total));
    comparison = "{\"tokens\":" + std::to_string(n) + ",\"mean_kl_nats\":" + std::to_string(kl) +
                 ",\"cpu_seconds\":" + std::to_string(cpu_seconds) +
                 ",\"slots_in_common\":" + std::to_string(same) +
                 ",\"slots\":" + std::to_string(total) + "}";
  }
  if (!json.empty()) {
    std::ofstream f(json);
    f << "{\"device\":\"" << prop.name
      << "\",\"config\":{\"segment_tokens\":" << config.segment_tokens
      << ",\"sinks\":" << config.memory.sinks << ",\"top_k\":" << config.memory.top_k
      << ",\"window\":" << config.memory.window
      << ",\"block_tokens\":" << config.memory.block_tokens << ",\"task_tokens\":" << n_task
      << "},\"reads\":[" << rows << "],\"cpu_comparison\":" << comparison << "}\n";
  }
  return 0;
}

}  // namespace
}  // namespace longread

int main(int argc, char** argv) { return longread::Main(argc, argv); }
