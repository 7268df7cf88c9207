//! ringmesh patch: multishot receive into a provided-buffer ring.
//!
//! A plain `recv` costs one SQE and one poll arming per read: when no data is
//! waiting (the usual case for request/response traffic) the kernel arms an
//! internal poll, and the next read arms it again. A multishot receive is
//! armed once and posts one completion per arrival, each carrying a buffer the
//! kernel picked from a ring of buffers the driver registered up front
//! ("provided buffers"). The caller hands a buffer back by dropping it.
//!
//! - [`register_buf_ring`] sets the ring up for the current thread's io_uring
//!   driver (once per driver; the legacy driver has none).
//! - [`RecvMulti`] is one armed receive on one socket; [`RingBuf`] is one
//!   filled buffer.
//!
//! The kernel ends a multishot receive on EOF, on an error, when it runs out
//! of ring buffers (`ENOBUFS`: nothing was read, the caller may read the
//! ordinary way and re-arm) or when it is cancelled. Completions are queued in
//! the op slab in arrival order, so no byte is reordered or lost.

use std::{
    alloc::Layout,
    cell::{Cell, UnsafeCell},
    collections::VecDeque,
    io,
    os::fd::RawFd,
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
    task::{Poll, Waker},
};

use io_uring::{cqueue, opcode, types};

use super::{lifecycle::Lifecycle, UringInner};
use crate::driver::{Inner, CURRENT};

/// The buffer group id the ring is registered under.
const BGID: u16 = 0x7269; // "ri"

/// A multishot receive's entry in the driver's op slab.
pub(crate) struct MultiState {
    /// Completions not taken yet: raw result and flags.
    queue: VecDeque<(i32, u32)>,
    waker: Option<Waker>,
    /// The kernel may still post completions (the last one had `F_MORE`).
    armed: bool,
    /// The owner is gone: the driver gives buffers back and frees the slot
    /// when the final completion arrives.
    orphan: bool,
}

impl MultiState {
    /// A completion arrived. Returns true when the slot can be freed.
    pub(crate) fn complete(&mut self, res: i32, flags: u32, ring: Option<&Rc<BufRing>>) -> bool {
        let more = cqueue::more(flags);
        if self.orphan {
            if let (Some(bid), Some(ring)) = (cqueue::buffer_select(flags), ring) {
                ring.give_back(bid);
            }
            return !more;
        }
        self.armed = more;
        self.queue.push_back((res, flags));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        false
    }
}

/// The provided-buffer ring: `count` buffers of `buf_size` bytes, and the
/// ring of descriptors the kernel takes them from.
pub(crate) struct BufRing {
    entries: *mut types::BufRingEntry,
    mem: *mut u8,
    count: u16,
    buf_size: u32,
    /// Local copy of the tail the kernel reads.
    tail: Cell<u16>,
    /// False when the kernel could not be made to let go of the memory.
    free_on_drop: Cell<bool>,
}

impl BufRing {
    fn ring_layout(count: u16) -> Layout {
        Layout::from_size_align(count as usize * 16, 4096).expect("ring layout")
    }

    fn mem_layout(count: u16, buf_size: u32) -> Layout {
        Layout::from_size_align(count as usize * buf_size as usize, 4096).expect("buffer layout")
    }

    fn new(inner: &UringInner, count: u16, buf_size: u32) -> io::Result<Rc<Self>> {
        if !count.is_power_of_two() || count > 32768 || buf_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring: count must be a power of two <= 32768, size > 0",
            ));
        }
        let ring_layout = Self::ring_layout(count);
        let mem_layout = Self::mem_layout(count, buf_size);
        // SAFETY: both layouts have a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(ring_layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mem = unsafe { std::alloc::alloc(mem_layout) };
        if mem.is_null() {
            unsafe { std::alloc::dealloc(entries as *mut u8, ring_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let ring = Rc::new(BufRing {
            entries,
            mem,
            count,
            buf_size,
            tail: Cell::new(0),
            free_on_drop: Cell::new(true),
        });
        // SAFETY: the ring memory is page aligned, zeroed and lives until
        // the ring is unregistered (Drop below, or leaked).
        if let Err(e) =
            unsafe { inner.uring.submitter().register_buf_ring(entries as u64, count, BGID) }
        {
            // Never registered: nothing of the kernel's points at it.
            return Err(e);
        }
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count, so the offset stays inside `mem`.
        unsafe { self.mem.add(bid as usize * self.buf_size as usize) }
    }

    fn push(&self, bid: u16) {
        debug_assert!(bid < self.count);
        let tail = self.tail.get();
        // SAFETY: the index is masked into the ring; the kernel only reads
        // entries between its head and the published tail, and this one is
        // past the published tail.
        let e = unsafe { &mut *self.entries.add((tail & (self.count - 1)) as usize) };
        e.set_addr(self.buf_ptr(bid) as u64);
        e.set_len(self.buf_size);
        e.set_bid(bid);
        self.tail.set(tail.wrapping_add(1));
    }

    fn publish(&self) {
        // SAFETY: `entries` is the ring base; the tail is the first entry's
        // reserved field, which the kernel reads with acquire ordering.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// Hands a buffer back to the kernel.
    pub(crate) fn give_back(&self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// Called by the driver before it closes the ring.
    pub(crate) fn unregister(&self, inner: &UringInner) {
        if inner.uring.submitter().unregister_buf_ring(BGID).is_err() {
            self.free_on_drop.set(false);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if !self.free_on_drop.get() {
            return; // the kernel may still write into it: leak
        }
        // SAFETY: allocated in `new` with these layouts.
        unsafe {
            std::alloc::dealloc(self.entries as *mut u8, Self::ring_layout(self.count));
            std::alloc::dealloc(self.mem, Self::mem_layout(self.count, self.buf_size));
        }
    }
}

fn current_uring() -> Option<Rc<UnsafeCell<UringInner>>> {
    if !CURRENT.is_set() {
        return None;
    }
    CURRENT.with(|inner| match inner {
        Inner::Uring(u) => Some(u.clone()),
        #[allow(unreachable_patterns)]
        _ => None,
    })
}

/// Frees the memory the current thread's driver grew for a burst of
/// operations or file descriptors that are gone (empty pages of its op
/// slab on io_uring, of its registration slab on the legacy driver).
pub fn shrink_driver() {
    if !CURRENT.is_set() {
        return;
    }
    CURRENT.with(|inner| match inner {
        // SAFETY: single threaded, no other borrow live.
        Inner::Uring(u) => unsafe { &mut *u.get() }.ops.slab.shrink(),
        #[cfg(feature = "legacy")]
        // SAFETY: as above.
        Inner::Legacy(l) => unsafe { &mut *l.get() }.io_dispatch.shrink(),
    })
}

/// Registers the current thread's provided-buffer ring: `count` buffers
/// (a power of two) of `buf_size` bytes. Fails on the legacy driver and on
/// kernels without buffer rings (< 5.19). Registering again is a no-op.
pub fn register_buf_ring(count: u16, buf_size: u32) -> io::Result<()> {
    let Some(u) = current_uring() else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "buffer rings need the io_uring driver",
        ));
    };
    // SAFETY: the driver is single threaded and no other borrow is live.
    let inner = unsafe { &mut *u.get() };
    if inner.buf_ring.is_none() {
        inner.buf_ring = Some(BufRing::new(inner, count, buf_size)?);
    }
    Ok(())
}

/// Running counts of one io_uring driver's work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UringStats {
    /// `io_uring_enter` calls (submissions, waits, or both).
    pub enters: u64,
    /// Completions reaped from the completion queue.
    pub completions: u64,
    /// Submission queue entries the kernel took (operations submitted).
    pub submissions: u64,
}

/// The current thread's io_uring driver counts; `None` on the legacy
/// driver.
pub fn uring_stats() -> Option<UringStats> {
    let u = current_uring()?;
    // SAFETY: single threaded, short shared borrow.
    Some(unsafe { &*u.get() }.stats)
}

/// One buffer the kernel filled; dropping it hands it back to the ring.
pub struct RingBuf {
    ring: Rc<BufRing>,
    bid: u16,
    len: usize,
}

impl RingBuf {
    /// Bytes received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no byte was received (never for a buffer [`RecvMulti`]
    /// hands out).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ring's buffer size: a buffer this full means more may be waiting.
    pub fn capacity(&self) -> usize {
        self.ring.buf_size as usize
    }
}

impl std::ops::Deref for RingBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes there and owns the buffer no
        // more until `Drop`.
        unsafe { std::slice::from_raw_parts(self.ring.buf_ptr(self.bid), self.len) }
    }
}

impl Drop for RingBuf {
    fn drop(&mut self) {
        self.ring.give_back(self.bid);
    }
}

// SAFETY: the pointer stays valid and the bytes unchanged while the RingBuf
// lives (the kernel gets the buffer back only in Drop).
unsafe impl crate::buf::IoBuf for RingBuf {
    fn read_ptr(&self) -> *const u8 {
        self.ring.buf_ptr(self.bid)
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

/// A multishot receive on one socket.
pub struct RecvMulti {
    driver: Rc<UnsafeCell<UringInner>>,
    ring: Rc<BufRing>,
    index: usize,
    fd: RawFd,
    cancelled: bool,
    /// ringmesh patch: a single receive (see [`Self::once`]).
    oneshot: bool,
}

impl RecvMulti {
    /// Arms a multishot receive on `fd` (which must outlive it). Needs
    /// [`register_buf_ring`] on this thread first.
    pub fn new(fd: RawFd) -> io::Result<Self> {
        Self::start(fd, false)
    }

    /// Arms ONE receive on `fd` into a ring buffer the kernel picks when
    /// bytes arrive (`IOSQE_BUFFER_SELECT`): a connection waiting for its
    /// next request holds no buffer, at the cost of one ordinary receive.
    /// [`Self::next`] yields at most one buffer (or EOF, or an error), then
    /// `ECANCELED`. Dropping it while armed cancels it; a buffer the kernel
    /// filled meanwhile goes back to the ring.
    pub fn once(fd: RawFd) -> io::Result<Self> {
        Self::start(fd, true)
    }

    fn start(fd: RawFd, oneshot: bool) -> io::Result<Self> {
        let Some(driver) = current_uring() else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        // SAFETY: single threaded, no other borrow live.
        let inner = unsafe { &mut *driver.get() };
        let Some(ring) = inner.buf_ring.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no buffer ring registered",
            ));
        };
        let index = inner.ops.slab.insert(Lifecycle::Multi(MultiState {
            queue: VecDeque::new(),
            waker: None,
            armed: false,
            orphan: false,
        }));
        let mut me = RecvMulti {
            driver,
            ring,
            index,
            fd,
            cancelled: false,
            oneshot,
        };
        me.arm()?;
        Ok(me)
    }

    fn state<'a>(inner: &'a mut UringInner, index: usize) -> &'a mut MultiState {
        match inner.ops.slab.get(index) {
            Some(r) => match r.into_mut() {
                Lifecycle::Multi(m) => m,
                _ => unreachable!("multishot slot holds another op"),
            },
            None => unreachable!("multishot slot freed while owned"),
        }
    }

    fn arm(&mut self) -> io::Result<()> {
        // SAFETY: single threaded, no other borrow live.
        let inner = unsafe { &mut *self.driver.get() };
        if inner.uring.submission().is_full() {
            inner.submit()?;
        }
        let sqe = if self.oneshot {
            opcode::Recv::new(types::Fd(self.fd), std::ptr::null_mut(), 0)
                .buf_group(BGID)
                .build()
                .flags(io_uring::squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(types::Fd(self.fd), BGID).build()
        }
        .user_data(self.index as u64);
        // SAFETY: the SQE references no memory of ours; the buffers belong to
        // the registered ring.
        unsafe { inner.uring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("submission queue full"))?;
        Self::state(inner, self.index).armed = true;
        Ok(())
    }

    /// Re-arms after the receive ended with `ENOBUFS` (call once the bytes
    /// waiting were read the ordinary way). No-op while armed.
    pub fn rearm(&mut self) -> io::Result<()> {
        // SAFETY: single threaded, short borrow.
        let armed = Self::state(unsafe { &mut *self.driver.get() }, self.index).armed;
        if armed || self.cancelled || self.oneshot {
            return Ok(());
        }
        self.arm()
    }

    /// Stops receiving. Completions already posted (and any the kernel
    /// posts before it stops) are still handed out by [`Self::next`], which
    /// then fails with `ECANCELED`: after that the socket can be read the
    /// ordinary way without losing or reordering a byte.
    pub fn cancel(&mut self) {
        if self.cancelled {
            return;
        }
        self.cancelled = true;
        // SAFETY: single threaded, no other borrow live.
        let inner = unsafe { &mut *self.driver.get() };
        if Self::state(inner, self.index).armed {
            // SAFETY: u64::MAX is the driver's ignored user_data.
            unsafe { UringInner::cancel_op(&self.driver, self.index) };
        }
    }

    /// The next buffer received: `Ok(None)` at EOF. An error ends the
    /// receive (`ENOBUFS`: the ring was empty, nothing was read; `ECANCELED`
    /// after [`Self::cancel`]).
    pub async fn next(&mut self) -> io::Result<Option<RingBuf>> {
        std::future::poll_fn(|cx| {
            // SAFETY: single threaded, no other borrow live across this.
            let inner = unsafe { &mut *self.driver.get() };
            let st = Self::state(inner, self.index);
            let Some((res, flags)) = st.queue.pop_front() else {
                if !st.armed {
                    return Poll::Ready(Err(io::Error::from_raw_os_error(libc::ECANCELED)));
                }
                match &st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            };
            let bid = cqueue::buffer_select(flags);
            if res <= 0 {
                // An error, or EOF (0): the receive is over.
                if let Some(bid) = bid {
                    self.ring.give_back(bid);
                }
                return Poll::Ready(match res {
                    0 => Ok(None),
                    _ => Err(io::Error::from_raw_os_error(-res)),
                });
            }
            let buf = RingBuf {
                ring: self.ring.clone(),
                bid: bid.expect("a receive with data names its buffer"),
                len: res as usize,
            };
            if !cqueue::more(flags) && !self.cancelled && !self.oneshot {
                // The kernel stopped on its own (e.g. completion queue
                // pressure) after delivering data: keep receiving.
                if let Err(e) = self.arm() {
                    return Poll::Ready(Err(e));
                }
            }
            Poll::Ready(Ok(Some(buf)))
        })
        .await
    }
}

impl Drop for RecvMulti {
    fn drop(&mut self) {
        // SAFETY: single threaded, no other borrow live.
        let inner = unsafe { &mut *self.driver.get() };
        let st = Self::state(inner, self.index);
        for (_, flags) in st.queue.drain(..) {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.ring.give_back(bid);
            }
        }
        st.waker = None;
        if st.armed {
            // The driver frees the slot at the final completion.
            st.orphan = true;
            // SAFETY: u64::MAX is the driver's ignored user_data.
            unsafe { UringInner::cancel_op(&self.driver, self.index) };
        } else {
            inner.ops.slab.remove(self.index);
        }
    }
}
