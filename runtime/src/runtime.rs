//! Wiring: builds everything from the configuration and runs it.
