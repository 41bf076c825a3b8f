//! The thread pool's default size in a forked child: detected again there,
//! since a server's workers are often pinned to other CPUs after the fork.
//! Its own test binary: nothing else in the process may set the count.

use std::ffi::{c_int, c_void};
use std::mem::size_of;

extern "C" {
    fn fork() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
    fn sched_setaffinity(pid: c_int, size: usize, mask: *const c_void) -> c_int;
    fn sched_getaffinity(pid: c_int, size: usize, mask: *mut c_void) -> c_int;
}

/// glibc's `cpu_set_t`: 1024 CPUs, one bit each.
type CpuSet = [u64; 16];

#[test]
fn a_forked_child_pinned_to_one_cpu_defaults_to_one_thread() {
    let before = resnetc::backend::cpu::num_threads();
    if before < 2 {
        eprintln!("skipped: the default is already {before} thread here");
        return;
    }
    let mut mask: CpuSet = [0; 16];
    // SAFETY: `mask` is a cpu_set_t-sized buffer.
    let got = unsafe { sched_getaffinity(0, size_of::<CpuSet>(), mask.as_mut_ptr().cast()) };
    if got != 0 {
        eprintln!("skipped: the affinity mask does not fit 1024 CPUs");
        return;
    }
    let first = mask
        .iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
        .expect("some CPU is allowed");
    let mut one: CpuSet = [0; 16];
    one[first / 64] = 1 << (first % 64);
    // SAFETY: the child only pins itself, asks the runtime for its thread
    // count (which reads /proc and /sys files) and exits without unwinding.
    let pid = unsafe { fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = unsafe {
            if sched_setaffinity(0, size_of::<CpuSet>(), one.as_ptr().cast()) != 0 {
                100
            } else {
                resnetc::backend::cpu::num_threads() as c_int
            }
        };
        unsafe { _exit(code) }
    }
    let mut status: c_int = 0;
    // SAFETY: waits for the child just forked.
    let waited = unsafe { waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    // Exited normally (low 7 bits 0): the exit code is bits 8-15.
    assert_eq!(status & 0x7f, 0, "the child was killed: status {status}");
    let child = (status >> 8) & 0xff;
    assert_eq!(
        child, 1,
        "the parent detected {before} threads; the child, pinned to CPU {first}, \
         should detect 1 (100: it could not pin itself)"
    );
    assert_eq!(resnetc::backend::cpu::num_threads(), before);
}
