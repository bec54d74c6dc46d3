// SamplingParams::validate for logit_bias: every message names the field, the value given and
// what is allowed, as the server passes these on as HTTP 400s.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "engine/sampling_params.h"

namespace engine {
namespace {

std::string error_of(const SamplingParams& params) {
  try {
    params.validate();
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  return "no error";
}

SamplingParams with_bias(int token_id, float bias) {
  SamplingParams p;
  p.logit_bias = {{0, 1.0f}, {token_id, bias}};
  return p;
}

TEST(SamplingParamsLogitBias, AcceptsTheWholeRangeAndNoBias) {
  EXPECT_EQ(error_of(SamplingParams{}), "no error");
  EXPECT_EQ(error_of(with_bias(7, -100.0f)), "no error");
  EXPECT_EQ(error_of(with_bias(7, 100.0f)), "no error");
  EXPECT_EQ(error_of(with_bias(7, 0.0f)), "no error");
  EXPECT_EQ(error_of(with_bias(std::numeric_limits<int>::max(), 3.5f)), "no error");
}

TEST(SamplingParamsLogitBias, RejectsNegativeTokenIds) {
  EXPECT_EQ(error_of(with_bias(-3, 1.0f)),
            "logit_bias token id must be a non-negative token id, got -3");
}

TEST(SamplingParamsLogitBias, RejectsBiasesOutsideTheRangeWithTheTokenId) {
  EXPECT_EQ(error_of(with_bias(5, 100.5f)),
            "logit_bias[5] must be a number in [-100, 100], got 100.5");
  EXPECT_EQ(error_of(with_bias(9, -250.0f)),
            "logit_bias[9] must be a number in [-100, 100], got -250");
  EXPECT_EQ(error_of(with_bias(2, std::numeric_limits<float>::infinity())),
            "logit_bias[2] must be a number in [-100, 100], got inf");
  EXPECT_EQ(error_of(with_bias(2, std::nanf(""))),
            "logit_bias[2] must be a number in [-100, 100], got nan");
}

}  // namespace
}  // namespace engine
