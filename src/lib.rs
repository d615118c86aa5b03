//! The `beltbox` service (`beltbox run`), the top layer: KServe v2 over HTTP in front of the
//! runtime core (`beltbox-core`). The binary (`src/main.rs`, `src/cli/`) adds the commands.
//! See ARCHITECTURE.md for the map.

pub mod serve;
