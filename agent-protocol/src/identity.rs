//! `fort/identity`: what the host sends right after restoring a VM from a snapshot (its own,
//! or a template's for a warm clone): the host's time, fresh entropy and, for clones, a new
//! hostname, network identity and machine-id.
//!
//! A fort-internal JSON-RPC method (not an MCP tool, not in `tools/list`), callable right
//! after connecting, without `initialize`:
//! `{"jsonrpc":"2.0","id":1,"method":"fort/identity","params":{"time_unix_ns":...}}`.
//! The result is an [`IdentityResult`]; what could not be applied is in its `errors`, each
//! step being independent of the others.

use serde::{Deserialize, Serialize};

pub const METHOD: &str = "fort/identity";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityArgs {
    /// The host's CLOCK_REALTIME, in ns since the Unix epoch.
    pub time_unix_ns: u64,
    /// Base64 (standard alphabet) of at least 32 random bytes; empty: no reseed.
    #[serde(default)]
    pub entropy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetIdentity>,
    /// 32 lowercase hex characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
}

fn eth0() -> String {
    "eth0".to_string()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetIdentity {
    #[serde(default = "eth0")]
    pub interface: String,
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    /// An IPv4 address with its prefix length: `10.77.0.5/24`.
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Nameservers for /etc/resolv.conf (left alone when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IdentityResult {
    /// The host's time minus the guest's realtime clock before it was stepped, in ms.
    pub clock_step_ms: i64,
    /// Entropy was added to the kernel and its CRNG reseeded.
    pub reseeded: bool,
    /// The hostname set, if one was asked for and set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The machine-id written, if one was asked for and written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// What could not be applied, each naming its item: `mac: cannot set 02:..: ...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_round_trip() {
        let a = IdentityArgs {
            time_unix_ns: 1_700_000_000_000_000_000,
            entropy: "AAAA".into(),
            hostname: Some("clone-1".into()),
            network: Some(NetIdentity {
                interface: "eth0".into(),
                mac: "02:00:00:00:00:05".into(),
                ip: "10.77.0.5/24".into(),
                gateway: Some("10.77.0.1".into()),
                dns: vec!["1.1.1.1".into()],
            }),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(serde_json::from_value::<IdentityArgs>(v).unwrap(), a);
        let r = IdentityResult {
            clock_step_ms: -5,
            reseeded: true,
            hostname: Some("h".into()),
            machine_id: None,
            errors: vec!["mac: x".into()],
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<IdentityResult>(v).unwrap(), r);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_value::<IdentityArgs>(json!({"time_unix_ns": 1, "tz": "UTC"}))
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `tz`"), "{e}");
        let e = serde_json::from_value::<IdentityArgs>(
            json!({"time_unix_ns": 1, "network": {"mac": "m", "ip": "i", "mtu": 1}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `mtu`"), "{e}");
    }

    #[test]
    fn defaults() {
        let a: IdentityArgs =
            serde_json::from_value(json!({"time_unix_ns": 7, "network": {"mac": "m", "ip": "i"}}))
                .unwrap();
        assert_eq!(a.entropy, "");
        assert_eq!(a.hostname, None);
        assert_eq!(a.machine_id, None);
        let n = a.network.unwrap();
        assert_eq!(n.interface, "eth0");
        assert_eq!(n.gateway, None);
        assert!(n.dns.is_empty());
        let r: IdentityResult =
            serde_json::from_value(json!({"clock_step_ms": 0, "reseeded": false})).unwrap();
        assert!(r.errors.is_empty() && r.hostname.is_none() && r.machine_id.is_none());
        assert!(serde_json::from_value::<IdentityArgs>(json!({})).is_err());
    }
}
