//! Tool names and the arguments of the one-shot tools (`run_command`, the file tools).
//! Argument types reject unknown fields, exactly like their schemas (`additionalProperties:
//! false`); a test checks every schema property is accepted by its type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const RUN_COMMAND: &str = "run_command";
pub const FILE_READ: &str = "file_read";
pub const FILE_WRITE: &str = "file_write";
pub const FILE_DELETE: &str = "file_delete";
pub const LIST_DIR: &str = "list_dir";
pub const STAT: &str = "stat";
pub const SHUTDOWN: &str = "shutdown";
pub const PROCESS_START: &str = "process_start";
pub const PROCESS_OUTPUT: &str = "process_output";
pub const PROCESS_INPUT: &str = "process_input";
pub const PROCESS_SIGNAL: &str = "process_signal";
pub const PROCESS_RESIZE: &str = "process_resize";
pub const PROCESS_LIST: &str = "process_list";
pub const PORT_CHECK: &str = "port_check";

/// Every tool the agent serves, in `tools/list` order.
pub const NAMES: &[&str] = &[
    RUN_COMMAND,
    FILE_READ,
    FILE_WRITE,
    FILE_DELETE,
    LIST_DIR,
    STAT,
    PROCESS_START,
    PROCESS_OUTPUT,
    PROCESS_INPUT,
    PROCESS_SIGNAL,
    PROCESS_RESIZE,
    PROCESS_LIST,
    PORT_CHECK,
    SHUTDOWN,
];

/// How bytes travel in a JSON string.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 text (invalid bytes replaced when reading).
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "base64")]
    Base64,
}

impl Encoding {
    pub fn is_default(&self) -> bool {
        *self == Encoding::Utf8
    }
}

/// `run_command`: run a program to its end.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// A user name or `uid[:gid]`; default: the image's `User`, else root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileRead {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Encoding::is_default")]
    pub encoding: Encoding,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileWrite {
    pub path: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Encoding::is_default")]
    pub encoding: Encoding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_parents: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atomic: Option<bool>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileDelete {
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
}

/// `list_dir` and `stat`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    pub path: String,
}

/// Tools without arguments (`shutdown`, `process_list`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Empty {}
