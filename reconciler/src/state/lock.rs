//! The exclusive per-state-dir lock that keeps applies from overlapping.
