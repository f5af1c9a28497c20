/*
 * ew_torch.h: run a TorchScript image model with libtorch, from C. Compiles as C and C++.
 *
 * Two halves (README, "Bring your own libtorch"): this API is implemented by the loader
 * (Sources/CTorchLoader, linked into every executable, no libtorch), which loads the torch
 * backend (Sources/CTorchShim built as libewall_torch.so, the one piece linked against a
 * libtorch) with dlopen on the first call that needs it. Searched, in order:
 *   1. $EWALL_TORCH_BACKEND, a path: when set, only that file is tried;
 *   2. libewall_torch.so beside the running executable (/proc/self/exe's folder);
 *   3. libewall_torch.so on the dynamic linker's default path (LD_LIBRARY_PATH, ld.so.conf).
 * $EWALL_TORCH_BACKEND is the one environment variable read in C: like LD_LIBRARY_PATH it says
 * where native code is, not how to behave. A tool that never runs the model never loads
 * libtorch. When no backend can be loaded, every call that needs one fails with
 * EW_TORCH_E_BACKEND (the message names the paths tried and the dynamic linker's reason), or
 * returns the documented neutral value; nothing aborts.
 *
 * Threading contract:
 *   - The backend is loaded once per process (pthread_once), by whichever thread first needs
 *     it; every thread then sees the same backend, or the same load error. It is never unloaded.
 *   - ew_torch_set_threads changes process-wide libtorch state: call it once, before the
 *     first load, from one thread. Later calls may change the intra-op thread count only.
 *   - ew_torch_load and ew_torch_free may run on any thread; a handle must not be freed
 *     while a forward on it is running.
 *   - ew_torch_forward may be called from any thread, also concurrently on one handle
 *     (TorchScript's executor is reentrant and each call holds its own InferenceMode guard),
 *     but concurrent calls compete for the same intra-op threads: EwallML serialises them.
 *   - No call keeps a pointer it was given after it returns.
 *   - On CUDA, the model is moved to the device once at load; each forward copies the batch
 *     into a pinned host buffer, uploads it asynchronously, runs, and copies the output back
 *     into the caller's buffer before returning. Forwards on one CUDA handle share the pinned
 *     buffer and are serialised by the shim.
 *
 * Errors: every fallible call returns 0 or a negative EW_TORCH_E_* code and fills the
 * caller-owned ew_torch_error. No C++ exception crosses this header.
 */
#ifndef EW_TORCH_H
#define EW_TORCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EW_TORCH_OK = 0,
    EW_TORCH_E_NOT_FOUND = -1,       /* the model file is missing or unreadable */
    EW_TORCH_E_NOT_TORCHSCRIPT = -2, /* the file is not a TorchScript archive */
    EW_TORCH_E_UNSUPPORTED = -3,     /* needs operators or a file version this libtorch lacks */
    EW_TORCH_E_BAD_OUTPUT = -4,      /* the model's output is not a [n, D] floating-point tensor */
    EW_TORCH_E_BAD_INPUT = -5,       /* the caller's batch has the wrong shape or buffer size */
    EW_TORCH_E_PRECISION = -6,       /* the requested precision cannot be used with this file */
    EW_TORCH_E_FORWARD = -7,         /* the forward pass failed at run time */
    EW_TORCH_E_ARGUMENT = -8,        /* null pointer or invalid option */
    EW_TORCH_E_NO_DEVICE = -9,       /* CUDA asked for, but this libtorch has none, or no such device */
    EW_TORCH_E_OUT_OF_MEMORY = -10,  /* the device ran out of memory for this batch (a smaller one may fit) */
    EW_TORCH_E_BACKEND = -11,        /* no torch backend (libewall_torch.so) could be loaded: the message
                                        names the paths tried and why each failed */
};

typedef struct ew_torch_error {
    int code;
    char message[512];
} ew_torch_error;

typedef enum ew_torch_precision {
    EW_TORCH_FP32 = 0,
    EW_TORCH_BF16 = 1, /* weights and activations in bfloat16 (oneDNN); output returned as float */
    EW_TORCH_FP16 = 2, /* float16 weights and activations: CUDA only */
    EW_TORCH_INT8 = 3, /* a quantized file (models/export_resnet50.py --int8), run as it is on the CPU with the
                          quantized engine it was made for (onednn); input and output stay float32. A file
                          with quantized operators loads only as INT8, and INT8 only loads such a file. */
} ew_torch_precision;

enum {
    EW_TORCH_DEVICE_AUTO = -1, /* CUDA (device 0) when this libtorch has it and a device is present, else CPU */
    EW_TORCH_DEVICE_CPU = 0,
    EW_TORCH_DEVICE_CUDA = 1, /* device_index picks the GPU */
};

typedef struct ew_torch_options {
    int precision;     /* ew_torch_precision */
    int channels_last; /* 1: feed NHWC-strided tensors (faster oneDNN convolutions) */
    int optimize;      /* 0: eval only; 1: torch::jit::freeze; 2: freeze + optimize_for_inference */
    int64_t channels;  /* expected input, e.g. 3 x 224 x 224 */
    int64_t height;
    int64_t width;
    int64_t warmup_batch; /* > 0: run this many zero images through twice at load, and check
                             the output shape then; 0: check on the first forward instead */
    int device_type;      /* EW_TORCH_DEVICE_*; 0 (CPU) in a zeroed struct */
    int device_index;     /* with EW_TORCH_DEVICE_CUDA: which GPU (0-based) */
} ew_torch_options;

/* Loads the torch backend now, if no call has yet (see the top of this file). 0, or
   EW_TORCH_E_BACKEND with the reason in err (the same on every later call). */
int ew_torch_backend_load(ew_torch_error *err);

/* The path the backend was loaded from (static storage), or NULL while none is loaded. Never
   loads one. */
const char *ew_torch_backend_path(void);

/* Process-wide thread settings. intra_op > 0 sets at::set_num_threads; inter_op > 0 sets
   at::set_num_interop_threads, honoured on the first call only. Returns the intra-op count now
   in force (never fails; 0 when no backend can be loaded). */
int ew_torch_set_threads(int intra_op, int inter_op);

/* 1 when the CPU executes bfloat16 natively (AVX512_BF16 or AMX-BF16), else 0. Never loads the
   backend (cpuid only). */
int ew_torch_cpu_has_bf16(void);

/* 1 when the backend's libtorch has the onednn quantized engine that EW_TORCH_INT8 files need,
   else 0 (also when no backend can be loaded). */
int ew_torch_has_int8(void);

typedef struct ew_torch_model ew_torch_model;

/* GPUs this libtorch can use: 0 when it was built without CUDA, none is present, or no backend
   can be loaded. */
int ew_torch_cuda_device_count(void);

/* The device a loaded model runs on: "cpu", "cuda:0", ... Static storage per model. */
const char *ew_torch_device(const ew_torch_model *model);

/* The backend's libtorch version string, e.g. "1.13.1"; "unavailable" when no backend can be
   loaded. Static storage. */
const char *ew_torch_version(void);

/* Loads `path` (borrowed). On success *out owns the model: free it with ew_torch_free. */
int ew_torch_load(const char *path, const ew_torch_options *options, ew_torch_model **out, ew_torch_error *err);

/* Output dimension D, known after a successful load with warmup_batch > 0 or a first forward;
   0 before. */
int64_t ew_torch_output_dim(const ew_torch_model *model);

/* Runs `n` images of float32 NCHW (input: borrowed, n*c*h*w floats, c/h/w as in the options)
   and writes [n, D] float32 into `out` (caller-allocated, out_capacity floats >= n*D). */
int ew_torch_forward(ew_torch_model *model, const float *input, int64_t n, int64_t c, int64_t h, int64_t w, float *out,
                     size_t out_capacity, ew_torch_error *err);

/* Frees the model. Accepts NULL. Cannot fail. */
void ew_torch_free(ew_torch_model *model);

#ifdef __cplusplus
}
#endif
#endif
