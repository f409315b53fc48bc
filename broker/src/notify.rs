//! A single-threaded notification primitive for tasks on one shard.
//!
//! `notify()` wakes every listener created before it. A listener is created *before* the
//! condition is checked and awaited after, so no wake-up is lost between the check and the wait.

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
