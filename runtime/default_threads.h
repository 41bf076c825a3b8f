/* How many threads the pool of runtime/parallel.c uses when none were asked
 * for: the CPUs the process may run on (its affinity mask: taskset, a
 * container's cpuset), capped by a cgroup CPU limit (`docker --cpus`, a
 * Kubernetes CPU limit), which the affinity mask does not show. More
 * threads than that only queue for the CPUs or get throttled, and waiting
 * pool threads spin. Included by parallel.c (the runtime stays one object);
 * computed once per process, since it reads files. */
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Whether the comma-separated `list` holds `item`. */
static int has_item(const char *list, const char *item) {
    size_t n = strlen(item);
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, item, n) == 0) return 1;
        if (!comma) return 0;
        p = comma + 1;
    }
}

/* The decimal integer at the start of `s` (after blanks; a leading '-' is
 * negative), -1 if there is none, and where it ends in `*end`. Not strtol:
 * with _GNU_SOURCE, glibc 2.38 and later name that __isoc23_strtol, which
 * older glibc lacks, and the library must link against any. Saturates
 * instead of overflowing. */
static long parse_long(const char *s, const char **end) {
    while (*s == ' ' || *s == '\t') s++;
    int negative = *s == '-';
    if (negative) s++;
    if (*s < '0' || *s > '9') {
        *end = s;
        return -1;
    }
    long v = 0;
    for (; *s >= '0' && *s <= '9'; s++) v = v > (LONG_MAX - 9) / 10 ? LONG_MAX : v * 10 + (*s - '0');
    *end = s;
    return negative ? -v : v;
}

/* Undoes mountinfo's octal escapes (`\040` for a space) in place. */
static void unescape(char *s) {
    char *out = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
            s[3] <= '7') {
            *out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else {
            *out++ = *s;
        }
    }
    *out = 0;
}

/* The first line of `path` into `buf`; 0 if it cannot be read. */
static int first_line(const char *path, char *buf, int size) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fgets(buf, size, f) != NULL;
    fclose(f);
    return ok;
}

/* The tightest CPU limit, in whole CPUs rounded up, of the cgroup directory
 * `dir` and its ancestors down to the mount point (`dir`'s first `top`
 * bytes): a limit on a parent binds its children. v2: `cpu.max` is
 * "QUOTA PERIOD" or "max PERIOD"; v1: `cpu.cfs_quota_us` (-1: none) over
 * `cpu.cfs_period_us`. 0: no limit. Shortens `dir` as it walks up. */
static long limit_of(char *dir, size_t top, int v2, char *path, size_t size) {
    char line[128];
    const char *end;
    long tightest = 0;
    for (;;) {
        long quota = -1, period = 0;
        if (v2) {
            snprintf(path, size, "%s/cpu.max", dir);
            if (first_line(path, line, sizeof line) && strncmp(line, "max", 3) != 0) {
                quota = parse_long(line, &end);
                period = parse_long(end, &end);
            }
        } else {
            snprintf(path, size, "%s/cpu.cfs_quota_us", dir);
            if (first_line(path, line, sizeof line)) quota = parse_long(line, &end);
            snprintf(path, size, "%s/cpu.cfs_period_us", dir);
            if (first_line(path, line, sizeof line)) period = parse_long(line, &end);
        }
        if (quota > 0 && period > 0) {
            long cpus = quota / period + (quota % period != 0);
            if (tightest == 0 || cpus < tightest) tightest = cpus;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < top) return tightest;
        *slash = 0;
    }
}

/* Buffers of resnetc_cgroup_cpu_limit, on the heap: it runs on whatever
 * thread first calls a model, whose stack may be small. */
struct cgroup_scratch {
    char path[PATH_MAX], line[4096], v1[PATH_MAX], v2[PATH_MAX], dir[PATH_MAX], probe[PATH_MAX + 32];
};

/* The cgroup CPU limit of this process in whole CPUs (0: none, or none
 * readable), with every path under `root` ("" but in tests): the process's
 * cgroups from /proc/self/cgroup, where their hierarchies are mounted from
 * /proc/self/mountinfo. */
long resnetc_cgroup_cpu_limit(const char *root) {
    struct cgroup_scratch *b = malloc(sizeof *b);
    if (!b) return 0;
    long tightest = 0;
    int in_v1 = 0, in_v2 = 0;
    snprintf(b->path, sizeof b->path, "%s/proc/self/cgroup", root);
    FILE *f = fopen(b->path, "r");
    if (!f) goto done;
    /* "ID:CONTROLLERS:PATH": v2 is "0::PATH"; v1 lists its controllers. */
    while (fgets(b->line, sizeof b->line, f)) {
        char *line = b->line;
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = 0;
        if (strcmp(line, "0:") == 0 && c1[1] == 0) {
            snprintf(b->v2, sizeof b->v2, "%s", c2 + 1);
            in_v2 = 1;
        } else if (has_item(c1 + 1, "cpu")) {
            snprintf(b->v1, sizeof b->v1, "%s", c2 + 1);
            in_v1 = 1;
        }
    }
    fclose(f);
    snprintf(b->path, sizeof b->path, "%s/proc/self/mountinfo", root);
    if (!(f = fopen(b->path, "r"))) goto done;
    /* "ID PARENT DEV ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
     * SUPEROPTIONS" */
    while (fgets(b->line, sizeof b->line, f)) {
        char *field[6] = {0}, *after[3] = {0}, *save = NULL;
        int n = 0, m = 0, dash = 0;
        for (char *t = strtok_r(b->line, " \n", &save); t; t = strtok_r(NULL, " \n", &save)) {
            if (!dash && strcmp(t, "-") == 0) dash = 1;
            else if (!dash && n < 6) field[n++] = t;
            else if (dash && m < 3) after[m++] = t;
        }
        if (n < 5 || m < 3) continue;
        char *mroot = field[3], *mpoint = field[4];
        const char *fstype = after[0], *super = after[2];
        int v2_mount = in_v2 && strcmp(fstype, "cgroup2") == 0;
        int v1_mount = in_v1 && strcmp(fstype, "cgroup") == 0 && has_item(super, "cpu");
        if (!v2_mount && !v1_mount) continue;
        unescape(mroot);
        unescape(mpoint);
        /* The cgroup's path below the mount's root (a container sees its
         * own cgroup as the root); none outside it. */
        const char *cg = v2_mount ? b->v2 : b->v1;
        size_t skip = strcmp(mroot, "/") == 0 ? 0 : strlen(mroot);
        if (skip && (strncmp(cg, mroot, skip) != 0 || (cg[skip] && cg[skip] != '/'))) continue;
        if (strstr(cg + skip, "/..")) continue;
        const char *rel = strcmp(cg + skip, "/") == 0 ? "" : cg + skip;
        int len = snprintf(b->dir, sizeof b->dir, "%s%s%s", root, mpoint, rel);
        if (len < 0 || len >= (int)sizeof b->dir) continue;
        long cpus = limit_of(b->dir, strlen(root) + strlen(mpoint), v2_mount, b->probe, sizeof b->probe);
        if (cpus > 0 && (tightest == 0 || cpus < tightest)) tightest = cpus;
    }
    fclose(f);
done:
    free(b);
    return tightest;
}

/* The default thread count (at least 1). The affinity mask is the calling
 * thread's, which the workers it starts inherit. */
static int detect_threads(void) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) == 0) {
        /* Counted here: CPU_COUNT calls a glibc-internal symbol. */
        long allowed = 0;
        for (int c = 0; c < CPU_SETSIZE; c++) allowed += CPU_ISSET(c, &mask) != 0;
        if (allowed > 0) cpus = allowed;
    }
    long limit = resnetc_cgroup_cpu_limit("");
    if (limit > 0 && limit < cpus) cpus = limit;
    return cpus < 1 ? 1 : (int)cpus;
}
