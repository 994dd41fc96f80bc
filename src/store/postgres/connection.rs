//! One connection to PostgreSQL whose every round trip is bounded here, not only by the
//! server.
//!
//! The server bounds a statement (`statement_timeout`) and the wait for a lock
//! (`lock_timeout`), but a server that stops answering (its process stopped by `SIGSTOP`, a
//! pooler or proxy that took the query and says nothing more) enforces nothing, and TCP
//! keepalives see no fault while the peer's kernel still acknowledges. So a connection is
//! `tokio_postgres`'s client and the future that drives its socket, on a single-threaded
//! tokio runtime of its own (what the `postgres` crate does, without the deadline), and each
//! call runs that runtime until its answer or its deadline. A call past its deadline
//! abandons the connection: its socket is closed at once (it may be half-way through an
//! answer), and any later call on it fails as closed.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Row, Socket};

use super::STATEMENT_TIMEOUT;

/// How long after the server's own bound its answer may come: past it, nobody is answering.
pub const MARGIN: Duration = Duration::from_millis(500);

/// The deadline of one round trip: `statement_timeout` and the margin.
pub const ROUND_TRIP: Duration = STATEMENT_TIMEOUT.saturating_add(MARGIN);

/// The longest a connection may take to close politely (its `Terminate` message written).
const CLOSE_TIMEOUT: Duration = Duration::from_millis(100);

/// The future that reads and writes a connection's socket.
type Driver = tokio_postgres::Connection<Socket, NoTlsStream>;

/// Why a call failed.
#[derive(Debug)]
pub enum Fault {
    /// The server's error, or the connection's (closed, reset, a protocol error).
    Postgres(tokio_postgres::Error),
    /// No answer within this long: the connection is abandoned.
    NoAnswer(Duration),
    /// The runtime that drives connections could not be made (no file descriptor left).
    Runtime(std::io::Error),
}

impl Fault {
    /// The SQLSTATE of the server's error, if the server answered with one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Fault::Postgres(e) => e.code(),
            Fault::NoAnswer(_) | Fault::Runtime(_) => None,
        }
    }
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Fault {
        Fault::Postgres(e)
    }
}

/// A connection, with the runtime that drives it.
pub struct Connection {
    // Fields drop in order: the client first, so that its socket's driver, told nothing
    // more will come, says goodbye as it closes.
    client: Client,
    link: Link,
}

/// A connection's socket and its runtime.
struct Link {
    /// `None` once it ended (closed by the server, failed) or was abandoned: the socket is
    /// closed, and every call on the client fails as closed.
    driver: Option<Pin<Box<Driver>>>,
    runtime: Runtime,
}

impl Connection {
    /// Connects and signs in within `limit`, the host name's lookup included (tokio resolves
    /// it on a thread of its blocking pool; past the limit the runtime leaves that thread
    /// behind instead of waiting for it).
    pub fn open(config: &Config, limit: Duration) -> Result<Connection, Fault> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(Fault::Runtime)?;
        // A timer is made inside its runtime.
        let connected =
            runtime.block_on(async { tokio::time::timeout(limit, config.connect(NoTls)).await });
        match connected {
            Ok(Ok((client, driver))) => Ok(Connection {
                client,
                link: Link {
                    driver: Some(Box::pin(driver)),
                    runtime,
                },
            }),
            Ok(Err(e)) => Err(Fault::Postgres(e)),
            Err(_) => {
                runtime.shutdown_background();
                Err(Fault::NoAnswer(limit))
            }
        }
    }

    /// Whether the connection ended: closed by the server, failed or abandoned, as its last
    /// call saw.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Fault> {
        self.within(ROUND_TRIP, async |client| client.batch_execute(sql).await)
    }

    pub fn query_typed_one(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, Fault> {
        self.within(ROUND_TRIP, async |client| {
            client.query_typed_one(sql, params).await
        })
    }

    pub fn query_typed_opt(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Row>, Fault> {
        self.within(ROUND_TRIP, async |client| {
            client.query_typed_opt(sql, params).await
        })
    }

    pub fn query_typed(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Fault> {
        self.within(ROUND_TRIP, async |client| {
            client.query_typed(sql, params).await
        })
    }

    pub fn execute_typed(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, Fault> {
        self.within(ROUND_TRIP, async |client| {
            client.execute_typed(sql, params).await
        })
    }

    /// Runs `call` until its answer, or abandons the connection after `limit`. The socket is
    /// read and written (and the server's notices logged) only while a call runs.
    pub fn within<T>(
        &mut self,
        limit: Duration,
        call: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, Fault> {
        let Connection {
            client,
            link: Link { driver, runtime },
        } = self;
        let answer = runtime.block_on(async {
            let mut call = pin!(call(client));
            tokio::time::timeout(
                limit,
                poll_fn(|cx| {
                    // The socket first: an error it read (the server closing the connection,
                    // with its reason) says more than the call's "connection closed".
                    while let Some(socket) = driver.as_mut() {
                        match socket.as_mut().poll_message(cx) {
                            Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                                // The server's notices are pso's business only when debugging
                                // (a warning from an unlock that held nothing is reported as
                                // an error anyway).
                                log::debug!(
                                    "PostgreSQL: {}: {}",
                                    notice.severity(),
                                    notice.message()
                                );
                            }
                            Poll::Ready(Some(Ok(_))) => {}
                            Poll::Ready(Some(Err(e))) => {
                                *driver = None;
                                return Poll::Ready(Err(e));
                            }
                            Poll::Ready(None) => *driver = None,
                            Poll::Pending => break,
                        }
                    }
                    call.as_mut().poll(cx)
                }),
            )
            .await
        });
        match answer {
            Ok(answer) => answer.map_err(Fault::Postgres),
            Err(_) => {
                self.link.driver = None;
                Err(Fault::NoAnswer(limit))
            }
        }
    }
}

impl Drop for Link {
    /// Says goodbye (PostgreSQL's `Terminate`, as the `postgres` crate does) on a connection
    /// that still works, its client gone, so the server ends its process at once; never waits
    /// for the server, and at most [`CLOSE_TIMEOUT`] for a socket that takes nothing more.
    fn drop(&mut self) {
        let Some(mut socket) = self.driver.take() else {
            return;
        };
        let closed = poll_fn(|cx| {
            loop {
                match socket.as_mut().poll_message(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(CLOSE_TIMEOUT, closed).await });
    }
}
