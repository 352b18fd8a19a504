//! The Tether server: holds one bidirectional `Connect` stream per agent, decides each agent's
//! liveness from that stream's activity, persists what it learns through the [`store::Store`]
//! interface, and answers the fleet query, watch and admin RPCs.
//!
//! The binary (`main.rs`) parses flags into a [`config::Config`], then calls
//! [`server::start`] and [`server::Server::serve`] (between the two it prints the admin token
//! and, with `--dev`, starts a local agent); the end-to-end tests call the same two functions
//! with a listener bound to `127.0.0.1:0`.

pub mod access;
pub mod admission;
pub mod alert;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod command;
pub mod config;
pub mod conn;
pub mod convert;
pub mod datadir;
pub mod devcerts;
pub mod domain;
pub mod drain;
pub mod error;
pub mod events;
pub mod gate;
pub mod health;
pub mod identity;
pub mod lag;
pub mod listener;
pub mod liveness;
pub mod metrics;
pub mod rate;
pub mod registry;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tls;
pub mod writer;
