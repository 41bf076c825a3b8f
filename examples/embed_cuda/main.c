/* Runs a resnetc CUDA static library on raw float32 input:
 *     ./demo input.f32 output.f32 BATCH
 * Exit status: 0 on success, 3 when no CUDA driver or GPU was found (the
 * message says so), 1 on any other error. */
#include <stdio.h>
#include <stdlib.h>
#include MODEL_HEADER

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s input.f32 output.f32 batch\n", argv[0]);
        return 1;
    }
    int batch = atoi(argv[3]);
    if (batch < 1) {
        fprintf(stderr, "batch must be at least 1\n");
        return 1;
    }
    size_t in_n = (size_t)batch * INPUT_SIZE, out_n = (size_t)batch * OUTPUT_SIZE;
    float *in = malloc(in_n * sizeof *in), *out = malloc(out_n * sizeof *out);
    FILE *f = fopen(argv[1], "rb");
    if (!in || !out || !f || fread(in, sizeof *in, in_n, f) != in_n) {
        fprintf(stderr, "cannot read %zu floats from %s\n", in_n, argv[1]);
        return 1;
    }
    fclose(f);
    int rc = FORWARD(in, out, batch);
    if (rc != 0) {
        fprintf(stderr, "forward failed (%d): %s\n", rc, LAST_ERROR());
        return rc == -3 ? 3 : 1;
    }
    f = fopen(argv[2], "wb");
    if (!f || fwrite(out, sizeof *out, out_n, f) != out_n) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    free(in);
    free(out);
    return 0;
}
