//! A per-worker pool of relay buffers, so a new connection reuses the memory
//! of a closed one instead of allocating. Single-threaded by design
//! (`RefCell`), one pool per worker.

use std::cell::RefCell;

pub struct BufferPool {
    size: usize,
    max_idle: usize,
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// `size`: capacity of each buffer; `max_idle`: how many free buffers are
    /// kept (beyond that, returned buffers are freed).
    pub fn new(size: usize, max_idle: usize) -> Self {
        Self {
            size,
            max_idle,
            free: RefCell::new(Vec::new()),
        }
    }

    pub fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    pub fn put(&self, mut buf: Vec<u8>) {
        // A buffer that lost its capacity (an op was cancelled and monoio
        // kept it) is not worth keeping.
        if buf.capacity() != self.size {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_idle {
            buf.clear();
            free.push(buf);
        }
    }

    /// Frees every idle buffer (after a burst, before memory goes back to
    /// the OS).
    pub fn clear(&self) {
        self.free.borrow_mut().clear();
    }

    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_caps() {
        let pool = BufferPool::new(64, 1);
        let a = pool.get();
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get();
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is reused");
        pool.put(b);
        pool.put(Vec::with_capacity(64));
        assert_eq!(pool.idle(), 1, "no more than max_idle kept");
        pool.put(Vec::with_capacity(3));
        assert_eq!(pool.idle(), 1);
    }
}
