//! A charge point's connection, plain or TLS: one type for the upgrade and the session,
//! so that neither is compiled twice.

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

/// A charge point's byte stream.
pub enum ChargePointStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`. Boxed: an idle plain connection should not pay for the TLS state's size.
    Tls(Box<SslStream<TcpStream>>),
}

impl AsyncRead for ChargePointStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ChargePointStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ChargePointStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ChargePointStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ChargePointStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ChargePointStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ChargePointStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ChargePointStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ChargePointStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ChargePointStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ChargePointStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            ChargePointStream::Tls(stream) => {
                Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ChargePointStream::Plain(stream) => stream.is_write_vectored(),
            ChargePointStream::Tls(stream) => stream.is_write_vectored(),
        }
    }
}
