//! One integration binary: the real server in-process (or as a process), real databases, real
//! git servers on loopback.

mod helpers;
mod process;
mod upstream;

mod auth;
mod cluster;
mod compat;
mod corpus;
mod imports;
mod nodes;
mod repositories;
mod rulesets;
mod scan;
mod secrets;
