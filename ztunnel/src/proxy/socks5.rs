//! SOCKS5 (RFC 1928) on 127.0.0.1:15080, no authentication, CONNECT only: another way into the
//! outbound path. As Istio's ztunnel does, the success reply is sent before the upstream is
//! reached; a failure afterwards resets the client.

use super::{ProxyInputs, reset};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE: u8 = 0xff;
const CONNECT: u8 = 1;
const REPLY_GENERAL_FAILURE: u8 = 1;
const REPLY_HOST_UNREACHABLE: u8 = 4;
const REPLY_UNSUPPORTED: u8 = 7;
const REPLY_ADDR_UNSUPPORTED: u8 = 8;

pub async fn serve(
    inputs: Arc<ProxyInputs>,
    listener: TcpListener,
    drain: tokio::sync::watch::Receiver<bool>,
) {
    super::accept_loop("socks5", listener, drain, move |stream, peer, _| {
        let inputs = inputs.clone();
        async move { handle(inputs, stream, peer).await }
    })
    .await
}

#[derive(Debug, thiserror::Error)]
enum Socks5Error {
    #[error("reading the SOCKS5 handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("SOCKS version {0}, expected 5")]
    Version(u8),
    #[error("no acceptable authentication method (only 'no authentication' is offered)")]
    NoAuth,
    #[error("command {0} is not supported (only CONNECT)")]
    Command(u8),
    #[error("address type {0} is not supported")]
    AddressType(u8),
    #[error("cannot resolve `{0}`")]
    Resolve(String),
    #[error("no complete handshake within {0:?}")]
    Timeout(std::time::Duration),
}

/// How long a client has for the whole handshake, name lookup included.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Socks5Error {
    fn reply(&self) -> u8 {
        match self {
            Socks5Error::Io(_) | Socks5Error::Timeout(_) => REPLY_GENERAL_FAILURE,
            Socks5Error::Version(_) | Socks5Error::NoAuth | Socks5Error::Command(_) => {
                REPLY_UNSUPPORTED
            }
            Socks5Error::AddressType(_) => REPLY_ADDR_UNSUPPORTED,
            Socks5Error::Resolve(_) => REPLY_HOST_UNREACHABLE,
        }
    }
}

async fn handle(inputs: Arc<ProxyInputs>, mut client: TcpStream, peer: SocketAddr) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&inputs, &mut client));
    match handshake
        .await
        .unwrap_or(Err(Socks5Error::Timeout(HANDSHAKE_TIMEOUT)))
    {
        Ok(dst) => {
            let ok = [VERSION, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            if client.write_all(&ok).await.is_err() {
                return;
            }
            super::outbound::proxy(inputs, client, peer, dst).await
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "SOCKS5 handshake failed");
            if !matches!(e, Socks5Error::NoAuth) {
                let _ = client
                    .write_all(&[VERSION, e.reply(), 0, 1, 0, 0, 0, 0, 0, 0])
                    .await;
            }
            reset(client)
        }
    }
}

async fn handshake(inputs: &ProxyInputs, c: &mut TcpStream) -> Result<SocketAddr, Socks5Error> {
    let version = c.read_u8().await?;
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let n = c.read_u8().await?;
    let mut methods = vec![0; n as usize];
    c.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        c.write_all(&[VERSION, NO_ACCEPTABLE]).await?;
        return Err(Socks5Error::NoAuth);
    }
    c.write_all(&[VERSION, NO_AUTH]).await?;

    let mut head = [0u8; 4];
    c.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Socks5Error::Version(head[0]));
    }
    if head[1] != CONNECT {
        return Err(Socks5Error::Command(head[1]));
    }
    let ip = match head[3] {
        1 => {
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        4 => {
            let mut b = [0u8; 16];
            c.read_exact(&mut b).await?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        3 => {
            let len = c.read_u8().await?;
            let mut name = vec![0; len as usize];
            c.read_exact(&mut name).await?;
            let name = String::from_utf8_lossy(&name).into_owned();
            resolve(inputs, &name).await?
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    let port = c.read_u16().await?;
    // `::ffff:a.b.c.d` is the IPv4 address: the mesh knows it in that form only, and the
    // mapped form must not slip past the service lookup (and HBONE) as an unknown address.
    Ok(crate::sys::canonical(SocketAddr::new(ip, port)))
}

/// A service hostname resolves to its VIP; anything else through the system resolver.
async fn resolve(inputs: &ProxyInputs, name: &str) -> Result<IpAddr, Socks5Error> {
    let state = inputs.state.snapshot();
    if let Some(vip) = state
        .service_by_hostname(name)
        .and_then(|s| s.vips.iter().find(|v| v.network == inputs.cfg.network))
    {
        return Ok(vip.address);
    }
    tokio::net::lookup_host((name, 0))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
        .ok_or_else(|| Socks5Error::Resolve(name.to_owned()))
}
