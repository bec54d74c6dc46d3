#pragma once
// StepInputs: the i32 arrays one step feeds the model (token ids, positions, cache slots, the
// attention metadata, the rows to sample), written by the host straight into one page-locked
// buffer and copied to the device in a single asynchronous transfer.
//
// The arrays are packed back to back in an order fixed by the step's shape, so two steps of the
// same shape use the same device addresses: a CUDA graph captured for a shape reads the next
// step's inputs where it read the captured ones. The pending-token pairs come last, so their
// count moves no other array.
//
// The host side is double-buffered: a step's arrays are written while the previous step's
// upload may still be queued on the device (the engine runs one step ahead).

#include <cstddef>
#include <cstdint>

#include "backend/backend.h"

namespace engine {

// The sizes of one step's arrays.
struct StepShape {
  int num_tokens = 0;         // T
  int num_seqs = 0;           // B
  int num_logits = 0;         // S: rows sampled
  int block_table_width = 0;  // W: columns of the block table
  int num_pending = 0;        // P: input tokens still being sampled by the step in flight

  bool operator==(const StepShape&) const = default;
};

// Host views of one step's arrays, to be filled before upload().
struct HostStepArrays {
  int32_t* input_ids;        // [T]
  int32_t* positions;        // [T]
  int32_t* slot_mapping;     // [T]
  int32_t* logits_indices;   // [S]
  int32_t* query_start_loc;  // [B + 1]
  int32_t* seq_lens;         // [B]
  int32_t* block_table;      // [B, W]
  // [P, 2]: (token index t, sampled row r): input_ids[t] is the id the step in flight samples
  // in its row r, written on the device once that step has sampled it.
  int32_t* pending_tokens;
};

// Device tensors of one step's arrays, valid until the next begin().
struct DeviceStepArrays {
  Tensor input_ids, positions, slot_mapping, logits_indices, query_start_loc, seq_lens;
  Tensor block_table;     // [B, W]
  Tensor pending_tokens;  // [P, 2]
};

class StepInputs {
 public:
  // Sized once for the largest step: max_tokens T, max_seqs B (and at most B pending tokens),
  // block tables max_width wide and max_logits logits rows (default max_seqs: one sampled row
  // per sequence).
  StepInputs(Backend& backend, int max_tokens, int max_seqs, int max_width, int max_logits = 0);

  // Lays out a step of this shape and returns where to write it. Throws std::logic_error if the
  // shape exceeds the sizes given at construction.
  HostStepArrays begin(const StepShape& shape);
  // Enqueues the copy of the arrays to the device and returns the device views. The copy is
  // asynchronous: the host arrays stay untouched until the step after next begin()s, by when
  // the engine has waited for this step.
  DeviceStepArrays upload();

 private:
  Backend& backend_;
  int max_tokens_, max_seqs_, max_width_, max_logits_;
  Buffer host_[2], device_;
  // The half of host_ begin() hands out: never the half of the last step uploaded, whose copy
  // may still be queued, even when a step fails between begin() and upload().
  int writing_index_ = 0;
  int uploaded_index_ = 1;
  StepShape shape_;
  size_t offsets_[9] = {};  // in int32 elements; [8] is the total
};

}  // namespace engine
