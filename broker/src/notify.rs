//! A single-threaded notification primitive for tasks on one shard.
//!
//! `notify()` wakes every listener created before it. A listener is created *before* the
//! condition is checked and awaited after, so no wake-up is lost between the check and the wait.
//!
//! A [`Latch`] fires once and stays fired: its listeners created after it fired are ready at
//! once (a stop that a task begins to listen for only after it was signalled is still seen).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
struct Inner {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

#[derive(Debug, Default, Clone)]
pub struct Notify {
    inner: Rc<Inner>,
}

impl Notify {
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Wakes every listener created so far.
    pub fn notify(&self) {
        self.inner.generation.set(self.inner.generation.get() + 1);
        let wakers = std::mem::take(&mut *self.inner.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// A future that completes at the next `notify()` after this call.
    pub fn listen(&self) -> Listener {
        Listener {
            inner: Rc::clone(&self.inner),
            seen: self.inner.generation.get(),
        }
    }
}

/// A one-time signal (a shard's stop, a storage failure): fired once, and every listener, made
/// before or after, completes.
#[derive(Debug, Default, Clone)]
pub struct Latch {
    inner: Rc<Inner>,
}

impl Latch {
    pub fn new() -> Latch {
        Latch::default()
    }

    /// Fires the latch: wakes every listener, now and later.
    pub fn fire(&self) {
        if self.inner.generation.get() == 0 {
            Notify {
                inner: Rc::clone(&self.inner),
            }
            .notify();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.inner.generation.get() != 0
    }

    /// A future that completes once the latch has fired (at once if it already has).
    pub fn listen(&self) -> Listener {
        Listener {
            inner: Rc::clone(&self.inner),
            seen: 0,
        }
    }
}

#[derive(Debug)]
pub struct Listener {
    inner: Rc<Inner>,
    seen: u64,
}

impl Future for Listener {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.generation.get() != self.seen {
            return Poll::Ready(());
        }
        let mut wakers = self.inner.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn a_latch_is_seen_by_listeners_made_after_it_fired() {
        let latch = Latch::new();
        let early = latch.listen();
        assert!(future::block_on(future::poll_once(latch.listen())).is_none());
        latch.fire();
        latch.fire();
        assert!(latch.is_fired());
        future::block_on(early);
        assert!(future::block_on(future::poll_once(latch.listen())).is_some());
    }

    #[test]
    fn a_notify_wakes_only_listeners_made_before_it() {
        let notify = Notify::new();
        let early = notify.listen();
        notify.notify();
        future::block_on(early);
        assert!(future::block_on(future::poll_once(notify.listen())).is_none());
    }
}
