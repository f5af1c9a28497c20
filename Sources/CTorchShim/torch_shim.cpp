// torch_shim.cpp: the torch backend, libewall_torch.so: ew_torch.h's functions over libtorch,
// exported as one table (ew_torch_backend.h) that the loader (Sources/CTorchLoader) finds with
// dlopen. Every entry point catches every exception.
#include "ew_torch.h"
#include "ew_torch_backend.h"

#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/api/include/torch/cuda.h>
#include <torch/script.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>

struct ew_torch_model {
    torch::jit::Module module;
    ew_torch_options options;
    std::atomic<int64_t> dim{0};
    c10::Device device{at::kCPU};
    char device_name[32] = "cpu";
    // CUDA only: the pinned host buffer each batch is staged in, and the lock that
    // serialises forwards sharing it.
    at::Tensor staging;
    std::mutex staging_lock;
};

namespace {

#define EW_STR2(x) #x
#define EW_STR(x)  EW_STR2(x)
const char *const kTorchVersion =
    EW_STR(TORCH_VERSION_MAJOR) "." EW_STR(TORCH_VERSION_MINOR) "." EW_STR(TORCH_VERSION_PATCH);

int fail(ew_torch_error *err, int code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

int ok(ew_torch_error *err) {
    if (err) {
        err->code = 0;
        err->message[0] = 0;
    }
    return 0;
}

// The first line of a libtorch message, without its C++ backtrace.
std::string first_lines(const std::string &s, size_t max_lines = 2) {
    std::istringstream in(s);
    std::string line, out;
    for (size_t i = 0; i < max_lines && std::getline(in, line);) {
        if (line.empty()) continue;
        if (!out.empty()) out += " ";
        out += line;
        i++;
    }
    return out;
}

bool contains(const std::string &s, const char *needle) {
    return s.find(needle) != std::string::npos;
}

// Sorts a load failure into the error a user can act on.
int load_error(ew_torch_error *err, const char *path, const std::string &what) {
    std::string m = first_lines(what);
    if (contains(what, "Unknown builtin op") || contains(what, "Unknown type name") ||
        contains(what, "Unknown function") || contains(what, "Unknown attribute") ||
        contains(what, "maximum supported version") || contains(what, "version for reading") ||
        contains(what, "Unknown custom class") || contains(what, "Unknown qualified type"))
        return fail(err, EW_TORCH_E_UNSUPPORTED,
                    "%s needs operators or a format this libtorch %s does not have (%s); export it with "
                    "torch 1.13.x (see models/README.md)",
                    path, kTorchVersion, m.c_str());
    if (contains(what, "constants.pkl") || contains(what, "code/"))
        return fail(err, EW_TORCH_E_NOT_TORCHSCRIPT,
                    "%s is a PyTorch archive but not TorchScript (saved with torch.save, not torch.jit.save?): %s",
                    path, m.c_str());
    return fail(err, EW_TORCH_E_NOT_TORCHSCRIPT, "%s is not a TorchScript file: %s", path, m.c_str());
}

std::string shape_of(const at::Tensor &t) {
    std::string s = "[";
    for (int64_t i = 0; i < t.dim(); i++) s += (i ? ", " : "") + std::to_string(t.size(i));
    return s + "]";
}

// Checks a forward result and returns it as contiguous float [n, D].
int check_output(const torch::jit::IValue &v, int64_t n, at::Tensor *out, ew_torch_error *err) {
    if (!v.isTensor())
        return fail(err, EW_TORCH_E_BAD_OUTPUT,
                    "the model returns a %s, not a tensor; EwallML needs a [n, D] float tensor (replace the "
                    "classifier head with Identity and return the pooled features)",
                    v.tagKind().c_str());
    at::Tensor t = v.toTensor();
    if (!at::isFloatingType(t.scalar_type()))
        return fail(err, EW_TORCH_E_BAD_OUTPUT, "the model's output has dtype %s; a floating-point [n, D] is needed",
                    std::string(c10::toString(t.scalar_type())).c_str());
    if (t.dim() != 2 || t.size(0) != n || t.size(1) < 1)
        return fail(err, EW_TORCH_E_BAD_OUTPUT,
                    "the model's output has shape %s for a batch of %lld; [%lld, D] is needed (flatten the pooled "
                    "features)",
                    shape_of(t).c_str(), (long long)n, (long long)n);
    *out = t.to(at::kFloat).contiguous();
    return 0;
}

at::Tensor make_input(const ew_torch_options &o, at::Tensor x) {
    if (o.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    if (o.precision == EW_TORCH_BF16) x = x.to(at::kBFloat16);
    if (o.precision == EW_TORCH_FP16) x = x.to(at::kHalf);
    return x;
}

// True when any method of the module or its submodules calls a quantized operator: such a file
// holds int8 weights and runs only as EW_TORCH_INT8.
bool has_quantized_ops(const torch::jit::Module &m) {
    for (const auto &sub : m.modules())
        for (const auto &method : sub.get_methods())
            if (contains(method.graph()->toString(), "quantized::")) return true;
    return false;
}

bool onednn_supported() {
    for (auto e : at::globalContext().supportedQEngines())
        if (e == at::QEngine::ONEDNN) return true;
    return false;
}

bool is_out_of_memory(const std::string &what) {
    return contains(what, "out of memory") || contains(what, "CUDNN_STATUS_ALLOC_FAILED") ||
           contains(what, "CUBLAS_STATUS_ALLOC_FAILED");
}

// The device the options ask for, or an error a user can act on.
int resolve_device(const ew_torch_options &o, c10::Device *device, ew_torch_error *err) {
    if (o.device_type == EW_TORCH_DEVICE_CPU) {
        *device = c10::Device(at::kCPU);
        return 0;
    }
    const bool built = torch::cuda::is_available() || at::hasCUDA();
    const int64_t count = built ? (int64_t)torch::cuda::device_count() : 0;
    if (o.device_type == EW_TORCH_DEVICE_AUTO) {
        *device = count > 0 ? c10::Device(at::kCUDA, 0) : c10::Device(at::kCPU);
        return 0;
    }
    if (o.device_type != EW_TORCH_DEVICE_CUDA)
        return fail(err, EW_TORCH_E_ARGUMENT, "unknown device type %d", o.device_type);
    if (!at::hasCUDA())
        return fail(err, EW_TORCH_E_NO_DEVICE,
                    "cuda:%d was asked for, but this torch backend (libtorch %s) was built without CUDA (Debian's "
                    "libtorch-dev is CPU-only; make build LIBTORCH= links CPU-only when libtorch_cuda.so's CUDA "
                    "libraries are missing): build against a CUDA libtorch (make build LIBTORCH=/path/to/libtorch, "
                    "or a pip wheel's torch/ folder), or use --device cpu",
                    o.device_index, kTorchVersion);
    if (count == 0)
        return fail(err, EW_TORCH_E_NO_DEVICE, "cuda:%d was asked for, but no CUDA device is present (driver loaded?)",
                    o.device_index);
    if (o.device_index < 0 || o.device_index >= count)
        return fail(err, EW_TORCH_E_NO_DEVICE, "there is no device cuda:%d (%lld present: cuda:0...cuda:%lld)",
                    o.device_index, (long long)count, (long long)(count - 1));
    *device = c10::Device(at::kCUDA, (c10::DeviceIndex)o.device_index);
    return 0;
}

#define EW_TRY try {
#define EW_CATCH(err, code)                                                                                            \
    }                                                                                                                  \
    catch (const c10::Error &e) {                                                                                      \
        const std::string what = e.what_without_backtrace();                                                           \
        if (is_out_of_memory(what)) return fail(err, EW_TORCH_E_OUT_OF_MEMORY, "%s", first_lines(what).c_str());       \
        return fail(err, code, "%s", first_lines(what).c_str());                                                       \
    }                                                                                                                  \
    catch (const std::exception &e) {                                                                                  \
        return fail(err, code, "%s", first_lines(e.what()).c_str());                                                   \
    }                                                                                                                  \
    catch (...) {                                                                                                      \
        return fail(err, code, "unknown C++ exception");                                                               \
    }

// ew_torch.h's functions, reached through the table at the end.

int set_threads(int intra_op, int inter_op) {
    static std::once_flag interop_once;
    try {
        if (inter_op > 0) std::call_once(interop_once, [&] { at::set_num_interop_threads(inter_op); });
        if (intra_op > 0) at::set_num_threads(intra_op);
        return at::get_num_threads();
    } catch (...) {
        return at::get_num_threads();
    }
}

const char *version(void) {
    return kTorchVersion;
}

int cuda_device_count(void) {
    try {
        return at::hasCUDA() ? (int)torch::cuda::device_count() : 0;
    } catch (...) {
        return 0;
    }
}

const char *device_name(const ew_torch_model *model) {
    return model ? model->device_name : "none";
}

int load(const char *path, const ew_torch_options *options, ew_torch_model **out, ew_torch_error *err) {
    if (!path || !options || !out) return fail(err, EW_TORCH_E_ARGUMENT, "null argument");
    *out = nullptr;
    const ew_torch_options o = *options;
    if (o.channels <= 0 || o.height <= 0 || o.width <= 0 || o.warmup_batch < 0 ||
        (o.precision != EW_TORCH_FP32 && o.precision != EW_TORCH_BF16 && o.precision != EW_TORCH_FP16 &&
         o.precision != EW_TORCH_INT8))
        return fail(err, EW_TORCH_E_ARGUMENT, "invalid options");
    c10::Device device(at::kCPU);
    if (int rc = resolve_device(o, &device, err)) return rc;
    if (o.precision == EW_TORCH_FP16 && device.is_cpu())
        return fail(err, EW_TORCH_E_PRECISION, "fp16 runs on CUDA only; on the CPU use fp32 or bf16");
    if (o.precision == EW_TORCH_INT8 && !device.is_cpu())
        return fail(err, EW_TORCH_E_PRECISION, "int8 files run on the CPU only; on %s use fp32, bf16 or fp16",
                    device.str().c_str());
    if (o.precision == EW_TORCH_INT8 && !onednn_supported())
        return fail(err, EW_TORCH_E_PRECISION,
                    "%s is int8, but this libtorch %s has no onednn quantized engine (the one the file was made "
                    "for); use fp32 or bf16",
                    path, kTorchVersion);
    // An int8 file's packed weights are unpacked for the engine in force when it loads: onednn,
    // the one models/export_resnet50.py --int8 quantizes for (process-wide; fp32 and bf16 files
    // have no quantized weights and do not care).
    if (onednn_supported()) {
        try {
            at::globalContext().setQEngine(at::QEngine::ONEDNN);
        } catch (...) {
        }
    }
    {
        std::ifstream f(path, std::ios::binary);
        if (!f)
            return fail(err, EW_TORCH_E_NOT_FOUND, "model file %s not found or not readable: %s", path,
                        strerror(errno));
        char magic[4] = {0};
        f.read(magic, 4);
        if (f.gcount() < 4 || memcmp(magic, "PK\x03\x04", 4) != 0)
            return fail(err, EW_TORCH_E_NOT_TORCHSCRIPT,
                        "%s is not a TorchScript file (TorchScript files are zip archives made by torch.jit.save; "
                        "make one with models/export_resnet50.py)",
                        path);
    }
    torch::jit::Module m;
    try {
        m = torch::jit::load(path, at::kCPU);
    } catch (const c10::Error &e) {
        return load_error(err, path, e.what_without_backtrace());
    } catch (const std::exception &e) {
        return load_error(err, path, e.what());
    } catch (...) {
        return fail(err, EW_TORCH_E_NOT_TORCHSCRIPT, "%s could not be loaded: unknown C++ exception", path);
    }
    EW_TRY
    m.eval();
    const bool quantized = has_quantized_ops(m);
    if (quantized && o.precision != EW_TORCH_INT8)
        return fail(err, EW_TORCH_E_PRECISION,
                    "%s is an int8 (quantized) file; run it with precision int8, or give the fp32 file of the "
                    "same model",
                    path);
    if (!quantized && o.precision == EW_TORCH_INT8)
        return fail(err, EW_TORCH_E_PRECISION,
                    "%s has no quantized operators, so it is not an int8 file; make one with "
                    "models/export_resnet50.py --int8 (make model writes models/resnet50_int8.pt)",
                    path);
    if (device.is_cuda()) {
        m.to(device);
        at::globalContext().setBenchmarkCuDNN(true); // cuDNN autotuning: the input shape never changes
    }
    if (o.precision == EW_TORCH_BF16 || o.precision == EW_TORCH_FP16) {
        size_t float_params = 0;
        for (const auto &p : m.parameters())
            if (at::isFloatingType(p.scalar_type())) float_params++;
        if (float_params == 0)
            return fail(err, EW_TORCH_E_PRECISION,
                        "%s has no floating-point parameters (was it frozen before saving?); bf16 and fp16 need an "
                        "unfrozen traced file, as models/export_resnet50.py writes; use fp32 with this file",
                        path);
        m.to(o.precision == EW_TORCH_BF16 ? at::kBFloat16 : at::kHalf);
    }
    if (o.optimize >= 1) m = torch::jit::freeze(m);
    // optimize_for_inference rewrites for oneDNN on the CPU; on CUDA freezing is what helps.
    // (Not for int8: its graph is already what oneDNN runs, and the rewrite knows no quantized ops.)
    if (o.optimize >= 2 && device.is_cpu() && !quantized) m = torch::jit::optimize_for_inference(m);
    auto model = new ew_torch_model{m, o};
    model->device = device;
    snprintf(model->device_name, sizeof model->device_name, "%s", device.str().c_str());
    if (o.warmup_batch > 0) {
        c10::InferenceMode guard;
        at::Tensor x = make_input(o, at::zeros({o.warmup_batch, o.channels, o.height, o.width})).to(device);
        at::Tensor y;
        for (int i = 0; i < 2; i++) {
            int rc = check_output(model->module.forward({x}), o.warmup_batch, &y, err);
            if (rc) {
                delete model;
                return rc;
            }
        }
        model->dim = y.size(1);
    }
    *out = model;
    return ok(err);
    EW_CATCH(err, EW_TORCH_E_FORWARD)
}

int64_t output_dim(const ew_torch_model *model) {
    return model ? model->dim.load() : 0;
}

int forward(ew_torch_model *model, const float *input, int64_t n, int64_t c, int64_t h, int64_t w, float *out,
            size_t out_capacity, ew_torch_error *err) {
    if (!model || !input || !out) return fail(err, EW_TORCH_E_ARGUMENT, "null argument");
    const ew_torch_options &o = model->options;
    if (n <= 0 || c != o.channels || h != o.height || w != o.width)
        return fail(err, EW_TORCH_E_BAD_INPUT,
                    "batch of shape [%lld, %lld, %lld, %lld]; the model expects [n, %lld, %lld, %lld]", (long long)n,
                    (long long)c, (long long)h, (long long)w, (long long)o.channels, (long long)o.height,
                    (long long)o.width);
    EW_TRY
    c10::InferenceMode guard;
    // from_blob does not copy; make_input copies (channels-last and/or bf16), so the borrowed
    // buffer is never written. Without either, the module only reads its input.
    at::Tensor x = at::from_blob(const_cast<float *>(input), {n, c, h, w}, at::kFloat);
    at::Tensor y;
    std::unique_lock<std::mutex> staged;
    if (model->device.is_cuda()) {
        // Stage the batch in pinned host memory (reused; grown when a larger batch comes), then
        // upload it asynchronously: the host returns to prepare the next batch while the copy
        // and the forward are queued on the device's stream.
        staged = std::unique_lock<std::mutex>(model->staging_lock);
        if (!model->staging.defined() || model->staging.size(0) < n)
            model->staging = at::empty({n, c, h, w}, at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
        at::Tensor host = model->staging.narrow(0, 0, n);
        host.copy_(x);
        x = host.to(model->device, /*non_blocking=*/true);
    }
    int rc = check_output(model->module.forward({make_input(o, x)}), n, &y, err);
    if (rc) return rc;
    if (!y.is_cpu()) y = y.to(at::kCPU); // waits for the device; then into the caller's buffer
    int64_t d = y.size(1), known = model->dim.load();
    if (known && d != known)
        return fail(err, EW_TORCH_E_BAD_OUTPUT, "the model's output dimension changed from %lld to %lld",
                    (long long)known, (long long)d);
    model->dim = d;
    if (out_capacity < (size_t)(n * d))
        return fail(err, EW_TORCH_E_BAD_INPUT, "output buffer holds %zu floats; %lld x %lld are needed", out_capacity,
                    (long long)n, (long long)d);
    memcpy(out, y.data_ptr<float>(), sizeof(float) * n * d);
    return ok(err);
    EW_CATCH(err, EW_TORCH_E_FORWARD)
}

void free_model(ew_torch_model *model) {
    delete model;
}

int has_int8(void) {
    try {
        return onednn_supported() ? 1 : 0;
    } catch (...) {
        return 0;
    }
}

const ew_torch_backend kBackend = {
    EW_TORCH_BACKEND_ABI,
    sizeof(ew_torch_options),
    sizeof(ew_torch_error),
    version,
    set_threads,
    cuda_device_count,
    device_name,
    load,
    output_dim,
    forward,
    free_model,
    has_int8,
};

} // namespace

// The one symbol the backend exports for the loader.
extern "C" __attribute__((visibility("default"))) const ew_torch_backend *ew_torch_backend_v1(void) {
    return &kBackend;
}
