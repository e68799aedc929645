//! Published-port validation: each VM's `ports` entries, a pool's host range split into one
//! port per instance, and no host port published twice (on meeting host addresses) across
//! the whole manifest. Whether the host already uses a port is a host check (plan time).

use toml::Spanned;

use super::ports::{parse_port_map, PortMap};
use super::validate::Ctx;

/// Host ports published so far: the mapping and the `vm.NAME` that publishes it.
pub(super) type Published = Vec<(PortMap, String)>;

/// A VM's `ports`: for each instance (one, or `count` of a pool) its entries in normal form,
/// or `None` when one is wrong (every problem reported).
pub(super) fn ports(
    cx: &mut Ctx<'_>,
    file: usize,
    addr: &str,
    entries: &[Spanned<String>],
    instances: &[String],
    pool: bool,
    published: &mut Published,
) -> Option<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); instances.len()];
    let mut ok = true;
    for e in entries {
        let text = e.get_ref();
        let mut fail = |cx: &mut Ctx<'_>, why: String| {
            cx.err(
                file,
                &e.span(),
                format!("{addr}: ports entry `{text}`: {why}"),
            );
            ok = false;
        };
        let map = match parse_port_map(text) {
            Ok(m) => m,
            Err(why) => {
                fail(cx, why);
                continue;
            }
        };
        let n = instances.len() as u32;
        let per_instance: Vec<PortMap> = if pool {
            if map.host_len() == 1 {
                fail(cx, format!("a pool (count = {n}) cannot publish one fixed host port for all its instances: give a range with a port per instance, e.g. \"{}-{}:{}\"", map.host.0, u32::from(map.host.0) + n - 1, map.guest.0));
                continue;
            }
            if map.guest_len() != 1 {
                fail(cx, "a pool maps one host port per instance to one guest port: give a single guest port".into());
                continue;
            }
            if map.host_len() < n {
                fail(
                    cx,
                    format!(
                        "the host range has {} ports but the pool has {n} instances",
                        map.host_len()
                    ),
                );
                continue;
            }
            (0..n).map(|i| map.instance(i)).collect()
        } else {
            if map.host_len() != map.guest_len() {
                fail(
                    cx,
                    format!(
                        "{} but {}: give as many of each",
                        plural(map.host_len(), "host port"),
                        plural(map.guest_len(), "guest port")
                    ),
                );
                continue;
            }
            vec![map]
        };
        for (i, m) in per_instance.into_iter().enumerate() {
            let owner = format!("vm.{}", instances[i]);
            if let Some((other, by)) = published.iter().find(|(p, _)| p.overlaps(&m)) {
                let on = match (m.addr, other.addr) {
                    (Some(a), _) | (None, Some(a)) => format!(" on {a}"),
                    (None, None) => String::new(),
                };
                let why = format!(
                    "host port {}{on} is already published by {by} (`{other}`)",
                    m.host_ports()
                );
                fail(cx, why);
                break;
            }
            published.push((m, owner));
            out[i].push(m.to_string());
        }
    }
    ok.then_some(out)
}

fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
