//! Planning: the recipe and input digest of every artifact a build needs (sources into the
//! store first, pinned), then the cache walk that decides what runs.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use vorpalfs_store::{Digest, Pin, Store};

use crate::error::Result;
use crate::manifest::{Artifact, Manifest};
use crate::recipe::{DepRef, FORMAT, Recipe, Sandbox, SourceRef, StepRecipe, this_system};
use crate::report::Action;
use crate::sandbox;

/// One planned artifact: its recipe and input digest.
pub struct Item {
    pub recipe: Recipe,
    pub digest: Digest,
}

/// The recipes and input digests of a set of artifacts (closed under what they need), with
/// their sources pinned in the store for as long as the plan lives.
pub struct Plan<'m> {
    pub m: &'m Manifest,
    items: Vec<Option<Item>>,
    _sources: Vec<Pin>,
}

/// Everything needed to run one artifact, resolved from the plan.
pub struct Job<'p> {
    pub index: usize,
    pub artifact: &'p Artifact,
    pub recipe: &'p Recipe,
    pub digest: Digest,
    /// The direct deps, in the manifest's order: `(name, input digest)`.
    pub deps: Vec<(&'p str, Digest)>,
    /// Every artifact visible in the sandbox: the deps and everything they need (store paths
    /// refer to each other).
    pub visible: Vec<Digest>,
    pub rootfs: Option<Digest>,
}

impl<'m> Plan<'m> {
    /// Plans the artifacts `wanted` (closed under `needs`); downloads go under `scratch`.
    pub fn new(
        store: &Store,
        scratch: &Path,
        m: &'m Manifest,
        wanted: &[bool],
        access: crate::sources::Access<'_>,
    ) -> Result<Plan<'m>> {
        let mut needed = HashSet::new();
        for (i, a) in m.artifacts.iter().enumerate() {
            if wanted[i] {
                needed.extend(a.sources.iter().copied());
            }
        }
        let mut trees = HashMap::new();
        let mut pins = Vec::new();
        for s in needed {
            let (tree, pin) = crate::sources::source_tree(store, m, s, scratch, access)?;
            trees.insert(s, tree);
            pins.push(pin);
        }
        let mut items: Vec<Option<Item>> = (0..m.artifacts.len()).map(|_| None).collect();
        for &i in m.graph.order() {
            if !wanted[i] {
                continue;
            }
            // Deps come first in the order, so theirs are known.
            let digest_of = |d: usize| items[d].as_ref().map(|it| it.digest).expect("deps are planned first");
            let a = &m.artifacts[i];
            let sandbox = match a.rootfs {
                Some(r) => Sandbox::Rootfs { name: m.artifacts[r].name.clone(), digest: digest_of(r) },
                None => Sandbox::Host(sandbox::host_profile()),
            };
            let recipe = Recipe {
                format: FORMAT,
                name: a.name.clone(),
                system: this_system(),
                sandbox,
                sources: a
                    .sources
                    .iter()
                    .map(|&s| SourceRef { name: m.sources[s].name.clone(), tree: trees[&s] })
                    .collect(),
                deps: a
                    .deps
                    .iter()
                    .map(|&d| DepRef { name: m.artifacts[d].name.clone(), digest: digest_of(d) })
                    .collect(),
                steps: a
                    .steps
                    .iter()
                    .map(|s| StepRecipe {
                        entrypoint: s.entrypoint.clone(),
                        args: s.args.clone(),
                        script: s.script.clone(),
                        env: s.env.clone(),
                    })
                    .collect(),
            };
            let digest = recipe.digest();
            items[i] = Some(Item { recipe, digest });
        }
        Ok(Plan { m, items, _sources: pins })
    }

    /// The planned artifact `i` (one the plan was asked for, or needed by one).
    pub fn item(&self, i: usize) -> &Item {
        self.items[i].as_ref().expect("only planned artifacts are asked for")
    }

    pub fn digest(&self, i: usize) -> Digest {
        self.item(i).digest
    }

    /// Every planned artifact's recipe, by index (`None` for those not planned).
    pub fn into_recipes(self) -> Vec<Option<Recipe>> {
        self.items.into_iter().map(|it| it.map(|it| it.recipe)).collect()
    }

    /// What running artifact `i` needs, resolved.
    pub fn job(&self, i: usize) -> Job<'_> {
        let a = &self.m.artifacts[i];
        let mut visible = Vec::new();
        let mut stack: Vec<usize> = a.deps.clone();
        while let Some(d) = stack.pop() {
            let dd = self.digest(d);
            if !visible.contains(&dd) {
                visible.push(dd);
                stack.extend(self.m.artifacts[d].deps.iter().copied());
            }
        }
        let item = self.item(i);
        Job {
            index: i,
            artifact: a,
            recipe: &item.recipe,
            digest: item.digest,
            deps: a.deps.iter().map(|&d| (self.m.artifacts[d].name.as_str(), self.digest(d))).collect(),
            visible,
            rootfs: a.rootfs.map(|r| self.digest(r)),
        }
    }

    /// The cache walk: what each artifact of the build becomes. Down from the `requested`
    /// ones: a result that exists (`cached`) stops the walk (a cached artifact's deps are not
    /// even looked at), everything else is built, or rebuilt when requested with `rebuild`.
    /// `None` for artifacts the build does not touch.
    pub fn actions(
        &self,
        requested: &[bool],
        rebuild: bool,
        mut cached: impl FnMut(&Digest) -> Result<bool>,
    ) -> Result<Vec<Option<Action>>> {
        let g = &self.m.graph;
        let mut action = vec![None; g.len()];
        let mut stack: Vec<usize> = g.order().iter().rev().copied().filter(|&i| requested[i]).collect();
        while let Some(i) = stack.pop() {
            if action[i].is_some() {
                continue;
            }
            let force = rebuild && requested[i];
            if !force && cached(&self.digest(i))? {
                action[i] = Some(Action::Cached);
                continue;
            }
            action[i] = Some(if force { Action::Rebuild } else { Action::Build });
            stack.extend(g.needs(i));
        }
        Ok(action)
    }
}
