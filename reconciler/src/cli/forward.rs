//! `fort port-forward`: listen on host ports and carry each accepted connection to a TCP port
//! in a VM through its guest agent (`fort/tunnel` over vsock: no network needed).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::args::PortForwardArgs;
use super::forward_spec::{self, ForwardSpec};
use super::{agent, exit, Cli, CliError};
use crate::host::agent::{Client, Endpoint};
use crate::host::forward::{self, ForwardError};

/// How long one accepted connection waits for the agent: short, the user's client is waiting
/// (a VM that is down is said at once on stderr, per connection).
const TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every per-connection message and the `Forwarding` lines call the guest.
struct Forward {
    spec: ForwardSpec,
    /// `fort: vm.a: ` (or `fort: ` with --connect and no VM named).
    prefix: String,
    /// `vm.a:80`, `guest:80`.
    to: String,
}

pub async fn port_forward(cli: &Cli, a: &PortForwardArgs) -> Result<u8, CliError> {
    // The VM is optional with --connect: a first word that is not `vm.…` is a SPEC.
    let (target, specs) = match a.args.split_first() {
        Some((first, rest)) if first.starts_with("vm.") => (Some(first.as_str()), rest),
        _ => (None, &a.args[..]),
    };
    if target.is_none() && a.agent.connect.is_none() {
        return Err(CliError::Usage(
            "name a VM first (fort port-forward vm.NAME SPEC…) or give --connect ENDPOINT".into(),
        ));
    }
    if specs.is_empty() {
        return Err(CliError::Usage(
            "name at least one port to forward, e.g. `fort port-forward vm.a 8080:80`".into(),
        ));
    }
    let bind = match &a.address {
        Some(s) => forward_spec::parse_address(s)?,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let specs = specs
        .iter()
        .map(|s| forward_spec::parse(s, bind))
        .collect::<Result<Vec<_>, _>>()?;
    let endpoint = agent::endpoint(cli, target, &a.agent)?;

    // Every listener is bound before anything is printed: a port in use fails the whole
    // command (dropping the ones already bound) instead of half-forwarding.
    let mut listeners = Vec::new();
    for s in &specs {
        listeners.push(forward::listen(s.listen, &s.text).await?);
    }
    // A forward whose agent cannot be reached would look "open" but lose every connection:
    // check once before saying anything.
    drop(Client::connect(&endpoint, a.agent.connect_timeout).await?);

    let name = target.unwrap_or("guest");
    let prefix = match target {
        Some(t) => format!("fort: {t}: "),
        None => "fort: ".to_string(),
    };
    // Before the first line is printed: whoever waits for it may signal us right away.
    let interrupted = interrupted()?;
    let endpoint = Arc::new(endpoint);
    for (listener, spec) in listeners.into_iter().zip(specs) {
        let local = listener
            .local_addr()
            .map_err(|e| CliError::Usage(format!("cannot read a listener's address: {e}")))?;
        let fwd = Arc::new(Forward {
            to: spec.guest_label(name),
            prefix: prefix.clone(),
            spec,
        });
        println!("Forwarding from {local} -> {}", fwd.to);
        tokio::spawn(accept_loop(listener, fwd, endpoint.clone()));
    }
    interrupted.await;
    Ok(exit::OK)
}

/// A future for the next SIGINT or SIGTERM (the way a port-forward ends), with both handlers
/// installed when this returns.
fn interrupted() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

async fn accept_loop(listener: TcpListener, fwd: Arc<Forward>, endpoint: Arc<Endpoint>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                tracing::debug!("{}: connection from {peer}", fwd.spec.text);
                tokio::spawn(connection(conn, fwd.clone(), endpoint.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: say it, and do not spin.
                eprintln!(
                    "{}accept on {}: {}",
                    fwd.prefix,
                    fwd.spec.text,
                    forward::reason(&e)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One accepted connection: a tunnel of its own, then the splice. A failure is one line on
/// stderr and the host connection is closed; the forward goes on.
async fn connection(conn: tokio::net::TcpStream, fwd: Arc<Forward>, endpoint: Arc<Endpoint>) {
    let host = fwd.spec.guest_addr.map(|a| a.to_string());
    match forward::open(&endpoint, TUNNEL_CONNECT_TIMEOUT, fwd.spec.guest(), host).await {
        Ok(tunnel) => {
            if let Err(e) =
                forward::splice(&conn, &tunnel, matches!(*endpoint, Endpoint::VsockUds(_))).await
            {
                tracing::debug!("{}: connection ended: {e}", fwd.to);
            }
        }
        Err(e) => {
            let e: &ForwardError = &e;
            eprintln!("{}{}", fwd.prefix, forward::chain(e));
            close_gently(conn).await;
        }
    }
}

/// Close with a FIN rather than a reset: closing with the client's request unread would
/// reset the connection, and the client would report "connection reset" instead of an empty
/// reply. Read (and drop) what it sent until it closes too, for a bounded time.
async fn close_gently(mut conn: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = conn.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}
