// Next-token choice from logits: greedy, or temperature + nucleus (top-p) sampling with a seed,
// so that a run is reproducible; with the controls against loops that users of other runtimes
// expect (a repetition penalty, no repeated n-grams).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace longread::engine {

struct SamplingOptions {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id wins a tie)
  float top_p = 1.0f;        // keep the smallest set of tokens whose probability sums to >= top_p
  uint64_t seed = 0;
  // llama.cpp's repetition penalty: each distinct token among the last `repeat_last_n` (the
  // prompt's tail, then the answer) has its logit divided by it when positive, multiplied when
  // negative. 1: off (the default: the model writes a number one digit per token, and a penalty
  // on recent digits breaks copying a number).
  float repeat_penalty = 1.0f;
  int64_t repeat_last_n = 64;
  // The answer never repeats an n-gram of this many tokens: a token that would complete one
  // already in the answer is excluded. 0: off. Greedy decoding of a small model falls into
  // loops that repeat a sentence. Measured (issue 20) on `--task analyze_code` of Python's
  // json/decoder.py: 6 ends the answer on its own after 185 tokens; 8 and 12 still paraphrase
  // the loop to the token limit; the pass-key answers of bench/quality are unchanged. A 5-digit
  // number cannot hold a repeated 6-gram (only a run of 7+ equal digits can).
  int64_t no_repeat_ngram = 6;
};

// One choice's inputs besides the logits, so that a device can choose as the host does: the
// controls as token lists (the repetition penalty on `penalized`, then -inf on `banned`) and,
// when temperature > 0, the uniform draw in [0, 1) taken from the sampler's generator (the host
// and a device then pick the token at uniform x the kept mass). ChooseToken is the reference.
struct SampleStep {
  float temperature = 0.0f;
  float top_p = 1.0f;
  double uniform = 0.0;
  float repeat_penalty = 1.0f;
  std::vector<int32_t> penalized;  // distinct, ascending
  std::vector<int32_t> banned;     // may repeat
};

// The token `step` chooses from `logits` (vocab floats): greedy is Argmax of the controlled
// logits; else p = exp((l - max) / temperature) in float, the nucleus in descending p (ties by
// id) when top_p < 1, and the first token (nucleus order, or id order without top-p) at which
// the running sum reaches uniform x the kept mass. `controlled` and `candidates` are scratch.
int32_t ChooseToken(std::span<const float> logits, const SampleStep& step,
                    std::vector<float>* controlled,
                    std::vector<std::pair<float, int32_t>>* candidates);

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {}
  // The tokens read just before the answer (the question's turn): the repetition penalty counts
  // them among the last repeat_last_n, as llama.cpp does; n-grams are of the answer alone.
  void SetPromptTail(std::span<const int32_t> prompt);
  // Chooses the next token and records it as part of the answer.
  int32_t Next(std::span<const float> logits);

  // The same in two halves, for a choice made elsewhere (on the device): Plan draws from the
  // generator and lists the controls for the next token; Record takes the token chosen.
  // Next(logits) == Record(ChooseToken(logits, Plan(), ...)).
  const SampleStep& Plan();
  void Record(int32_t token) { answer_.push_back(token); }

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
  std::vector<int32_t> prompt_tail_;  // at most repeat_last_n tokens
  std::vector<int32_t> answer_;
  std::vector<float> controlled_;
  SampleStep step_;
};

int32_t Argmax(std::span<const float> logits);

}  // namespace longread::engine
