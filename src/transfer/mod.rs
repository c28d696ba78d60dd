//! Transfers: the lifecycle each one goes through, for the sending and the receiving device.

pub mod engine;
pub mod lanes;
pub mod lifecycle;
pub mod range;
