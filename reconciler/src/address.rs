//! Resource kinds and addresses (`kind.name`), the keys of the graph, plan and state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The kinds of resources a manifest can declare, in the order plans list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Firecracker,
    Kernel,
    Rootfs,
    Template,
    Network,
    Drive,
    Vm,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Firecracker,
        Kind::Kernel,
        Kind::Rootfs,
        Kind::Template,
        Kind::Network,
        Kind::Drive,
        Kind::Vm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Firecracker => "firecracker",
            Kind::Kernel => "kernel",
            Kind::Rootfs => "rootfs",
            Kind::Template => "template",
            Kind::Network => "network",
            Kind::Drive => "drive",
            Kind::Vm => "vm",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`{0}` is not a resource address: expected KIND.NAME, e.g. vm.agent1")]
    Malformed(String),
    #[error("unknown resource kind `{0}`: expected one of firecracker, kernel, rootfs, template, network, drive, vm")]
    UnknownKind(String),
}

impl FromStr for Kind {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| AddressError::UnknownKind(s.to_string()))
    }
}

/// `kind.name`, e.g. `vm.agent1` or `drive.worker-3-root`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub kind: Kind,
    pub name: String,
}

impl Address {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Address {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.name)
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s
            .split_once('.')
            .filter(|(k, n)| !k.is_empty() && !n.is_empty())
            .ok_or_else(|| AddressError::Malformed(s.to_string()))?;
        Ok(Address::new(kind.parse()?, name))
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("vm.agent1", Ok("vm.agent1")),
            ("drive.worker-3-root", Ok("drive.worker-3-root")),
            ("kernel.lts", Ok("kernel.lts")),
            (
                "vm",
                Err("`vm` is not a resource address: expected KIND.NAME, e.g. vm.agent1"),
            ),
            (
                ".x",
                Err("`.x` is not a resource address: expected KIND.NAME, e.g. vm.agent1"),
            ),
            ("box.x", Err("unknown resource kind `box`: expected one of firecracker, kernel, rootfs, template, network, drive, vm")),
        ];
        for (input, want) in cases {
            let got = input
                .parse::<Address>()
                .map(|a| a.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.map(str::to_string).map_err(str::to_string),
                "{input}"
            );
        }
    }
}
