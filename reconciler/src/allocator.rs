//! The allocator of the `fort` binary, as a macro so the benchmarks measure the same one.

#[doc(hidden)]
pub use libmimalloc_sys as __sys;
#[doc(hidden)]
pub use mimalloc as __mimalloc;

/// Makes mimalloc the global allocator of the crate it is used in, committing arena memory on
/// demand.
///
/// Planning large manifests allocates many small values; mimalloc keeps them close together
/// and reuses freed pages, which keeps plan time linear in the number of resources. Its arena
/// is committed lazily, so a long-running `fort watch` does not keep the peak of its busiest
/// pass resident (47 → 18 MiB idle over 10 resources). The option is set from `.init_array`,
/// before main and before the first allocation creates the arena. Option 4 is mimalloc 2.x's
/// `arena_eager_commit` (libmimalloc-sys does not export the name): re-check it, with
/// `tests/bench/watch.sh`'s RSS figure, when libmimalloc-sys moves to another mimalloc.
#[macro_export]
macro_rules! lean_mimalloc {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::allocator::__mimalloc::MiMalloc =
            $crate::allocator::__mimalloc::MiMalloc;

        extern "C" fn lean_allocator() {
            // SAFETY: mi_option_set only stores an option value; it is safe to call at any time.
            unsafe { $crate::allocator::__sys::mi_option_set(4, 0) };
        }

        #[used]
        #[unsafe(link_section = ".init_array")]
        static LEAN_ALLOCATOR: extern "C" fn() = lean_allocator;
    };
}
