//! `fort mcp --host` (stdio) and `fort serve --listen` (MCP's Streamable HTTP): the sandbox
//! service (`cli::sandbox`) beside the watch loop that applies what it asks for and reaps
//! what expired (docs/sandboxes.md).

use std::sync::Arc;
use std::time::Duration;

use super::args::{GitArgs, McpArgs, ServeArgs, WatchArgs};
use super::sandbox::{mcp, Core};
use super::watch::{self, External, Passes};
use super::{exit, Cli, CliError};
use crate::host::mcp_http::{self, Handler, Listen};

/// The loop and the service: what both transports start.
fn service(cli: &Cli) -> (Arc<Core>, External, Arc<tokio::sync::Notify>) {
    let (wake, wake_rx) = tokio::sync::mpsc::unbounded_channel();
    let passes = Arc::new(Passes::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let core = Arc::new(Core::new(cli, wake, passes.clone()));
    let ext = External {
        wake: wake_rx,
        passes,
        stop: stop.clone(),
    };
    (core, ext, stop)
}

/// `fort mcp --host`: until the client closes stdin.
pub async fn mcp_host(cli: &Cli, a: &McpArgs) -> Result<u8, CliError> {
    if a.target.is_some() || a.agent.connect.is_some() {
        return Err(CliError::Usage(
            "fort mcp --host serves the host's sandboxes: it takes no VM and no --connect"
                .to_string(),
        ));
    }
    // `--host` without a name: the host selection is this machine's hostname (or FORT_HOST).
    let cli = Cli {
        file: cli.file.clone(),
        state_dir: cli.state_dir.clone(),
        host: std::env::var("FORT_HOST").ok().filter(|h| !h.is_empty()),
        json: false,
        verbose: cli.verbose,
        command: super::args::Command::Schema,
    };
    let args = WatchArgs {
        interval: Duration::from_secs(10),
        max_destroy: 0,
        debounce: Duration::from_millis(200),
        parallelism: None,
        lock_timeout: Duration::from_secs(60),
        git: GitArgs::default(),
    };
    let (core, ext, stop) = service(&cli);
    let stdio = async {
        let r = mcp::serve_stdio(core).await;
        stop.notify_one();
        r
    };
    let (looped, served) = tokio::join!(watch::run(&cli, &args, Some(ext)), stdio);
    served.map_err(|e| CliError::Usage(format!("MCP on stdin/stdout failed: {e}")))?;
    looped
}

/// `fort serve --listen ADDRESS`: until SIGTERM/SIGINT, like `fort watch`.
pub async fn serve(cli: &Cli, a: &ServeArgs) -> Result<u8, CliError> {
    if a.watch.git.git.is_some() {
        return Err(CliError::Usage(
            "fort serve does not follow a git branch (--git); run `fort watch --git` beside it"
                .to_string(),
        ));
    }
    let token = match &a.token_file {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|source| CliError::Io {
                what: "cannot read the token file",
                path: p.clone(),
                source,
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(CliError::Usage(format!(
                    "the token file {} is empty",
                    p.display()
                )));
            }
            Some(t)
        }
    };
    let listen: Listen = a.listen.parse()?;
    let opts = mcp_http::Options {
        token,
        allow_remote: a.allow_remote,
        path: "/mcp".to_string(),
    };
    let server = mcp_http::Server::bind(&listen, opts).await?;
    tracing::info!(
        "fort serve: MCP (Streamable HTTP) at {} path /mcp",
        server.local_addr()
    );
    eprintln!("listening on {}", server.local_addr());
    let (core, ext, _stop) = service(cli);
    let handler: Handler = Arc::new(move |msg, _session| {
        let core = core.clone();
        Box::pin(async move { mcp::handle(&core, msg).await })
    });
    let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(server.run(handler, async {
        let _ = done_rx.await;
    }));
    let looped = watch::run(cli, &a.watch, Some(ext)).await;
    let _ = done.send(());
    match http.await {
        Ok(r) => r?,
        Err(e) => tracing::error!("the HTTP server task failed: {e}"),
    }
    looped.map(|c| if c == exit::OK { exit::OK } else { c })
}
