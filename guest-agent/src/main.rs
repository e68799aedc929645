//! fort's guest agent: an MCP server (JSON-RPC 2.0 over newline-delimited JSON) that lets the
//! host, or an AI agent through `fort mcp`, run commands and move files in a VM.
//!
//! `fort-guest-agent --listen unix:/path/agent.sock` or `--listen tcp:127.0.0.1:7000` serves
//! outside a VM (tests, development). Inside fort VMs it runs as PID 1 and listens on vsock
//! port 52, or with `--service systemd|openrc|busybox` as a service of the image's own init
//! (template `init = "distro"`; see docs/guest-agent.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use fort_guest_agent::init::service::InitKind;
use fort_guest_agent::{hello, init, server, tools};

enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Vsock(u32),
}

/// The vsock port the host connects to.
const VSOCK_PORT: u32 = 52;

/// Serve every connection a listener accepts (unix, tcp and vsock listeners differ in type
/// but not in shape).
macro_rules! accept_loop {
    ($listener:expr) => {{
        let listener = $listener;
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(server::connection(s));
                    }
                    Err(e) => eprintln!("fort-guest-agent: accept: {e}"),
                }
            }
        });
    }};
}

fn usage() -> ! {
    eprintln!(
        "usage: fort-guest-agent [--listen unix:PATH | tcp:ADDR:PORT | vsock:PORT]... [--allow-remote] [--output-buffer BYTES]\n\
         \x20      fort-guest-agent --service systemd|openrc|busybox [--listen …]\n\
         \n\
         Serves MCP (JSON-RPC 2.0, one JSON object per line) with the tools run_command,\n\
         file_read, file_write, file_delete, list_dir, stat, process_start, process_output,\n\
         process_input, process_signal, process_resize, process_list, port_check and shutdown.\n\
         --output-buffer: the output kept per background process (default 8 MiB).\n\
         tcp: addresses must be loopback unless --allow-remote is given. As PID 1 (in a fort VM)\n\
         it also does init's work and listens on vsock:52 by default. With --service it runs\n\
         under that init (configures the network, listens on vsock:52, powers off through it)."
    );
    std::process::exit(2)
}

fn parse_args() -> (Vec<Listen>, Option<InitKind>) {
    let mut listen = Vec::new();
    let mut service = None;
    let mut allow_remote = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let Some(v) = args.next() else { usage() };
                if let Some(p) = v.strip_prefix("unix:") {
                    listen.push(Listen::Unix(PathBuf::from(p)));
                } else if let Some(p) = v.strip_prefix("vsock:") {
                    match p.parse() {
                        Ok(port) => listen.push(Listen::Vsock(port)),
                        Err(_) => {
                            eprintln!("fort-guest-agent: `{p}` is not a vsock port number");
                            std::process::exit(2)
                        }
                    }
                } else if let Some(t) = v.strip_prefix("tcp:") {
                    match t.parse::<SocketAddr>() {
                        Ok(addr) => listen.push(Listen::Tcp(addr)),
                        Err(_) => {
                            eprintln!(
                                "fort-guest-agent: `{t}` is not an address like 127.0.0.1:7000"
                            );
                            std::process::exit(2)
                        }
                    }
                } else {
                    eprintln!(
                        "fort-guest-agent: --listen takes unix:PATH or tcp:ADDR:PORT, got `{v}`"
                    );
                    std::process::exit(2)
                }
            }
            "--allow-remote" => allow_remote = true,
            "--output-buffer" => {
                let Some(v) = args.next() else { usage() };
                let max = fort_agent_protocol::process::MAX_BUFFER_BYTES;
                match v.parse::<usize>() {
                    Ok(n) if (1..=max).contains(&n) => {
                        fort_guest_agent::process::set_default_buffer(n)
                    }
                    _ => {
                        eprintln!("fort-guest-agent: --output-buffer takes a byte count from 1 to {max}, got `{v}`");
                        std::process::exit(2)
                    }
                }
            }
            "--service" => {
                let Some(v) = args.next() else { usage() };
                let Some(k) = InitKind::parse(&v) else {
                    eprintln!(
                        "fort-guest-agent: --service takes systemd, openrc or busybox, got `{v}`"
                    );
                    std::process::exit(2)
                };
                service = Some(k);
            }
            "--version" => {
                println!("fort-guest-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0)
            }
            _ => usage(),
        }
    }
    if listen.is_empty() {
        if init::is_pid1() || service.is_some() {
            listen.push(Listen::Vsock(VSOCK_PORT));
        } else {
            usage()
        }
    }
    for l in &listen {
        if let Listen::Tcp(a) = l {
            if !a.ip().is_loopback() && !allow_remote {
                eprintln!("fort-guest-agent: {a} is not a loopback address; pass --allow-remote to serve it anyway");
                std::process::exit(2)
            }
        }
    }
    (listen, service)
}

/// The next SIGTERM (never, if the handler could not be installed).
async fn sigterm(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => {
            t.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn main() {
    let pid1 = init::is_pid1();
    if pid1 {
        // Before anything else: mounts, hostname, network, resolv.conf.
        init::boot();
    }
    let (listen, service) = parse_args();
    // Background processes hold descriptors (pipes, terminals) for as long as they run.
    fort_guest_agent::process::raise_nofile_limit();
    if let (Some(_), false) = (service, pid1) {
        // The distro's init mounted its filesystems; we own the network settings fort chose
        // and the drives the manifest mounts (also written into its fstab).
        init::configure(Some(std::path::Path::new("/etc/fstab")));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fort-guest-agent: cannot start: {e}");
            std::process::exit(1)
        }
    };
    runtime.block_on(async move {
        for l in listen {
            match l {
                Listen::Unix(path) => {
                    let _ = std::fs::remove_file(&path);
                    let listener = match tokio::net::UnixListener::bind(&path) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fort-guest-agent: cannot listen on {}: {e}", path.display());
                            std::process::exit(1)
                        }
                    };
                    eprintln!("fort-guest-agent: listening on unix:{}", path.display());
                    accept_loop!(listener);
                }
                Listen::Vsock(port) => {
                    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
                    let listener = match tokio_vsock::VsockListener::bind(addr) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fort-guest-agent: cannot listen on vsock port {port}: {e}");
                            if pid1 {
                                continue; // PID 1 must not exit; unix/tcp listeners may still serve.
                            }
                            std::process::exit(1)
                        }
                    };
                    eprintln!("fort-guest-agent: listening on vsock:{port}");
                    accept_loop!(listener);
                    tokio::spawn(hello::announce(port));
                    hello::announce_on_rebind(port);
                }
                Listen::Tcp(addr) => {
                    let listener = match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fort-guest-agent: cannot listen on {addr}: {e}");
                            std::process::exit(1)
                        }
                    };
                    eprintln!(
                        "fort-guest-agent: listening on tcp:{}",
                        listener.local_addr().map_or(addr, |a| a)
                    );
                    accept_loop!(listener);
                }
            }
        }
        if let Some(cfg) = fort_guest_agent::image::get().filter(|c| c.run_image_cmd) {
            tokio::spawn(fort_guest_agent::image::supervise(cfg));
        }
        if pid1 {
            init::serve_as_init().await;
        }
        if let Some(kind) = service {
            // The init stops its services with SIGTERM (at shutdown): exit cleanly then.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tools::SHUTDOWN.notified() => {
                    init::service::power_off(kind).await;
                    // Keep serving until the init's shutdown stops us.
                    sigterm(&mut term).await;
                }
                _ = sigterm(&mut term) => {}
            }
            eprintln!("fort-guest-agent: SIGTERM from the init: stopping");
            return;
        }
        tokio::select! {
            _ = tools::SHUTDOWN.notified() => {
                // Outside a VM "power off" means exit; give the reply a moment to be written.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                eprintln!("fort-guest-agent: shutdown requested");
            }
            _ = tokio::signal::ctrl_c() => {}
        }
    });
}
