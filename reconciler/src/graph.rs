//! The resource graph (petgraph): edges from each resource to what it references, creation
//! waves in dependency order, destruction in reverse, and `--target` selection.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::address::Address;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("dependency cycle: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(" → "))]
    Cycle(Vec<Address>),
    #[error("--target {0}: no such resource in the manifest or the state")]
    UnknownTarget(Address),
}

/// A DAG of resources; an edge `a → b` means `a` references `b` (so `b` is created first).
#[derive(Debug, Default, Clone)]
pub struct Graph {
    g: DiGraph<Address, ()>,
    index: HashMap<Address, NodeIndex>,
}

impl Graph {
    /// Build from `(resource, its references)`. References to addresses that are not nodes are
    /// ignored: validation reports them for manifests, and recorded state may point at
    /// resources that are already gone.
    pub fn new<'a, I>(nodes: I) -> Result<Graph, GraphError>
    where
        I: IntoIterator<Item = (&'a Address, &'a [Address])>,
    {
        let nodes: Vec<(&Address, &[Address])> = nodes.into_iter().collect();
        // Sized up front: growing a 10,000-entry map rehashes it over and over.
        let edges = nodes.iter().map(|(_, d)| d.len()).sum();
        let mut graph = Graph {
            g: DiGraph::with_capacity(nodes.len(), edges),
            index: HashMap::with_capacity(nodes.len()),
        };
        for (addr, _) in &nodes {
            graph.add_node(addr);
        }
        for (addr, deps) in &nodes {
            let from = graph.index[*addr];
            for dep in deps.iter() {
                if let Some(&to) = graph.index.get(dep) {
                    graph.g.update_edge(from, to, ());
                }
            }
        }
        if let Some(cycle) = graph.find_cycle() {
            return Err(GraphError::Cycle(cycle));
        }
        Ok(graph)
    }

    fn add_node(&mut self, addr: &Address) -> NodeIndex {
        if let Some(&i) = self.index.get(addr) {
            return i;
        }
        let i = self.g.add_node(addr.clone());
        self.index.insert(addr.clone(), i);
        i
    }

    pub fn contains(&self, addr: &Address) -> bool {
        self.index.contains_key(addr)
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// What `addr` references directly.
    pub fn dependencies(&self, addr: &Address) -> BTreeSet<Address> {
        self.neighbors(addr, Direction::Outgoing)
    }

    /// What references `addr` directly.
    pub fn dependents(&self, addr: &Address) -> BTreeSet<Address> {
        self.neighbors(addr, Direction::Incoming)
    }

    fn neighbors(&self, addr: &Address, dir: Direction) -> BTreeSet<Address> {
        self.index
            .get(addr)
            .map(|&i| {
                self.g
                    .neighbors_directed(i, dir)
                    .map(|n| self.g[n].clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The targets and everything they reference, transitively (what `--target` selects for
    /// plan and apply).
    pub fn with_dependencies(&self, targets: &[Address]) -> Result<BTreeSet<Address>, GraphError> {
        self.closure(targets, Direction::Outgoing)
    }

    /// The targets and everything that references them, transitively (what `fort destroy
    /// --target` must remove first).
    pub fn with_dependents(&self, targets: &[Address]) -> Result<BTreeSet<Address>, GraphError> {
        self.closure(targets, Direction::Incoming)
    }

    fn closure(
        &self,
        targets: &[Address],
        dir: Direction,
    ) -> Result<BTreeSet<Address>, GraphError> {
        let mut out = BTreeSet::new();
        let mut stack = Vec::new();
        for t in targets {
            let &i = self
                .index
                .get(t)
                .ok_or_else(|| GraphError::UnknownTarget(t.clone()))?;
            stack.push(i);
        }
        while let Some(i) = stack.pop() {
            if out.insert(self.g[i].clone()) {
                stack.extend(self.g.neighbors_directed(i, dir));
            }
        }
        Ok(out)
    }

    /// Creation order: wave 0 holds resources that reference nothing, wave n those whose
    /// deepest reference is in wave n-1. Resources in one wave are independent.
    pub fn create_waves(&self) -> Vec<Vec<Address>> {
        self.waves(Direction::Outgoing)
    }

    /// Destruction order: dependents before what they reference.
    pub fn destroy_waves(&self) -> Vec<Vec<Address>> {
        self.waves(Direction::Incoming)
    }

    fn waves(&self, dir: Direction) -> Vec<Vec<Address>> {
        // The graph is acyclic (checked in `new`), so a memoised depth terminates.
        let mut depth: HashMap<NodeIndex, usize> = HashMap::new();
        let mut order: Vec<NodeIndex> = self.g.node_indices().collect();
        order.sort_by(|a, b| self.g[*a].cmp(&self.g[*b]));
        for &start in &order {
            self.depth_of(start, dir, &mut depth);
        }
        let mut waves: BTreeMap<usize, Vec<Address>> = BTreeMap::new();
        for &i in &order {
            waves.entry(depth[&i]).or_default().push(self.g[i].clone());
        }
        waves.into_values().collect()
    }

    fn depth_of(&self, start: NodeIndex, dir: Direction, memo: &mut HashMap<NodeIndex, usize>) {
        // Iterative post-order so deep chains cannot overflow the stack.
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if memo.contains_key(&i) {
                continue;
            }
            if expanded {
                let d = self
                    .g
                    .neighbors_directed(i, dir)
                    .map(|n| memo.get(&n).map_or(0, |d| d + 1))
                    .max()
                    .unwrap_or(0);
                memo.insert(i, d);
            } else {
                stack.push((i, true));
                for n in self.g.neighbors_directed(i, dir) {
                    if !memo.contains_key(&n) {
                        stack.push((n, false));
                    }
                }
            }
        }
    }

    /// One cycle, listed from its smallest address and back to it, if there is any.
    fn find_cycle(&self) -> Option<Vec<Address>> {
        let sccs = petgraph::algo::tarjan_scc(&self.g);
        let mut best: Option<Vec<Address>> = None;
        for scc in sccs {
            let self_loop = scc.len() == 1 && self.g.contains_edge(scc[0], scc[0]);
            if scc.len() < 2 && !self_loop {
                continue;
            }
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            let Some(&start) = scc.iter().min_by(|a, b| self.g[**a].cmp(&self.g[**b])) else {
                continue;
            };
            // Walk inside the component, always to the smallest next member, until we return.
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = self
                    .g
                    .neighbors_directed(cur, Direction::Outgoing)
                    .filter(|n| members.contains(n))
                    .min_by(|a, b| {
                        let a_is_start = *a == start;
                        let b_is_start = *b == start;
                        b_is_start
                            .cmp(&a_is_start)
                            .then(self.g[*a].cmp(&self.g[*b]))
                    });
                let Some(next) = next else { break };
                path.push(next);
                if next == start || path.len() > members.len() + 1 {
                    break;
                }
                cur = next;
            }
            let cycle: Vec<Address> = path.iter().map(|i| self.g[*i].clone()).collect();
            if best.as_ref().is_none_or(|b| cycle < *b) {
                best = Some(cycle);
            }
        }
        best
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn graph(edges: &[(&str, &[&str])]) -> Result<Graph, GraphError> {
        let nodes: Vec<(Address, Vec<Address>)> = edges
            .iter()
            .map(|(n, deps)| (a(n), deps.iter().map(|d| a(d)).collect()))
            .collect();
        Graph::new(nodes.iter().map(|(n, d)| (n, d.as_slice())))
    }

    fn show(waves: Vec<Vec<Address>>) -> Vec<String> {
        waves
            .into_iter()
            .map(|w| {
                w.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    const FLEET: &[(&str, &[&str])] = &[
        ("vm.a", &["kernel.k", "drive.a-root", "network.lan"]),
        ("vm.b", &["kernel.k", "drive.b-root", "network.lan"]),
        ("drive.a-root", &["template.t"]),
        ("drive.b-root", &["template.t"]),
        ("template.t", &["rootfs.r"]),
        ("rootfs.r", &[]),
        ("kernel.k", &[]),
        ("network.lan", &[]),
        ("kernel.unused", &[]),
    ];

    #[test]
    fn waves() {
        let g = graph(FLEET).unwrap();
        assert_eq!(
            show(g.create_waves()),
            vec![
                "kernel.k kernel.unused rootfs.r network.lan",
                "template.t",
                "drive.a-root drive.b-root",
                "vm.a vm.b",
            ]
        );
        assert_eq!(
            show(g.destroy_waves()),
            vec![
                "kernel.unused vm.a vm.b",
                "kernel.k network.lan drive.a-root drive.b-root",
                "template.t",
                "rootfs.r",
            ]
        );
    }

    #[test]
    fn targets() {
        let g = graph(FLEET).unwrap();
        let deps: Vec<String> = g
            .with_dependencies(&[a("vm.a")])
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            deps,
            [
                "kernel.k",
                "rootfs.r",
                "template.t",
                "network.lan",
                "drive.a-root",
                "vm.a"
            ]
        );
        let dependents: Vec<String> = g
            .with_dependents(&[a("template.t")])
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            dependents,
            ["template.t", "drive.a-root", "drive.b-root", "vm.a", "vm.b"]
        );
        assert_eq!(
            g.with_dependencies(&[a("vm.zzz")]).unwrap_err().to_string(),
            "--target vm.zzz: no such resource in the manifest or the state"
        );
    }

    #[test]
    fn cycles() {
        type Edges<'a> = &'a [(&'a str, &'a [&'a str])];
        let cases: &[(Edges, &str)] = &[
            (
                &[("vm.a", &["drive.b"]), ("drive.b", &["vm.a"])],
                "dependency cycle: drive.b → vm.a → drive.b",
            ),
            (
                &[
                    ("template.t", &["rootfs.r"]),
                    ("rootfs.r", &["drive.d"]),
                    ("drive.d", &["template.t"]),
                    ("kernel.k", &[]),
                ],
                "dependency cycle: rootfs.r → drive.d → template.t → rootfs.r",
            ),
            (&[("vm.a", &["vm.a"])], "dependency cycle: vm.a → vm.a"),
        ];
        for (edges, want) in cases {
            assert_eq!(graph(edges).unwrap_err().to_string(), *want);
        }
    }

    #[test]
    fn dangling_references_are_ignored() {
        let g = graph(&[("vm.a", &["kernel.gone"])]).unwrap();
        assert_eq!(show(g.create_waves()), vec!["vm.a"]);
        assert!(g.dependencies(&a("vm.a")).is_empty());
    }
}
