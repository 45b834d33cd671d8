//! The build graph: edges (deps and rootfs), cycle detection, and the longest-remaining-path
//! priority that orders ready work.

use crate::manifest::Manifest;

/// What artifact `i` needs built first: its deps, then its rootfs.
pub fn needs(m: &Manifest, i: usize) -> Vec<usize> {
    let a = &m.artifacts[i];
    let mut v = a.deps.clone();
    if let Some(r) = a.rootfs
        && !v.contains(&r)
    {
        v.push(r);
    }
    v
}

/// A cycle as the artifacts along it, the first repeated at the end; `None` for a DAG.
pub fn find_cycle(m: &Manifest) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let n = m.artifacts.len();
    let mut mark = vec![Mark::New; n];
    for start in 0..n {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge to follow); `path` is the open chain.
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let edges = needs(m, node);
            if let Some(&to) = edges.get(*next) {
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

/// Every artifact in dependency order (deps before dependents). The manifest has no cycle.
pub fn topo_order(m: &Manifest) -> Vec<usize> {
    let n = m.artifacts.len();
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
            for d in needs(m, node).into_iter().rev() {
                if !seen[d] {
                    stack.push((d, false));
                }
            }
        }
    }
    out
}

/// For each artifact of `set` (a subset closed under `needs`), the number of artifacts on the
/// longest chain from it to a final target: work on long chains first keeps the critical path
/// busy.
pub fn priorities(m: &Manifest, set: &[bool]) -> Vec<usize> {
    let n = m.artifacts.len();
    let mut dependents = vec![Vec::new(); n];
    for i in (0..n).filter(|&i| set[i]) {
        for d in needs(m, i) {
            dependents[d].push(i);
        }
    }
    let mut prio = vec![0usize; n];
    for &i in topo_order(m).iter().rev() {
        if set[i] {
            prio[i] = 1 + dependents[i].iter().map(|&j| prio[j]).max().unwrap_or(0);
        }
    }
    prio
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(edges: &[(&str, &[&str])]) -> Manifest {
        let mut t = String::new();
        for (name, deps) in edges {
            let deps: Vec<String> = deps.iter().map(|d| format!("\"{d}\"")).collect();
            t += &format!(
                "[[artifact]]\nname = \"{name}\"\ndeps = [{}]\n[[artifact.step]]\nscript = \"true\"\n",
                deps.join(",")
            );
        }
        crate::manifest::parse(Path::new("/m/vorpalfs.toml"), &t).unwrap()
    }

    #[test]
    fn topo_and_priority() {
        // d ← b ← a, d ← c ← a, e alone
        let m = manifest(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[]), ("e", &[])]);
        let order = topo_order(&m);
        let pos = |i: usize| order.iter().position(|&x| x == i).unwrap();
        assert!(pos(3) < pos(1) && pos(3) < pos(2) && pos(1) < pos(0) && pos(2) < pos(0));
        let p = priorities(&m, &[true; 5]);
        assert_eq!(p, vec![1, 2, 2, 3, 1]);
    }

    #[test]
    fn self_cycle() {
        let t = "[[artifact]]\nname = \"a\"\ndeps = [\"a\"]\n[[artifact.step]]\nscript = \"true\"\n";
        let e = crate::manifest::parse(Path::new("/m/vorpalfs.toml"), t).unwrap_err().to_string();
        assert!(e.contains("dependency cycle: a → a"), "{e}");
    }
}
