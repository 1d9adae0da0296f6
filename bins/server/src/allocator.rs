//! The process's allocator: mimalloc, asked for a plain block whenever a plain block is
//! aligned enough.
//!
//! `mimalloc::MiMalloc` asks for every block through `mi_malloc_aligned`, whatever the
//! alignment. Most of Rust's allocations need 8 bytes or less, which every mimalloc
//! block has (block sizes are whole words), and the aligned entry costs them a second
//! size-class check, and for some sizes a detour through its generic path: about 65
//! instructions an allocation under callgrind, against about 25 for `mi_malloc`. The
//! rule is the one `std`'s `System` allocator applies to `malloc`.

// An allocator is unsafe code by its nature; this module is the binary's only such code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{mi_free, mi_malloc, mi_realloc, mi_zalloc};

/// Every block mimalloc hands out is aligned to a word: its block sizes are whole words.
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc, through its plain entries for alignments of a word or less.
pub struct Allocator;

// SAFETY: each method forwards to mimalloc with a layout it honours: plain blocks only
// for alignments a word-aligned block meets, `MiMalloc` (the aligned entries) for the
// rest; `mi_free` frees blocks from either.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: a plain allocation of the layout's size.
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: as in `alloc`.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: `ptr` came from mimalloc; the new block is word-aligned too.
            unsafe { mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment gets a block at its alignment, which keeps what was
    /// written to it through a reallocation, whichever entry served it.
    #[test]
    fn blocks_meet_their_alignment_through_either_entry() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 7, 8, 12, 16, 24, 40, 48, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its own layout.
                unsafe {
                    let block = Allocator.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "{size} bytes at {align}");
                    block.write_bytes(0xA5, size);
                    let grown = Allocator.realloc(block, layout, size * 2);
                    assert_eq!(grown as usize % align, 0, "grown {size} bytes at {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5));
                    Allocator.dealloc(grown, Layout::from_size_align(size * 2, align).unwrap());
                    let zeroed = Allocator.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size} bytes at {align}");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    Allocator.dealloc(zeroed, layout);
                }
            }
        }
    }
}
