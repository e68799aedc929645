//! fort's guest agent: the MCP server that runs as PID 1 inside fort VMs (see issue 3).

fn main() {
    eprintln!("fort-guest-agent: not built yet (see docs/guest-agent.md)");
    std::process::exit(1);
}
