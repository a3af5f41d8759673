//! Pipelines: route, plan keys, recompute, write, ack.
