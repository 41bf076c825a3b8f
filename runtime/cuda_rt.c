/* The C runtime of CUDA static libraries built by resnetc: finds the CUDA
 * driver (libcuda.so.1) at run time with dlopen, so programs link with
 * libc, libdl and pthreads only; loads a model's embedded PTX, uploads its
 * weights, and runs its launch plan, captured as one CUDA graph per batch
 * size.
 *
 * A model is described by `struct resnetc_cuda_model` (generated data):
 *   plan:   int64 table (written by resnetc's cuda::artifact::encode_plan)
 *     [0] version (2)  [1] arena floats per image  [2] constant floats
 *     [3] input floats per image  [4] input per-image offset  [5] input
 *     offset  [6] input image stride  [7..10] the same four for the output
 *     [11] kernels  [12] launches  [13] scratch entries, each (min_batch,
 *     floats per image: split-K scratch after the arena), then per launch:
 *     variants, args, each variant (min_batch, kernel, x_per_image,
 *     x_tile, grid_y, grid_z, block; x_per_image 0: no launch), each arg
 *     (kind 0 arena / 1 const, per_image, offset).
 *   names:  the kernels' names, NUL-separated, in kernel order.
 *   ptx:    NUL-terminated PTX.   consts: the constant pool.
 *   state:  a slot for this runtime's per-model state (initially NULL).
 *   cubin, cubin_size: the PTX assembled by ptxas for the PTX's own
 *           architecture (NULL, 0 where ptxas was not found at build
 *           time). Loaded instead of the PTX on a GPU of exactly that
 *           architecture, so the driver has nothing to JIT; the PTX
 *           serves every other GPU, and this one if the cubin fails.
 *
 * Every entry point makes GPU 0's primary context current for its work and
 * then restores the context that was current before (the caller's).
 */
/* Links against any glibc (and musl): no __*_chk calls from _FORTIFY_SOURCE,
 * which some distributions' gcc turns on by default. */
#undef _FORTIFY_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct resnetc_cuda_model {
    const int64_t *plan;
    const char *names;
    const char *ptx;
    const float *consts;
    void **state;
    const unsigned char *cubin;
    int64_t cubin_size;
};

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream, *CUgraph, *CUgraphExec, *CUevent;
typedef unsigned long long CUdeviceptr;

#define CUDA_ERROR_OUT_OF_MEMORY 2
/* cuModuleLoadDataEx's options: the JIT's error log and its size. */
#define CU_JIT_ERROR_LOG_BUFFER 5
#define CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES 6

static struct {
    CUresult (*Init)(unsigned);
    CUresult (*DeviceGet)(CUdevice *, int);
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*CtxSetCurrent)(CUcontext);
    CUresult (*CtxGetCurrent)(CUcontext *);
    CUresult (*ModuleLoadDataEx)(CUmodule *, const void *, unsigned, int *, void **);
    CUresult (*ModuleUnload)(CUmodule);
    CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);
    CUresult (*MemFree)(CUdeviceptr);
    CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
    CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
    CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
    CUresult (*MemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult (*CtxSynchronize)(void);
    CUresult (*EventCreate)(CUevent *, unsigned);
    CUresult (*EventRecord)(CUevent, CUstream);
    CUresult (*EventSynchronize)(CUevent);
    CUresult (*EventDestroy)(CUevent);
    CUresult (*StreamWaitEvent)(CUstream, CUevent, unsigned);
    CUresult (*StreamCreate)(CUstream *, unsigned);
    CUresult (*StreamDestroy)(CUstream);
    CUresult (*StreamSynchronize)(CUstream);
    CUresult (*StreamBeginCapture)(CUstream, int);
    CUresult (*StreamEndCapture)(CUstream, CUgraph *);
    CUresult (*GraphInstantiate)(CUgraphExec *, CUgraph, unsigned long long);
    CUresult (*GraphDestroy)(CUgraph);
    CUresult (*GraphExecDestroy)(CUgraphExec);
    CUresult (*GraphLaunch)(CUgraphExec, CUstream);
    CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, CUstream, void **, void **);
    CUresult (*GetErrorName)(CUresult, const char **);
    CUresult (*DeviceGetAttribute)(int *, int, CUdevice);
} cu;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* Room for the JIT's log of a PTX the driver cannot compile. */
static __thread char last_error[4096] = "no error";
static int driver_state; /* 0 unknown, 1 loaded, -1 missing */
static CUcontext context;
static CUdevice device;

const char *resnetc_cuda_last_error(void) { return last_error; }

static int fail(int code, const char *what, CUresult r) {
    const char *name = "?";
    if (r && cu.GetErrorName) cu.GetErrorName(r, &name);
    if (r)
        snprintf(last_error, sizeof last_error, "CUDA: %s failed (%s, %d)", what, name, r);
    else
        snprintf(last_error, sizeof last_error, "%s", what);
    return r == CUDA_ERROR_OUT_OF_MEMORY ? -2 : code;
}

#define CHECK(call, what)                                   \
    do {                                                    \
        CUresult r_ = (call);                               \
        if (r_) return fail(-4, what, r_);                  \
    } while (0)

/* Loads the driver and retains GPU 0's primary context (`context`). */
static int load_driver(void) {
    if (driver_state == 1) return 0;
    if (driver_state == -1) return fail(-3, "no CUDA driver was found (libcuda.so.1)", 0);
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        driver_state = -1;
        return fail(-3, "no CUDA driver was found (libcuda.so.1)", 0);
    }
    struct { void **slot; const char *name; } syms[] = {
        {(void **)&cu.Init, "cuInit"},
        {(void **)&cu.DeviceGet, "cuDeviceGet"},
        {(void **)&cu.DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"},
        {(void **)&cu.CtxSetCurrent, "cuCtxSetCurrent"},
        {(void **)&cu.CtxGetCurrent, "cuCtxGetCurrent"},
        {(void **)&cu.ModuleLoadDataEx, "cuModuleLoadDataEx"},
        {(void **)&cu.ModuleUnload, "cuModuleUnload"},
        {(void **)&cu.ModuleGetFunction, "cuModuleGetFunction"},
        {(void **)&cu.MemAlloc, "cuMemAlloc_v2"},
        {(void **)&cu.MemFree, "cuMemFree_v2"},
        {(void **)&cu.MemcpyHtoD, "cuMemcpyHtoD_v2"},
        {(void **)&cu.MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"},
        {(void **)&cu.MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"},
        {(void **)&cu.MemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2"},
        {(void **)&cu.CtxSynchronize, "cuCtxSynchronize"},
        {(void **)&cu.EventCreate, "cuEventCreate"},
        {(void **)&cu.EventRecord, "cuEventRecord"},
        {(void **)&cu.EventSynchronize, "cuEventSynchronize"},
        {(void **)&cu.EventDestroy, "cuEventDestroy_v2"},
        {(void **)&cu.StreamWaitEvent, "cuStreamWaitEvent"},
        {(void **)&cu.StreamCreate, "cuStreamCreate"},
        {(void **)&cu.StreamDestroy, "cuStreamDestroy_v2"},
        {(void **)&cu.StreamSynchronize, "cuStreamSynchronize"},
        {(void **)&cu.StreamBeginCapture, "cuStreamBeginCapture_v2"},
        {(void **)&cu.StreamEndCapture, "cuStreamEndCapture"},
        {(void **)&cu.GraphInstantiate, "cuGraphInstantiateWithFlags"},
        {(void **)&cu.GraphDestroy, "cuGraphDestroy"},
        {(void **)&cu.GraphExecDestroy, "cuGraphExecDestroy"},
        {(void **)&cu.GraphLaunch, "cuGraphLaunch"},
        {(void **)&cu.LaunchKernel, "cuLaunchKernel"},
        {(void **)&cu.GetErrorName, "cuGetErrorName"},
        {(void **)&cu.DeviceGetAttribute, "cuDeviceGetAttribute"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].slot = dlsym(h, syms[i].name);
        if (!*syms[i].slot) {
            driver_state = -1;
            snprintf(last_error, sizeof last_error,
                     "the CUDA driver is too old: it lacks %s (CUDA 12 or newer is needed)",
                     syms[i].name);
            return -3;
        }
    }
    CUdevice dev;
    CUresult r = cu.Init(0);
    if (!r) r = cu.DeviceGet(&dev, 0);
    if (r) {
        driver_state = -1;
        return fail(-3, "no CUDA GPU is usable (cuInit/cuDeviceGet)", r);
    }
    device = dev;
    CHECK(cu.DevicePrimaryCtxRetain(&context, dev), "cuDevicePrimaryCtxRetain");
    driver_state = 1;
    return 0;
}

#define MAX_BATCHES 8

struct batch {
    int n;
    CUdeviceptr arena;
    CUgraphExec exec;
    /* Recorded after each use of the arena, on whichever stream ran it: the
     * next use (on any stream) waits for it, and so does freeing. */
    CUevent done;
};

struct state {
    CUmodule module;
    CUfunction *functions;
    CUdeviceptr consts;
    CUstream stream;
    struct batch batches[MAX_BATCHES];
    int next; /* the slot to reuse when all are taken */
};

/* PTX runs on the GPU it was built for (its `.target sm_XY`) and every
 * later one. On an older GPU say which architecture to build for: the
 * driver would only say that it has no binary for the GPU. */
static int check_arch(const char *ptx, int *exact) {
    *exact = 0;
    const char *t = strstr(ptx, ".target sm_");
    if (!t) return 0;
    int built = 0;
    for (t += strlen(".target sm_"); *t >= '0' && *t <= '9'; t++) built = built * 10 + (*t - '0');
    int major = 0, minor = 0;
    CHECK(cu.DeviceGetAttribute(&major, 75 /* compute capability major */, device),
          "cuDeviceGetAttribute");
    CHECK(cu.DeviceGetAttribute(&minor, 76 /* minor */, device), "cuDeviceGetAttribute");
    int have = major * 10 + minor;
    *exact = have == built;
    if (have >= built) return 0;
    /* The newest architecture resnetc builds for that runs here
     * (src/backend/cuda/gpus.rs). */
    static const int known[] = {90, 89, 86, 80, 75, 70};
    int fit = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0] && !fit; i++)
        if (known[i] <= have) fit = known[i];
    if (fit)
        snprintf(last_error, sizeof last_error,
                 "the model was built for sm_%d, but GPU 0 is sm_%d: build it with --gpu sm_%d "
                 "(PTX runs on the GPU it was built for and every later one)",
                 built, have, fit);
    else
        snprintf(last_error, sizeof last_error,
                 "the model was built for sm_%d, but GPU 0 is sm_%d: resnetc's kernels need "
                 "sm_70 (V100) or later",
                 built, have);
    return -3;
}

/* Loads a module image (NUL-terminated PTX, or a cubin) with the JIT's
 * error log; on failure last_error holds the driver's code and the log. */
static CUresult load_module(CUmodule *module, const void *image, const char *what) {
    static __thread char log[3072];
    log[0] = 0;
    int options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *values[] = {log, (void *)(uintptr_t)sizeof log};
    CUresult r = cu.ModuleLoadDataEx(module, image, 2, options, values);
    if (r) {
        fail(-4, what, r);
        log[sizeof log - 1] = 0;
        if (log[0]) {
            size_t n = strlen(last_error);
            snprintf(last_error + n, sizeof last_error - n, "; the JIT's log:\n%s", log);
        }
    }
    return r;
}

/* Frees what load_model made of `s`, in reverse. */
static void free_state(struct state *s) {
    if (s->stream) cu.StreamDestroy(s->stream);
    if (s->consts) cu.MemFree(s->consts);
    if (s->module) cu.ModuleUnload(s->module);
    free(s->functions);
    free(s);
}

static int load_model(const struct resnetc_cuda_model *m, struct state **out) {
    if (*m->state) {
        *out = *m->state;
        return 0;
    }
    const int64_t *p = m->plan;
    if (p[0] != 2) return fail(-4, "the model's plan has an unknown version", 0);
    int exact = 0;
    int arch = check_arch(m->ptx, &exact);
    if (arch) return arch;
    struct state *s = calloc(1, sizeof *s);
    if (!s) return fail(-2, "out of host memory", 0);
    int64_t kernels = p[11];
    s->functions = calloc((size_t)kernels + 1, sizeof(CUfunction));
    if (!s->functions) {
        free(s);
        return fail(-2, "out of host memory", 0);
    }
    /* SASS only on its own architecture; the PTX elsewhere, and here if
     * the cubin fails to load (the PTX's error is the one reported). */
    CUresult r = 1;
    if (m->cubin && m->cubin_size > 0 && exact) r = load_module(&s->module, m->cubin, "cuModuleLoadDataEx (SASS)");
    if (r) {
        s->module = NULL;
        r = load_module(&s->module, m->ptx, "cuModuleLoadDataEx (the PTX may need a newer driver)");
    }
    int e = !r ? 0 : r == CUDA_ERROR_OUT_OF_MEMORY ? -2 : -4;
    if (r) s->module = NULL;
    const char *name = m->names;
    for (int64_t k = 0; k < kernels && !e; k++) {
        if ((r = cu.ModuleGetFunction(&s->functions[k], s->module, name))) e = fail(-4, "cuModuleGetFunction", r);
        name += strlen(name) + 1;
    }
    size_t bytes = (size_t)p[2] * 4;
    if (!e && (r = cu.MemAlloc(&s->consts, bytes ? bytes : 4))) {
        s->consts = 0;
        e = fail(-4, "cuMemAlloc (weights)", r);
    }
    if (!e && bytes && (r = cu.MemcpyHtoD(s->consts, m->consts, bytes))) e = fail(-4, "cuMemcpyHtoD (weights)", r);
    /* A copy from pageable memory may return before its DMA is done, and
     * the model's non-blocking stream is not ordered after it. */
    if (!e && (r = cu.CtxSynchronize())) e = fail(-4, "cuCtxSynchronize (weights)", r);
    if (!e && (r = cu.StreamCreate(&s->stream, 1 /* non-blocking */))) {
        s->stream = NULL;
        e = fail(-4, "cuStreamCreate", r);
    }
    if (e) {
        free_state(s);
        return e;
    }
    *m->state = s;
    *out = s;
    return 0;
}

/* Enqueues every launch of the plan for batch n on the stream. */
static int enqueue(const struct resnetc_cuda_model *m, struct state *s, int64_t n, CUdeviceptr arena) {
    const int64_t *p = m->plan;
    int64_t launches = p[12];
    const int64_t *q = p + 14 + 2 * p[13];
    for (int64_t l = 0; l < launches; l++) {
        int64_t nv = q[0], na = q[1];
        const int64_t *v = q + 2, *chosen = v;
        for (int64_t i = 0; i < nv; i++)
            if (v[7 * i] <= n) chosen = v + 7 * i;
        const int64_t *a = v + 7 * nv;
        uint64_t params[32];
        void *ptrs[32];
        if (na + 1 > 32) return fail(-4, "a kernel has too many arguments", 0);
        for (int64_t i = 0; i < na; i++) {
            const int64_t *arg = a + 3 * i;
            uint64_t base = arg[0] == 0 ? arena : s->consts;
            params[i] = base + 4 * (uint64_t)(arg[1] * n + arg[2]);
            ptrs[i] = &params[i];
        }
        params[na] = (uint64_t)n;
        ptrs[na] = &params[na];
        unsigned gx = (unsigned)((n * chosen[2] + chosen[3] - 1) / chosen[3]);
        q = a + 3 * na;
        if (gx == 0) continue; /* nothing to do at this batch */
        CHECK(cu.LaunchKernel(s->functions[chosen[1]], gx, (unsigned)chosen[4], (unsigned)chosen[5],
                              (unsigned)chosen[6], 1, 1, 0, s->stream, ptrs, NULL),
              "cuLaunchKernel");
    }
    return 0;
}

/* The arena and graph of batch n, captured on first use. */
static int batch_of(const struct resnetc_cuda_model *m, struct state *s, int n, struct batch **out) {
    for (int i = 0; i < MAX_BATCHES; i++)
        if (s->batches[i].n == n) {
            *out = &s->batches[i];
            return 0;
        }
    struct batch *b = NULL;
    for (int i = 0; i < MAX_BATCHES && !b; i++)
        if (s->batches[i].n == 0) b = &s->batches[i];
    if (!b) {
        b = &s->batches[s->next];
        s->next = (s->next + 1) % MAX_BATCHES;
        CHECK(cu.EventSynchronize(b->done), "cuEventSynchronize");
        cu.GraphExecDestroy(b->exec);
        cu.MemFree(b->arena);
        cu.EventDestroy(b->done);
        memset(b, 0, sizeof *b);
    }
    const int64_t *p = m->plan;
    int64_t scratch = 0; /* the entry of the largest min_batch <= n */
    for (int64_t i = 0; i < p[13]; i++)
        if (p[14 + 2 * i] <= n) scratch = p[15 + 2 * i];
    size_t bytes = (size_t)(p[1] + scratch) * 4 * (size_t)n;
    CUgraph g = NULL;
    int e = 0;
    CUresult r = cu.MemAlloc(&b->arena, bytes ? bytes : 4);
    if (r) {
        b->arena = 0;
        e = fail(-4, "cuMemAlloc (working memory)", r);
    }
    if (!e && (r = cu.EventCreate(&b->done, 2 /* no timing */))) {
        b->done = NULL;
        e = fail(-4, "cuEventCreate", r);
    }
    if (!e && (r = cu.StreamBeginCapture(s->stream, 1 /* thread-local */))) e = fail(-4, "cuStreamBeginCapture", r);
    if (!e) {
        /* The capture is ended whatever enqueue did: the stream stays usable. */
        e = enqueue(m, s, n, b->arena);
        r = cu.StreamEndCapture(s->stream, &g);
        if (!e && r) e = fail(-4, "cuStreamEndCapture", r);
        if (r) g = NULL;
    }
    if (!e && (r = cu.GraphInstantiate(&b->exec, g, 0))) {
        b->exec = NULL;
        e = fail(-4, "cuGraphInstantiate", r);
    }
    if (g) cu.GraphDestroy(g);
    if (e) {
        /* Nothing of a batch that failed is kept: the slot stays free. */
        if (b->exec) cu.GraphExecDestroy(b->exec);
        if (b->done) cu.EventDestroy(b->done);
        if (b->arena) cu.MemFree(b->arena);
        memset(b, 0, sizeof *b);
        return e;
    }
    b->n = n;
    *out = b;
    return 0;
}

/* With the driver loaded and GPU 0's primary context current (the
 * caller's, saved in *caller, to be restored), the model and batch. */
static int prepare(const struct resnetc_cuda_model *m, int batch, struct state **s, struct batch **b,
                   CUcontext *caller, int *switched) {
    if (batch < 1) return fail(-1, "batch < 1", 0);
    int e = load_driver();
    if (e) return e;
    CUresult r = cu.CtxGetCurrent(caller);
    if (r) return fail(-4, "cuCtxGetCurrent", r);
    if (*caller != context) {
        if ((r = cu.CtxSetCurrent(context))) return fail(-4, "cuCtxSetCurrent", r);
        *switched = 1;
    }
    e = load_model(m, s);
    if (!e) e = batch_of(m, *s, batch, b);
    return e;
}

/* Copies the input in, replays the graph and copies the output out, on
 * the model's stream (host pointers, then waits) or on `stream` (device
 * pointers, returns at once). */
static int run(const struct resnetc_cuda_model *m, const float *input, float *output, int batch, void *stream,
               int on_device) {
    pthread_mutex_lock(&lock);
    struct state *s = NULL;
    struct batch *b = NULL;
    CUcontext caller = NULL;
    int switched = 0;
    int e = prepare(m, batch, &s, &b, &caller, &switched);
    if (!e) {
        const int64_t *p = m->plan;
        int64_t n = batch;
        CUstream st = on_device ? (CUstream)stream : s->stream;
        CUdeviceptr in = b->arena + 4 * (uint64_t)(p[4] * n + p[5]);
        CUdeviceptr out = b->arena + 4 * (uint64_t)(p[8] * n + p[9]);
        size_t in_bytes = (size_t)p[3] * 4, out_bytes = (size_t)p[7] * 4;
        /* Images packed back to back in the arena (the usual case) move in
         * one copy each way: every copy from pageable memory costs the
         * driver a staging round of its own. */
        int64_t in_copies = n, out_copies = n;
        if (p[6] == p[3]) {
            in_copies = 1;
            in_bytes *= (size_t)n;
        }
        if (p[10] == p[7]) {
            out_copies = 1;
            out_bytes *= (size_t)n;
        }
        /* The previous use of this arena may be on another stream. */
        CUresult r = cu.StreamWaitEvent(st, b->done, 0);
        for (int64_t i = 0; i < in_copies && !r; i++) {
            CUdeviceptr dev = in + 4 * (uint64_t)(i * p[6]);
            const float *src = input + i * p[3];
            r = on_device ? cu.MemcpyDtoDAsync(dev, (CUdeviceptr)(uintptr_t)src, in_bytes, st)
                          : cu.MemcpyHtoDAsync(dev, src, in_bytes, st);
        }
        if (r) e = fail(-4, "copying the input", r);
        if (!e && (r = cu.GraphLaunch(b->exec, st))) e = fail(-4, "cuGraphLaunch", r);
        for (int64_t i = 0; i < out_copies && !e && !r; i++) {
            CUdeviceptr dev = out + 4 * (uint64_t)(i * p[10]);
            float *dst = output + i * p[7];
            r = on_device ? cu.MemcpyDtoDAsync((CUdeviceptr)(uintptr_t)dst, dev, out_bytes, st)
                          : cu.MemcpyDtoHAsync(dst, dev, out_bytes, st);
        }
        if (r && !e) e = fail(-4, "copying the output", r);
        if (!e && (r = cu.EventRecord(b->done, st))) e = fail(-4, "cuEventRecord", r);
        if (!on_device && (r = cu.StreamSynchronize(st)) && !e) e = fail(-4, "cuStreamSynchronize", r);
    }
    /* The caller's context back, as it was (NULL included). */
    if (switched) {
        CUresult r = cu.CtxSetCurrent(caller);
        if (r && !e) e = fail(-4, "cuCtxSetCurrent (restoring the caller's context)", r);
    }
    pthread_mutex_unlock(&lock);
    return e;
}

int resnetc_cuda_forward(const struct resnetc_cuda_model *m, const float *input, float *output, int batch) {
    return run(m, input, output, batch, NULL, 0);
}

int resnetc_cuda_forward_device(const struct resnetc_cuda_model *m, const float *input, float *output, int batch,
                                void *stream) {
    return run(m, input, output, batch, stream, 1);
}
