//! The FastCGI front end: the same handler as a long-lived responder behind nginx, lighttpd or
//! Apache, one process serving many requests on a pool of worker threads.
//!
//! Hand-written and small, because no Rust crate is both synchronous and sound (see the README):
//! [`record`] parses and writes records and never panics on any bytes; the server (listener,
//! connections, workers) lives beside it. Neither uses `unsafe`.
//!
//! How a connection lives: a single thread watches every connection that is not running a
//! request (new, between requests, still sending its parameters) with `poll`, so idle and
//! slow clients cost no worker. Once a request's parameters are complete, the connection goes
//! to a worker, which runs the handler, reads the body lazily from the connection, and writes
//! the response, the request's log lines (as `FCGI_STDERR`) and `END_REQUEST` in one write.

pub mod record;
mod server;

pub use server::{Limits, Listener, serve};
