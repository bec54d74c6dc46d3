#pragma once

#include "backend/tensor.h"

namespace engine::cpu {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight. out may alias x.
void rms_norm(Tensor out /*[R, D] f32*/, Tensor x /*[R, D] f32*/, Tensor weight /*[D] f32*/,
              float eps);

// residual += x, then x = rms_norm(residual) * weight: the pre-norm block's fused step, one
// pass over each row while it is in L1.
void add_rms_norm(Tensor x /*[R, D] f32 in/out*/, Tensor residual /*[R, D] f32 in/out*/,
                  Tensor weight /*[D] f32*/, float eps);

}  // namespace engine::cpu
