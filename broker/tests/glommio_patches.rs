//! Reproducers for the fix carried in the patched glommio (`broker/vendor/glommio`, see
//! `broker/vendor/README.md`): the first two tests hang on glommio 0.9.0 as published. The
//! third checks that executors asleep on both sides of a cross-thread channel keep waking.
//!
//! The executors here are made with glommio's own builder on plain threads, with no reactor
//! tick or other wake-up insurance: what is tested is that glommio alone keeps running
//! runnable tasks.

use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

/// How long a worker may take before the test calls it hung: far above what the work needs (a
/// few milliseconds), so only a hang reaches it.
const HANG_AFTER: Duration = Duration::from_secs(120);

/// Runs `work` on an executor thread and fails if it does not finish within `HANG_AFTER`.
fn finishes(name: &str, work: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            work();
            let _ = done_tx.send(());
        })
        .expect("spawn");
    match done_rx.recv_timeout(HANG_AFTER) {
        Ok(()) => worker.join().expect("worker panicked"),
        // A hung worker is left behind: the test process ends without it.
        Err(_) => panic!("{name}: the executor stopped running runnable tasks (parked)"),
    }
}

/// An executor whose preemption timer (1 ns) has fired by the time its scheduler looks: the
/// early preemption that was rare in the broker is then the common case.
fn preempting_executor() -> glommio::LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_nanos(1))
        .make()
        .expect("make executor")
}

/// glommio 0.9.0 parked an executor whose preemption timer fired before any task queue ran:
/// `run_task_queues` broke out on `need_preempt()` and reported that nothing ran, `run` took that
/// for "no work", `spin_poll_io` consumed the timer's completion (which wakes no task), and the
/// thread went to sleep in `io_uring_enter` with the runnable task still queued. With no timer
/// and no I/O pending it never woke: the broker's one-in-fifty start-up hang. A 1 ns preemption
/// timer makes the early preemption the common case.
#[test]
fn an_executor_preempted_before_its_first_task_still_runs_it() {
    finishes("early-preemption", || {
        let executor = preempting_executor();
        for round in 0..2_000u32 {
            let answer = executor.run(async move { round + 1 });
            assert_eq!(answer, round + 1);
        }
    });
}

/// The same, mid-run: tasks woken one after another while the preemption timer keeps firing
/// must all run, with no timer or I/O left to wake a parked thread.
#[test]
fn woken_tasks_run_under_constant_preemption() {
    finishes("woken-under-preemption", || {
        let executor = preempting_executor();
        let total = executor.run(async {
            let (tx, rx) = glommio::channels::local_channel::new_bounded::<u32>(1);
            let consumer = glommio::spawn_local(async move {
                let mut total = 0u64;
                while let Some(n) = rx.recv().await {
                    total += u64::from(n);
                }
                total
            });
            for n in 0..20_000u32 {
                tx.send(n).await.expect("send");
            }
            drop(tx);
            consumer.await
        });
        assert_eq!(total, (0..20_000u64).sum::<u64>());
    });
}

/// A shard that sleeps is woken from another thread (a foreign waker through a shared channel):
/// many round trips, each a sleep on both sides, none lost.
#[test]
fn cross_thread_wake_ups_reach_sleeping_executors() {
    const ROUND_TRIPS: u32 = 5_000;
    let (ping_tx, ping_rx) = glommio::channels::shared_channel::new_bounded::<u32>(1);
    let (pong_tx, pong_rx) = glommio::channels::shared_channel::new_bounded::<u32>(1);
    let echo = std::thread::spawn(move || {
        LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .expect("make executor")
            .run(async move {
                let ping = ping_rx.connect().await;
                let pong = pong_tx.connect().await;
                while let Some(n) = ping.recv().await {
                    pong.send(n).await.expect("pong");
                }
            });
    });
    finishes("foreign-wakes", move || {
        LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .expect("make executor")
            .run(async move {
                let ping = ping_tx.connect().await;
                let pong = pong_rx.connect().await;
                for n in 0..ROUND_TRIPS {
                    ping.send(n).await.expect("ping");
                    assert_eq!(pong.recv().await, Some(n));
                }
            });
    });
    echo.join().expect("echo thread");
}
