//! The vorpalfs builder: manifest, build graph, scheduler, sandbox, process runner, publish.
//!
//! Not built yet (see the builder issue). It will depend on `store` only, never on `fs`.
