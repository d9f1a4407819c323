// The accelerators the planner (train/plan.h) knows: one table of published or measured figures,
// each with its source in hardware.cpp. Nothing else in dsv3 reads these numbers.
#pragma once
#include <string>
#include <vector>

namespace dsv3 {

struct Hardware {
  const char* name;  // what --gpu takes
  const char* what;  // one line for the output: the part and where the figures come from
  double peak_bf16 = 0;  // dense FLOP/s per device (no sparsity), bf16 GEMMs
  double peak_fp32 = 0;  // dense FLOP/s per device, fp32 GEMMs (CUDA: TF32 tensor cores off)
  // The share of the dense peak the training step's FLOPs run at (GEMMs, attention and what
  // surrounds them): a stated assumption for GPUs, a measured figure for `cpu`.
  double efficiency = 0;
  double memory_bytes = 0;  // per device
  double memory_bw = 0;     // bytes/s per device (HBM; host DRAM for cpu): the optimizer step
  double intra_bw = 0;      // bytes/s one device sends inside a node (NVLink), one direction
  double inter_bw = 0;      // bytes/s one device sends across nodes (its InfiniBand NIC)
  int per_node = 8;         // devices per node (tensor parallelism stays inside one)
  // cpu: the N "devices" of a plan are N ranks sharing this one machine: each gets 1/N of the
  // peak, of the memory bandwidth and of the memory.
  bool shared_host = false;
};

const std::vector<Hardware>& hardware_table();
// The entry of `name`; an Error listing the known names otherwise.
const Hardware& find_hardware(const std::string& name);

}  // namespace dsv3
