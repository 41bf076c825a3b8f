/* A host model of the CUDA driver API, built as `libcuda.so` for tests on
 * machines without a GPU. It runs the two CUDA runtimes of resnetc (the
 * Rust one through cudarc, and runtime/cuda_rt.c inside the static
 * library) end to end: contexts, modules, device memory, streams, graph
 * capture, graph launches and events.
 *
 * Kernels are not run from the PTX (nothing here can execute PTX): each
 * entry of the loaded PTX is looked up by name in a shared object of the
 * same kernels emitted for the host (`emulate::emulation_object`, one call
 * per block), named by RESNETC_FAKE_CUDA_KERNELS. The PTX still decides
 * what exists: a kernel must be an `.entry` of the module, and its
 * parameter count comes from the entry; its block size is the one the
 * host kernel was emulated with (`NAME_threads` there).
 *
 * Where the real driver would fail, this one fails too, so that a runtime
 * bug shows here rather than on the first GPU: calls before cuInit or
 * without a current context, unknown handles, device pointers outside
 * live allocations (copies and kernel arguments; each allocation ends at
 * an inaccessible page, so a kernel running past it faults), grid and
 * block sizes, misaligned vector accesses and `cp.async` copies (which the
 * host kernels record), and the
 * calls that are illegal while a stream is being captured (synchronous
 * copies, allocation, synchronization). Device memory starts as NaNs, not
 * zeros, as cuMemAlloc promises nothing. Work runs synchronously at
 * enqueue time, which is one legal order of a single stream. */
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum {
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    NO_BINARY_FOR_GPU = 209,
    INVALID_PTX = 218,
    INVALID_HANDLE = 400,
    ILLEGAL_STATE = 401,
    NOT_FOUND = 500,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_OUT_OF_RESOURCES = 701,
    MISALIGNED_ADDRESS = 716,
    NOT_SUPPORTED = 801,
    CAPTURE_UNSUPPORTED = 900,
    CAPTURE_INVALIDATED = 901,
};

static int inited, current, primary_refs;
static long cubins_loaded, ptx_loaded;
static long live_allocs, live_events; /* what a runtime has not freed */
/* Copies between host and device, printed at exit under
 * RESNETC_FAKE_CUDA_STATS (what tests count the runtimes' copies by). */
static long htod_copies, dtoh_copies;
static int capturing; /* streams now capturing */

static CUresult bad(CUresult r, const char *what) {
    if (getenv("RESNETC_FAKE_CUDA_TRACE")) fprintf(stderr, "fake cuda: %s -> %d\n", what, r);
    return r;
}

#define NEED_CTX()                                        \
    do {                                                  \
        if (!inited) return bad(NOT_INITIALIZED, __func__); \
        if (!current) return bad(INVALID_CONTEXT, __func__); \
    } while (0)

/* Calls that the real driver refuses during stream capture (they would
 * synchronize or allocate); the capture is invalidated, as there. */
static int capture_broken;
#define NOT_DURING_CAPTURE()                              \
    do {                                                  \
        if (capturing) {                                  \
            capture_broken = 1;                           \
            return bad(CAPTURE_UNSUPPORTED, __func__);    \
        }                                                 \
    } while (0)

/* ---- device memory: host memory, with its extent remembered ---- */

struct alloc {
    char *base;
    size_t bytes;
    char *map; /* the mapping: pages, then one inaccessible page */
    size_t mapped;
    struct alloc *next;
};
static struct alloc *allocs;

static struct alloc *find_alloc(CUdeviceptr p) {
    for (struct alloc *a = allocs; a; a = a->next)
        if ((char *)p >= a->base && (char *)p < a->base + a->bytes) return a;
    return NULL;
}

static int inside(CUdeviceptr p, size_t bytes) {
    struct alloc *a = find_alloc(p);
    return a && (char *)p + bytes <= a->base + a->bytes;
}

/* ---- modules and kernels ---- */

typedef void (*block_fn)(void **args, int64_t batch, int64_t bx, int64_t by, int64_t bz);

struct function {
    char name[256];
    int params;     /* from the PTX entry */
    block_fn fn;    /* from the host kernels */
    long threads;   /* the block size fn was emulated with */
    int64_t (*fault_take)(void); /* the host kernels' misaligned-access record */
    struct function *next;
};

struct module {
    int magic;
    void *host;
    struct function *functions;
};
#define MODULE_MAGIC 0x6d6f64

/* GPU 0's compute capability: RESNETC_FAKE_CUDA_ARCH (e.g. 75), else 90. */
static int fake_cc(void) {
    const char *arch = getenv("RESNETC_FAKE_CUDA_ARCH");
    int cc = 0;
    for (const char *c = arch; c && *c >= '0' && *c <= '9' && cc < 1000; c++) cc = cc * 10 + (*c - '0');
    return cc < 10 ? 90 : cc;
}

static struct function *new_function(struct module *m, const char *name, size_t len) {
    struct function *f = calloc(1, sizeof *f);
    if (!f || len >= sizeof f->name) {
        free(f);
        return NULL;
    }
    memcpy(f->name, name, len);
    f->next = m->functions;
    m->functions = f;
    return f;
}

/* A cubin: ELF64, machine EM_CUDA (190), the SM in e_flags' low byte. Its
 * kernels are the global functions of .symtab; a kernel's parameters are
 * the EIATTR_KPARAM_INFO (0x17) records of `.nv.info.NAME`, and their
 * total size (EIATTR_PARAM_CBANK, 0x0a) must be 8 bytes each. */
#define RD(type, at) (*(const type *)(const void *)(b + (at)))
static CUresult parse_cubin(struct module *m, const unsigned char *b) {
    if (b[4] != 2 || RD(uint16_t, 18) != 190) return bad(INVALID_IMAGE, "an ELF image that is not a CUDA cubin");
    int sm = (int)(RD(uint32_t, 48) & 0xff);
    if (sm != fake_cc()) {
        fprintf(stderr, "fake cuda: a cubin for sm_%d on an sm_%d GPU\n", sm, fake_cc());
        return bad(NO_BINARY_FOR_GPU, __func__);
    }
    uint64_t shoff = RD(uint64_t, 40);
    unsigned shentsize = RD(uint16_t, 58), shnum = RD(uint16_t, 60), shstrndx = RD(uint16_t, 62);
#define SH(i, field, type) RD(type, shoff + (uint64_t)(i) * shentsize + (field))
    const char *shstr = (const char *)b + SH(shstrndx, 24, uint64_t);
    for (unsigned i = 0; i < shnum; i++) {
        if (SH(i, 4, uint32_t) != 2) continue; /* SHT_SYMTAB */
        const char *str = (const char *)b + SH(SH(i, 40, uint32_t), 24, uint64_t);
        uint64_t off = SH(i, 24, uint64_t), size = SH(i, 32, uint64_t);
        for (uint64_t at = off; at + 24 <= off + size; at += 24) {
            unsigned char info = b[at + 4];
            if ((info & 0xf) != 2 || (info >> 4) != 1) continue; /* STT_FUNC, STB_GLOBAL */
            const char *name = str + RD(uint32_t, at);
            if (!new_function(m, name, strlen(name))) return bad(INVALID_IMAGE, "a kernel name");
        }
    }
    for (unsigned i = 0; i < shnum; i++) {
        const char *sec = shstr + SH(i, 0, uint32_t);
        if (strncmp(sec, ".nv.info.", 9)) continue;
        struct function *f = m->functions;
        while (f && strcmp(f->name, sec + 9)) f = f->next;
        if (!f) return bad(INVALID_IMAGE, ".nv.info of no kernel");
        uint64_t at = SH(i, 24, uint64_t), end = at + SH(i, 32, uint64_t);
        int cbank = -1;
        while (at + 2 <= end) {
            unsigned format = b[at], attr = b[at + 1];
            size_t len = format == 4 ? 4 + RD(uint16_t, at + 2) : format == 3 ? 4 : format == 2 ? 3 : 2;
            if (attr == 0x17) f->params++;
            if (attr == 0x0a && format == 4) cbank = RD(uint16_t, at + 10);
            at += len;
        }
        if (cbank != 8 * f->params) return bad(NOT_SUPPORTED, "a kernel parameter that is not 64-bit");
    }
    cubins_loaded++;
    return OK;
}
#undef SH
#undef RD

/* Reads the `.entry NAME(` headers of the PTX: their parameter counts
 * (every parameter must be 8 bytes: pointers and the batch). */
static CUresult parse_ptx(struct module *m, const char *ptx) {
    if (!strstr(ptx, ".version") || !strstr(ptx, ".target")) return bad(INVALID_IMAGE, "PTX without .version/.target");
    for (const char *p = strstr(ptx, ".entry "); p; p = strstr(p + 1, ".entry ")) {
        const char *name = p + 7, *open = strchr(name, '(');
        if (!open || open - name >= 256) return bad(INVALID_IMAGE, "malformed .entry");
        struct function *f = new_function(m, name, (size_t)(open - name));
        if (!f) return OUT_OF_MEMORY;
        const char *close = strchr(open, ')');
        if (!close) return bad(INVALID_IMAGE, "unterminated parameter list");
        for (const char *q = strstr(open, ".param"); q && q < close; q = strstr(q + 1, ".param")) {
            if (strncmp(q, ".param .u64 ", 12) && strncmp(q, ".param .b64 ", 12) && strncmp(q, ".param .s64 ", 12))
                return bad(NOT_SUPPORTED, "a kernel parameter that is not 64-bit");
            f->params++;
        }
    }
    ptx_loaded++;
    return OK;
}

/* The error log buffer and its size as cuModuleLoadDataEx's options give
 * them (CU_JIT_ERROR_LOG_BUFFER 5, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES 6;
 * the size is in, and out as the bytes written), NULL if none. */
static char *error_log(unsigned n, const int *options, void **values, void ***size) {
    char *buf = NULL;
    *size = NULL;
    for (unsigned i = 0; i < n; i++) {
        if (options[i] == 5) buf = values[i];
        if (options[i] == 6) *size = &values[i];
    }
    return *size && (uintptr_t)**size ? buf : NULL;
}

static CUresult load(struct module **out, const void *image, unsigned n, const int *options, void **values) {
    NEED_CTX();
    if (!out || !image || (n && (!options || !values))) return INVALID_VALUE;
    void **size;
    char *log = error_log(n, options, values, &size);
    if (log) log[0] = 0;
    const unsigned char *b = image;
    int cubin = !memcmp(b, "\177ELF", 4);
    const char *jit_error = getenv("RESNETC_FAKE_CUDA_JIT_ERROR");
    if (!cubin && jit_error) {
        if (log) {
            int w = snprintf(log, (uintptr_t)*size, "ptxas application ptx input, line 1; error   : %s\n"
                             "ptxas fatal   : Ptx assembly aborted due to errors", jit_error);
            uintptr_t cap = (uintptr_t)*size;
            *size = (void *)(uintptr_t)(w < 0 ? 0 : (uintptr_t)w + 1 > cap ? cap : (uintptr_t)w + 1);
        }
        return bad(INVALID_PTX, __func__);
    }
    if (size) *size = (void *)(uintptr_t)0; /* nothing logged */
    const char *path = getenv("RESNETC_FAKE_CUDA_KERNELS");
    if (!path) {
        fprintf(stderr, "fake cuda: RESNETC_FAKE_CUDA_KERNELS names no host kernels\n");
        return bad(INVALID_IMAGE, __func__);
    }
    struct module *m = calloc(1, sizeof *m);
    if (!m) return OUT_OF_MEMORY;
    m->magic = MODULE_MAGIC;
    CUresult r = cubin ? parse_cubin(m, b) : parse_ptx(m, image);
    if (r) return r;
    m->host = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!m->host) {
        fprintf(stderr, "fake cuda: %s\n", dlerror());
        return bad(INVALID_IMAGE, __func__);
    }
    *out = m;
    return OK;
}

CUresult cuModuleLoadData(struct module **out, const void *image) { return load(out, image, 0, NULL, NULL); }

CUresult cuModuleLoadDataEx(struct module **out, const void *image, unsigned n, int *options, void **values) {
    return load(out, image, n, options, values);
}

CUresult cuModuleGetFunction(struct function **out, struct module *m, const char *name) {
    NEED_CTX();
    if (!m || m->magic != MODULE_MAGIC) return bad(INVALID_HANDLE, __func__);
    for (struct function *f = m->functions; f; f = f->next)
        if (!strcmp(f->name, name)) {
            if (!f->fn) {
                char sym[300];
                snprintf(sym, sizeof sym, "%s_threads", name);
                const long *threads = dlsym(m->host, sym);
                f->threads = threads ? *threads : 0;
                f->fn = (block_fn)dlsym(m->host, name);
                f->fault_take = (int64_t (*)(void))dlsym(m->host, "resnetc_emulation_fault_take");
            }
            if (!f->fn || !f->threads) {
                fprintf(stderr, "fake cuda: `%s` is in the PTX but not in the host kernels\n", name);
                return bad(NOT_FOUND, __func__);
            }
            *out = f;
            return OK;
        }
    return bad(NOT_FOUND, name);
}

CUresult cuModuleUnload(struct module *m) {
    NEED_CTX();
    if (!m || m->magic != MODULE_MAGIC) return bad(INVALID_HANDLE, __func__);
    m->magic = 0; /* kept: a later use is an error, not a crash */
    return OK;
}

/* ---- work: kernel launches, recorded into graphs during capture ---- */

#define MAX_PARAMS 32
struct launch {
    struct function *f;
    unsigned grid[3];
    uint64_t params[MAX_PARAMS];
};

static CUresult execute(const struct launch *l) {
    void *args[MAX_PARAMS];
    int np = l->f->params;
    /* Every argument but the last (the batch) is a device pointer. */
    for (int i = 0; i + 1 < np; i++) {
        if (!find_alloc(l->params[i])) {
            fprintf(stderr, "fake cuda: %s: argument %d (0x%llx) is not in device memory\n", l->f->name, i,
                    (unsigned long long)l->params[i]);
            return bad(ILLEGAL_ADDRESS, __func__);
        }
        args[i] = (void *)(uintptr_t)l->params[i];
    }
    int64_t batch = (int64_t)l->params[np - 1];
    /* RESNETC_FAKE_CUDA_SKIP_LAUNCH=k: the k-th launch run (from 0) does
       nothing, a kernel broken on the "GPU" for the tests of
       --check-layers to find. */
    static long executed = 0;
    const char *skip = getenv("RESNETC_FAKE_CUDA_SKIP_LAUNCH");
    if (skip && atol(skip) == executed++) return OK;
    for (unsigned z = 0; z < l->grid[2]; z++)
        for (unsigned y = 0; y < l->grid[1]; y++)
            for (unsigned x = 0; x < l->grid[0]; x++) l->f->fn(args, batch, x, y, z);
    /* A vector access or cp.async off its alignment: on a GPU, the
       launch fails. */
    int64_t fault = l->f->fault_take ? l->f->fault_take() : 0;
    if (fault) {
        fprintf(stderr, "fake cuda: %s: misaligned access at 0x%llx\n", l->f->name, (unsigned long long)fault);
        return bad(MISALIGNED_ADDRESS, __func__);
    }
    return OK;
}

struct stream {
    int magic;
    int capturing;
    struct launch *work;
    size_t len, cap;
};
#define STREAM_MAGIC 0x737472

static int valid_stream(struct stream *s) { return !s || s->magic == STREAM_MAGIC; }

CUresult cuLaunchKernel(struct function *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared, struct stream *s, void **params, void **extra) {
    NEED_CTX();
    if (!f || !f->fn || !valid_stream(s)) return bad(INVALID_HANDLE, __func__);
    if (!gx || !gy || !gz || gy > 65535 || gz > 65535 || gx > 0x7fffffffu) return bad(INVALID_VALUE, "grid");
    if (!bx || !by || !bz || bx > 1024 || by > 1024 || bz > 64 || (size_t)bx * by * bz > 1024)
        return bad(INVALID_VALUE, "block");
    if (bx * by * bz != (unsigned long)f->threads || by != 1 || bz != 1) {
        fprintf(stderr, "fake cuda: %s launched with %ux%ux%u threads; it was built for %ld\n", f->name, bx, by, bz,
                f->threads);
        return bad(INVALID_VALUE, "block");
    }
    if (shared > 48 * 1024 || extra || !params || f->params < 1 || f->params > MAX_PARAMS)
        return bad(INVALID_VALUE, __func__);
    struct launch l = {f, {gx, gy, gz}, {0}};
    for (int i = 0; i < f->params; i++) memcpy(&l.params[i], params[i], 8);
    if (s && s->capturing) {
        if (s->len == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 64;
            s->work = realloc(s->work, s->cap * sizeof *s->work);
            if (!s->work) return OUT_OF_MEMORY;
        }
        s->work[s->len++] = l;
        return OK;
    }
    return execute(&l);
}

CUresult cuStreamCreate(struct stream **out, unsigned flags) {
    NEED_CTX();
    (void)flags;
    struct stream *s = calloc(1, sizeof *s);
    if (!s || !out) return INVALID_VALUE;
    s->magic = STREAM_MAGIC;
    *out = s;
    return OK;
}

CUresult cuStreamCreateWithPriority(struct stream **out, unsigned flags, int priority) {
    (void)priority;
    return cuStreamCreate(out, flags);
}

CUresult cuStreamDestroy_v2(struct stream *s) {
    NEED_CTX();
    if (!s || s->magic != STREAM_MAGIC) return bad(INVALID_HANDLE, __func__);
    if (s->capturing) return bad(ILLEGAL_STATE, "destroying a capturing stream");
    s->magic = 0;
    return OK;
}

CUresult cuStreamSynchronize(struct stream *s) {
    NEED_CTX();
    if (!valid_stream(s)) return bad(INVALID_HANDLE, __func__);
    NOT_DURING_CAPTURE();
    return OK;
}

CUresult cuCtxSynchronize(void) {
    NEED_CTX();
    NOT_DURING_CAPTURE();
    return OK;
}

struct event;
static int valid_event(struct event *e);

CUresult cuStreamWaitEvent(struct stream *s, struct event *e, unsigned flags) {
    NEED_CTX();
    (void)flags;
    return valid_stream(s) && valid_event(e) ? OK : bad(INVALID_HANDLE, __func__);
}

CUresult cuStreamBeginCapture_v2(struct stream *s, int mode) {
    NEED_CTX();
    (void)mode;
    /* The legacy default stream cannot be captured. */
    if (!s || s->magic != STREAM_MAGIC) return bad(CAPTURE_UNSUPPORTED, "capturing the default stream");
    if (s->capturing) return bad(ILLEGAL_STATE, "capture already begun");
    s->capturing = 1;
    s->len = 0;
    capturing++;
    capture_broken = 0;
    return OK;
}

struct graph {
    int magic;
    struct launch *work;
    size_t len;
};
#define GRAPH_MAGIC 0x677261
#define EXEC_MAGIC 0x657865

CUresult cuStreamEndCapture(struct stream *s, struct graph **out) {
    NEED_CTX();
    if (!s || s->magic != STREAM_MAGIC || !out) return bad(INVALID_HANDLE, __func__);
    if (!s->capturing) return bad(ILLEGAL_STATE, "no capture to end");
    s->capturing = 0;
    capturing--;
    *out = NULL;
    /* RESNETC_FAKE_CUDA_BREAK_CAPTURE: every capture fails, as one that
       something invalidated does (what runtimes must clean up after). */
    if (capture_broken || getenv("RESNETC_FAKE_CUDA_BREAK_CAPTURE")) return bad(CAPTURE_INVALIDATED, __func__);
    if (!s->len) return OK; /* an empty capture gives no graph */
    struct graph *g = calloc(1, sizeof *g);
    if (!g) return OUT_OF_MEMORY;
    g->magic = GRAPH_MAGIC;
    g->work = s->work;
    g->len = s->len;
    s->work = NULL;
    s->len = s->cap = 0;
    *out = g;
    return OK;
}

CUresult cuStreamIsCapturing(struct stream *s, int *status) {
    NEED_CTX();
    if (!valid_stream(s) || !status) return bad(INVALID_HANDLE, __func__);
    *status = s && s->capturing;
    return OK;
}

CUresult cuGraphInstantiateWithFlags(struct graph **out, struct graph *g, unsigned long long flags) {
    NEED_CTX();
    (void)flags;
    if (!g || g->magic != GRAPH_MAGIC || !out) return bad(INVALID_HANDLE, __func__);
    struct graph *e = calloc(1, sizeof *e);
    if (!e || !(e->work = malloc(g->len * sizeof *g->work))) return OUT_OF_MEMORY;
    memcpy(e->work, g->work, g->len * sizeof *g->work);
    e->len = g->len;
    e->magic = EXEC_MAGIC;
    *out = e;
    return OK;
}

CUresult cuGraphUpload(struct graph *e, struct stream *s) {
    NEED_CTX();
    return e && e->magic == EXEC_MAGIC && valid_stream(s) ? OK : bad(INVALID_HANDLE, __func__);
}

CUresult cuGraphLaunch(struct graph *e, struct stream *s) {
    NEED_CTX();
    if (!e || e->magic != EXEC_MAGIC || !valid_stream(s)) return bad(INVALID_HANDLE, __func__);
    if (s && s->capturing) return bad(NOT_SUPPORTED, "graph launch during capture (not modeled)");
    for (size_t i = 0; i < e->len; i++) {
        CUresult r = execute(&e->work[i]);
        if (r) return r;
    }
    return OK;
}

static CUresult destroy_graph(struct graph *g, int magic) {
    if (!g || g->magic != magic) return bad(INVALID_HANDLE, __func__);
    g->magic = 0;
    free(g->work);
    g->work = NULL;
    return OK;
}

CUresult cuGraphDestroy(struct graph *g) { return destroy_graph(g, GRAPH_MAGIC); }
CUresult cuGraphExecDestroy(struct graph *e) { return destroy_graph(e, EXEC_MAGIC); }

/* ---- memory ---- */

CUresult cuMemAlloc_v2(CUdeviceptr *out, size_t bytes) {
    NEED_CTX();
    NOT_DURING_CAPTURE();
    if (!out || !bytes) return INVALID_VALUE;
    struct alloc *a = calloc(1, sizeof *a);
    size_t page = (size_t)sysconf(_SC_PAGESIZE), rounded = (bytes + 255) / 256 * 256;
    size_t pages = (rounded + page - 1) / page * page;
    if (!a) return OUT_OF_MEMORY;
    a->mapped = pages + page;
    a->map = mmap(NULL, a->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a->map == MAP_FAILED || mprotect(a->map + pages, page, PROT_NONE)) return OUT_OF_MEMORY;
    /* 256-byte aligned, as cuMemAlloc's, and ending at the guard page. */
    a->base = a->map + pages - rounded;
    memset(a->base, 0xff, rounded); /* NaN: nothing may read memory it did not write */
    a->bytes = bytes;
    a->next = allocs;
    allocs = a;
    live_allocs++;
    *out = (CUdeviceptr)(uintptr_t)a->base;
    return OK;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    NEED_CTX();
    NOT_DURING_CAPTURE();
    for (struct alloc **a = &allocs; *a; a = &(*a)->next)
        if ((CUdeviceptr)(uintptr_t)(*a)->base == p) {
            struct alloc *dead = *a;
            *a = dead->next;
            munmap(dead->map, dead->mapped);
            free(dead);
            live_allocs--;
            return OK;
        }
    return bad(INVALID_VALUE, "freeing what was not allocated");
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    NEED_CTX();
    *free_bytes = (size_t)64 << 30;
    *total = (size_t)80 << 30;
    return OK;
}

static CUresult copy(void *dst, const void *src, size_t bytes, struct stream *s, int async) {
    if (!valid_stream(s)) return bad(INVALID_HANDLE, __func__);
    if (!async) NOT_DURING_CAPTURE();
    if (s && s->capturing) return bad(NOT_SUPPORTED, "copies during capture (not modeled)");
    memmove(dst, src, bytes);
    return OK;
}

#define DEV(p, n, what)                                                                            \
    do {                                                                                           \
        if (!inside(p, n)) {                                                                       \
            fprintf(stderr, "fake cuda: %s: %zu bytes at 0x%llx are not device memory\n", what, n, \
                    (unsigned long long)(p));                                                      \
            return bad(INVALID_VALUE, what);                                                       \
        }                                                                                          \
    } while (0)

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    NEED_CTX();
    DEV(dst, n, __func__);
    return copy((void *)(uintptr_t)dst, src, n, NULL, 0);
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    NEED_CTX();
    DEV(src, n, __func__);
    return copy(dst, (void *)(uintptr_t)src, n, NULL, 0);
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, struct stream *s) {
    NEED_CTX();
    DEV(dst, n, __func__);
    htod_copies++;
    return copy((void *)(uintptr_t)dst, src, n, s, 1);
}

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, struct stream *s) {
    NEED_CTX();
    DEV(src, n, __func__);
    dtoh_copies++;
    return copy(dst, (void *)(uintptr_t)src, n, s, 1);
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, struct stream *s) {
    NEED_CTX();
    DEV(dst, n, __func__);
    DEV(src, n, __func__);
    return copy((void *)(uintptr_t)dst, (void *)(uintptr_t)src, n, s, 1);
}

/* ---- events: the time of recording, work being synchronous ---- */

struct event {
    int magic;
    double ms;
};
#define EVENT_MAGIC 0x657674

static int valid_event(struct event *e) { return e && e->magic == EVENT_MAGIC; }

CUresult cuEventCreate(struct event **out, unsigned flags) {
    NEED_CTX();
    (void)flags;
    struct event *e = calloc(1, sizeof *e);
    if (!e || !out) return INVALID_VALUE;
    e->magic = EVENT_MAGIC;
    live_events++;
    *out = e;
    return OK;
}

CUresult cuEventRecord(struct event *e, struct stream *s) {
    NEED_CTX();
    if (!valid_event(e) || !valid_stream(s)) return bad(INVALID_HANDLE, __func__);
    if (s && s->capturing) return bad(NOT_SUPPORTED, "events during capture (not modeled)");
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    e->ms = (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
    return OK;
}

CUresult cuEventSynchronize(struct event *e) {
    NEED_CTX();
    if (!valid_event(e)) return bad(INVALID_HANDLE, __func__);
    NOT_DURING_CAPTURE();
    return OK;
}

CUresult cuEventQuery(struct event *e) { return valid_event(e) ? OK : INVALID_HANDLE; }

CUresult cuEventElapsedTime(float *ms, struct event *a, struct event *b) {
    NEED_CTX();
    if (!ms || !valid_event(a) || !valid_event(b)) return bad(INVALID_HANDLE, __func__);
    *ms = (float)(b->ms - a->ms);
    return OK;
}

CUresult cuEventElapsedTime_v2(float *ms, struct event *a, struct event *b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuEventDestroy_v2(struct event *e) {
    NEED_CTX();
    if (!valid_event(e)) return bad(INVALID_HANDLE, __func__);
    e->magic = 0;
    live_events--;
    return OK;
}

/* ---- driver, device, context ---- */

static void print_stats(void) {
    fprintf(stderr, "fake cuda: %ld host-to-device copies, %ld device-to-host copies\n", htod_copies, dtoh_copies);
    /* What was loaded (SASS or PTX), and whether a context is left current
       at exit: the C runtime restores the caller's, none for demo. */
    fprintf(stderr, "fake cuda: %ld cubin and %ld PTX modules loaded; %s context current at exit\n",
            cubins_loaded, ptx_loaded, current ? "a" : "no");
    fprintf(stderr, "fake cuda: %ld allocations and %ld events live at exit\n", live_allocs, live_events);
}

CUresult cuInit(unsigned flags) {
    if (flags) return INVALID_VALUE;
    if (!inited && getenv("RESNETC_FAKE_CUDA_STATS")) atexit(print_stats);
    inited = 1;
    return OK;
}

CUresult cuDriverGetVersion(int *v) {
    /* RESNETC_FAKE_CUDA_DRIVER (e.g. 11080), else CUDA 12.8 */
    const char *version = getenv("RESNETC_FAKE_CUDA_DRIVER");
    *v = version && atoi(version) > 0 ? atoi(version) : 12080;
    return OK;
}

CUresult cuDeviceGetCount(int *n) {
    if (!inited) return NOT_INITIALIZED;
    *n = 1;
    return OK;
}

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    if (!inited) return NOT_INITIALIZED;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return OK;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    if (!inited) return NOT_INITIALIZED;
    if (d != 0 || len < 1) return INVALID_VALUE;
    snprintf(name, (size_t)len, "resnetc fake CUDA driver (host emulation)");
    return OK;
}

CUresult cuDeviceGetAttribute(int *v, int attribute, CUdevice d) {
    if (!inited) return NOT_INITIALIZED;
    if (d != 0) return INVALID_DEVICE;
    switch (attribute) {
    case 1: *v = 1024; break;  /* max threads per block */
    case 16: { /* multiprocessors: RESNETC_FAKE_CUDA_SMS, else 132 (an H100 SXM) */
        const char *sms = getenv("RESNETC_FAKE_CUDA_SMS");
        *v = sms && atoi(sms) > 0 ? atoi(sms) : 132;
        break;
    }
    case 75: /* compute capability: RESNETC_FAKE_CUDA_ARCH (e.g. 75), else 9.0 */
    case 76: *v = attribute == 75 ? fake_cc() / 10 : fake_cc() % 10; break;
    case 115: *v = 0; break;   /* memory pools: none, so cudarc allocates synchronously */
    default: *v = 0;
    }
    return OK;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    (void)d;
    *bytes = (size_t)80 << 30;
    return OK;
}

static int the_context;

CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) {
    if (!inited) return NOT_INITIALIZED;
    if (d != 0) return INVALID_DEVICE;
    primary_refs++;
    *ctx = &the_context;
    return OK;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (d != 0 || primary_refs < 1) return INVALID_VALUE;
    primary_refs--;
    return OK;
}

CUresult cuCtxSetCurrent(void *ctx) {
    if (!inited) return NOT_INITIALIZED;
    if (ctx && ctx != &the_context) return INVALID_CONTEXT;
    current = ctx != NULL;
    return OK;
}

CUresult cuCtxGetCurrent(void **ctx) {
    if (!inited) return NOT_INITIALIZED;
    *ctx = current ? &the_context : NULL;
    return OK;
}

CUresult cuGetErrorName(CUresult r, const char **name) {
    static char buf[64];
    snprintf(buf, sizeof buf, "CUDA_ERROR_%d (fake driver)", r);
    *name = buf;
    return OK;
}

CUresult cuGetErrorString(CUresult r, const char **s) { return cuGetErrorName(r, s); }
