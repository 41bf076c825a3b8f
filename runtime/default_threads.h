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
static long limit_of(char *dir, size_t top, int v2) {
    char path[PATH_MAX + 32], line[128];
    long tightest = 0;
    for (;;) {
        long quota = -1, period = 0;
        if (v2) {
            snprintf(path, sizeof path, "%s/cpu.max", dir);
            if (first_line(path, line, sizeof line) && strncmp(line, "max", 3) != 0) {
                char *end;
                quota = strtol(line, &end, 10);
                period = strtol(end, NULL, 10);
            }
        } else {
            snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
            if (first_line(path, line, sizeof line)) quota = strtol(line, NULL, 10);
            snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
            if (first_line(path, line, sizeof line)) period = strtol(line, NULL, 10);
        }
        if (quota > 0 && period > 0) {
            long cpus = (quota + period - 1) / period;
            if (tightest == 0 || cpus < tightest) tightest = cpus;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < top) return tightest;
        *slash = 0;
    }
}

/* The cgroup CPU limit of this process in whole CPUs (0: none, or none
 * readable), with every path under `root` ("" but in tests): the process's
 * cgroups from /proc/self/cgroup, where their hierarchies are mounted from
 * /proc/self/mountinfo. */
long resnetc_cgroup_cpu_limit(const char *root) {
    char path[PATH_MAX], line[4096];
    char v1[PATH_MAX] = "", v2[PATH_MAX] = "";
    int in_v1 = 0, in_v2 = 0;
    snprintf(path, sizeof path, "%s/proc/self/cgroup", root);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    /* "ID:CONTROLLERS:PATH": v2 is "0::PATH"; v1 lists its controllers. */
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = 0;
        if (strcmp(line, "0:") == 0 && c1[1] == 0) {
            snprintf(v2, sizeof v2, "%s", c2 + 1);
            in_v2 = 1;
        } else if (has_item(c1 + 1, "cpu")) {
            snprintf(v1, sizeof v1, "%s", c2 + 1);
            in_v1 = 1;
        }
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/proc/self/mountinfo", root);
    if (!(f = fopen(path, "r"))) return 0;
    long tightest = 0;
    /* "ID PARENT DEV ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPEROPTIONS" */
    while (fgets(line, sizeof line, f)) {
        char *field[6] = {0}, *after[3] = {0}, *save = NULL;
        int n = 0, m = 0, dash = 0;
        for (char *t = strtok_r(line, " \n", &save); t; t = strtok_r(NULL, " \n", &save)) {
            if (!dash && strcmp(t, "-") == 0) dash = 1;
            else if (!dash && n < 6) field[n++] = t;
            else if (dash && m < 3) after[m++] = t;
        }
        if (n < 5 || m < 3) continue;
        const char *mroot = field[3], *mpoint = field[4], *fstype = after[0], *super = after[2];
        int v2_mount = in_v2 && strcmp(fstype, "cgroup2") == 0;
        int v1_mount = in_v1 && strcmp(fstype, "cgroup") == 0 && has_item(super, "cpu");
        if (!v2_mount && !v1_mount) continue;
        /* The cgroup's path below the mount's root (a container sees its
         * own cgroup as the root). */
        const char *cg = v2_mount ? v2 : v1;
        size_t skip = strcmp(mroot, "/") == 0 ? 0 : strlen(mroot);
        if (skip && (strncmp(cg, mroot, skip) != 0 || (cg[skip] && cg[skip] != '/'))) continue;
        const char *rel = strcmp(cg + skip, "/") == 0 ? "" : cg + skip;
        char dir[PATH_MAX];
        int len = snprintf(dir, sizeof dir, "%s%s%s", root, mpoint, rel);
        if (len < 0 || len >= (int)sizeof dir) continue;
        long cpus = limit_of(dir, strlen(root) + strlen(mpoint), v2_mount);
        if (cpus > 0 && (tightest == 0 || cpus < tightest)) tightest = cpus;
    }
    fclose(f);
    return tightest;
}

/* The default thread count (at least 1). */
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
