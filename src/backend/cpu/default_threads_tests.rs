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

/// A container's view of cgroup v1: the mount's root is the container's
/// cgroup (`/docker/abc`), so the process's cgroup `/docker/abc/sub` is
/// `sub` under the mount point; the cpu controller is mounted together
/// with cpuacct, and mountinfo lines carry optional fields.
#[test]
fn cgroup_v1_container_view() {
    let tree = [
        ("proc/self/cgroup", "5:memory:/docker/abc/sub\n4:cpu,cpuacct:/docker/abc/sub\n0::/\n"),
        (
            "proc/self/mountinfo",
            "40 35 0:33 /docker/abc /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory\n\
             41 35 0:34 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw shared:10 master:3 - cgroup cgroup rw,cpu,cpuacct\n",
        ),
        ("sys/fs/cgroup/cpu,cpuacct/sub/cpu.cfs_quota_us", "150000\n"),
        ("sys/fs/cgroup/cpu,cpuacct/sub/cpu.cfs_period_us", "100000\n"),
        // Where the path would lead without taking the mount's root off.
        ("sys/fs/cgroup/cpu,cpuacct/docker/abc/sub/cpu.cfs_quota_us", "100000\n"),
        ("sys/fs/cgroup/cpu,cpuacct/docker/abc/sub/cpu.cfs_period_us", "100000\n"),
        // The memory hierarchy's files are not CPU limits.
        ("sys/fs/cgroup/memory/sub/cpu.cfs_quota_us", "100000\n"),
        ("sys/fs/cgroup/memory/sub/cpu.cfs_period_us", "100000\n"),
        // Above the mount point: not the process's cgroup.
        ("sys/fs/cgroup/cpu.cfs_quota_us", "100000\n"),
        ("sys/fs/cgroup/cpu.cfs_period_us", "100000\n"),
    ];
    assert_eq!(limit(&tree), 2);
}

/// A mount whose root is not a path component of the process's cgroup
/// (`/docker/abc` against `/docker/abcdef`) says nothing about it.
#[test]
fn cgroup_mount_root_must_be_a_whole_component() {
    let tree = [
        ("proc/self/cgroup", "4:cpu:/docker/abcdef\n"),
        (
            "proc/self/mountinfo",
            "41 35 0:34 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
        ),
        ("sys/fs/cgroup/cpu/def/cpu.cfs_quota_us", "100000\n"),
        ("sys/fs/cgroup/cpu/def/cpu.cfs_period_us", "100000\n"),
        ("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000\n"),
        ("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
    ];
    assert_eq!(limit(&tree), 0);
}

/// A hybrid host (this project's VM): the cpu controller on v1, and a v2
/// unified mount beside it that has no `cpu.max`; mount points with
/// mountinfo's octal escapes.
#[test]
fn cgroup_hybrid_and_escaped_mount_points() {
    let tree = [
        ("proc/self/cgroup", "1:cpu:/a b/c\n0::/a b/c\n"),
        (
            "proc/self/mountinfo",
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
             40 31 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        ),
        ("sys/fs/cgroup/cpu/a b/cpu.cfs_quota_us", "100000\n"),
        ("sys/fs/cgroup/cpu/a b/cpu.cfs_period_us", "100000\n"),
    ];
    assert_eq!(limit(&tree), 1);
    // The same cgroup under a mount root written with escapes.
    let tree = [
        ("proc/self/cgroup", "1:cpu:/a b/c\n"),
        (
            "proc/self/mountinfo",
            "32 31 0:29 /a\\040b /sys/fs/cgroup/c\\040pu rw - cgroup cgroup rw,cpu\n",
        ),
        ("sys/fs/cgroup/c pu/c/cpu.cfs_quota_us", "300000\n"),
        ("sys/fs/cgroup/c pu/c/cpu.cfs_period_us", "100000\n"),
    ];
    assert_eq!(limit(&tree), 3);
}

/// Malformed or extreme files: no crash, no bogus limit, and a huge quota
/// does not hide a real limit above it.
#[test]
fn cgroup_files_that_make_no_sense_are_no_limit() {
    let v2 = |files: &[(&str, &str)]| {
        let mut tree = vec![
            ("proc/self/cgroup", "0::/a/b\n"),
            ("proc/self/mountinfo", V2_MOUNT),
        ];
        tree.extend_from_slice(files);
        limit(&tree)
    };
    assert_eq!(v2(&[("sys/fs/cgroup/a/b/cpu.max", "\n")]), 0);
    assert_eq!(v2(&[("sys/fs/cgroup/a/b/cpu.max", "lots 100000\n")]), 0);
    assert_eq!(v2(&[("sys/fs/cgroup/a/b/cpu.max", "100000 0\n")]), 0);
    assert_eq!(v2(&[("sys/fs/cgroup/a/b/cpu.max", "-5 100000\n")]), 0);
    assert_eq!(
        v2(&[
            ("sys/fs/cgroup/a/b/cpu.max", "9223372036854775807 100000\n"),
            ("sys/fs/cgroup/a/cpu.max", "100000 100000\n"),
        ]),
        1
    );
    assert_eq!(
        limit(&[
            ("proc/self/cgroup", "garbage\n::\n0:\n"),
            ("proc/self/mountinfo", "nonsense\n - \n1 2 3\n"),
        ]),
        0
    );
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
