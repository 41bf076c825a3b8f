/* The device-pointer entry point of a resnetc CUDA static library:
 *     ./demo_device input.f32 output.f32 BATCH
 * The program owns the GPU memory: it copies the input to the device
 * through the CUDA driver API (found at run time, as the library finds
 * it, so this too links with libc and libdl only), runs
 * <model>_forward_device on the default stream, waits, and copies the
 * output back. Exit status as ./demo: 0, 3 without a CUDA driver or GPU,
 * 1 on any other error. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include MODEL_HEADER

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

static struct {
    CUresult (*Init)(unsigned);
    CUresult (*DeviceGet)(int *, int);
    CUresult (*DevicePrimaryCtxRetain)(void **, int);
    CUresult (*CtxSetCurrent)(void *);
    CUresult (*CtxSynchronize)(void);
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);
    CUresult (*MemFree)(CUdeviceptr);
    CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
    CUresult (*MemcpyDtoH)(void *, CUdeviceptr, size_t);
} cu;

static int fail(const char *what, int code) {
    fprintf(stderr, "%s\n", what);
    return code;
}

int main(int argc, char **argv) {
    if (argc != 4) return fail("usage: demo_device input.f32 output.f32 batch", 1);
    int batch = atoi(argv[3]);
    if (batch < 1) return fail("batch must be at least 1", 1);
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) return fail("no CUDA driver was found (libcuda.so.1)", 3);
    struct {
        void **slot;
        const char *name;
    } syms[] = {
        {(void **)&cu.Init, "cuInit"},
        {(void **)&cu.DeviceGet, "cuDeviceGet"},
        {(void **)&cu.DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"},
        {(void **)&cu.CtxSetCurrent, "cuCtxSetCurrent"},
        {(void **)&cu.CtxSynchronize, "cuCtxSynchronize"},
        {(void **)&cu.MemAlloc, "cuMemAlloc_v2"},
        {(void **)&cu.MemFree, "cuMemFree_v2"},
        {(void **)&cu.MemcpyHtoD, "cuMemcpyHtoD_v2"},
        {(void **)&cu.MemcpyDtoH, "cuMemcpyDtoH_v2"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
        if (!(*syms[i].slot = dlsym(h, syms[i].name))) return fail("the CUDA driver lacks a function", 1);
    int dev;
    void *ctx;
    /* The primary context: the one the library uses, so memory is shared. */
    if (cu.Init(0) || cu.DeviceGet(&dev, 0)) return fail("no CUDA GPU is usable", 3);
    if (cu.DevicePrimaryCtxRetain(&ctx, dev) || cu.CtxSetCurrent(ctx)) return fail("cannot make a CUDA context", 1);

    size_t in_n = (size_t)batch * INPUT_SIZE, out_n = (size_t)batch * OUTPUT_SIZE;
    float *in = malloc(in_n * sizeof *in), *out = malloc(out_n * sizeof *out);
    FILE *f = fopen(argv[1], "rb");
    if (!in || !out || !f || fread(in, sizeof *in, in_n, f) != in_n) return fail("cannot read the input", 1);
    fclose(f);
    CUdeviceptr d_in, d_out;
    if (cu.MemAlloc(&d_in, in_n * sizeof *in) || cu.MemAlloc(&d_out, out_n * sizeof *out))
        return fail("out of GPU memory", 1);
    if (cu.MemcpyHtoD(d_in, in, in_n * sizeof *in)) return fail("copying the input failed", 1);
    int rc = FORWARD_DEVICE((const float *)(size_t)d_in, (float *)(size_t)d_out, batch, NULL);
    if (rc != 0) {
        fprintf(stderr, "forward failed (%d): %s\n", rc, LAST_ERROR());
        return rc == -3 ? 3 : 1;
    }
    /* The call only enqueued the work on the stream. */
    if (cu.CtxSynchronize() || cu.MemcpyDtoH(out, d_out, out_n * sizeof *out))
        return fail("running the model failed", 1);
    f = fopen(argv[2], "wb");
    if (!f || fwrite(out, sizeof *out, out_n, f) != out_n) return fail("cannot write the output", 1);
    fclose(f);
    cu.MemFree(d_in);
    cu.MemFree(d_out);
    free(in);
    free(out);
    return 0;
}
