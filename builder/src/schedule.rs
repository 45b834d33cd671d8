//! The scheduler: runs the artifacts of a plan, at most `jobs` at once, each once what it needs
//! is built, ready work ordered by the longest chain still depending on it (then manifest
//! order). After a failure it starts nothing new unless told to keep going, and once cancelled
//! nothing new at all; running artifacts are let finish (the runner sees the cancel flag).
//!
//! It knows nothing of sandboxes or stores: a [`Runner`] runs one artifact, so the order,
//! parallelism, keep-going and cancellation are unit-tested with a fake one.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use vorpalfs_store::Digest;

use crate::error::{Error, Result};
use crate::graph::Graph;

/// Runs one artifact to its end, on the calling thread; returns its output tree.
pub trait Runner: Sync {
    fn run(&self, i: usize) -> Result<Digest>;
}

/// Why an artifact of the schedule did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRun {
    /// This need failed (or was itself not run).
    Dep(usize),
    /// An earlier failure stopped the build (no keep-going).
    Stopped,
    Cancelled,
}

/// How one artifact of the schedule ended.
#[derive(Debug)]
pub enum Ran {
    /// It ran from `started` to `finished` (seconds since the schedule began).
    Ran {
        started: f64,
        finished: f64,
        result: Result<Digest>,
    },
    NotRun(NotRun),
}

/// The ready queue: which artifacts of a set may start (what they need in the set is built),
/// longest remaining chain first, then manifest order.
pub struct Queue<'g> {
    graph: &'g Graph,
    to_run: &'g [bool],
    prio: Vec<usize>,
    pending: Vec<usize>,
    ready: BinaryHeap<(usize, std::cmp::Reverse<usize>)>,
}

impl<'g> Queue<'g> {
    pub fn new(graph: &'g Graph, to_run: &'g [bool]) -> Queue<'g> {
        let n = graph.len();
        let prio = graph.priorities(to_run);
        let pending: Vec<usize> = (0..n).map(|i| graph.needs(i).iter().filter(|&&d| to_run[d]).count()).collect();
        let ready = (0..n).filter(|&i| to_run[i] && pending[i] == 0).map(|i| (prio[i], std::cmp::Reverse(i))).collect();
        Queue { graph, to_run, prio, pending, ready }
    }

    /// The next artifact to start, if one is ready.
    pub fn pop(&mut self) -> Option<usize> {
        self.ready.pop().map(|(_, std::cmp::Reverse(i))| i)
    }

    /// `i` was built: what needed only it (in the set) becomes ready.
    pub fn built(&mut self, i: usize) {
        for &j in self.graph.dependents(i) {
            if self.to_run[j] {
                self.pending[j] -= 1;
                if self.pending[j] == 0 {
                    self.ready.push((self.prio[j], std::cmp::Reverse(j)));
                }
            }
        }
    }
}

/// Runs every artifact `i` with `to_run[i]` (a set whose needs outside it are already built).
/// `on_end` is called as each ends, on the scheduling thread. Returns how each ended (`None`
/// for those not in `to_run`).
pub fn run(
    graph: &Graph,
    to_run: &[bool],
    jobs: usize,
    keep_going: bool,
    cancel: &AtomicBool,
    runner: &dyn Runner,
    on_end: &mut dyn FnMut(usize, &Result<Digest>),
) -> Vec<Option<Ran>> {
    let n = graph.len();
    let t0 = Instant::now();
    let mut queue = Queue::new(graph, to_run);
    let mut ends: Vec<Option<Ran>> = (0..n).map(|_| None).collect();
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, f64, f64, Result<Digest>)>();
    let (mut running, mut stopped) = (0usize, false);
    std::thread::scope(|s| {
        loop {
            while !stopped && running < jobs.max(1) && !cancel.load(Ordering::SeqCst) {
                let Some(i) = queue.pop() else { break };
                running += 1;
                let tx = tx.clone();
                s.spawn(move || {
                    let started = t0.elapsed().as_secs_f64();
                    let r = runner.run(i);
                    let _ = tx.send((i, started, t0.elapsed().as_secs_f64(), r));
                });
            }
            if running == 0 {
                break;
            }
            let (i, started, finished, result) = rx.recv().expect("a worker always reports");
            running -= 1;
            on_end(i, &result);
            match &result {
                Ok(_) => queue.built(i),
                Err(_) if !keep_going => stopped = true,
                Err(_) => {}
            }
            ends[i] = Some(Ran::Ran { started, finished, result });
        }
    });
    // Whatever did not run: say why, deps first so a chain of skips names its first cause.
    for &i in graph.order() {
        if !to_run[i] || ends[i].is_some() {
            continue;
        }
        let dep = graph.needs(i).iter().copied().find(|&d| match &ends[d] {
            Some(Ran::Ran { result, .. }) => result.is_err(),
            Some(Ran::NotRun(_)) => true,
            None => false,
        });
        ends[i] = Some(Ran::NotRun(match dep {
            Some(d) => NotRun::Dep(d),
            None if cancel.load(Ordering::SeqCst) => NotRun::Cancelled,
            None => NotRun::Stopped,
        }));
    }
    ends
}

/// Whether the error is the build being cancelled (not the artifact's fault).
pub fn is_cancel(e: &Error) -> bool {
    matches!(e, Error::Cancelled)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Sleeps `ms[i]` and records start and end; fails the artifacts in `fail`.
    struct Fake {
        ms: Vec<u64>,
        fail: Vec<usize>,
        log: Mutex<Vec<(usize, Instant, Instant)>>,
        cancel_after: Option<(usize, &'static AtomicBool)>,
    }

    impl Runner for Fake {
        fn run(&self, i: usize) -> Result<Digest> {
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(self.ms[i]));
            self.log.lock().unwrap().push((i, t, Instant::now()));
            if let Some((j, flag)) = self.cancel_after
                && i == j
            {
                flag.store(true, Ordering::SeqCst);
            }
            if self.fail.contains(&i) {
                return Err(Error::Cancelled);
            }
            Ok(Digest([i as u8; 32]))
        }
    }

    fn fake(ms: &[u64], fail: &[usize]) -> Fake {
        Fake { ms: ms.to_vec(), fail: fail.to_vec(), log: Mutex::new(Vec::new()), cancel_after: None }
    }

    fn started(f: &Fake) -> Vec<usize> {
        let mut log = f.log.lock().unwrap().clone();
        log.sort_by_key(|e| e.1);
        log.into_iter().map(|e| e.0).collect()
    }

    #[test]
    fn the_longest_chain_starts_first_and_needs_come_before() {
        // 0 ← 1 ← 2 (a chain of three), 3 and 4 alone; one job at a time.
        let g = Graph::new(vec![vec![], vec![0], vec![1], vec![], vec![]]).unwrap();
        let f = fake(&[5; 5], &[]);
        let ends = run(&g, &[true; 5], 1, false, &AtomicBool::new(false), &f, &mut |_, _| {});
        assert_eq!(started(&f), vec![0, 1, 2, 3, 4]);
        assert!(ends.iter().all(|e| matches!(e, Some(Ran::Ran { result: Ok(_), .. }))));
    }

    #[test]
    fn independent_work_overlaps_up_to_jobs() {
        let g = Graph::new(vec![vec![]; 4]).unwrap();
        let f = fake(&[100; 4], &[]);
        let t = Instant::now();
        run(&g, &[true; 4], 2, false, &AtomicBool::new(false), &f, &mut |_, _| {});
        let wall = t.elapsed();
        assert!(wall >= Duration::from_millis(200) && wall < Duration::from_millis(390), "{wall:?}");
        let log = f.log.lock().unwrap();
        let at_once = |t: Instant| log.iter().filter(|e| e.1 <= t && t < e.2).count();
        assert!(log.iter().all(|e| at_once(e.1) <= 2));
    }

    #[test]
    fn keep_going_runs_what_does_not_depend_on_a_failure() {
        // 0 fails; 1 needs 0; 2 needs 1; 3 is independent.
        let g = Graph::new(vec![vec![], vec![0], vec![1], vec![]]).unwrap();
        let f = fake(&[1, 1, 1, 30], &[0]);
        let mut failed = Vec::new();
        let ends = run(&g, &[true; 4], 1, true, &AtomicBool::new(false), &f, &mut |i, r| {
            if r.is_err() {
                failed.push(i)
            }
        });
        assert_eq!(failed, vec![0]);
        assert!(matches!(ends[1], Some(Ran::NotRun(NotRun::Dep(0)))));
        assert!(matches!(ends[2], Some(Ran::NotRun(NotRun::Dep(1)))));
        assert!(matches!(ends[3], Some(Ran::Ran { result: Ok(_), .. })));
    }

    #[test]
    fn without_keep_going_a_failure_stops_new_work_but_running_work_finishes() {
        // 0 fails fast while 1 runs; 2 and 3 were not started.
        let g = Graph::new(vec![vec![]; 4]).unwrap();
        let f = fake(&[10, 60, 1, 1], &[0]);
        let ends = run(&g, &[true; 4], 2, false, &AtomicBool::new(false), &f, &mut |_, _| {});
        assert!(matches!(ends[1], Some(Ran::Ran { result: Ok(_), .. })), "the running one finished");
        assert!(matches!(ends[2], Some(Ran::NotRun(NotRun::Stopped))));
        assert!(matches!(ends[3], Some(Ran::NotRun(NotRun::Stopped))));
    }

    #[test]
    fn cancellation_starts_nothing_more() {
        static CANCEL: AtomicBool = AtomicBool::new(false);
        let g = Graph::new(vec![vec![], vec![0], vec![]]).unwrap();
        let mut f = fake(&[1, 1, 1], &[]);
        f.cancel_after = Some((0, &CANCEL));
        let ends = run(&g, &[true; 3], 1, true, &CANCEL, &f, &mut |_, _| {});
        assert_eq!(started(&f), vec![0]);
        assert!(matches!(ends[1], Some(Ran::NotRun(NotRun::Cancelled))));
        assert!(matches!(ends[2], Some(Ran::NotRun(NotRun::Cancelled))));
    }

    #[test]
    fn only_the_given_set_runs() {
        let g = Graph::new(vec![vec![], vec![0]]).unwrap();
        let f = fake(&[1, 1], &[]);
        let ends = run(&g, &[false, true], 1, false, &AtomicBool::new(false), &f, &mut |_, _| {});
        assert!(ends[0].is_none());
        assert_eq!(started(&f), vec![1]);
    }
}
