//! Free TCP ports on loopback.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Ports already handed out by this process, so two servers started at once never get the same.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A loopback port nothing listens on now, and that this process has not handed out before.
pub fn free_port() -> std::io::Result<u16> {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
}

/// Whether something accepts TCP connections on the loopback port.
pub fn is_listening(port: u16) -> bool {
    is_listening_on(Ipv4Addr::LOCALHOST, port)
}

/// Whether something accepts TCP connections on `ip:port`.
pub fn is_listening_on(ip: Ipv4Addr, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&(ip, port).into(), std::time::Duration::from_millis(200))
        .is_ok()
}
