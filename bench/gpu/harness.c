/*
 * harness.c: EwallML's libtorch shim (ew_torch.h) and image decoder (ew_image.h) driven from C,
 * for machines without a Swift toolchain (the GPU box). Built and run by bench/gpu/run.sh: linked
 * with the loader (Sources/CTorchLoader), which loads the torch backend libewall_torch.so from
 * beside the harness (or $EWALL_TORCH_BACKEND), as the Swift executables do.
 *
 *   harness errors  MODEL                      every error path that can be provoked here
 *   harness model   MODEL DEVICE PREC BATCH N  model only: N batches of zeros-free random input,
 *                                              images/s after 3 warm-up batches
 *   harness vectors MODEL DEVICE PREC LIST OUT embeds the images in LIST (one path per line),
 *                                              writes float32 [n, D] rows to OUT
 *   harness e2e     MODEL DEVICE PREC BATCH THREADS LIST TOTAL
 *                                              end to end from JPEG files: THREADS decode +
 *                                              preprocess workers (our decoder) feeding one model
 *                                              thread; images/s and where the time went
 *
 * Every result is one JSON object on stdout. Preprocessing is the platform's squash224:
 * decode (EXIF upright), PIL-exact bilinear resize to 224x224, ImageNet normalisation.
 */
#include "ew_image.h"
#include "ew_torch.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SIDE 224
#define PER (3 * SIDE * SIDE)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int parse_device(const char *s, int *type, int *index) {
    *index = 0;
    if (!strcmp(s, "cpu")) { *type = EW_TORCH_DEVICE_CPU; return 0; }
    if (!strcmp(s, "auto")) { *type = EW_TORCH_DEVICE_AUTO; return 0; }
    if (!strcmp(s, "cuda")) { *type = EW_TORCH_DEVICE_CUDA; return 0; }
    if (!strncmp(s, "cuda:", 5)) { *type = EW_TORCH_DEVICE_CUDA; *index = atoi(s + 5); return 0; }
    return -1;
}

static int parse_precision(const char *s) {
    if (!strcmp(s, "bf16")) return EW_TORCH_BF16;
    if (!strcmp(s, "fp16")) return EW_TORCH_FP16;
    return EW_TORCH_FP32;
}

static ew_torch_model *load(const char *path, const char *device, const char *precision, int64_t batch,
                            ew_torch_error *err) {
    ew_torch_options o;
    memset(&o, 0, sizeof o);
    o.precision = parse_precision(precision);
    o.channels_last = 1;
    o.optimize = 1;
    o.channels = 3;
    o.height = SIDE;
    o.width = SIDE;
    o.warmup_batch = batch;
    if (parse_device(device, &o.device_type, &o.device_index)) {
        snprintf(err->message, sizeof err->message, "unknown device %s", device);
        return NULL;
    }
    ew_torch_model *m = NULL;
    if (ew_torch_load(path, &o, &m, err) != 0) return NULL;
    return m;
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

/* {"error": "..."} on stdout; returns 1 (the exit status). */
static int print_error(const char *message) {
    printf("{\"error\": ");
    json_string(message);
    printf("}\n");
    return 1;
}

/* ---- errors ---- */

static void expect_error(const char *what, const char *path, const char *device, const char *precision, int want) {
    ew_torch_error err;
    memset(&err, 0, sizeof err);
    ew_torch_model *m = load(path, device, precision, 2, &err);
    printf("{\"case\": ");
    json_string(what);
    printf(", \"code\": %d, \"expected\": %d, \"ok\": %s, \"message\": ", m ? 0 : err.code, want,
           (!m && err.code == want) ? "true" : "false");
    json_string(m ? "(loaded)" : err.message);
    printf("}\n");
    ew_torch_free(m);
}

static int cmd_errors(const char *model) {
    int gpus = ew_torch_cuda_device_count();
    const char *backend = ew_torch_backend_path();
    printf("{\"libtorch\": \"%s\", \"cuda_devices\": %d, \"backend\": ", ew_torch_version(), gpus);
    json_string(backend ? backend : "(none)");
    printf("}\n");
    expect_error("missing file", "/nonexistent/model.pt", "cpu", "fp32", EW_TORCH_E_NOT_FOUND);
    expect_error("not TorchScript", "/etc/hostname", "cpu", "fp32", EW_TORCH_E_NOT_TORCHSCRIPT);
    expect_error("fp16 on the CPU", model, "cpu", "fp16", EW_TORCH_E_PRECISION);
    expect_error("a device index past the last", model, "cuda:99", "fp32", EW_TORCH_E_NO_DEVICE);
    if (gpus == 0) expect_error("cuda without a GPU", model, "cuda:0", "fp32", EW_TORCH_E_NO_DEVICE);
    /* Out of memory: a batch far beyond the device's memory is refused with its own code
       (the Swift embedder then retries in halves). */
    if (gpus > 0) {
        ew_torch_error err;
        memset(&err, 0, sizeof err);
        ew_torch_model *m = load(model, "cuda:0", "fp32", 2, &err);
        if (m) {
            int64_t n = 20000; /* 20,000 x 3 x 224 x 224 fp32 = 12 GB of input, ~1 TB of activations */
            float *x = calloc((size_t)n * PER, sizeof(float));
            float *y = malloc((size_t)n * 2048 * sizeof(float));
            int rc = (x && y) ? ew_torch_forward(m, x, n, 3, SIDE, SIDE, y, (size_t)n * 2048, &err) : -999;
            printf("{\"case\": \"out of memory\", \"code\": %d, \"expected\": %d, \"ok\": %s, \"message\": ", rc,
                   EW_TORCH_E_OUT_OF_MEMORY, rc == EW_TORCH_E_OUT_OF_MEMORY ? "true" : "false");
            json_string(err.message);
            printf("}\n");
            /* ...and the model still works after it. */
            rc = ew_torch_forward(m, x, 2, 3, SIDE, SIDE, y, 2 * 2048, &err);
            printf("{\"case\": \"a forward after the out-of-memory\", \"code\": %d, \"expected\": 0, \"ok\": %s}\n", rc,
                   rc == 0 ? "true" : "false");
            free(x);
            free(y);
            ew_torch_free(m);
        }
    }
    return 0;
}

/* ---- model only ---- */

static int cmd_model(const char *path, const char *device, const char *precision, int64_t batch, int iters) {
    ew_torch_error err;
    memset(&err, 0, sizeof err);
    double t0 = now();
    ew_torch_model *m = load(path, device, precision, batch, &err);
    double load_s = now() - t0;
    if (!m) {
        return print_error(err.message);
    }
    int64_t d = ew_torch_output_dim(m);
    float *x = malloc((size_t)batch * PER * sizeof(float));
    float *y = malloc((size_t)batch * d * sizeof(float));
    srand(7);
    for (size_t i = 0; i < (size_t)batch * PER; i++) x[i] = (float)rand() / RAND_MAX * 4 - 2;
    for (int i = 0; i < 3; i++) ew_torch_forward(m, x, batch, 3, SIDE, SIDE, y, (size_t)batch * d, &err);
    double t = now();
    for (int i = 0; i < iters; i++) {
        if (ew_torch_forward(m, x, batch, 3, SIDE, SIDE, y, (size_t)batch * d, &err)) {
            return print_error(err.message);
        }
    }
    double s = now() - t;
    printf("{\"device\": \"%s\", \"precision\": \"%s\", \"batch\": %lld, \"images_per_s\": %.1f, \"load_s\": %.2f}\n",
           ew_torch_device(m), precision, (long long)batch, batch * iters / s, load_s);
    free(x);
    free(y);
    ew_torch_free(m);
    return 0;
}

/* ---- decode + preprocess ---- */

typedef struct {
    char **paths;
    int count;
} list_t;

static list_t read_list(const char *file) {
    list_t l = {0};
    FILE *f = fopen(file, "r");
    if (!f) return l;
    char line[4096];
    int cap = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (l.count == cap) {
            cap = cap ? cap * 2 : 256;
            l.paths = realloc(l.paths, cap * sizeof(char *));
        }
        l.paths[l.count++] = strdup(line);
    }
    fclose(f);
    return l;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? n : 1);
    *len = fread(b, 1, n, f);
    fclose(f);
    return b;
}

/* One image to a 3x224x224 tensor, as EwallML's squash224 does. 0 on success. */
static int prepare(const uint8_t *bytes, size_t len, float *out) {
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, std_[3] = {0.229f, 0.224f, 0.225f};
    ew_img_limits lim;
    memset(&lim, 0, sizeof lim);
    lim.max_pixels = 100000000;
    ew_img_info info;
    ew_img_error err;
    if (ew_img_probe(bytes, len, &lim, &info, &err)) return -1;
    size_t n = (size_t)info.width * info.height * 3;
    uint8_t *rgb = malloc(n), *small = malloc(SIDE * SIDE * 3);
    int rc = ew_img_decode_rgb(bytes, len, &lim, rgb, n, &info, &err) ||
             ew_img_resize_bilinear(rgb, info.width, info.height, small, SIDE, SIDE, &err) ||
             ew_img_normalize_chw(small, SIDE, SIDE, 0, 0, SIDE, SIDE, mean, std_, out, &err);
    free(rgb);
    free(small);
    return rc ? -1 : 0;
}

static void l2_normalise(float *v, int64_t d) {
    double s = 0;
    for (int64_t i = 0; i < d; i++) s += (double)v[i] * v[i];
    float inv = s > 0 ? (float)(1 / sqrt(s)) : 0;
    for (int64_t i = 0; i < d; i++) v[i] *= inv;
}

static int cmd_vectors(const char *path, const char *device, const char *precision, const char *listfile, const char *outfile) {
    list_t l = read_list(listfile);
    ew_torch_error err;
    memset(&err, 0, sizeof err);
    ew_torch_model *m = load(path, device, precision, 8, &err);
    if (!m || l.count == 0) {
        return print_error(m ? "empty list" : err.message);
    }
    int64_t d = ew_torch_output_dim(m);
    FILE *out = fopen(outfile, "wb");
    float *x = malloc(8 * PER * sizeof(float)), *y = malloc(8 * d * sizeof(float));
    int ok = 0;
    for (int start = 0; start < l.count; start += 8) {
        int n = l.count - start < 8 ? l.count - start : 8;
        for (int i = 0; i < n; i++) {
            size_t len = 0;
            uint8_t *b = read_file(l.paths[start + i], &len);
            if (!b || prepare(b, len, x + (size_t)i * PER)) memset(x + (size_t)i * PER, 0, PER * sizeof(float));
            free(b);
        }
        if (ew_torch_forward(m, x, n, 3, SIDE, SIDE, y, (size_t)n * d, &err)) {
            return print_error(err.message);
        }
        for (int i = 0; i < n; i++) l2_normalise(y + (size_t)i * d, d);
        fwrite(y, sizeof(float), (size_t)n * d, out);
        ok += n;
    }
    fclose(out);
    printf("{\"device\": \"%s\", \"precision\": \"%s\", \"images\": %d, \"dimension\": %lld}\n", ew_torch_device(m), precision,
           ok, (long long)d);
    ew_torch_free(m);
    return 0;
}

/* ---- end to end: decode workers -> bounded ring of prepared tensors -> model ---- */

typedef struct {
    list_t list;
    int total;           /* images to do (the list is cycled) */
    int next;            /* next image index to decode */
    float *ring;         /* capacity x PER floats */
    int *ready;          /* per slot: 1 when filled */
    int capacity, head;  /* head: next slot the model takes */
    int filled_upto;     /* slots handed out to decoders: [head, filled_upto) */
    double decode_s;     /* summed over workers */
    int failures;
    pthread_mutex_t lock;
    pthread_cond_t changed;
} e2e_t;

static void *decode_worker(void *arg) {
    e2e_t *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (e->next < e->total && e->filled_upto - e->head >= e->capacity) pthread_cond_wait(&e->changed, &e->lock);
        if (e->next >= e->total) {
            pthread_mutex_unlock(&e->lock);
            return NULL;
        }
        int idx = e->next++;
        int slot = e->filled_upto++ % e->capacity;
        pthread_mutex_unlock(&e->lock);
        double t = now();
        size_t len = 0;
        uint8_t *b = read_file(e->list.paths[idx % e->list.count], &len);
        int bad = !b || prepare(b, len, e->ring + (size_t)slot * PER);
        free(b);
        t = now() - t;
        pthread_mutex_lock(&e->lock);
        e->decode_s += t;
        if (bad) e->failures++;
        e->ready[slot] = 1;
        pthread_cond_broadcast(&e->changed);
        pthread_mutex_unlock(&e->lock);
    }
}

static int cmd_e2e(const char *path, const char *device, const char *precision, int batch, int threads, const char *listfile,
                   int total) {
    e2e_t e;
    memset(&e, 0, sizeof e);
    e.list = read_list(listfile);
    if (e.list.count == 0) {
        printf("{\"error\": \"empty list\"}\n");
        return 1;
    }
    ew_torch_error err;
    memset(&err, 0, sizeof err);
    ew_torch_model *m = load(path, device, precision, batch, &err);
    if (!m) {
        return print_error(err.message);
    }
    int64_t d = ew_torch_output_dim(m);
    e.total = total;
    e.capacity = batch * 4;
    e.ring = malloc((size_t)e.capacity * PER * sizeof(float));
    e.ready = calloc(e.capacity, sizeof(int));
    pthread_mutex_init(&e.lock, NULL);
    pthread_cond_init(&e.changed, NULL);
    float *x = malloc((size_t)batch * PER * sizeof(float)), *y = malloc((size_t)batch * d * sizeof(float));
    pthread_t *workers = malloc(threads * sizeof(pthread_t));
    double t0 = now(), model_s = 0, wait_s = 0;
    for (int i = 0; i < threads; i++) pthread_create(&workers[i], NULL, decode_worker, &e);
    int done = 0;
    while (done < total) {
        int n = total - done < batch ? total - done : batch;
        double tw = now();
        pthread_mutex_lock(&e.lock);
        for (int i = 0; i < n; i++) {
            int slot = (e.head + i) % e.capacity;
            while (!e.ready[slot]) pthread_cond_wait(&e.changed, &e.lock);
        }
        pthread_mutex_unlock(&e.lock);
        wait_s += now() - tw;
        for (int i = 0; i < n; i++) memcpy(x + (size_t)i * PER, e.ring + (size_t)((e.head + i) % e.capacity) * PER, PER * sizeof(float));
        pthread_mutex_lock(&e.lock);
        for (int i = 0; i < n; i++) e.ready[(e.head + i) % e.capacity] = 0;
        e.head += n;
        pthread_cond_broadcast(&e.changed);
        pthread_mutex_unlock(&e.lock);
        double tm = now();
        if (ew_torch_forward(m, x, n, 3, SIDE, SIDE, y, (size_t)n * d, &err)) {
            return print_error(err.message);
        }
        for (int i = 0; i < n; i++) l2_normalise(y + (size_t)i * d, d);
        model_s += now() - tm;
        done += n;
    }
    double wall = now() - t0;
    for (int i = 0; i < threads; i++) pthread_join(workers[i], NULL);
    printf("{\"device\": \"%s\", \"precision\": \"%s\", \"batch\": %d, \"decode_threads\": %d, \"images\": %d, "
           "\"failures\": %d, \"images_per_s\": %.1f, \"model_busy\": %.3f, \"model_waited_s\": %.2f, "
           "\"decode_images_per_s_per_thread\": %.1f}\n",
           ew_torch_device(m), precision, batch, threads, total, e.failures, total / wall, model_s / wall, wait_s,
           total / (e.decode_s > 0 ? e.decode_s : 1));
    ew_torch_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: see the comment at the top of harness.c\n");
        return 64;
    }
    ew_torch_set_threads(argc > 1 && getenv("EW_THREADS") ? atoi(getenv("EW_THREADS")) : 0, 1);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "errors")) return cmd_errors(argv[2]);
    if (!strcmp(cmd, "model") && argc == 7) return cmd_model(argv[2], argv[3], argv[4], atoll(argv[5]), atoi(argv[6]));
    if (!strcmp(cmd, "vectors") && argc == 7) return cmd_vectors(argv[2], argv[3], argv[4], argv[5], argv[6]);
    if (!strcmp(cmd, "e2e") && argc == 9)
        return cmd_e2e(argv[2], argv[3], argv[4], atoi(argv[5]), atoi(argv[6]), argv[7], atoi(argv[8]));
    fprintf(stderr, "usage: see the comment at the top of harness.c\n");
    return 64;
}
