#include "runtime/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "core/mix.h"

namespace engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Below this many candidates a sort is cheaper than another nth_element split.
constexpr std::ptrdiff_t kSortBelow = 24;

// Vocabulary scans run in chunks so that a vectorised chunk sum or test can skip most of the
// row before a scalar scan with an early exit.
constexpr int kChunk = 256;

struct Candidate {
  float weight;  // unnormalised probability, exp(logit - max logit)
  int token_id;
};

// The deterministic order of the kept tokens: most probable first, ties to the smaller id.
bool comes_before(const Candidate& a, const Candidate& b) {
  return a.weight > b.weight || (a.weight == b.weight && a.token_id < b.token_id);
}

// Per-thread buffers reused across rows and steps, so sampling allocates nothing per token once
// warm. Invariant between rows: every entry of output_counts and seen is zero.
struct Scratch {
  std::vector<float> raw_logits;      // [vocab_size] copy kept for logprobs
  std::vector<float> weights;         // [vocab_size]
  std::vector<Candidate> candidates;  // [vocab_size], of which a prefix is in use
  std::vector<int> output_counts;     // [vocab_size] occurrences in the output so far
  std::vector<unsigned char> seen;    // [vocab_size] repetition-penalty dedup marks

  void reserve_for(int vocab_size) {
    const size_t n = static_cast<size_t>(vocab_size);
    if (weights.size() >= n) return;
    raw_logits.resize(n);
    weights.resize(n);
    candidates.resize(n);
    output_counts.assign(n, 0);
    seen.assign(n, 0);
  }
};

Scratch& thread_scratch(int vocab_size) {
  thread_local Scratch scratch;
  scratch.reserve_for(vocab_size);
  return scratch;
}

// exp(x) for x <= 0, in plain arithmetic so that loops over it vectorise (the layer is built
// without finite-math-only, so glibc offers no vector expf). Cody-Waite reduction to
// r in [-ln2/2, ln2/2] and a degree-7 Taylor polynomial: relative error about 1e-7 (a few
// float ulps), exactly 1 at x = 0, and 0 below -87 where the float would go subnormal.
inline float exp_nonpositive(float x) {
  const float clamped = std::max(x, -87.0f);
  const float n = std::floor(clamped * 1.44269504f + 0.5f);
  float r = std::fma(n, -0.693145752f, clamped);  // ln 2 split so n * hi is exact
  r = std::fma(n, -1.42860677e-6f, r);
  float p = 1.0f / 5040.0f;
  p = std::fma(p, r, 1.0f / 720.0f);
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const float scale = std::bit_cast<float>(static_cast<int32_t>(n + 127.0f) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

float max_value(const float* x, int n) {
  float best = kNegInf;
#pragma omp simd reduction(max : best)
  for (int i = 0; i < n; ++i) best = x[i] > best ? x[i] : best;
  return best;
}

// Sums f(x[i]) for i in [begin, end) in double; the simd reduction lets the compiler split the
// sum into vector lanes, which it may not do on its own without -ffinite-math-only.
template <typename F>
double sum_mapped(const float* x, int begin, int end, F f) {
  double total = 0.0;
#pragma omp simd reduction(+ : total)
  for (int i = begin; i < end; ++i) total += f(x[i]);
  return total;
}

double sum_range(const float* x, int begin, int end) {
  return sum_mapped(x, begin, end, [](float v) { return v; });
}

void check_token_ids(std::span<const int> ids, int vocab_size, size_t row, const char* what) {
  for (int id : ids) {
    if (id < 0 || id >= vocab_size) {
      throw std::out_of_range("sampler row " + std::to_string(row) + ": " + what + " token id " +
                              std::to_string(id) + " is outside [0, " + std::to_string(vocab_size) +
                              ")");
    }
  }
}

// Runs before the parallel loop: an exception thrown inside an OpenMP region would terminate.
void check_rows(const std::vector<SamplingRow>& rows, int vocab_size) {
  if (vocab_size <= 0) {
    throw std::invalid_argument("sampler vocab_size is " + std::to_string(vocab_size) +
                                " but must be positive");
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    const SamplingRow& row = rows[r];
    if (row.params == nullptr) {
      throw std::invalid_argument("sampler row " + std::to_string(r) + " has no params");
    }
    const SamplingParams& p = *row.params;
    check_token_ids(row.masked_token_ids, vocab_size, r, "masked");
    for (const auto& entry : p.logit_bias) {
      check_token_ids(std::span(&entry.first, 1), vocab_size, r, "logit_bias");
    }
    const bool output_penalties = p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
    if (p.repetition_penalty != 1.0f) {
      check_token_ids(row.prompt_token_ids, vocab_size, r, "prompt");
    }
    if (output_penalties || p.repetition_penalty != 1.0f) {
      check_token_ids(row.output_token_ids, vocab_size, r, "output");
      if (row.num_pending_outputs > 0) {
        throw std::logic_error("sampler row " + std::to_string(r) +
                               " applies penalties but its last output is still pending");
      }
    }
  }
}

// Each distinct token of prompt and output is penalised once, however often it occurs.
void apply_repetition_penalty(float* logits, const SamplingRow& row, float penalty,
                              Scratch& scratch) {
  unsigned char* seen = scratch.seen.data();
  auto penalise = [&](std::span<const int> ids) {
    for (int id : ids) {
      if (seen[id]) continue;
      seen[id] = 1;
      logits[id] = logits[id] > 0.0f ? logits[id] / penalty : logits[id] * penalty;
    }
  };
  penalise(row.prompt_token_ids);
  penalise(row.output_token_ids);
  for (int id : row.prompt_token_ids) seen[id] = 0;
  for (int id : row.output_token_ids) seen[id] = 0;
}

void apply_output_penalties(float* logits, const SamplingRow& row, float frequency, float presence,
                            Scratch& scratch) {
  int* counts = scratch.output_counts.data();
  for (int id : row.output_token_ids) ++counts[id];
  for (int id : row.output_token_ids) {
    if (counts[id] == 0) continue;  // already applied for an earlier occurrence
    logits[id] -= frequency * static_cast<float>(counts[id]) + presence;
    counts[id] = 0;
  }
}

// vLLM's order: masks, then logit_bias, then the penalties (so the repetition penalty divides
// or multiplies the biased logit). A masked token stays at -inf whatever its bias.
void apply_masks_and_penalties(float* logits, const SamplingRow& row, Scratch& scratch) {
  const SamplingParams& p = *row.params;
  for (int id : row.masked_token_ids) logits[id] = kNegInf;
  for (const auto& [id, bias] : p.logit_bias) logits[id] += bias;
  if (p.repetition_penalty != 1.0f) {
    apply_repetition_penalty(logits, row, p.repetition_penalty, scratch);
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    apply_output_penalties(logits, row, p.frequency_penalty, p.presence_penalty, scratch);
  }
}

double sum_weights(const Candidate* begin, const Candidate* end) {
  double total = 0.0;
  for (const Candidate* c = begin; c != end; ++c) total += c->weight;
  return total;
}

// Reorders c[0, n) so that its first k elements are the k first in comes_before order, where k
// is the smallest count whose total weight reaches target (exceeds it when strict). Returns k,
// or n when rounding leaves target unreached. O(n): each round splits the remaining range at
// its middle with nth_element (introselect, so no quadratic worst case on ties or presorted
// rows) and keeps the half that holds the boundary; the kept tokens are never fully sorted.
size_t select_mass_prefix(Candidate* c, size_t n, double target, bool strict) {
  auto reached = [&](double mass) { return strict ? mass > target : mass >= target; };
  std::ptrdiff_t lo = 0, hi = static_cast<std::ptrdiff_t>(n);
  // Invariants: c[0, lo) precede c[lo, hi), which precede the rest; mass_before_lo is the
  // weight of c[0, lo); the answer lies in (lo, hi].
  double mass_before_lo = 0.0;
  while (hi - lo > kSortBelow) {
    const std::ptrdiff_t mid = lo + (hi - lo) / 2;
    std::nth_element(c + lo, c + mid, c + hi, comes_before);
    const double upper = sum_weights(c + lo, c + mid);
    if (reached(mass_before_lo + upper)) {
      hi = mid;
    } else {
      mass_before_lo += upper;
      lo = mid;
    }
  }
  std::sort(c + lo, c + hi, comes_before);
  for (std::ptrdiff_t i = lo; i < hi; ++i) {
    mass_before_lo += c[i].weight;
    if (reached(mass_before_lo)) return static_cast<size_t>(i + 1);
  }
  return static_cast<size_t>(hi);
}

// Candidate cut-offs on the weight, 3 octaves apart from 1/8 down to 2^-15 (10.4 nats below
// the best token), then the min_p floor itself. One vectorised pass counts the tokens (and,
// for top_p, the weight) above each, and the highest cut-off that already holds top_k tokens
// or the top_p nucleus bounds the gather: on real rows that is tens to hundreds of tokens.
constexpr int kNumCuts = 6;

struct CutStats {
  float cut[kNumCuts];
  int count[kNumCuts] = {};    // tokens with weight >= cut
  double mass[kNumCuts] = {};  // their total weight, when asked for
};

template <bool kWithMass>
void accumulate_cut_stats(const float* weights, int vocab_size, CutStats& s) {
  const float* cut = s.cut;
  int* count = s.count;
  double* mass = s.mass;
  if constexpr (kWithMass) {
#pragma omp simd reduction(+ : count[ : kNumCuts], mass[ : kNumCuts])
    for (int i = 0; i < vocab_size; ++i) {
      for (int t = 0; t < kNumCuts; ++t) {
        count[t] += weights[i] >= cut[t] ? 1 : 0;
        mass[t] += weights[i] >= cut[t] ? weights[i] : 0.0f;
      }
    }
  } else {
#pragma omp simd reduction(+ : count[ : kNumCuts])
    for (int i = 0; i < vocab_size; ++i) {
      for (int t = 0; t < kNumCuts; ++t) count[t] += weights[i] >= cut[t] ? 1 : 0;
    }
  }
}

CutStats cut_stats(const float* weights, int vocab_size, float min_p, bool with_mass) {
  CutStats s;
  // The last cut-off also drops weight-0 tokens (masked or underflowed): they are never drawn.
  const float floor = std::max(min_p, std::numeric_limits<float>::denorm_min());
  for (int t = 0; t < kNumCuts; ++t) {
    s.cut[t] = t + 1 < kNumCuts ? std::max(std::ldexp(1.0f, -3 * (t + 1)), floor) : floor;
  }
  if (with_mass) {
    accumulate_cut_stats<true>(weights, vocab_size, s);
  } else {
    accumulate_cut_stats<false>(weights, vocab_size, s);
  }
  return s;
}

// Which cut-off to gather at: the first that holds the top-k tokens, or else the top_p nucleus,
// of the min_p survivors; the min_p floor when only min_p is on.
int choose_cut(const CutStats& s, const SamplingParams& p, bool top_k_on) {
  const bool top_p_on = p.top_p < 1.0f;
  for (int t = 0; t + 1 < kNumCuts && (top_k_on || top_p_on); ++t) {
    if (top_k_on ? s.count[t] >= p.top_k : s.mass[t] >= p.top_p * s.mass[kNumCuts - 1]) return t;
  }
  return kNumCuts - 1;
}

// Collects, in token-id order, the tokens with weight >= cut; returns how many. Chunks with
// none are skipped after a vectorised count.
size_t gather_candidates(const float* weights, int vocab_size, float cut, Candidate* out) {
  size_t num = 0;
  for (int begin = 0; begin < vocab_size; begin += kChunk) {
    const int end = std::min(vocab_size, begin + kChunk);
    int num_in_chunk = 0;
    for (int i = begin; i < end; ++i) num_in_chunk += weights[i] >= cut ? 1 : 0;
    if (num_in_chunk == 0) continue;
    for (int i = begin; i < end; ++i) {
      out[num] = {weights[i], i};
      num += weights[i] >= cut ? 1 : 0;
    }
  }
  return num;
}

// Applies min_p, top_k and top_p; on return candidates[0, kept) is the kept set and the return
// value is kept. Each filter keeps a prefix of the comes_before order, so all three compose.
size_t filter_candidates(const float* weights, int vocab_size, const SamplingParams& p,
                         Candidate* c) {
  const bool top_k_on = p.top_k > 0 && p.top_k < vocab_size;
  // Weights are relative to the best token (weight 1), so min_p applies to them directly.
  // Only top_p without top_k needs the weight above each cut-off.
  const bool with_mass = !top_k_on && p.top_p < 1.0f;
  const CutStats stats = cut_stats(weights, vocab_size, std::max(p.min_p, 0.0f), with_mass);
  size_t kept =
      gather_candidates(weights, vocab_size, stats.cut[choose_cut(stats, p, top_k_on)], c);
  double kept_mass = stats.mass[kNumCuts - 1];  // the min_p survivors' weight, if computed
  if (top_k_on) {
    const size_t top_k = static_cast<size_t>(p.top_k);
    if (kept > top_k) {
      std::nth_element(c, c + top_k - 1, c + kept, comes_before);
      kept = top_k;
    }
    kept_mass = sum_weights(c, c + kept);
  }
  // Without top_k, top_p renormalises over every min_p survivor, gathered or not.
  if (p.top_p < 1.0f) {
    kept = std::max<size_t>(1, select_mass_prefix(c, kept, p.top_p * kept_mass, false));
  }
  return kept;
}

// Inverse CDF in token-id order: valid without filters, and it needs no candidate list. Whole
// chunks are skipped by their vectorised sums.
int draw_in_id_order(const float* weights, int vocab_size, double total, double u) {
  const double target = u * total;
  double cumulative = 0.0;
  for (int begin = 0; begin < vocab_size; begin += kChunk) {
    const int end = std::min(vocab_size, begin + kChunk);
    const double chunk_mass = sum_range(weights, begin, end);
    if (cumulative + chunk_mass <= target) {
      cumulative += chunk_mass;
      continue;
    }
    for (int i = begin; i < end; ++i) {
      cumulative += weights[i];
      if (cumulative > target) return i;  // weights[i] > 0, since the sum just grew past target
    }
  }
  for (int i = vocab_size - 1; i > 0; --i) {  // rounding left the target unreached
    if (weights[i] > 0.0f) return i;
  }
  return 0;
}

// Scales the row by 1 / temperature in place, then draws one token with the filters applied.
int sample_random(float* logits, int vocab_size, const SamplingParams& p, double u,
                  Scratch& scratch) {
  const float inv_temperature = 1.0f / p.temperature;
  for (int i = 0; i < vocab_size; ++i) logits[i] *= inv_temperature;
  const float max_logit = max_value(logits, vocab_size);
  if (max_logit == kNegInf) return 0;  // every token masked: nothing can be drawn

  float* weights = scratch.weights.data();
  for (int i = 0; i < vocab_size; ++i) weights[i] = exp_nonpositive(logits[i] - max_logit);
  const double total = sum_range(weights, 0, vocab_size);
  const bool any_filter = p.min_p > 0.0f || (p.top_k > 0 && p.top_k < vocab_size) || p.top_p < 1.0f;
  if (!any_filter) return draw_in_id_order(weights, vocab_size, total, u);

  Candidate* c = scratch.candidates.data();
  const size_t kept = filter_candidates(weights, vocab_size, p, c);
  const double kept_mass = sum_weights(c, c + kept);
  const size_t picked = select_mass_prefix(c, kept, u * kept_mass, true);
  return c[std::clamp<size_t>(picked, 1, kept) - 1].token_id;
}

// Two passes (a vectorised max, then the first index holding it, found chunk by chunk) give
// the smallest id on ties.
int argmax(const float* x, int n) {
  const float best = max_value(x, n);
  for (int begin = 0; begin < n; begin += kChunk) {
    const int end = std::min(n, begin + kChunk);
    int found = 0;
    for (int i = begin; i < end; ++i) found |= x[i] == best ? 1 : 0;
    if (!found) continue;
    for (int i = begin; i < end; ++i) {
      if (x[i] == best) return i;
    }
  }
  return 0;  // only when the row holds NaN
}

// The N largest logits, most likely first, ties to the smaller id. Ids arrive ascending, so a
// strict > against the current N-th keeps smaller ids ahead on ties. Once the list is full, a
// chunk whose (vectorised) max cannot enter it is skipped whole.
std::vector<std::pair<int, float>> top_logits(const float* raw, int vocab_size, int num_top) {
  std::vector<std::pair<int, float>> top;
  const size_t n = static_cast<size_t>(std::clamp(num_top, 0, vocab_size));
  if (n == 0) return top;
  top.reserve(n + 1);
  for (int begin = 0; begin < vocab_size; begin += kChunk) {
    const int end = std::min(vocab_size, begin + kChunk);
    if (top.size() == n && !(max_value(raw + begin, end - begin) > top.back().second)) continue;
    for (int i = begin; i < end; ++i) {
      if (top.size() == n && !(raw[i] > top.back().second)) continue;
      auto pos =
          std::find_if(top.begin(), top.end(), [&](const auto& e) { return raw[i] > e.second; });
      top.insert(pos, {i, raw[i]});
      if (top.size() > n) top.pop_back();
    }
  }
  return top;
}

TokenLogprobs compute_logprobs(const float* raw, int vocab_size, int token_id, int num_top) {
  const float max_logit = max_value(raw, vocab_size);
  const double sum_exp =
      sum_mapped(raw, 0, vocab_size, [&](float v) { return exp_nonpositive(v - max_logit); });
  const double log_norm = static_cast<double>(max_logit) + std::log(sum_exp);

  TokenLogprobs out;
  out.token_id = token_id;
  out.logprob = static_cast<float>(static_cast<double>(raw[token_id]) - log_norm);
  const float sampled = raw[token_id];
  int num_larger = 0;
  for (int i = 0; i < vocab_size; ++i) num_larger += raw[i] > sampled ? 1 : 0;
  out.rank = 1 + num_larger;
  out.top = top_logits(raw, vocab_size, num_top);
  for (auto& entry : out.top) {
    entry.second = static_cast<float>(static_cast<double>(entry.second) - log_norm);
  }
  return out;
}

SampleResult sample_row(float* logits, int vocab_size, const SamplingRow& row) {
  const SamplingParams& p = *row.params;
  Scratch& scratch = thread_scratch(vocab_size);
  if (p.logprobs.has_value()) {
    std::memcpy(scratch.raw_logits.data(), logits, sizeof(float) * vocab_size);
  }
  apply_masks_and_penalties(logits, row, scratch);

  SampleResult result;
  if (p.is_greedy()) {
    result.token_id = argmax(logits, vocab_size);
  } else {
    const double u = uniform_draw(row.seed, row.output_index());
    result.token_id = sample_random(logits, vocab_size, p, u, scratch);
  }
  if (p.logprobs.has_value()) {
    result.logprobs =
        compute_logprobs(scratch.raw_logits.data(), vocab_size, result.token_id, *p.logprobs);
  }
  return result;
}

}  // namespace

std::vector<SampleResult> Sampler::sample(float* logits, int vocab_size,
                                          const std::vector<SamplingRow>& rows) const {
  check_rows(rows, vocab_size);
  std::vector<SampleResult> results(rows.size());
  const std::ptrdiff_t num_rows = static_cast<std::ptrdiff_t>(rows.size());
  // Rows differ in cost (logprobs, filters), so they are handed out one at a time.
#pragma omp parallel for schedule(dynamic, 1) if (num_rows > 1)
  for (std::ptrdiff_t r = 0; r < num_rows; ++r) {
    results[r] =
        sample_row(logits + r * static_cast<std::ptrdiff_t>(vocab_size), vocab_size, rows[r]);
  }
  return results;
}

void check_score_rows(const char* caller, int vocab_size, std::span<const int> token_ids,
                      std::span<const int> num_top) {
  const std::string name(caller);
  if (vocab_size <= 0) {
    throw std::invalid_argument(name + ": vocab_size is " + std::to_string(vocab_size) +
                                " but must be positive");
  }
  if (num_top.size() != token_ids.size()) {
    throw std::invalid_argument(name + ": " + std::to_string(token_ids.size()) + " token ids but " +
                                std::to_string(num_top.size()) +
                                " num_top entries; give one per row");
  }
  for (size_t r = 0; r < token_ids.size(); ++r) {
    if (token_ids[r] < 0 || token_ids[r] >= vocab_size) {
      throw std::invalid_argument(name + ": row " + std::to_string(r) + " token id " +
                                  std::to_string(token_ids[r]) + " is outside the vocabulary [0, " +
                                  std::to_string(vocab_size) + ")");
    }
    if (num_top[r] < 0 || num_top[r] > SamplingParams::kMaxLogprobs) {
      throw std::invalid_argument(name + ": row " + std::to_string(r) + " asks for " +
                                  std::to_string(num_top[r]) + " top logprobs; allowed is [0, " +
                                  std::to_string(SamplingParams::kMaxLogprobs) + "]");
    }
  }
}

std::vector<TokenLogprobs> score_tokens(const float* logits, int vocab_size,
                                        std::span<const int> token_ids,
                                        std::span<const int> num_top) {
  check_score_rows("score_tokens", vocab_size, token_ids, num_top);
  std::vector<TokenLogprobs> scored(token_ids.size());
  const std::ptrdiff_t num_rows = static_cast<std::ptrdiff_t>(token_ids.size());
#pragma omp parallel for schedule(static) if (num_rows > 1)
  for (std::ptrdiff_t r = 0; r < num_rows; ++r) {
    scored[r] = compute_logprobs(logits + r * static_cast<std::ptrdiff_t>(vocab_size), vocab_size,
                                 token_ids[r], num_top[r]);
  }
  return scored;
}

double uniform_draw(uint64_t seed, uint64_t counter) {
  // Two splitmix64 rounds: the inner one spreads the counter so that nearby (seed, counter)
  // pairs do not collide after the xor; the outer one decorrelates the result.
  const uint64_t bits = splitmix64(seed ^ splitmix64(counter));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace engine
