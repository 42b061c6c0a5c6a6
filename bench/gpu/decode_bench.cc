// Decode on the GPU after reading a long document: the product path of `longread run --device
// cuda` (RecurrentRunner over CudaReadingBackend: the real model, the SparseK memory with the
// task term, product defaults: segment 2048, sinks 4, k 2048, window 1024, blocks of 32), then
// answer tokens one at a time. Per length and per way of choosing, tokens/s of the answer (the
// first token, chosen from the prompt's logits, is not counted) and the median step:
//   host    every step's row of logits comes to the host, which chooses (GenerateOptions::
//           host_logits; what `longread run --device cuda` did before)
//   device  the token is chosen on the device (kernels/cuda SampleToken), only its id comes back
//   top-p   as device, with temperature 0.7, top-p 0.9, seed 1
// Greedy answers of host and device must be equal (the bench says so and exits 3 if not).
// --profile-steps K brackets K device steps with cudaProfilerStart/Stop, for
// `ncu --profile-from-start off` (bench/gpu/ncu_summary.py gives kernels and time per step).
//
//   decode_bench --model M.gguf --text FILE [--tokens 131072] [--decode 64] [--modes
//                host,device,top-p] [--profile-steps 0] [--json PATH]
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/memory/cuda_backend.h"
#include "engine/memory/runner.h"
#include "engine/tokenizer/tokenizer.h"

namespace longread {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Decoded {
  std::vector<int32_t> tokens;
  double tokens_per_s = 0, median_step_ms = 0, read_s = 0;
};

int Main(int argc, char** argv) {
  std::string model_path, text_path, json, tokens_arg = "131072", modes_arg = "host,device,top-p";
  int64_t decode = 64, profile_steps = 0;
  std::string command;
  for (int i = 0; i < argc; ++i) {
    if (i > 0) command.push_back(' ');
    command.append(argv[i]);
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") model_path = value;
    if (flag == "--text") text_path = value;
    if (flag == "--tokens") tokens_arg = value;
    if (flag == "--decode") decode = std::stoll(value);
    if (flag == "--modes") modes_arg = value;
    if (flag == "--profile-steps") profile_steps = std::stoll(value);
    if (flag == "--json") json = value;
  }
  if (decode < 2) return std::fprintf(stderr, "--decode must be >= 2\n"), 2;
  auto file = engine::ModelFile::Open(model_path);
  if (!file.ok()) return std::fprintf(stderr, "%s\n", file.status().ToString().c_str()), 1;
  auto model = engine::LlamaModel::Load(std::move(*file));
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  auto tokenizer = engine::Tokenizer::Create((*model)->file().tokenizer());
  if (!tokenizer.ok()) return 1;
  std::ifstream in(text_path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::vector<int32_t> text = (*tokenizer)->Encode(ss.str(), false);
  if (text.empty()) return std::fprintf(stderr, "empty text\n"), 1;
  const std::vector<int32_t> task =
      (*tokenizer)->Encode("What does the document say about the license terms?", false);
  const std::vector<int32_t> prompt =
      (*tokenizer)
          ->Encode("\nWhat does the document say about the license terms? Answer in detail:",
                   false);

  auto backend = engine::CudaReadingBackend::Create(model->get());
  if (!backend.ok()) return std::fprintf(stderr, "%s\n", backend.status().ToString().c_str()), 4;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  engine::RunnerConfig config;
  config.memory.block_tokens = 32;  // longread run's default

  // Reads `ids` with the task, then decodes `decode` tokens choosing as `mode` says.
  auto run = [&](const std::vector<int32_t>& ids, const std::string& mode,
                 int64_t profile) -> absl::StatusOr<Decoded> {
    auto runner = engine::RecurrentRunner::Create(backend->get(), config, nullptr, nullptr);
    if (!runner.ok()) return runner.status();
    if (auto s = (*runner)->SetTask(task); !s.ok()) return s;
    Decoded d;
    const auto read_start = Clock::now();
    if (auto s = (*runner)->Feed(ids); !s.ok()) return s;
    if (auto s = (*runner)->Flush(); !s.ok()) return s;
    d.read_s = Seconds(read_start, Clock::now());
    engine::GenerateOptions options;
    options.max_new_tokens = decode;
    options.host_logits = mode == "host";
    if (mode == "top-p") options.sampling = {.temperature = 0.7f, .top_p = 0.9f, .seed = 1};
    if (auto s = (*runner)->BeginGenerate(prompt, options); !s.ok()) return s;
    std::vector<double> steps;
    Clock::time_point first = Clock::now();
    for (int64_t i = 0; i < decode; ++i) {
      if (i == 1 + decode / 2 && profile > 0) cudaProfilerStart();
      const auto start = Clock::now();
      auto next = (*runner)->NextToken();
      const auto stop = Clock::now();
      if (i == 1 + decode / 2 + profile - 1 && profile > 0) cudaProfilerStop();
      if (!next.ok()) return next.status();
      d.tokens.push_back(next->token);
      if (i == 0) {
        first = stop;  // the first token is chosen from the prompt's row: no forward
      } else {
        steps.push_back(Seconds(start, stop) * 1e3);
      }
    }
    d.tokens_per_s = static_cast<double>(decode - 1) / Seconds(first, Clock::now());
    std::sort(steps.begin(), steps.end());
    d.median_step_ms = steps[steps.size() / 2];
    return d;
  };

  std::string rows;
  bool equal = true;
  for (const auto& part : absl::StrSplit(tokens_arg, ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(part, &n) || n <= 0) continue;
    std::vector<int32_t> ids;
    while (static_cast<int64_t>(ids.size()) < n) ids.insert(ids.end(), text.begin(), text.end());
    ids.resize(n);
    std::vector<int32_t> greedy[2];
    for (const auto& mode_part : absl::StrSplit(modes_arg, ',')) {
      const std::string mode(mode_part);
      auto d = run(ids, mode, mode == "device" ? profile_steps : 0);
      if (!d.ok()) {
        std::fprintf(stderr, "%s: %s\n", mode.c_str(), d.status().ToString().c_str());
        return 1;
      }
      if (mode == "host") greedy[0] = d->tokens;
      if (mode == "device") greedy[1] = d->tokens;
      std::printf(
          "after %lld tokens (read in %.2f s, %.0f tokens/s): %-6s %7.1f tokens/s, median step "
          "%.2f ms, answer: %s\n",
          static_cast<long long>(n), d->read_s, n / d->read_s, mode.c_str(), d->tokens_per_s,
          d->median_step_ms, (*tokenizer)->Decode(d->tokens).substr(0, 80).c_str());
      std::fflush(stdout);
      if (!rows.empty()) rows += ",";
      rows += "{\"document_tokens\":" + std::to_string(n) + ",\"mode\":\"" + mode +
              "\",\"decode_tokens\":" + std::to_string(decode) +
              ",\"tokens_per_s\":" + std::to_string(d->tokens_per_s) +
              ",\"median_step_ms\":" + std::to_string(d->median_step_ms) +
              ",\"read_s\":" + std::to_string(d->read_s) + "}";
    }
    if (!greedy[0].empty() && !greedy[1].empty() && greedy[0] != greedy[1]) {
      std::printf("after %lld tokens: host and device greedy answers DIFFER\n",
                  static_cast<long long>(n));
      equal = false;
    }
  }
  if (!json.empty()) {
    std::ofstream f(json);
    f << "{\"bench\":\"gpu-decode\",\"device\":\"" << prop.name << "\",\"command\":\"" << command
      << "\",\"config\":{\"segment_tokens\":" << config.segment_tokens
      << ",\"sinks\":" << config.memory.sinks << ",\"top_k\":" << config.memory.top_k
      << ",\"window\":" << config.memory.window
      << ",\"block_tokens\":" << config.memory.block_tokens << ",\"task_tokens\":" << task.size()
      << ",\"prompt_tokens\":" << prompt.size()
      << ",\"scorer\":\"none\"},\"greedy_equal\":" << (equal ? "true" : "false") << ",\"rows\":["
      << rows << "]}\n";
  }
  return equal ? 0 : 3;
}

}  // namespace
}  // namespace longread

int main(int argc, char** argv) { return longread::Main(argc, argv); }
