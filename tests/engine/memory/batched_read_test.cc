// Many documents in one pass (issue 19, item 2): ReadingBackend::ReadSegments reads the next
// segment of each of several documents of different lengths, documents joining and leaving
// between passes, and each document must get what reading it alone gives: the same next-token
// distributions at every position and the same slots in its memory.
// - CPU backend (batched_read_test, CI): the reference reads them one after another, so the
//   logits and slots are exactly equal.
// - CUDA backend (cuda_batched_read_test, label gpu): one forward pass over every document's rows
//   (one GEMM per weight), each memory attending on its own stream. A GEMM over more rows may
//   pick another cuBLASLt algorithm and round differently (bf16), so the criteria are a mean KL
//   and a share of slots in common; the share of bit-identical logits is printed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/memory/cpu_backend.h"
#include "engine/memory/reading_backend.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/engine/test_model.h"
#ifdef LONGREAD_TEST_CUDA
#include "engine/memory/cuda_backend.h"
#endif

namespace longread::engine {
namespace {

// Who reads, how many documents, and the memory: small on the CPU (seconds on 2 cores), the
// product's shape scaled down on the GPU.
struct Shape {
  int documents;
  int64_t segment;
  MemoryConfig memory;
  int64_t stride;  // positions whose logits are compared: every stride-th (host time and RAM)
};

Shape TestShape() {
  Shape s;
#ifdef LONGREAD_TEST_CUDA
  s.documents = 16;
  s.segment = 256;
  s.memory.top_k = 256;
  s.memory.window = 128;
  s.memory.block_tokens = 32;
  s.stride = 8;
#else
  s.documents = 3;
  s.segment = 48;
  s.memory.top_k = 32;
  s.memory.window = 32;
  s.memory.block_tokens = 16;
  s.stride = 1;
#endif
  return s;
}

std::vector<int32_t> DocumentText(const Tokenizer& tokenizer) {
  std::string text;
  for (const char* path : {"/docs/ARCHITECTURE.md", "/README.md", "/docs/SERVICE.md"}) {
    std::ifstream in(testing::SourceDir() + path);
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str();
  }
  return tokenizer.Encode(text, false);
}

double KlDivergence(const float* p, const float* q, int64_t vocab) {
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
  return kl;
}

// A document: its tokens, the pass it joins at, its state and the logits of every token read.
struct Document {
  std::vector<int32_t> tokens;
  int join_pass = 0;
  std::unique_ptr<DocumentState> state;
  std::vector<float> logits;
  int64_t read = 0;
};

std::shared_ptr<const ScorerWeights> Scorer(const LlamaModel& model) {
  const ModelConfig& c = model.config();
  auto w = LoadScorerWeights(testing::SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.lrscorer",
                             model.fingerprint(), c.n_layers, c.n_kv_heads, c.d_model);
  if (!w.ok()) return nullptr;  // no scorer installed: every key scores 0 (the task term stays)
  return std::make_shared<const ScorerWeights>(std::move(*w));
}

void ReadsEachDocumentAsItWouldAlone(ReadingBackend& backend, const LlamaModel& model) {
  const Shape shape = TestShape();
  const ModelConfig& c = model.config();
  const int64_t vocab = c.vocab_size, L = shape.segment;
  auto tokenizer = Tokenizer::Create(model.file().tokenizer());
  ASSERT_TRUE(tokenizer.ok());
  const std::vector<int32_t> text = DocumentText(**tokenizer);
  ASSERT_GT(static_cast<int64_t>(text.size()), 4 * L) << "documentation missing";
  const std::vector<int32_t> task =
      (*tokenizer)->Encode("What does the document say about the memory?", false);
  std::vector<std::vector<float>> task_queries;
  kernels::ThreadPool pool(2);
  ASSERT_TRUE(backend.CaptureQueries(task, &pool, &task_queries).ok());
  const auto scorer = Scorer(model);

  // Lengths of 1.2 to ~4 segments, none a whole number of segments (the last segment is short),
  // each from its own place in the text; every third document joins a pass later (all are read
  // together in the second pass, then they leave one by one).
  auto make_documents = [&](std::vector<Document>* docs) {
    docs->resize(shape.documents);
    for (int i = 0; i < shape.documents; ++i) {
      Document& d = (*docs)[i];
      const int64_t n = L + L / 5 + (i * 37 * L / 16) % (3 * L) + 3 * i;
      const int64_t at = (i * 101) % (static_cast<int64_t>(text.size()) - n);
      d.tokens.assign(text.begin() + at, text.begin() + at + n);
      d.join_pass = i % 3 == 2 ? 1 : 0;
      auto state = backend.NewDocument(shape.memory, scorer, &pool);
      ASSERT_TRUE(state.ok()) << state.status();
      d.state = std::move(*state);
      d.state->SetTaskQueries(task_queries, static_cast<int64_t>(task.size()));
    }
  };
  // The compared rows of a segment's logits (`part`), read from position d.read on.
  auto keep = [&](Document& d, const std::vector<float>& part) {
    const int64_t rows = static_cast<int64_t>(part.size()) / vocab;
    for (int64_t r = 0; r < rows; ++r) {
      if ((d.read + r) % shape.stride != 0) continue;
      d.logits.insert(d.logits.end(), part.begin() + r * vocab, part.begin() + (r + 1) * vocab);
    }
  };
  auto next_segment = [&](const Document& d) {
    return std::span<const int32_t>(d.tokens).subspan(
        d.read, std::min<int64_t>(L, static_cast<int64_t>(d.tokens.size()) - d.read));
  };

  std::vector<Document> alone, batched;
  make_documents(&alone);
  make_documents(&batched);
  for (Document& d : alone) {
    std::vector<float> part;
    while (d.read < static_cast<int64_t>(d.tokens.size())) {
      const auto segment = next_segment(d);
      ASSERT_TRUE(d.state->ReadSegment(segment, LogitsMode::kAll, &part, nullptr).ok());
      keep(d, part);
      d.read += static_cast<int64_t>(segment.size());
    }
  }
  int passes = 0, most_in_a_pass = 0;
  for (bool any = true; any; ++passes) {
    std::vector<SegmentRead> reads;
    std::vector<std::vector<float>> parts(batched.size());
    std::vector<Document*> in_pass;
    for (size_t i = 0; i < batched.size(); ++i) {
      Document& d = batched[i];
      if (passes < d.join_pass || d.read >= static_cast<int64_t>(d.tokens.size())) continue;
      reads.push_back({d.state.get(), next_segment(d), LogitsMode::kAll, &parts[i]});
      in_pass.push_back(&d);
    }
    any = !reads.empty();
    if (!any) break;
    most_in_a_pass = std::max(most_in_a_pass, static_cast<int>(reads.size()));
    const absl::Status s = backend.ReadSegments(reads);
    ASSERT_TRUE(s.ok()) << s;
    for (size_t i = 0; i < batched.size(); ++i) keep(batched[i], parts[i]);
    for (size_t r = 0; r < reads.size(); ++r) {
      in_pass[r]->read += static_cast<int64_t>(reads[r].tokens.size());
    }
  }
  EXPECT_EQ(most_in_a_pass, shape.documents);

  double kl_sum = 0, kl_max = 0;
  int64_t positions = 0, identical_rows = 0, same_slots = 0, slots = 0;
  for (int i = 0; i < shape.documents; ++i) {
    const Document &a = alone[i], &b = batched[i];
    const int64_t n = static_cast<int64_t>(a.tokens.size());
    ASSERT_EQ(b.state->next_position(), n) << "document " << i;
    ASSERT_EQ(b.logits.size(), a.logits.size()) << "document " << i;
    for (int64_t t = 0; t * vocab < static_cast<int64_t>(a.logits.size()); ++t) {
      const float* p = &a.logits[t * vocab];
      const float* q = &b.logits[t * vocab];
      const double kl = KlDivergence(p, q, vocab);
      ASSERT_TRUE(std::isfinite(kl)) << "document " << i << " position " << t;
      kl_sum += kl;
      kl_max = std::max(kl_max, kl);
      identical_rows += std::equal(p, p + vocab, q) ? 1 : 0;
      ++positions;
    }
    ASSERT_TRUE(a.state->FetchHeld().ok() && b.state->FetchHeld().ok());
    for (int32_t l = 0; l < c.n_layers; ++l) {
      for (int32_t g = 0; g < c.n_kv_heads; ++g) {
        const auto& want = a.state->held(l, g).positions;
        const auto& got = b.state->held(l, g).positions;
        std::vector<int64_t> both;
        std::set_intersection(want.begin(), want.end(), got.begin(), got.end(),
                              std::back_inserter(both));
        same_slots += static_cast<int64_t>(both.size());
        slots += static_cast<int64_t>(want.size());
      }
    }
  }
  std::printf(
      "[batched] %s: %d documents, %d passes, %lld positions compared: mean KL %.3g nats, max "
      "%.3g, "
      "bit-identical logit rows %lld, slots in common %lld/%lld\n",
      std::string(backend.device()).c_str(), shape.documents, passes,
      static_cast<long long>(positions), kl_sum / positions, kl_max,
      static_cast<long long>(identical_rows), static_cast<long long>(same_slots),
      static_cast<long long>(slots));
  if (backend.device() == "cpu") {
    EXPECT_EQ(identical_rows, positions);
    EXPECT_EQ(same_slots, slots);
  } else {
    EXPECT_LE(kl_sum / positions, 1e-3);
    EXPECT_GE(same_slots, slots * 95 / 100);
  }
}

void RefusesADocumentTwice(ReadingBackend& backend) {
  kernels::ThreadPool pool(1);
  MemoryConfig memory;
  auto state = backend.NewDocument(memory, nullptr, &pool);
  ASSERT_TRUE(state.ok());
  const std::vector<int32_t> tokens = {1, 2, 3};
  const SegmentRead twice[2] = {{state->get(), tokens}, {state->get(), tokens}};
  EXPECT_EQ(backend.ReadSegments(twice).code(), absl::StatusCode::kInvalidArgument);
  const SegmentRead empty[1] = {{state->get(), {}}};
  EXPECT_EQ(backend.ReadSegments(empty).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*state)->next_position(), 0);
}

#ifdef LONGREAD_TEST_CUDA
#define BACKEND(model, backend)                                                        \
  if (!kernels::cuda::DeviceAvailable()) {                                             \
    const char* require = std::getenv("LONGREAD_REQUIRE_GPU");                         \
    if (require != nullptr && std::string(require) == "1") FAIL() << "no CUDA device"; \
    GTEST_SKIP() << "no CUDA device";                                                  \
  }                                                                                    \
  auto created = CudaReadingBackend::Create(model);                                    \
  ASSERT_TRUE(created.ok()) << created.status();                                       \
  ReadingBackend& backend = **created
#else
#define BACKEND(model, backend)         \
  CpuReadingBackend cpu_backend(model); \
  ReadingBackend& backend = cpu_backend
#endif

#ifdef LONGREAD_TEST_CUDA
#define BATCHED_READ_TEST(name) TEST(CudaBatchedReadTest, name)
#else
#define BATCHED_READ_TEST(name) TEST(BatchedReadTest, name)
#endif

BATCHED_READ_TEST(EachDocumentReadsAsItWouldAlone) {
  REQUIRE_DEFAULT_MODEL(model);
  BACKEND(model, backend);
  ReadsEachDocumentAsItWouldAlone(backend, *model);
}

BATCHED_READ_TEST(RefusesADocumentTwiceAndEmptySegments) {
  REQUIRE_DEFAULT_MODEL(model);
  BACKEND(model, backend);
  RefusesADocumentTwice(backend);
}

}  // namespace
}  // namespace longread::engine
