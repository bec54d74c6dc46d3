#pragma once
// The shared decoder-only transformer (Llama family): token embedding, N pre-norm layers of
// GQA attention + SwiGLU MLP, final RMSNorm, lm_head. Architectures differ only in the flags
// of their ModelConfig and in their weight names.

#include <memory>

#include "model/architecture.h"
#include "model/model.h"

namespace engine {

std::unique_ptr<Model> make_decoder_model(const ModelConfig& config,
                                          const DecoderWeightNames& names,
                                          const LoadOptions& options, Backend& backend);

}  // namespace engine
