#include "train/hardware.h"

#include "core/check.h"

namespace dsv3 {

namespace {
constexpr double T = 1e12, G = 1e9, GB = 1e9, GiB = 1073741824.0;

// The share of dense peak the step's FLOPs run at on a GPU while computing (pipeline bubbles and
// exposed communication are modelled separately, on top). An ASSUMPTION: dsv3 has not measured
// a training step at scale on GPUs. For scale: Megatron-Core publishes "up to 47% MFU on H100"
// end to end (GPT-3 175B, github.com/NVIDIA/Megatron-LM), bubbles and communication included,
// so its compute phases run above that; 50% for ours is that figure rounded, not fitted to
// DeepSeek-V3's cost (docs/planner.md compares the two).
constexpr double kGpuEfficiency = 0.50;

// Link figures are what one GPU sends in one direction. InfiniBand: one 400 Gb/s ConnectX-7 NIC
// per GPU (DGX H100/H200/B200 and DeepSeek's H800 cluster) = 50 GB/s; DeepSeek-V3's report
// (arXiv 2412.19437, section 3.2.2) uses 50 GB/s for IB and measures 160 GB/s for the H800's
// NVLink (spec: 400 GB/s bidirectional, i.e. 200 per direction: 80% of it achieved). For the
// other parts we apply the same 80% to NVIDIA's per-direction NVLink spec.
const std::vector<Hardware> kTable = {
    {"h800",
     "NVIDIA H800 SXM 80 GB (DeepSeek-V3's cluster: 2048 of them, 8 per node)",
     989.4 * T,  // bf16 dense: the H100 SXM's compute (H800 datasheet; DeepSeek's report)
     494.7 * T,  // TF32 dense (fp32 GEMMs on tensor cores)
     kGpuEfficiency,
     80 * GB,
     3.35e12,    // HBM3, as H100 SXM
     160 * GB,   // NVLink: DeepSeek-V3 report 3.2.2, measured (spec 400 GB/s bidirectional)
     50 * GB,    // IB: DeepSeek-V3 report 3.2.2 (400 Gb/s per GPU)
     8, false},
    {"h100",
     "NVIDIA H100 SXM 80 GB (datasheet), 8 per node, NVLink 4 + one 400 Gb/s NIC per GPU",
     989.4 * T, 494.7 * T, kGpuEfficiency,
     80 * GB,
     3.35e12,    // HBM3 3.35 TB/s (H100 SXM datasheet)
     360 * GB,   // NVLink 4: 900 GB/s bidirectional = 450 per direction, x 0.8 achieved
     50 * GB,
     8, false},
    {"h200",
     "NVIDIA H200 SXM 141 GB (datasheet), 8 per node, NVLink 4 + one 400 Gb/s NIC per GPU",
     989.4 * T, 494.7 * T, kGpuEfficiency,
     141 * GB,
     4.8e12,     // HBM3e 4.8 TB/s (H200 datasheet)
     360 * GB,   // NVLink 4 as H100
     50 * GB,
     8, false},
    {"b200",
     "NVIDIA B200 180 GB (DGX B200: 1440 GB for 8), NVLink 5 + one 400 Gb/s NIC per GPU",
     2250 * T,   // bf16 dense 2.25 PFLOP/s (NVIDIA B200: 4.5 PF FP8 dense, bf16 half of it)
     1125 * T,   // TF32 dense
     kGpuEfficiency,
     180 * GB,
     8e12,       // HBM3e 8 TB/s
     720 * GB,   // NVLink 5: 1.8 TB/s bidirectional = 900 per direction, x 0.8 achieved
     50 * GB,    // DGX B200: 8 x 400 Gb/s ConnectX-7
     8, false},
    // This project's machine, measured (docs/planner.md "The cpu entry"): 2 vCPUs of an AMD
    // EPYC (AVX2, no AVX-512), 23 GiB. Peaks: `dsv3 bench --preset tiny --json` reports
    // peak_gflops_fp32 / peak_gflops_bf16 (oneDNN 1536^3 GEMMs, 2 threads, best of >= 5 runs and
    // 0.5 s, before and after the timed steps): 167 / 111 GFLOP/s on 2026-12-06 (bf16 is widened
    // to fp32 on this CPU, hence slower). Efficiency: BENCHMARKS.md's quiet rerun of tiny
    // (issue 10, 1 rank x 2 threads, fp32, 8 x 256) ran 2431 tokens/s x 33.85 MFLOP/token = 82
    // GFLOP/s = 0.49 of the fp32 peak for the whole step: a CALIBRATION on that one run, so a
    // prediction of it checks the arithmetic and the 2-rank prediction checks the model.
    // Memory bandwidth ~15 GB/s for both cores (BENCHMARKS.md, `small`: AdamW's traffic).
    // Ranks exchange data through shared memory (Open MPI's vader): assumed 5 GB/s, a third of
    // the memory bandwidth (a copy reads and writes, the peer reads).
    {"cpu",
     "this machine: 2 cores of an AMD EPYC (AVX2), 23 GiB, measured by dsv3 bench; the plan's "
     "devices are MPI ranks sharing it",
     111 * G, 167 * G, 0.49,
     23 * GiB,
     15 * GB,
     5 * GB, 5 * GB,
     1 << 20, true},
};
}  // namespace

const std::vector<Hardware>& hardware_table() { return kTable; }

const Hardware& find_hardware(const std::string& name) {
  std::string names;
  for (const auto& h : kTable) {
    if (name == h.name) return h;
    names += (names.empty() ? "" : ", ") + std::string(h.name);
  }
  fail("unknown gpu '", name, "' (known: ", names, "; their figures are in src/train/hardware.cpp)");
}

}  // namespace dsv3
