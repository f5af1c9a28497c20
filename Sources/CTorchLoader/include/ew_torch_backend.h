/*
 * ew_torch_backend.h: the contract between the loader (Sources/CTorchLoader/loader.c, in every
 * executable) and the torch backend (torch_shim.cpp, built as libewall_torch.so). Private to
 * these two: Swift and the GPU harness use ew_torch.h only.
 *
 * The backend exports one symbol, EW_TORCH_BACKEND_ENTRY, returning a static table of its
 * functions; they have ew_torch.h's contracts. One symbol (not the ew_torch_* names) so that
 * the backend's functions can never be confused with the loader's of the same name.
 */
#ifndef EW_TORCH_BACKEND_H
#define EW_TORCH_BACKEND_H

#include "ew_torch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bump when this table or a struct in ew_torch.h changes: a stale backend is then refused
   with a message instead of being called with the wrong layout. */
#define EW_TORCH_BACKEND_ABI   2
#define EW_TORCH_BACKEND_ENTRY "ew_torch_backend_v1"

typedef struct ew_torch_backend {
    int abi;             /* EW_TORCH_BACKEND_ABI of the source the backend was built from */
    size_t options_size; /* sizeof(ew_torch_options) and sizeof(ew_torch_error) there */
    size_t error_size;
    const char *(*version)(void);
    int (*set_threads)(int intra_op, int inter_op);
    int (*cuda_device_count)(void);
    const char *(*device)(const ew_torch_model *model);
    int (*load)(const char *path, const ew_torch_options *options, ew_torch_model **out, ew_torch_error *err);
    int64_t (*output_dim)(const ew_torch_model *model);
    int (*forward)(ew_torch_model *model, const float *input, int64_t n, int64_t c, int64_t h, int64_t w, float *out,
                   size_t out_capacity, ew_torch_error *err);
    void (*free)(ew_torch_model *model);
    int (*has_int8)(void);
} ew_torch_backend;

typedef const ew_torch_backend *(*ew_torch_backend_entry)(void);

#ifdef __cplusplus
}
#endif
#endif
