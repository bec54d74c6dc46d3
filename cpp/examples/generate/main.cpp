// Greedy generation from token ids with libengine: what a C++ application links against.
//
//   generate <model_dir> [--max-tokens N] [token ids...]
//
// Prints the generated token ids on one line. Tokenization is the application's business;
// without prompt ids the prompt is the single token 1 (BOS in Llama-family vocabularies).

#include <charconv>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <engine/engine.h>

namespace {

constexpr int kBadArguments = 2;
constexpr int kDefaultMaxTokens = 16;

struct Args {
  std::string model_dir;
  int max_tokens = kDefaultMaxTokens;
  std::vector<int> prompt_token_ids;
};

void print_usage(const char* program) {
  std::cerr << "usage: " << program << " <model_dir> [--max-tokens N] [token ids...]\n"
            << "  model_dir       a folder with config.json and *.safetensors\n"
            << "  --max-tokens N  how many tokens to generate, N >= 1 (default "
            << kDefaultMaxTokens << ")\n"
            << "  token ids       the prompt as non-negative integers (default: 1)\n";
}

std::optional<int> parse_int(std::string_view text) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Returns nullopt after printing what is wrong.
std::optional<Args> parse_args(int argc, char** argv) {
  if (argc < 2 || std::string_view(argv[1]).starts_with("-")) {
    std::cerr << "error: the first argument must be the model directory\n";
    return std::nullopt;
  }
  Args args;
  args.model_dir = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--max-tokens") {
      const auto value = i + 1 < argc ? parse_int(argv[i + 1]) : std::nullopt;
      if (!value || *value < 1) {
        std::cerr << "error: --max-tokens needs an integer >= 1\n";
        return std::nullopt;
      }
      args.max_tokens = *value;
      ++i;
    } else if (const auto token_id = parse_int(arg); token_id && *token_id >= 0) {
      args.prompt_token_ids.push_back(*token_id);
    } else {
      std::cerr << "error: '" << arg << "' is neither --max-tokens nor a token id >= 0\n";
      return std::nullopt;
    }
  }
  if (args.prompt_token_ids.empty()) args.prompt_token_ids.push_back(1);
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Args> args = parse_args(argc, argv);
  if (!args) {
    print_usage(argv[0]);
    return kBadArguments;
  }
  try {
    engine::EngineConfig config;
    config.model = args->model_dir;
    engine::Engine llm(config);

    engine::SamplingParams params;
    params.temperature = 0.0f;  // greedy: the same ids on every run
    params.max_tokens = args->max_tokens;

    const std::vector<engine::RequestOutput> outputs =
        llm.generate({args->prompt_token_ids}, {params});
    const std::vector<int>& token_ids = outputs.at(0).outputs.at(0).token_ids;
    for (size_t i = 0; i < token_ids.size(); ++i) {
      std::cout << (i == 0 ? "" : " ") << token_ids[i];
    }
    std::cout << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
