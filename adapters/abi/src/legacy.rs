//! Root modules of earlier ABI versions, frozen, so the host can check and load libraries
//! built against them (see [`v0_1_2`], [`v0_1_3`]). Each minor step of the ABI that appends to a prefix
//! type adds the previous version here.

pub mod v0_1_2;
pub mod v0_1_3;
