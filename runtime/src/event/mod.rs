//! Change events: the Debezium decoder and the comparable source positions.

pub mod debezium;
pub mod position;
pub mod visibility;

pub use crate::contract::{ChangeEvent, Op};
