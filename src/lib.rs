//! beltbox: a lean INT8 inference runtime for ARM edge boxes on scanning belts.
//! See ARCHITECTURE.md for the map.

pub mod bench;
pub mod board;
pub mod cpu;
pub mod image;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod npy;
pub mod postprocess;
pub mod preprocess;
pub mod procfs;
pub mod serve;
pub mod tensor;
pub mod thermal;
