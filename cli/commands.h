// The dsv3 subcommands. Each parses its own settings through flags.h and returns an exit code;
// errors are thrown as dsv3::Error and printed by main().
#pragma once

namespace dsv3::cli {
int cmd_train(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_sample(int argc, char** argv);
int cmd_serve(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_import(int argc, char** argv);
int cmd_prepare(int argc, char** argv);
int cmd_tokenizer(int argc, char** argv);
int cmd_curate(int argc, char** argv);
int cmd_quantize(int argc, char** argv);  // cmd_compress.cpp
int cmd_prune(int argc, char** argv);
int cmd_report(int argc, char** argv);
int cmd_sweep(int argc, char** argv);
int cmd_launch(int argc, char** argv);
int cmd_plan(int argc, char** argv);    // cmd_plan.cpp
int cmd_evaluate(int argc, char** argv);  // cmd_evaluate.cpp
int cmd_synth(int argc, char** argv);     // cmd_synth.cpp
int cmd_augment(int argc, char** argv);
int cmd_finetune(int argc, char** argv);  // cmd_finetune.cpp
int cmd_pipeline(int argc, char** argv);  // cmd_pipeline.cpp
}  // namespace dsv3::cli
