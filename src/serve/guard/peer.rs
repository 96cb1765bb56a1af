//! Whether a client is still there. actix-web keeps running a handler whose
//! client hung up until it responds, so a whole (non-streamed) answer would
//! be generated to the end for nobody. Each plain TCP connection keeps a
//! duplicate of its socket's descriptor; a handler asks it, between
//! generated tokens, whether the peer has closed its side (`POLLRDHUP`),
//! and cancels the generation if so. (Streams notice on their next write.
//! TLS connections are not watched this way.)

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use actix_web::HttpRequest;
use rustix::event::{PollFd, PollFlags, poll};

/// The socket of a connection, to watch.
#[derive(Clone)]
pub struct Peer(Arc<OwnedFd>);

impl Peer {
    /// For `HttpServer::on_connect`: records the connection's socket.
    pub fn on_connect(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
            && let Ok(fd) = tcp.as_fd().try_clone_to_owned()
        {
            ext.insert(Peer(Arc::new(fd)));
        }
    }

    /// The peer of `req`'s connection, when it is watched.
    pub fn of(req: &HttpRequest) -> Option<Peer> {
        req.conn_data::<Peer>().cloned()
    }

    /// True once the client has closed the connection (or it broke).
    pub fn gone(&self) -> bool {
        let mut fds = [PollFd::new(
            self.0.as_ref(),
            PollFlags::RDHUP | PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    }
}
