//! The operating system's clocks: the coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`), read
//! for every hit, and `CLOCK_BOOTTIME` for nodes on machines that suspend.
//!
//! glibc's `clock_gettime` reaches the kernel's vDSO through a wrapper (a clock-id check, an
//! indirect call, errno handling); calling the vDSO's own `__vdso_clock_gettime` skips it, which
//! measured 5.0 against 6.9 ns a read on the development VM, a tenth of a hit. The symbol is
//! looked up once, through the dynamic loader, which already mapped the vDSO for glibc; where
//! there is none to find (another libc, another architecture, or a process under valgrind,
//! which hides the vDSO) the reader is glibc's or the C library's own `clock_gettime`.
//! Either way it is the same kernel clock: it keeps counting while the process is stopped
//! (`SIGSTOP`, a frozen cgroup), and stops while the machine is suspended.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use super::Millis;

/// `clock_gettime`'s signature, shared by the vDSO's entry point and the C library's.
type ReadFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// The reader: the vDSO's entry point when the loader knows it, else the C library's.
fn reader() -> ReadFn {
    static READER: OnceLock<ReadFn> = OnceLock::new();
    *READER.get_or_init(|| vdso_reader().unwrap_or(libc::clock_gettime))
}

/// `__vdso_clock_gettime`, the name vdso(7) gives the entry point on x86-64.
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
fn vdso_reader() -> Option<ReadFn> {
    // SAFETY: `dlopen` with RTLD_NOLOAD only looks up an object the loader already mapped (it
    // never loads or initialises one); both names are NUL-terminated literals. The handle is
    // never closed, so the vDSO stays mapped for the life of the process (the kernel maps it
    // for that long anyway). vdso(7) documents `__vdso_clock_gettime` on x86-64 with exactly
    // `clock_gettime`'s C signature, which `ReadFn` spells, so calling the symbol through that
    // type is sound; a null symbol is mapped to `None` before the transmute.
    unsafe {
        let vdso = libc::dlopen(
            c"linux-vdso.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_NOLOAD,
        );
        if vdso.is_null() {
            return None;
        }
        let symbol = libc::dlsym(vdso, c"__vdso_clock_gettime".as_ptr());
        (!symbol.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, ReadFn>(symbol))
    }
}

#[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
fn vdso_reader() -> Option<ReadFn> {
    None
}

/// Milliseconds on the coarse monotonic clock; `Millis::MAX` if the read failed, so that a
/// failure ends every lease instead of extending one.
#[inline]
pub(super) fn now() -> Millis {
    let read = reader();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `read` has `clock_gettime`'s contract (see `vdso_reader`): given a clock id and a
    // pointer to a writable timespec, which `&mut ts` is, it writes the time there and returns 0,
    // or returns non-zero and leaves it alone.
    if unsafe { read(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return Millis::MAX;
    }
    // The monotonic clock counts from boot, so both fields are non-negative.
    (ts.tv_sec as u64) * 1_000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Milliseconds on `CLOCK_BOOTTIME`, which also counts time the machine was suspended;
/// `Millis::MAX` if the read failed.
pub(super) fn boottime_now() -> Millis {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a writable timespec, as `clock_gettime` requires.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Millis::MAX;
    }
    (ts.tv_sec as u64) * 1_000 + (ts.tv_nsec as u64) / 1_000_000
}

/// How far behind the true time a reading may be: the clock's tick, rounded up to milliseconds.
pub(super) fn resolution() -> Millis {
    static RESOLUTION: OnceLock<Millis> = OnceLock::new();
    *RESOLUTION.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a pointer to a writable timespec, as `clock_getres`
        // requires.
        let known = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
        // Without an answer, assume the coarsest tick Linux has (100 Hz).
        let nanos = if known {
            (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
        } else {
            10_000_000
        };
        nanos.div_ceil(1_000_000)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C library's read, through glibc's wrapper: what `now` must agree with.
    fn through_libc() -> Millis {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a pointer to a writable timespec.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) },
            0
        );
        (ts.tv_sec as u64) * 1_000 + (ts.tv_nsec as u64) / 1_000_000
    }

    #[test]
    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    fn glibc_on_x86_64_reads_through_the_vdso_entry_point() {
        let vdso = vdso_reader().expect("the loader knows the vDSO");
        assert_eq!(reader() as usize, vdso as usize);
    }

    #[test]
    fn boottime_is_never_behind_the_monotonic_clock() {
        // Both count from boot; BOOTTIME adds the time spent suspended.
        let monotonic = now();
        assert!(boottime_now() >= monotonic);
    }

    #[test]
    fn the_reader_reads_the_same_clock_as_the_c_library() {
        for _ in 0..1_000 {
            let before = through_libc();
            let ours = now();
            let after = through_libc();
            assert!(
                (before..=after).contains(&ours),
                "{before} <= {ours} <= {after}"
            );
        }
    }
}
