//! A bare WebSocket echo server, the benchmark's baseline for what the machine can do.
//!
//! It does the least any OCPP server must do per message: accept the upgrade (agreeing to
//! the first offered subprotocol, so OCPP clients connect), read a frame and write it back.
//! The read and write buffers are the gateway's defaults, so the comparison measures the
//! gateway's own work rather than a different buffer size. The load generator counts an
//! echoed CALL as its answer (`--echo-baseline`).
//!
//! Usage: `bench-echo-server [--listen 127.0.0.1:9000]`. It prints
//! `listening on ADDR` once ready.

use std::net::SocketAddr;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    http::HeaderValue,
    protocol::WebSocketConfig,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = parse_listen(std::env::args().skip(1))?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // Accept errors (EMFILE under a flood) must not stop the server.
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(echo(stream));
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn parse_listen(mut args: impl Iterator<Item = String>) -> anyhow::Result<SocketAddr> {
    let mut listen = "127.0.0.1:9000".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            other => {
                anyhow::bail!("unknown argument {other}; usage: bench-echo-server [--listen ADDR]")
            }
        }
    }
    listen
        .parse()
        .with_context(|| format!("--listen {listen} is not an address"))
}

async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    // The callback's signature is tungstenite's; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let agree_to_first_subprotocol = |request: &Request, mut response: Response| {
        let first = request
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|offered| offered.to_str().ok())
            .and_then(|offered| offered.split(',').next())
            .and_then(|first| HeaderValue::from_str(first.trim()).ok());
        if let Some(first) = first {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", first);
        }
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        agree_to_first_subprotocol,
        Some(config),
    )
    .await
    else {
        return;
    };
    while let Some(Ok(message)) = socket.next().await {
        if message.is_text() || message.is_binary() {
            if socket.send(message).await.is_err() {
                return;
            }
        } else if message.is_close() {
            return;
        }
    }
}
