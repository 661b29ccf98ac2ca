//! Ruleyard: a self-hosted YARA rule management server that speaks the YARA API of the
//! ReversingLabs Spectra Analyze appliance.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod rules;
pub mod rulesets;
pub mod scanning;
pub mod secrets;
pub mod sources;
pub mod store;
