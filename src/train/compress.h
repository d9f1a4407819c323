// What a training run adds for model compression: starting from another model's weights
// (--init_from: recovery fine-tuning after pruning, fine-tuning in general),
// quantisation-aware training (I3, --qat) and knowledge distillation from a teacher (I5,
// --teacher; the loss itself is in model/head.cpp and ops/distill.h).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/fields.h"
#include "model/model.h"

namespace dsv3 {

struct CompressionConfig {
  std::string init_from;      // weights to start from (fresh optimizer, step 0)
  bool qat = false;           // fake-quantise the linear layers' weights in the forward (STE)
  std::string teacher;        // model to distil from (same tokenizer)
  double distill_alpha = 0.5; // loss = (1 - a) CE + a T^2 KL(teacher_T || student_T)
  double distill_temp = 2.0;  // T
};
const std::vector<FieldSpec>& compression_fields();
void validate(const CompressionConfig& c);

// The model config of a run started --init_from a model whose config is `weights`: that config,
// with the model settings the user gave (keys, values in `given`) applied where the weights
// allow them, i.e. where the parameter table keeps every name and shape (rope_theta, route_scale,
// topk, max_seq, ... may change; hidden, experts, mtp_depth, ... may not). An Error names the
// first setting the weights do not allow.
ModelConfig init_from_config(const ModelConfig& weights, const ModelConfig& given,
                             const std::vector<std::string>& model_keys);
// The fp32 weights of `path` for a run whose model is c (same parameter table, else an Error).
std::vector<float> init_from_weights(const std::string& path, const ModelConfig& c);

// Distillation needs the student's tokenizer to be the teacher's: the tokenizer file beside the
// teacher (find_tokenizer_for_model) must hold the same bytes as the run's (data_tokenizer; ""
// for byte-level ids), else an Error says which differs.
void check_same_tokenizer(const std::string& teacher, const std::string& data_tokenizer);

// A teacher for distillation: its own weights and forward-only workspace (nothing shared with
// the student), run on each micro-batch before the student; the student's head then asks for
// its logits chunk by chunk (SoftTargets), so the teacher's (N, V) logits never exist either.
class Teacher {
 public:
  // dtype: the student's compute dtype; max: the student's largest micro-batch.
  Teacher(const std::string& path, const ModelConfig& student, DType dtype, Device device, Dims max,
          double alpha, double temperature);
  ~Teacher();
  Teacher(const Teacher&) = delete;
  Teacher& operator=(const Teacher&) = delete;

  // Runs the teacher over mb (its blocks and final norm) and returns what the student's head
  // needs: soft targets reading the teacher's logits of rows [r0, r0 + rows) on demand.
  const SoftTargets* run(const MicroBatch& mb);
  const std::string& source() const { return source_; }

 private:
  struct State;
  std::unique_ptr<State> s_;
  std::string source_;
};

}  // namespace dsv3
