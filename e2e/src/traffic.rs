//! Real traffic for the lab: TCP echo servers and clients that live inside a namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::netns::enter;

/// A TCP echo server running on its own thread inside a namespace; stops on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr` inside the namespace at `ns_path`. Each connection gets back what it sent,
    /// prefixed with the peer address it was seen from (`<ip>:<port>|`), so tests can check NAT.
    pub fn start(ns_path: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = ns_path.to_string();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = enter(&path).and_then(|_| {
                let l =
                    TcpListener::bind(addr).with_context(|| format!("binding {addr} in {path}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            if let Ok(n) = s.read(&mut buf) {
                                let mut out = format!("{peer}|").into_bytes();
                                out.extend_from_slice(&buf[..n]);
                                let _ = s.write_all(&out);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().context("echo server thread died")??;
        Ok(EchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What an echo round trip returned: the address the server saw us as, and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub seen_as: SocketAddr,
    pub payload: Vec<u8>,
}

/// Connects from inside `ns_path` to `dst`, sends `payload`, returns the echo.
pub fn tcp_echo(ns_path: &str, dst: SocketAddr, payload: &[u8]) -> anyhow::Result<Echo> {
    let path = ns_path.to_string();
    let payload = payload.to_vec();
    std::thread::spawn(move || -> anyhow::Result<Echo> {
        enter(&path)?;
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .with_context(|| format!("connecting to {dst} from {path}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(&payload)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .with_context(|| format!("reading echo from {dst}"))?;
        let bar = out
            .iter()
            .position(|b| *b == b'|')
            .context("echo without peer prefix")?;
        let seen_as = std::str::from_utf8(&out[..bar])?.parse()?;
        Ok(Echo {
            seen_as,
            payload: out[bar + 1..].to_vec(),
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}
