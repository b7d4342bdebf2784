//! The WebSocket upgrade on a charge point's TCP connection: reads the request head,
//! answers a refusal with its HTTP status, or completes the upgrade.
//!
//! What is decided lives in [`crate::handshake`]; this module only does the I/O, all of it
//! within the listener's handshake deadline.

use std::{future::Future, net::SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::{
    tungstenite::{http, protocol::Role, protocol::WebSocketConfig},
    WebSocketStream,
};

use crate::handshake::{
    check_websocket_upgrade, parse_request_head, switching_protocols, Accepted, Refusal,
    MAX_REQUEST_HEAD,
};

/// How an upgrade attempt ended without a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The request was refused, and answered with the refusal's status.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The connection failed or closed before the upgrade completed.
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the request head and upgrades the connection when `decide` accepts the request.
///
/// `decide` sees a request that is already known to be a valid WebSocket upgrade, and may
/// take its time (authentication hashes a password). The caller bounds the whole exchange
/// in time.
pub async fn upgrade<Stream, Decision>(
    mut stream: Stream,
    peer: SocketAddr,
    config: WebSocketConfig,
    decide: impl FnOnce(http::Request<()>) -> Decision,
) -> Result<(WebSocketStream<Stream>, Accepted), UpgradeError>
where
    Stream: AsyncRead + AsyncWrite + Unpin,
    Decision: Future<Output = Result<Accepted, Refusal>>,
{
    let decided = match read_request_head(&mut stream).await {
        Ok((request, rest)) => match check_websocket_upgrade(&request) {
            Ok(accept_key) => decide(request)
                .await
                .map(|accepted| (accepted, accept_key, rest)),
            Err(refusal) => Err(refusal),
        },
        Err(UpgradeError::Refused(refusal)) => Err(refusal),
        Err(e) => return Err(e),
    };
    match decided {
        Ok((accepted, accept_key, rest)) => {
            stream
                .write_all(&switching_protocols(&accept_key, &accepted))
                .await?;
            let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config))
                .await;
            Ok((ws, accepted))
        }
        Err(refusal) => {
            tracing::debug!(%peer, status = %refusal.status(), "answering a refused upgrade");
            // Best effort: the refusal stands whether or not the client reads it.
            if stream.write_all(&refusal.to_http_bytes()).await.is_ok() {
                let _ = stream.shutdown().await;
            }
            Err(UpgradeError::Refused(refusal))
        }
    }
}

/// Reads until a whole request head has arrived; returns it and the bytes read after it.
async fn read_request_head(
    stream: &mut (impl AsyncRead + Unpin),
) -> Result<(http::Request<()>, Vec<u8>), UpgradeError> {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        if buffer.len() >= MAX_REQUEST_HEAD {
            return Err(Refusal::RequestHeadTooLarge.into());
        }
        // Never more than the head limit: a client cannot make this buffer grow past it.
        let room = MAX_REQUEST_HEAD + 1 - buffer.len();
        let read = (&mut *stream)
            .take(room as u64)
            .read_buf(&mut buffer)
            .await?;
        if read == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if let Some((request, head_length)) = parse_request_head(&buffer)? {
            return Ok((request, buffer.split_off(head_length)));
        }
    }
}
