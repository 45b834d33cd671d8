//! The build graph, built once per manifest: what each artifact needs first (its deps and its
//! rootfs), who needs it, a topological order, cycle detection, and the longest-remaining-path
//! priority that orders ready work.

/// Edges between the artifacts of one manifest, by index.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    needs: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    /// Every artifact, deps before dependents.
    order: Vec<usize>,
}

impl Graph {
    /// The graph of artifacts whose `needs` are given; a cycle (the artifacts along it, the
    /// first repeated at the end) is an error.
    pub fn new(needs: Vec<Vec<usize>>) -> Result<Graph, Vec<usize>> {
        let n = needs.len();
        if let Some(cycle) = find_cycle(&needs) {
            return Err(cycle);
        }
        let mut dependents = vec![Vec::new(); n];
        for (i, ns) in needs.iter().enumerate() {
            for &d in ns {
                dependents[d].push(i);
            }
        }
        let order = topo_order(&needs);
        Ok(Graph { needs, dependents, order })
    }

    pub fn len(&self) -> usize {
        self.needs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.needs.is_empty()
    }

    /// What artifact `i` needs built first.
    pub fn needs(&self, i: usize) -> &[usize] {
        &self.needs[i]
    }

    /// The artifacts that need `i`.
    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// Every artifact, deps before dependents.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// `set` and everything its members need, transitively.
    pub fn closure(&self, set: &[bool]) -> Vec<bool> {
        let mut out = set.to_vec();
        for &i in self.order.iter().rev() {
            if out[i] {
                for &d in &self.needs[i] {
                    out[d] = true;
                }
            }
        }
        out
    }

    /// For each artifact of `set` (closed under `needs`), the number of artifacts on the
    /// longest chain from it to a final target within `set`: work on long chains first keeps
    /// the critical path busy.
    pub fn priorities(&self, set: &[bool]) -> Vec<usize> {
        let mut prio = vec![0usize; self.len()];
        for &i in self.order.iter().rev() {
            if set[i] {
                prio[i] = 1 + self.dependents[i].iter().filter(|&&j| set[j]).map(|&j| prio[j]).max().unwrap_or(0);
            }
        }
        prio
    }
}

fn find_cycle(needs: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let n = needs.len();
    let mut mark = vec![Mark::New; n];
    for start in 0..n {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge to follow); the stack is the open chain.
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = needs[node].get(*next) {
                *next += 1;
                match mark[to] {
                    Mark::Open => {
                        let from = stack.iter().position(|&(x, _)| x == to).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(x, _)| x).collect();
                        cycle.push(to);
                        return Some(cycle);
                    }
                    Mark::New => {
                        mark[to] = Mark::Open;
                        stack.push((to, 0));
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

fn topo_order(needs: &[Vec<usize>]) -> Vec<usize> {
    let n = needs.len();
    let mut seen = vec![false; n];
    let mut out = Vec::with_capacity(n);
    for start in 0..n {
        if seen[start] {
            continue;
        }
        let mut stack = vec![(start, false)];
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                out.push(node);
                continue;
            }
            if seen[node] {
                continue;
            }
            seen[node] = true;
            stack.push((node, true));
            for &d in needs[node].iter().rev() {
                if !seen[d] {
                    stack.push((d, false));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_closure_and_priority() {
        // d ← b ← a, d ← c ← a, e alone
        let g = Graph::new(vec![vec![1, 2], vec![3], vec![3], vec![], vec![]]).unwrap();
        let pos = |i: usize| g.order().iter().position(|&x| x == i).unwrap();
        assert!(pos(3) < pos(1) && pos(3) < pos(2) && pos(1) < pos(0) && pos(2) < pos(0));
        assert_eq!(g.priorities(&[true; 5]), vec![1, 2, 2, 3, 1]);
        assert_eq!(g.closure(&[false, true, false, false, false]), vec![false, true, false, true, false]);
        assert_eq!(g.dependents(3), &[1, 2]);
    }

    #[test]
    fn cycles_are_named() {
        assert_eq!(Graph::new(vec![vec![0]]).unwrap_err(), vec![0, 0]);
        assert_eq!(Graph::new(vec![vec![1], vec![2], vec![0]]).unwrap_err(), vec![0, 1, 2, 0]);
    }
}
