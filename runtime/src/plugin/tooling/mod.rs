//! The plugin author's commands behind `evercache plugin new|build|test`:
//! scaffold a crate, build it into a component, and run it against a real
//! database without Redis.

mod build;
mod exercise;
mod scaffold;

pub use build::{BuildOptions, build};
pub use exercise::{ExerciseOptions, exercise};
pub use scaffold::{ScaffoldOptions, scaffold};
