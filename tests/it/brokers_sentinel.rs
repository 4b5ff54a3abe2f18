//! Nodes over Redis with Sentinel (`redis+sentinel://`, SPEC §8).
