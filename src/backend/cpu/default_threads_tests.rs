//! The pool's default thread count under a cgroup CPU limit
//! (runtime/default_threads.h), read from fake /proc and /sys trees.

use std::ffi::CString;
use std::path::Path;

extern "C" {
    fn resnetc_cgroup_cpu_limit(root: *const std::ffi::c_char) -> std::ffi::c_long;
}

/// A tree of `(path, contents)` files under a fresh directory, and the
/// limit the runtime reads there.
fn limit(files: &[(&str, &str)]) -> i64 {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(Path::new("."))).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    let root = CString::new(dir.path().to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: a NUL-terminated path; the function only reads files under it.
    unsafe { resnetc_cgroup_cpu_limit(root.as_ptr()) as i64 }
}

const V2_MOUNT: &str = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

#[test]
fn cgroup_v2_limit_of_a_parent_binds_rounded_up() {
    let tree = [
        ("proc/self/cgroup", "0::/kubepods/pod1/app\n"),
        ("proc/self/mountinfo", V2_MOUNT),
        ("sys/fs/cgroup/kubepods/pod1/app/cpu.max", "max 100000\n"),
        ("sys/fs/cgroup/kubepods/pod1/cpu.max", "250000 100000\n"),
        ("sys/fs/cgroup/kubepods/cpu.max", "800000 100000\n"),
    ];
    assert_eq!(limit(&tree), 3);
}

#[test]
fn cgroup_v2_without_a_quota_is_no_limit() {
    let tree = [
        ("proc/self/cgroup", "0::/\n"),
        ("proc/self/mountinfo", V2_MOUNT),
        ("sys/fs/cgroup/cpu.max", "max 100000\n"),
    ];
    assert_eq!(limit(&tree), 0);
    // Nothing to read at all: no limit either.
    assert_eq!(limit(&[]), 0);
}

/// A container's view of cgroup v1: its own cgroup is the mount's root,
/// the cpu controller mounted together with cpuacct.
#[test]
fn cgroup_v1_container_view() {
    let tree = [
        (
            "proc/self/cgroup",
            "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        ),
        (
            "proc/self/mountinfo",
            "40 35 0:33 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             41 35 0:34 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        ),
        ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000\n"),
        ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        // The memory hierarchy's files are not CPU limits.
        ("sys/fs/cgroup/memory/cpu.cfs_quota_us", "100000\n"),
        ("sys/fs/cgroup/memory/cpu.cfs_period_us", "100000\n"),
    ];
    assert_eq!(limit(&tree), 2);
}

/// A host's view of cgroup v1 with separate mounts (this project's VM):
/// `cpuacct` alone is not the cpu controller; -1 is no quota.
#[test]
fn cgroup_v1_host_view() {
    let mounts = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                  33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n";
    let quota = |q: &str| {
        limit(&[
            ("proc/self/cgroup", "2:cpuacct:/\n1:cpu:/job\n"),
            ("proc/self/mountinfo", mounts),
            ("sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", q),
            ("sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000\n"),
            ("sys/fs/cgroup/cpuacct/job/cpu.cfs_quota_us", "100000\n"),
            ("sys/fs/cgroup/cpuacct/job/cpu.cfs_period_us", "100000\n"),
        ])
    };
    assert_eq!(quota("100000\n"), 1);
    assert_eq!(quota("-1\n"), 0);
}
