// What the CUDA op launchers (src/ops/cuda/*.cu) need from the CUDA backend beyond the seam:
// the stream behind an Exec, per-stream scratch memory, the device-side error flag, launch
// checks. Only CUDA translation units include this header.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "backend/backend.h"

namespace dsv3::cuda {

// Throws dsv3::Error("CUDA <what> failed: <reason>") unless e is cudaSuccess.
void check(cudaError_t e, const char* what);

// The stream of an Exec: its own, or for nullptr the calling thread's default stream
// (cudaStreamPerThread, which CUDA graphs can capture, unlike the legacy stream).
cudaStream_t stream_of(Stream* s);

// Scratch memory for one op call on stream s, valid until the next scratch() on s. It grows
// only (the old block goes back to the caching allocator in stream order), so steady-state
// training allocates nothing and a captured CUDA graph keeps valid addresses; growing while a
// graph is being captured is an Error (the warm-up run sizes it).
void* scratch(Stream* s, size_t bytes);

// Where kernels record input errors (ops/cuda/device.cuh DeviceError): host-mapped memory that
// synchronize() and device-to-host copies read, turning a code into an Error that names it.
int* device_error_flag();

// Raises a kernel's dynamic shared-memory limit when it needs more than the default 48 KB.
void allow_dynamic_smem(const void* kernel, size_t bytes);

// After each launch: launch errors now, naming the op; with DSV3_CUDA_SYNC=1 in the
// environment also waits for the kernel and reports execution errors (a debugging mode).
void after_launch(const char* op, Stream* s);

}  // namespace dsv3::cuda
