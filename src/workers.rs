//! Client connections run on worker threads, each with its own single-threaded event loop,
//! instead of on one work-stealing runtime. A client's session, its TLS and the server
//! connections of its pool shard (see `pool`) are then all driven by one thread: no task
//! moves between threads and no readiness event wakes another thread. Measured on 2 cores
//! (bench/PROFILE.md), that is what separated one pgmoat process from two single-threaded
//! ones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// How many workers `worker_threads = n` asks for: 0 means one per CPU the process may use.
pub fn resolve_count(setting: usize) -> usize {
    match setting {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The worker threads; dropping this stops them (after the clients are done or cut off).
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stop: stop.clone(),
            threads: Vec::with_capacity(count),
        };
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pgmoat-worker-{i}"))
                .spawn(move || runtime.block_on(stop.cancelled()))?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The worker for the next client, round robin: (its index, its runtime).
    pub fn next(&self) -> (usize, &Handle) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        (i, &self.handles[i])
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_go_round_robin_and_tasks_run_on_their_worker() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.count(), 2);
        let picks: Vec<usize> = (0..4).map(|_| workers.next().0).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let (i, handle) = workers.next();
            let tx = tx.clone();
            handle.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((i, name)).unwrap();
            });
        }
        let mut seen: Vec<_> = (0..2).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                (0, Some("pgmoat-worker-0".to_owned())),
                (1, Some("pgmoat-worker-1".to_owned()))
            ]
        );
    }

    #[test]
    fn zero_means_one_per_cpu() {
        assert!(resolve_count(0) >= 1);
        assert_eq!(resolve_count(3), 3);
    }
}
