//! The `[fort]` table: its settings defined once across the manifest's files, `state_dir` made
//! absolute, and `uid_range` parsed and checked against the host's users. (`[fort] hosts`, which
//! any file may have, is the host selection's: `hosts.rs`.)

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::validate::Resolver;

impl Resolver<'_, '_, '_> {
    pub(super) fn fort_table(&mut self) -> (Option<PathBuf>, Option<(u32, u32)>) {
        let mut found: Option<(usize, Range<usize>)> = None;
        let mut state_dir = None;
        let mut uid_range = None;
        for (file, raw) in self.raws {
            let Some(fort) = &raw.fort else { continue };
            let f = fort.get_ref();
            // `[fort]` with only `hosts` selects hosts for its file; it holds no settings.
            let settings = f.version.is_some() || f.state_dir.is_some() || f.uid_range.is_some();
            if !settings && f.hosts.is_some() {
                continue;
            }
            if let Some((f0, s0)) = &found {
                let a = self.cx.origin(*f0, s0);
                let b = self.cx.origin(*file, &fort.span());
                self.cx.err(
                    *file,
                    &fort.span(),
                    format!("[fort] is defined twice: {a} and {b}"),
                );
                continue;
            }
            found = Some((*file, fort.span()));
            match &f.version {
                None => self.cx.err(*file, &fort.span(), "missing field `version`"),
                Some(v) if *v.get_ref() != 1 => self.cx.err(
                    *file,
                    &v.span(),
                    format!(
                        "unsupported manifest version {}: this fort reads version 1",
                        v.get_ref()
                    ),
                ),
                Some(_) => {}
            }
            if let Some(d) = &f.state_dir {
                state_dir = Some(self.cx.dir(*file).join(d.get_ref()));
            }
            if let Some(r) = &f.uid_range {
                uid_range = self.uid_range(*file, r);
            }
        }
        if found.is_none() {
            let first = self.raws.first().map_or(0, |(i, _)| *i);
            self.cx.err(first, &(0..0), "missing [fort] table: a manifest needs `[fort]` with `version = 1` in one of its files");
        }
        (state_dir, uid_range)
    }

    /// `[fort] uid_range`: well formed, not root, and clear of the host's users (a VM given
    /// a user's uid could read that user's files).
    fn uid_range(&mut self, file: usize, r: &Spanned<String>) -> Option<(u32, u32)> {
        use crate::host::confine;
        let range = match confine::parse_uid_range(r.get_ref()) {
            Ok(range) => range,
            Err(e) => {
                self.cx.err(file, &r.span(), e);
                return None;
            }
        };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let users = confine::users_in(&passwd, range);
        if !users.is_empty() {
            let more = if users.len() > 3 {
                format!(" and {} more", users.len() - 3)
            } else {
                String::new()
            };
            self.cx.err(
                file,
                &r.span(),
                format!(
                    "uid_range `{}` overlaps users of this host (/etc/passwd): {}{more}; VMs need uids nobody else has",
                    r.get_ref(),
                    users[..users.len().min(3)].join(", ")
                ),
            );
            return None;
        }
        Some(range)
    }
}
