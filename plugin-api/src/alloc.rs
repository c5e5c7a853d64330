//! Plugins allocate through the host's allocator when they run inside plughost.
//!
//! A plugin is a `cdylib` with its own copy of the standard library, so by default it allocates
//! with the system's `malloc`, while the host runs a faster allocator. On a quick function the
//! plugin's `malloc` and `free` were a tenth of the instructions of a whole request.
//! [`export_plugin!`](crate::export_plugin) therefore installs [`PluginAllocator`] as the plugin's
//! global allocator. At its first allocation it looks for the table the host exports under
//! [`SYMBOL`], and from then on every allocation of the plugin goes through it. Where there is
//! no host (the plugin's own unit tests, another program loading it), it uses the system
//! allocator.
//!
//! The choice is made once per plugin and never changes, so a block is always freed by the
//! allocator that made it. The host exports the table before any plugin is loaded (it is a
//! static in its executable), so a plugin inside plughost makes every allocation through it.
//!
//! A plugin that wants its own allocator exports itself with
//! `export_plugin!(plugin, own_allocator)` and declares its `#[global_allocator]`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    ffi::{c_char, c_void, CStr},
    sync::atomic::{AtomicPtr, AtomicU8, Ordering},
};

/// The name under which the host's executable exports its [`HostAllocator`] table.
pub const SYMBOL: &CStr = c"plughost_allocator_v1";

/// The host's allocator, as four C functions. The layout is part of the ABI: only append.
#[repr(C)]
pub struct HostAllocator {
    pub alloc: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    pub alloc_zeroed: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    pub dealloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize),
    pub realloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8,
}

#[allow(unsafe_code)]
mod global {
    //! The table of the program's own global allocator: what the host exports.
    use super::Layout;

    // SAFETY (all four): the plugin side calls these only with the size and alignment of a
    // `Layout` it was handed by Rust's allocator API, so they form a valid layout, and with
    // pointers this same table returned.
    pub unsafe extern "C" fn alloc(size: usize, align: usize) -> *mut u8 {
        unsafe { std::alloc::alloc(Layout::from_size_align_unchecked(size, align)) }
    }

    pub unsafe extern "C" fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
        unsafe { std::alloc::alloc_zeroed(Layout::from_size_align_unchecked(size, align)) }
    }

    pub unsafe extern "C" fn dealloc(ptr: *mut u8, size: usize, align: usize) {
        unsafe { std::alloc::dealloc(ptr, Layout::from_size_align_unchecked(size, align)) }
    }

    pub unsafe extern "C" fn realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
        unsafe { std::alloc::realloc(ptr, Layout::from_size_align_unchecked(size, align), new_size) }
    }
}

impl HostAllocator {
    /// The table of this program's global allocator: what the host exports under [`SYMBOL`].
    pub const GLOBAL: HostAllocator = HostAllocator {
        alloc: global::alloc,
        alloc_zeroed: global::alloc_zeroed,
        dealloc: global::dealloc,
        realloc: global::realloc,
    };
}

const UNDECIDED: u8 = 0;
const HOST: u8 = 1;
const SYSTEM: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNDECIDED);
static TABLE: AtomicPtr<HostAllocator> = AtomicPtr::new(std::ptr::null_mut());

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// The host's table, looked up at the first allocation. Two threads deciding at once find the
/// same answer, since the symbol is in the executable or it is not.
#[inline]
fn host() -> Option<&'static HostAllocator> {
    match STATE.load(Ordering::Acquire) {
        // SAFETY: TABLE is set to the address of the host's static table before HOST is stored.
        #[allow(unsafe_code)]
        HOST => Some(unsafe { &*TABLE.load(Ordering::Relaxed) }),
        SYSTEM => None,
        _ => decide(),
    }
}

#[cold]
fn decide() -> Option<&'static HostAllocator> {
    // SAFETY: dlsym with RTLD_DEFAULT (a null handle on glibc and musl) and a NUL-terminated name
    // searches the executable and its libraries; it allocates with libc's malloc, never through
    // this allocator.
    #[allow(unsafe_code)]
    let found = unsafe { dlsym(std::ptr::null_mut(), SYMBOL.as_ptr()) }.cast::<HostAllocator>();
    if found.is_null() {
        STATE.store(SYSTEM, Ordering::Release);
        None
    } else {
        TABLE.store(found, Ordering::Relaxed);
        STATE.store(HOST, Ordering::Release);
        // SAFETY: the host exports a `HostAllocator` static under this name (see `SYMBOL`).
        #[allow(unsafe_code)]
        Some(unsafe { &*found })
    }
}

/// Whether this plugin allocates through the host (decides it now if no allocation has yet).
pub fn uses_host_allocator() -> bool {
    host().is_some()
}

/// The global allocator `export_plugin!` installs in a plugin.
pub struct PluginAllocator;

// SAFETY: every call goes to one allocator for the life of the process (the host's, or the
// system's), which upholds GlobalAlloc's contract itself.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for PluginAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match host() {
            Some(host) => unsafe { (host.alloc)(layout.size(), layout.align()) },
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match host() {
            Some(host) => unsafe { (host.alloc_zeroed)(layout.size(), layout.align()) },
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match host() {
            Some(host) => unsafe { (host.dealloc)(ptr, layout.size(), layout.align()) },
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match host() {
            Some(host) => unsafe { (host.realloc)(ptr, layout.size(), layout.align(), new_size) },
            None => unsafe { System.realloc(ptr, layout, new_size) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_host_the_system_allocator_serves() {
        // The test binary exports no table.
        assert!(!uses_host_allocator());
        let layout = Layout::from_size_align(64, 16).unwrap_or_else(|_| unreachable!());
        #[allow(unsafe_code)]
        unsafe {
            let p = PluginAllocator.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % 16, 0);
            assert!(std::slice::from_raw_parts(p, 64).iter().all(|&b| b == 0));
            let p = PluginAllocator.realloc(p, layout, 4096);
            assert!(!p.is_null());
            PluginAllocator.dealloc(p, Layout::from_size_align(4096, 16).unwrap_or_else(|_| unreachable!()));
        }
    }

    #[test]
    fn the_global_table_allocates() {
        #[allow(unsafe_code)]
        unsafe {
            let table = HostAllocator::GLOBAL;
            let p = (table.alloc)(100, 8);
            assert!(!p.is_null());
            let p = (table.realloc)(p, 100, 8, 1000);
            assert!(!p.is_null());
            (table.dealloc)(p, 1000, 8);
        }
    }
}
