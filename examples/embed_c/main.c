/* Runs a model compiled by resnetc on a raw float32 input file and writes
 * the raw float32 output: no .npy, no dependencies beyond libc, libm and
 * pthreads.
 *
 *     ./demo INPUT.f32 OUTPUT.f32 BATCH [CALLERS [MODEL_THREADS]]
 *
 * With CALLERS > 1, that many threads call the model at once on the same
 * input, several times each, and every result must equal the first: the
 * generated forward function is re-entrant. Rounds alternate between
 * FORWARD (working memory allocated per call) and FORWARD_WITH_ARENA (each
 * caller's own arena, kept across its calls). MODEL_THREADS sets the threads
 * the model itself uses (default: the CPUs the process may use). Last, a
 * forked child (which has none of the parent's pool threads) runs the model
 * again and must give the same result, within a minute.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include MODEL_HEADER

#define ROUNDS 4

struct job {
    const float *input;
    float *output;
    int batch;
    int status;
    void *arena;  /* batch * ARENA_BYTES bytes */
    float *again; /* FORWARD_WITH_ARENA's output */
};

static void *work(void *arg) {
    struct job *j = arg;
    for (int r = 0; r < ROUNDS && j->status == 0; r++)
        j->status = r % 2 ? FORWARD_WITH_ARENA(j->input, j->again, j->batch, j->arena)
                          : FORWARD(j->input, j->output, j->batch);
    return NULL;
}

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
    if (argc < 4) {
        fprintf(stderr, "usage: %s INPUT.f32 OUTPUT.f32 BATCH [CALLERS [MODEL_THREADS]]\n", argv[0]);
        return 2;
    }
    int batch = atoi(argv[3]);
    int threads = argc > 4 ? atoi(argv[4]) : 1;
    if (batch < 1 || threads < 1) {
        fprintf(stderr, "BATCH and CALLERS must be at least 1\n");
        return 2;
    }
    if (argc > 5) SET_THREADS(atoi(argv[5]));
    /* The documented refusals, before any work. */
    float dummy = 0;
    if (FORWARD(&dummy, &dummy, 0) != -1 || FORWARD_WITH_ARENA(&dummy, &dummy, 0, &dummy) != -1 ||
        FORWARD_WITH_ARENA(&dummy, &dummy, 1, NULL) != -2) {
        fprintf(stderr, "a bad batch or a NULL arena was not refused\n");
        return 1;
    }
    size_t in_n = (size_t)batch * INPUT_SIZE, out_n = (size_t)batch * OUTPUT_SIZE;
    float *input = read_floats(argv[1], in_n);
    if (!input) return 1;
    struct job *jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    for (int t = 0; t < threads; t++) {
        jobs[t] = (struct job){input, malloc(out_n * sizeof(float)), batch, 0,
                               malloc((size_t)batch * ARENA_BYTES + 1), malloc(out_n * sizeof(float))};
        if (pthread_create(&tids[t], NULL, work, &jobs[t]) != 0) { perror("pthread_create"); return 1; }
    }
    int bad = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        if (jobs[t].status != 0) { fprintf(stderr, "thread %d: forward returned %d\n", t, jobs[t].status); bad = 1; }
        else if (memcmp(jobs[t].output, jobs[0].output, out_n * sizeof(float)) != 0) {
            fprintf(stderr, "thread %d: result differs from thread 0\n", t);
            bad = 1;
        } else if (memcmp(jobs[t].again, jobs[t].output, out_n * sizeof(float)) != 0) {
            fprintf(stderr, "thread %d: FORWARD_WITH_ARENA differs from FORWARD\n", t);
            bad = 1;
        }
    }
    if (bad) return 1;
    /* The pool's threads are not inherited: the child must start its own
     * rather than wait for the parent's (alarm: a hang fails). With
     * DEMO_NO_FORK set it is skipped: the tests set it where an emulator
     * (qemu) makes every forward slow and the fork is checked natively. */
    if (!getenv("DEMO_NO_FORK")) {
        fflush(NULL);
        pid_t child = fork();
        if (child < 0) { perror("fork"); return 1; }
        if (child == 0) {
            alarm(60);
            float *y = malloc(out_n * sizeof(float));
            int rc = y ? FORWARD(input, y, batch) : -2;
            _exit(rc != 0 || memcmp(y, jobs[0].output, out_n * sizeof(float)) != 0);
        }
        int st = 0;
        if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "forked child: %s\n",
                    WIFSIGNALED(st) ? "killed (hung?)" : "forward failed or its result differs");
            return 1;
        }
    }
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(jobs[0].output, sizeof(float), out_n, f) != out_n) { perror(argv[2]); return 1; }
    fclose(f);
    printf("ok: %d image(s), %d caller(s), first output %g\n", batch, threads, jobs[0].output[0]);
#ifdef CPU_LEVEL
    /* Which of the library's CPU levels ran. */
    printf("level: %s\n", CPU_LEVEL() ? CPU_LEVEL() : "none");
#endif
    return 0;
}
