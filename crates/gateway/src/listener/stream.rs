//! A connection, plain or TLS: one type for the upgrade and the session (and the admin
//! API's HTTP), so that neither is compiled twice.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_openssl::SslStream;

/// A byte stream, plain or TLS.
pub enum TcpOrTls {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`. Boxed: an idle plain connection should not pay for the TLS state's size.
    Tls(Box<SslStream<TcpStream>>),
}

impl AsyncRead for TcpOrTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpOrTls::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            TcpOrTls::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpOrTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpOrTls::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            TcpOrTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpOrTls::Plain(stream) => Pin::new(stream).poll_flush(cx),
            TcpOrTls::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpOrTls::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            TcpOrTls::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpOrTls::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            TcpOrTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TcpOrTls::Plain(stream) => stream.is_write_vectored(),
            TcpOrTls::Tls(stream) => stream.is_write_vectored(),
        }
    }
}
