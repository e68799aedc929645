//! clap definitions of every command and flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::address::Address;

const AFTER_HELP: &str = "\
Exit codes: 0 success (plan/diff --detailed-exitcode: no changes), 1 error, 2 changes present
(plan/diff --detailed-exitcode), 130 interrupted. Documentation: docs/cli.md.";

/// fort turns this host into a fleet of Firecracker microVMs described in fort.toml.
///
/// Write a manifest, review what would change with `fort plan`, converge the host with
/// `fort apply`, and tear it down with `fort destroy`.
#[derive(Debug, Parser)]
#[command(name = "fort", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// The manifest: a fort.toml file, or a directory whose *.toml files are merged.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        value_name = "PATH",
        env = "FORT_MANIFEST"
    )]
    pub file: Option<PathBuf>,

    /// Where fort keeps state, cache and images [default: the manifest's [fort] state_dir, else
    /// /var/lib/fort as root, else $XDG_STATE_HOME/fort].
    #[arg(long, global = true, value_name = "DIR", env = "FORT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The host whose resources are desired here: resources with `hosts = [...]` (or in a file
    /// with `[fort] hosts`) not naming it are left out [default: this machine's hostname].
    /// `fort mcp --host`, without a NAME, is the host's sandbox service instead.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "FORT_HOST",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    pub host: Option<String>,

    /// Print machine-readable JSON instead of text (read commands and reports).
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the manifest without touching the host.
    Validate(ValidateArgs),
    /// Show what apply would change, and why.
    Plan(PlanArgs),
    /// Converge the host to the manifest (or run a saved plan).
    Apply(ApplyArgs),
    /// Remove everything fort created for this state directory (or only --target and what needs it).
    Destroy(DestroyArgs),
    /// Inspect recorded state.
    #[command(subcommand)]
    State(StateCommand),
    /// Show every recorded transition of one resource.
    History(HistoryArgs),
    /// Print the JSON Schema of fort.toml.
    Schema,
    /// Run a command in a VM through its guest agent; its exit code becomes fort's.
    Exec(ExecArgs),
    /// An interactive shell (or CMD) on a terminal in a VM, like `ssh` or `docker exec -it`.
    Shell(ShellArgs),
    /// Copy a file between the host and a VM: `fort cp ./f vm.a:/root/f` or the reverse.
    Cp(CpArgs),
    /// Serve MCP on stdin/stdout, relayed to a VM's guest agent (for MCP clients); with
    /// `--host`, the host's sandbox service (docs/sandboxes.md).
    Mcp(McpArgs),
    /// The sandbox service over MCP's Streamable HTTP, with the watch loop (docs/sandboxes.md).
    Serve(ServeArgs),
    /// Forward host ports to TCP ports in a VM through its guest agent (no network needed):
    /// `fort port-forward vm.a 8080:80`.
    PortForward(PortForwardArgs),
    /// One table of every recorded resource and its state on the host now.
    Status,
    /// Apply, then apply again whenever a watched file changes and every --interval (drift).
    Watch(WatchArgs),
    /// Print a VM's serial console log (`--follow` keeps printing what the guest writes).
    Console(ConsoleArgs),
    /// Checkpoint a running VM (memory + drives; it runs on), or --list / --prune its
    /// checkpoints: `fort snapshot vm.a --name before`.
    Snapshot(SnapshotArgs),
    /// Put a VM back to a checkpoint (memory, processes and drives): `fort restore vm.a before`.
    Restore(RestoreArgs),
    /// What would change between two revisions of the manifest's git repository, per host
    /// (no state, no host access): `fort diff main..feature`.
    Diff(DiffArgs),
    /// Every host's converged commit and problems, from the reports hosts write
    /// (`fort watch --git URL --report-dir DIR`): `fort fleet status --reports DIR`.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Check what this host can do for fort (netlink, nftables, forwarding, TAPs, drive
    /// clones); every failed check prints its fix. Exit code 1 when a check fails.
    Doctor,
}

#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// Reach the agent here instead of through a VM's recorded socket:
    /// unix:PATH, tcp:HOST:PORT or vsock-uds:PATH (a Firecracker hybrid vsock socket).
    #[arg(long, value_name = "ENDPOINT")]
    pub connect: Option<String>,

    /// How long to keep trying to reach the agent (a booting VM takes a moment).
    #[arg(long = "connect-timeout", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The VM (vm.NAME); omit it with --connect.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,

    #[command(flatten)]
    pub agent: AgentArgs,

    #[command(flatten)]
    pub process: ProcessArgs,

    /// Kill the command (and its process group) after this many seconds [default: 600, none
    /// with --detach or -it].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,

    /// Forward stdin to the command (EOF closes its stdin; on a terminal: sends ^D).
    #[arg(short = 'i', long, conflicts_with = "detach")]
    pub interactive: bool,

    /// Run the command on a terminal (PTY) in the VM; with -i and a terminal on stdin, the
    /// local terminal is put in raw mode as `fort shell` does.
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Start the command, print its id and return; `--attach ID` follows it later.
    #[arg(short = 'd', long)]
    pub detach: bool,

    /// Follow a process started earlier (by `--detach`, or an exec that lost its connection)
    /// from --cursor to its end; its exit code becomes fort's.
    #[arg(long, value_name = "ID", conflicts_with_all = ["command", "detach", "tty", "cwd", "env", "user", "timeout"])]
    pub attach: Option<u64>,

    /// With --attach: the output position to start from (0: everything the agent kept).
    #[arg(long, value_name = "N")]
    pub cursor: Option<u64>,

    /// The program and its arguments (after --).
    #[arg(last = true, required_unless_present = "attach", value_name = "CMD")]
    pub command: Vec<String>,
}

/// How a process is started in the VM (`fort exec`, `fort shell`).
#[derive(Debug, Args, Clone)]
pub struct ProcessArgs {
    /// Working directory in the VM.
    #[arg(long)]
    pub cwd: Option<String>,

    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Run as this user in the VM: a name or uid[:gid] (default: the image's User, else root).
    #[arg(long)]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// A local path, or TARGET:/path in the VM (TARGET is vm.NAME, or empty with --connect).
    pub src: String,
    /// A local path, or TARGET:/path in the VM.
    pub dst: String,

    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct McpArgs {
    /// The VM (vm.NAME); omit it with --connect.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,

    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `fort serve` (docs/sandboxes.md).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen: unix:PATH (mode 0600, the owner only) or tcp:HOST:PORT (needs
    /// --token-file; loopback only without --allow-remote).
    #[arg(long, value_name = "ADDRESS")]
    pub listen: String,

    /// A file holding the bearer token every request must carry (`Authorization: Bearer …`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Listen on a TCP address that is not loopback.
    #[arg(long)]
    pub allow_remote: bool,

    #[command(flatten)]
    pub watch: WatchArgs,
}

// `fort shell` (issue 15).
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The VM (vm.NAME); omit it with --connect.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,

    #[command(flatten)]
    pub agent: AgentArgs,

    #[command(flatten)]
    pub process: ProcessArgs,

    /// What to run instead of the user's login shell (after --).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(
    override_usage = "fort port-forward vm.NAME SPEC... [OPTIONS]\n       fort port-forward --connect ENDPOINT [vm.NAME] SPEC... [OPTIONS]"
)]
pub struct PortForwardArgs {
    /// The VM (vm.NAME; optional with --connect), then one or more SPECs:
    /// [BIND_ADDR:]HOST_PORT:[GUEST_ADDR:]GUEST_PORT, or GUEST_PORT for the same port on
    /// the host. HOST_PORT 0 picks a free port; IPv6 addresses go in brackets ([::1]:8080:80).
    #[arg(value_name = "VM_AND_SPECS", required = true)]
    pub args: Vec<String>,

    #[command(flatten)]
    pub agent: AgentArgs,

    /// Where SPECs without a BIND_ADDR listen [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Re-plan this often to heal drift, even when no file changed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Refuse (and log) a pass that would destroy more than N resources.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_destroy: usize,

    /// Wait for this much quiet after a file change before a pass (coalesces editor saves).
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    pub debounce: Duration,

    /// At most N actions at once [default: number of CPUs].
    #[arg(long, value_name = "N")]
    pub parallelism: Option<usize>,

    /// Wait this long for the state directory's lock (a `fort apply` beside the watch).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    #[command(flatten)]
    pub git: GitArgs,
}

/// Following a git branch (`fort apply --git`, `fort watch --git`; docs/gitops.md).
#[derive(Debug, Args, Clone, Default)]
pub struct GitArgs {
    /// Apply the manifest of this repository's branch (file://, a path, http(s)://) from
    /// fort's own clone in STATE_DIR/git/ instead of -f.
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,

    /// With --git: the branch to follow.
    #[arg(long, value_name = "NAME", default_value = "main", requires = "git")]
    pub branch: String,

    /// With --git: the manifest (a file, or a directory of *.toml) inside the repository.
    #[arg(long, value_name = "DIR", default_value = ".", requires = "git")]
    pub path: PathBuf,

    /// With --git: apply a branch whose history was rewritten (not a fast-forward of the last
    /// commit fort accepted, e.g. after a force-push); refused without it.
    #[arg(long, requires = "git")]
    pub allow_force_push: bool,

    /// With --git: apply only commits with a good SSH signature (git's gpg.format = ssh) by a
    /// key in FILE (OpenSSH allowed_signers format, as `git verify-commit` reads it).
    #[arg(long, value_name = "FILE", requires = "git")]
    pub allowed_signers: Option<PathBuf>,

    /// With --git: after every pass, write this host's report (commit, state, problems) to
    /// DIR/HOST.json, for `fort fleet status --reports DIR`.
    #[arg(long, value_name = "DIR", requires = "git")]
    pub report_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The VM (vm.NAME).
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// The checkpoint's label [default: the time, e.g. 2026-12-02T01-30-00Z].
    #[arg(long, value_name = "LABEL", conflicts_with_all = ["prune", "list"])]
    pub name: Option<String>,

    /// Remove old checkpoints instead of taking one: all but the newest --keep (default: the
    /// VM's `keep`).
    #[arg(long, conflicts_with = "list")]
    pub prune: bool,

    /// With --prune: how many to keep.
    #[arg(long, value_name = "N", requires = "prune")]
    pub keep: Option<usize>,

    /// List the VM's checkpoints.
    #[arg(long)]
    pub list: bool,

    /// Wait this long for an apply or watch holding the state directory.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The VM (vm.NAME).
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// The checkpoint's label (`fort snapshot vm.NAME --list`).
    #[arg(value_name = "LABEL")]
    pub label: String,

    /// Allow putting back a protected drive (its newer data is lost).
    #[arg(long)]
    pub allow_data_loss: bool,

    /// Wait this long for an apply or watch holding the state directory.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The VM (vm.NAME).
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Keep printing new output until interrupted.
    #[arg(long, short = 'F')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Validate every host's view (each host a `hosts` list names) instead of --host's.
    #[arg(long, conflicts_with = "host")]
    pub all_hosts: bool,
}

/// How `fort diff` and `fort plan` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Text,
    Json,
    /// A pull-request comment: a table of hosts, each host's changes collapsed.
    Markdown,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// `REV_A..REV_B` (either side defaults to HEAD: `main..` is main..HEAD), `REV_A...REV_B`
    /// (from their merge base: what a pull request of B into A changes), or one `REV`: REV
    /// against the manifest in the work tree, as `git diff REV` does.
    #[arg(value_name = "REV_A..REV_B")]
    pub range: String,

    /// The repository (work tree or bare) [default: the one containing -f, else the current
    /// directory]. With it, -f is a path inside the repository.
    #[arg(short = 'C', long = "repo", value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// text, json (like --json) or markdown.
    #[arg(long, value_enum, default_value = "text")]
    pub format: DiffFormat,

    /// Exit 0 when no host's desired state changes, 2 when one does, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct Selection {
    /// Only this resource and what it needs (repeatable).
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<Address>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub selection: Selection,

    /// Plan to destroy and re-create this resource even if unchanged (repeatable).
    #[arg(long = "replace", value_name = "ADDR")]
    pub replace: Vec<Address>,

    /// Consent to destroying or replacing protected drives (without it, the plan shows them
    /// and apply refuses; a plan saved with it is applied as is).
    #[arg(long)]
    pub allow_data_loss: bool,

    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Save the plan to FILE for `fort apply FILE` (also spelled -out FILE).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// text, json (like --json) or markdown (a pull-request comment, the plan collapsed).
    #[arg(long, value_enum, default_value = "text")]
    pub format: DiffFormat,

    /// Plan the manifest as it is at this git revision (a branch, tag, `HEAD~1`, a sha) of the
    /// repository holding -f, read from git objects, against this host's state.
    #[arg(long, value_name = "REV", conflicts_with_all = ["out", "destroy"])]
    pub rev: Option<String>,

    /// Plan a destroy instead.
    #[arg(long)]
    pub destroy: bool,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Skip the confirmation prompt.
    #[arg(short = 'y', long, alias = "auto-approve")]
    pub yes: bool,

    /// At most N actions at once [default: number of CPUs].
    #[arg(long, value_name = "N")]
    pub parallelism: Option<usize>,

    /// Wait this long for another apply holding the state directory.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    /// Allow destroying or replacing protected drives.
    #[arg(long)]
    pub allow_data_loss: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved by `fort plan -out FILE`; refused if the manifest or state changed since.
    #[arg(value_name = "PLANFILE")]
    pub plan_file: Option<PathBuf>,

    #[command(flatten)]
    pub selection: Selection,

    /// Destroy and re-create this resource even if unchanged (repeatable).
    #[arg(long = "replace", value_name = "ADDR")]
    pub replace: Vec<Address>,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub git: GitArgs,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub selection: Selection,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// One table of every host's report: commit, state, resources, problems, age.
    Status(FleetStatusArgs),
}

#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    /// The directory the hosts write their reports to (`HOST.json`).
    #[arg(long, value_name = "DIR")]
    pub reports: PathBuf,

    /// The repository the hosts follow: hosts whose converged commit is not --branch's
    /// newest are marked `behind`.
    #[arg(short = 'C', long = "repo", value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// The branch (or any revision) of --repo the hosts follow.
    #[arg(long, default_value = "main", requires = "repo")]
    pub branch: String,

    /// The reports as one JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// One line per recorded resource.
    List,
    /// Everything recorded about one resource.
    Show {
        #[arg(value_name = "ADDR")]
        address: Address,
    },
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(value_name = "ADDR")]
    pub address: Address,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 2m, 500ms)"))
}

/// Terraform spells it `-out FILE`; clap would read that as `-o ut`. Rewrite it first.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            if a == "-out" {
                "--out".to_string()
            } else if let Some(v) = a.strip_prefix("-out=") {
                format!("--out={v}")
            } else {
                a
            }
        })
        .collect()
}
