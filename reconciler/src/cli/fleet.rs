//! `fort fleet status`: one table of the reports hosts write, marking hosts behind the branch.

use std::time::{SystemTime, UNIX_EPOCH};

use super::args::FleetStatusArgs;
use super::{exit, CliError};
use crate::fleet;
use crate::gitread::Repo;

pub fn status(args: &FleetStatusArgs) -> Result<u8, CliError> {
    let reports = fleet::read_dir(&args.reports)?;
    if args.json {
        let text = serde_json::to_string_pretty(&reports).map_err(|e| CliError::Io {
            what: "cannot print the reports of",
            path: args.reports.clone(),
            source: std::io::Error::other(e),
        })?;
        println!("{text}");
        return Ok(exit::OK);
    }
    let head = match &args.repo {
        Some(dir) => Some(Repo::open(dir)?.resolve(&args.branch)?.commit),
        None => None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print!("{}", fleet::render(&reports, now, head.as_deref()));
    Ok(exit::OK)
}
