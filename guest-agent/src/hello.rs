//! The agent's hello: once it listens on vsock, it connects out to the host on the same port
//! and says so, which tells fort the guest's vsock device is up and may be connected to
//! (reconciler/src/host/agent_ready.rs has the host side and the reason).

use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How long the agent keeps trying: a fort that was not waiting (an adopted VM) falls back
/// to the console line, so the hello need not go on forever.
const TRY_FOR: Duration = Duration::from_secs(600);

/// Say hello to the host on `port` (CID 2), retrying each second until someone listens.
pub async fn announce(port: u32) {
    let start = std::time::Instant::now();
    while start.elapsed() < TRY_FOR {
        let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_HOST, port);
        let said = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = tokio_vsock::VsockStream::connect(addr).await?;
            s.write_all(
                format!("fort-guest-agent {} ready\n", env!("CARGO_PKG_VERSION")).as_bytes(),
            )
            .await?;
            s.shutdown(std::net::Shutdown::Write)
        })
        .await;
        if let Ok(Ok(())) = said {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
