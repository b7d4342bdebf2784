//! A connection, plain or TLS: one type for the upgrade and the session (and the admin
//! API's HTTP), so that neither is compiled twice. The TLS side is boxed: an idle plain
//! connection should not pay for the TLS state's size.

use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_util::either::Either;

/// A byte stream: `Left` plain TCP (`ws://`), `Right` TLS (`wss://`).
pub type TcpOrTls = Either<TcpStream, Box<SslStream<TcpStream>>>;
