/* Runs a static library that holds a model at several input sizes
 * (`resnetc build --input-size HxW --input-size HxW ...`) through its
 * size-taking entry point, on a raw float32 input of each size:
 *
 *     ./sizes CHANNELS H W INPUT.f32 OUTPUT.f32 [H W INPUT.f32 OUTPUT.f32]...
 *
 * Each run goes through FORWARD_HW, then again through
 * FORWARD_HW_WITH_ARENA, which must agree; a size the library does not
 * hold (0x0) must be refused with NO_SUCH_SIZE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include MODEL_HEADER

static float *read_floats(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    float *buf = malloc(n * sizeof(float));
    size_t got = buf ? fread(buf, sizeof(float), n, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != n || extra) {
        fprintf(stderr, "%s: expected exactly %zu floats\n", path, n);
        free(buf);
        return NULL;
    }
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 6 || (argc - 2) % 4 != 0) {
        fprintf(stderr, "usage: %s CHANNELS H W INPUT.f32 OUTPUT.f32 [H W INPUT.f32 OUTPUT.f32]...\n", argv[0]);
        return 2;
    }
    long channels = atol(argv[1]);
    for (int a = 2; a < argc; a += 4) {
        int h = atoi(argv[a]), w = atoi(argv[a + 1]);
        long long out_n = OUTPUT_SIZE_HW(h, w), arena_n = ARENA_BYTES_HW(h, w);
        if (out_n < 0 || arena_n < 0) {
            fprintf(stderr, "the library does not hold %dx%d\n", h, w);
            return 1;
        }
        float *x = read_floats(argv[a + 2], (size_t)(channels * h * w));
        float *y = malloc((size_t)out_n * sizeof(float));
        float *again = malloc((size_t)out_n * sizeof(float));
        void *arena = malloc((size_t)arena_n + 1);
        if (!x || !y || !again || !arena) return 1;
        int status = FORWARD_HW(x, y, 1, h, w);
        if (status != 0) { fprintf(stderr, "%dx%d: status %d\n", h, w, status); return 1; }
        status = FORWARD_HW_WITH_ARENA(x, again, 1, h, w, arena);
        if (status != 0 || memcmp(y, again, (size_t)out_n * sizeof(float)) != 0) {
            fprintf(stderr, "%dx%d: the arena run differs (status %d)\n", h, w, status);
            return 1;
        }
        FILE *f = fopen(argv[a + 3], "wb");
        if (!f || fwrite(y, sizeof(float), (size_t)out_n, f) != (size_t)out_n) { perror(argv[a + 3]); return 1; }
        fclose(f);
        free(x); free(y); free(again); free(arena);
    }
    float dummy = 0;
    int refused = FORWARD_HW(&dummy, &dummy, 1, 0, 0);
    if (refused != NO_SUCH_SIZE || OUTPUT_SIZE_HW(0, 0) != NO_SUCH_SIZE) {
        fprintf(stderr, "a size not held gave %d, not %d\n", refused, NO_SUCH_SIZE);
        return 1;
    }
    printf("ok: %d sizes\n", (argc - 2) / 4);
    return 0;
}
