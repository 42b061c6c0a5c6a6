// Times the CPU kernels on the default model's shapes, for 1 and 2 threads, prints GFLOP/s (and
// weight GB/s for decode), and writes bench/results/kernels-cpu-<date>.json (CPU model, date,
// command, load average at start). Each figure is the best of several timed repetitions, so
// that other processes on a shared machine disturb it less.
//   kernels_bench [--quick] [--out PATH] [--portable] [--only matmul|attention]
//                 [--blocking TOKENS,DEPTH,GROUP_FLOATS]   (prefill cache blocking, e.g.
//                 252,256,262144)
#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/half.h"
#include "kernels/ops.h"

namespace longread::kernels {
namespace {

using Clock = std::chrono::steady_clock;

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// Random but well-formed weights: small f16 scales so that values stay finite.
std::vector<uint8_t> RandomWeights(DType type, int64_t rows, int64_t cols) {
  const MatrixView shape{type, rows, cols, nullptr};
  std::vector<uint8_t> bytes(shape.row_bytes() * rows);
  std::mt19937 rng(42);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  const uint16_t small = FloatToHalf(0.01f);
  const int64_t block = BlockBytes(type);
  auto fix_u16 = [&](size_t at) { std::memcpy(&bytes[at], &small, 2); };
  switch (type) {
    case DType::kF32:
      for (size_t i = 0; i < bytes.size(); i += 4) {
        const float v = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;
        std::memcpy(&bytes[i], &v, 4);
      }
      break;
    case DType::kF16:
    case DType::kBF16:
      for (size_t i = 0; i < bytes.size(); i += 2) {
        const float v = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;
        const uint16_t h = type == DType::kF16 ? FloatToHalf(v) : FloatToBFloat16(v);
        std::memcpy(&bytes[i], &h, 2);
      }
      break;
    case DType::kQ4_1:
      for (size_t i = 0; i < bytes.size(); i += block) {
        fix_u16(i);
        fix_u16(i + 2);
      }
      break;
    default:
      for (size_t i = 0; i < bytes.size(); i += block) fix_u16(i);
      break;
  }
  return bytes;
}

double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Timing {
  double wall = 1e30;  // best wall time of one run
  double cpu = 1e30;   // best process CPU time of one run, divided by the thread count
};

// Best of `reps` runs after one warm-up, stopping early past `budget_s` seconds. On a shared,
// oversubscribed machine the wall time measures the machine's load as much as the kernel; the
// CPU time per thread (which counts spinning, so it errs on the slow side) estimates the time
// on an idle machine.
template <typename Fn>
Timing Time(Fn&& fn, int reps, double budget_s, int threads) {
  fn();
  Timing best;
  double spent = 0;
  for (int r = 0; r < reps && spent < budget_s; ++r) {
    const double c0 = ProcessCpuSeconds();
    const auto t0 = Clock::now();
    fn();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best.wall = std::min(best.wall, s);
    best.cpu = std::min(best.cpu, (ProcessCpuSeconds() - c0) / threads);
    spent += s;
  }
  return best;
}

struct Result {
  std::string kernel, shape, dtype;
  int64_t n_tokens;
  int threads;
  double seconds, gflops, weight_gbps;
  double cpu_seconds, cpu_gflops;  // from CPU time per thread (see Time)
};

std::string ToJson(const Result& r) {
  std::ostringstream o;
  o << "{\"kernel\":\"" << r.kernel << "\",\"shape\":\"" << r.shape << "\",\"dtype\":\"" << r.dtype
    << "\",\"n_tokens\":" << r.n_tokens << ",\"threads\":" << r.threads
    << ",\"seconds\":" << r.seconds << ",\"gflops\":" << r.gflops
    << ",\"weight_gbps\":" << r.weight_gbps << ",\"cpu_seconds\":" << r.cpu_seconds
    << ",\"cpu_gflops\":" << r.cpu_gflops << "}";
  return o.str();
}

int Main(int argc, char** argv) {
  bool quick = false;
  std::string out_path;
  std::string only;  // run only the kernels whose name ("matmul", "attention") contains this
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--portable")) cpu::ForcePortable(true);
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
    if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    if (!std::strcmp(argv[i], "--blocking") && i + 1 < argc) {
      cpu::PrefillBlocking b;
      long long t = 0, d = 0, g = 0;
      if (std::sscanf(argv[++i], "%lld,%lld,%lld", &t, &d, &g) == 3) {
        b = cpu::PrefillBlocking{t, d, g};
      }
      cpu::SetPrefillBlocking(b);
    }
  }
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::localtime(&now));
  char timestamp[32];
  std::strftime(timestamp, sizeof timestamp, "%Y-%m-%dT%H:%M:%S", std::localtime(&now));
  if (out_path.empty()) {
    const char* src = std::getenv("LONGREAD_SOURCE_DIR");
    out_path = std::string(src ? src : ".") + "/bench/results/kernels-cpu-" + date + ".json";
  }
  const std::string load_at_start = LoadAverage();
  std::printf("cpu: %s | avx2 path: %s | load: %s\n", CpuModel().c_str(),
              cpu::UseAvx2() ? "yes" : "no", load_at_start.c_str());

  struct MatShape {
    const char* name;
    int64_t k, n;
    DType type;
  };
  std::vector<MatShape> shapes = {
      {"attn_q/o 576->576", 576, 576, DType::kQ4_1},
      {"attn_k/v 576->192", 576, 192, DType::kQ4_1},
      {"ffn_gate/up 576->1536", 576, 1536, DType::kQ4_1},
      {"ffn_down 1536->576", 1536, 576, DType::kQ4_1},
      {"lm_head 576->49152", 576, 49152, DType::kQ8_0},
  };
  if (!quick) {
    for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
      shapes.push_back({"ffn_gate/up 576->1536", 576, 1536, t});
    }
  }
  std::vector<Result> results;
  const double budget = quick ? 0.3 : 1.0;
  std::printf("%-24s %-5s %7s %7s %10s %9s %9s %9s\n", "matmul", "dtype", "tokens", "threads", "ms",
              "GFLOP/s", "wGB/s", "cpuGF/s");
  for (const MatShape& s : shapes) {
    if (std::string("matmul").find(only) == std::string::npos) break;
    const auto bytes = RandomWeights(s.type, s.n, s.k);
    const MatrixView w{s.type, s.n, s.k, bytes.data()};
    for (int64_t n_tokens : {int64_t{1}, int64_t{16}, int64_t{512}, int64_t{2048}}) {
      if (quick && n_tokens == 16) continue;
      // Whole-segment prefill (L = 2048) for the layers' own shapes; the LM head never sees one.
      if (n_tokens == 2048 && (s.n > 4096 || s.type != DType::kQ4_1)) continue;
      std::vector<float> x(n_tokens * s.k), y(n_tokens * s.n);
      std::mt19937 rng(1);
      for (float& v : x) v = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        const Timing t = Time([&] { MatMul(w, x.data(), n_tokens, y.data(), &pool); },
                              n_tokens == 1 ? 200 : 20, budget, threads);
        const double flops = 2.0 * s.n * s.k * n_tokens;
        const Result r{"matmul",
                       s.name,
                       std::string(DTypeName(s.type)),
                       n_tokens,
                       threads,
                       t.wall,
                       flops / t.wall * 1e-9,
                       static_cast<double>(bytes.size()) / t.wall * 1e-9,
                       t.cpu,
                       flops / t.cpu * 1e-9};
        std::printf("%-24s %-5s %7ld %7d %10.3f %9.1f %9.1f %9.1f\n", s.name, r.dtype.c_str(),
                    static_cast<long>(n_tokens), threads, t.wall * 1e3, r.gflops, r.weight_gbps,
                    r.cpu_gflops);
        std::fflush(stdout);
        results.push_back(r);
      }
    }
  }

  // Attention: segment of n_q queries after `past` cached keys, causal, SmolLM2 heads.
  std::printf("%-24s %7s %7s %7s %10s %9s %9s\n", "attention", "n_q", "keys", "threads", "ms",
              "GFLOP/s", "cpuGF/s");
  const int64_t n_heads = 9, n_kv = 3, hd = 64;
  for (auto [n_q, past] : {std::pair<int64_t, int64_t>{512, 0}, {512, 1536}, {1, 2047}}) {
    if (quick && n_q == 1) continue;
    if (std::string("attention").find(only) == std::string::npos) break;
    const int64_t n_keys = n_q + past;
    std::vector<float> q(n_q * n_heads * hd), k(n_kv * n_keys * hd), v(k.size()), o(q.size());
    std::mt19937 rng(3);
    for (auto* vec : {&q, &k, &v}) {
      for (float& e : *vec) e = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;
    }
    std::vector<int32_t> from(n_kv * n_keys), until(n_kv * n_keys, INT32_MAX);
    double pairs = 0;
    for (int64_t g = 0; g < n_kv; ++g) {
      for (int64_t j = 0; j < n_keys; ++j) {
        from[g * n_keys + j] = static_cast<int32_t>(std::max<int64_t>(0, j - past));
      }
    }
    for (int64_t i = 0; i < n_q; ++i) pairs += past + i + 1;
    AttentionArgs a;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.visible_from = from.data();
    a.visible_until = until.data();
    a.n_q = n_q;
    a.n_keys = n_keys;
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv;
    a.head_dim = hd;
    a.scale = 0.125f;
    a.out = o.data();
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      const Timing t = Time([&] { Attention(a, &pool); }, 20, budget, threads);
      const double flops = 4.0 * hd * pairs * n_heads;  // QK^T and PV
      const std::string shape = "causal q" + std::to_string(n_q) + " past" + std::to_string(past);
      results.push_back({"attention", shape, "F32", n_q, threads, t.wall, flops / t.wall * 1e-9, 0,
                         t.cpu, flops / t.cpu * 1e-9});
      std::printf("%-24s %7ld %7ld %7d %10.3f %9.1f %9.1f\n", "causal 9q/3kv d64",
                  static_cast<long>(n_q), static_cast<long>(n_keys), threads, t.wall * 1e3,
                  flops / t.wall * 1e-9, flops / t.cpu * 1e-9);
      std::fflush(stdout);
    }
  }

  std::ofstream out(out_path);
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", out_path.c_str());
    return 1;
  }
  out << "{\n  \"bench\": \"kernels-cpu\",\n  \"cpu\": \"" << CpuModel() << "\",\n  \"date\": \""
      << timestamp << "\",\n  \"command\": \"" << command
      << "\",\n  \"avx2_path\": " << (cpu::UseAvx2() ? "true" : "false")
      << ",\n  \"load_average_at_start\": \"" << load_at_start << "\",\n  \"results\": [\n";
  for (size_t i = 0; i < results.size(); ++i) {
    out << "    " << ToJson(results[i]) << (i + 1 < results.size() ? ",\n" : "\n");
  }
  out << "  ]\n}\n";
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}

}  // namespace
}  // namespace longread::kernels

int main(int argc, char** argv) { return longread::kernels::Main(argc, argv); }
