// loader.c: ew_torch.h for the executables, without libtorch. Finds and dlopens the torch
// backend (libewall_torch.so) on the first call that needs it and forwards to its table.
#define _GNU_SOURCE
#include "ew_torch.h"
#include "ew_torch_backend.h"

#include <cpuid.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BACKEND_NAME "libewall_torch.so"

// Written once, inside pthread_once; read-only afterwards (pthread_once orders the writes
// before every return from it).
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static const ew_torch_backend *backend; // stored with release once loaded
static char backend_path[PATH_MAX];
static char load_failure[sizeof(((ew_torch_error *)0)->message)];

static void appendf(char *buf, size_t cap, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, cap - used, fmt, ap);
    va_end(ap);
}

// dlopen + the entry point + the ABI check. NULL and a reason in `why` on failure.
static const ew_torch_backend *open_backend(const char *path, char *why, size_t cap) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(why, cap, "%s", e ? e : "dlopen failed");
        return NULL;
    }
    dlerror();
    ew_torch_backend_entry entry;
    *(void **)(&entry) = dlsym(h, EW_TORCH_BACKEND_ENTRY); // POSIX's way to a function pointer
    const ew_torch_backend *b = entry ? entry() : NULL;
    if (!b) {
        snprintf(why, cap, "not an EwallML torch backend (no %s)", EW_TORCH_BACKEND_ENTRY);
    } else if (b->abi != EW_TORCH_BACKEND_ABI || b->options_size != sizeof(ew_torch_options) ||
               b->error_size != sizeof(ew_torch_error)) {
        snprintf(why, cap, "built from another EwallML version (backend ABI %d, this program needs %d): rebuild it",
                 b->abi, EW_TORCH_BACKEND_ABI);
        b = NULL;
    }
    if (!b) dlclose(h);
    return b;
}

// Publishes a loaded backend (release: ew_torch_backend_path reads it without pthread_once).
static void found(const ew_torch_backend *b, const char *path) {
    snprintf(backend_path, sizeof backend_path, "%s", path);
    __atomic_store_n(&backend, b, __ATOMIC_RELEASE);
}

static void load_backend(void) {
    char why[400] = "";
    const ew_torch_backend *b;
    const char *env = getenv("EWALL_TORCH_BACKEND");
    if (env && *env) {
        if ((b = open_backend(env, why, sizeof why))) {
            found(b, env);
            return;
        }
        snprintf(load_failure, sizeof load_failure,
                 "the torch backend could not be loaded from $EWALL_TORCH_BACKEND=%s: %s", env, why);
        return;
    }
    snprintf(load_failure, sizeof load_failure, "no torch backend (" BACKEND_NAME ") could be loaded; tried ");
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            char beside[PATH_MAX];
            snprintf(beside, sizeof beside, "%.*s/" BACKEND_NAME, (int)(slash - exe), exe);
            if (access(beside, F_OK) == 0) {
                if ((b = open_backend(beside, why, sizeof why))) {
                    found(b, beside);
                    return;
                }
                // There, but unusable (a dependency missing, a stale build): say so rather
                // than silently taking another libtorch from the library path.
                snprintf(load_failure, sizeof load_failure, "the torch backend %s could not be loaded: %s", beside,
                         why);
                return;
            }
            appendf(load_failure, sizeof load_failure, "%s (not there), ", beside);
        }
    }
    if ((b = open_backend(BACKEND_NAME, why, sizeof why))) {
        Dl_info info;
        found(b, dladdr((const void *)b, &info) && info.dli_fname ? info.dli_fname : BACKEND_NAME);
        return;
    }
    appendf(load_failure, sizeof load_failure,
            "the library path (%s). Build it (swift build --product ewall_torch, or make build) or set "
            "EWALL_TORCH_BACKEND to its path",
            why);
}

static const ew_torch_backend *get(ew_torch_error *err) {
    pthread_once(&load_once, load_backend);
    if (!backend && err) {
        err->code = EW_TORCH_E_BACKEND;
        snprintf(err->message, sizeof err->message, "%s", load_failure);
    }
    return backend;
}

int ew_torch_backend_load(ew_torch_error *err) {
    if (!get(err)) return EW_TORCH_E_BACKEND;
    if (err) {
        err->code = 0;
        err->message[0] = 0;
    }
    return 0;
}

const char *ew_torch_backend_path(void) {
    return __atomic_load_n(&backend, __ATOMIC_ACQUIRE) ? backend_path : NULL;
}

int ew_torch_set_threads(int intra_op, int inter_op) {
    const ew_torch_backend *b = get(NULL);
    return b ? b->set_threads(intra_op, inter_op) : 0;
}

int ew_torch_cpu_has_bf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    int avx512_bf16 = (a >> 5) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return avx512_bf16;
    int amx_bf16 = (d >> 22) & 1;
    return avx512_bf16 || amx_bf16;
}

int ew_torch_has_int8(void) {
    const ew_torch_backend *b = get(NULL);
    return b ? b->has_int8() : 0;
}

int ew_torch_cuda_device_count(void) {
    const ew_torch_backend *b = get(NULL);
    return b ? b->cuda_device_count() : 0;
}

// A model exists only if a backend loaded it, so get() below finds it loaded and loads nothing.
const char *ew_torch_device(const ew_torch_model *model) {
    const ew_torch_backend *b = model ? get(NULL) : NULL;
    return b ? b->device(model) : "none";
}

const char *ew_torch_version(void) {
    const ew_torch_backend *b = get(NULL);
    return b ? b->version() : "unavailable";
}

int ew_torch_load(const char *path, const ew_torch_options *options, ew_torch_model **out, ew_torch_error *err) {
    if (out) *out = NULL;
    const ew_torch_backend *b = get(err);
    return b ? b->load(path, options, out, err) : EW_TORCH_E_BACKEND;
}

int64_t ew_torch_output_dim(const ew_torch_model *model) {
    const ew_torch_backend *b = model ? get(NULL) : NULL;
    return b ? b->output_dim(model) : 0;
}

int ew_torch_forward(ew_torch_model *model, const float *input, int64_t n, int64_t c, int64_t h, int64_t w, float *out,
                     size_t out_capacity, ew_torch_error *err) {
    const ew_torch_backend *b = get(err);
    if (!b) return EW_TORCH_E_BACKEND;
    return b->forward(model, input, n, c, h, w, out, out_capacity, err);
}

void ew_torch_free(ew_torch_model *model) {
    const ew_torch_backend *b = model ? get(NULL) : NULL;
    if (b) b->free(model);
}
