//! Reading nftables back over netlink: whether a table exists, the `fort:` comments of its
//! rules (what observing a table compares), and the forward chains of every table (for
//! `fort doctor`).

use std::ffi::CStr;

use nftnl::nftnl_sys as sys;

use super::nft::cstring;
use super::nl::{is_ack, is_done, NfSocket};
use super::NetError;

/// Whether fort's IPv4 table `name` exists.
pub fn table_exists(name: &str) -> Result<bool, NetError> {
    let name = cstring(name)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: libnftnl builds a GETTABLE request for one table into `buf` (a header and a
    // name attribute fit easily); the table object is freed before returning.
    let len = unsafe {
        let t = sys::nftnl_table_alloc();
        if t.is_null() {
            return Err(NetError::Name("out of memory".into()));
        }
        sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
        let nlh = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast(),
            libc::NFT_MSG_GETTABLE as u16,
            libc::NFPROTO_IPV4 as u16,
            libc::NLM_F_ACK as u16,
            1,
        );
        sys::nftnl_table_nlmsg_build_payload(nlh, t);
        sys::nftnl_table_free(t);
        (*nlh).nlmsg_len as usize
    };
    let sock = NfSocket::open()?;
    sock.send(&buf[..len])?;
    match sock.recv_until(is_ack) {
        Ok(()) => Ok(true),
        Err(NetError::Refused { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The comments of the rules in `table` (None when the table does not exist).
pub fn rule_comments(table: &str) -> Result<Option<Vec<String>>, NetError> {
    if !table_exists(table)? {
        return Ok(None);
    }
    let name = cstring(table)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: libnftnl builds a GETRULE dump request into `buf` (large enough for a header
    // and a table attribute); the rule object is freed before returning.
    let len = unsafe {
        let rule = sys::nftnl_rule_alloc();
        if rule.is_null() {
            return Err(NetError::Name("out of memory".into()));
        }
        sys::nftnl_rule_set_str(rule, sys::NFTNL_RULE_TABLE as u16, name.as_ptr());
        sys::nftnl_rule_set_u32(
            rule,
            sys::NFTNL_RULE_FAMILY as u16,
            libc::NFPROTO_IPV4 as u32,
        );
        let nlh = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast(),
            libc::NFT_MSG_GETRULE as u16,
            libc::NFPROTO_IPV4 as u16,
            (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
            1,
        );
        sys::nftnl_rule_nlmsg_build_payload(nlh, rule);
        sys::nftnl_rule_free(rule);
        (*nlh).nlmsg_len as usize
    };
    let sock = NfSocket::open()?;
    sock.send(&buf[..len])?;
    let mut comments = Vec::new();
    let res = sock.recv_until(|r| {
        if is_done(r) || is_ack(r) {
            return true;
        }
        if let Some(c) = parse_rule_comment(&r.bytes) {
            comments.push(c);
        }
        false
    });
    match res {
        Ok(()) => Ok(Some(comments)),
        Err(NetError::Refused { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn parse_rule_comment(msg: &[u8]) -> Option<String> {
    // SAFETY: `msg` holds one complete netlink message as received (aligned copy below);
    // libnftnl only reads within nlmsg_len. The rule object is freed before returning.
    unsafe {
        let mut aligned = vec![0u32; msg.len().div_ceil(4)];
        std::ptr::copy_nonoverlapping(msg.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), msg.len());
        let rule = sys::nftnl_rule_alloc();
        if rule.is_null() {
            return None;
        }
        let nlh = aligned.as_ptr().cast::<libc::nlmsghdr>();
        let mut out = None;
        if sys::nftnl_rule_nlmsg_parse(nlh, rule) >= 0 {
            let mut len = 0u32;
            let data = sys::nftnl_rule_get_data(rule, sys::NFTNL_RULE_USERDATA as u16, &mut len);
            if !data.is_null() {
                let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
                // udata TLV: type (1 byte), length (1 byte), NUL-terminated comment.
                if bytes.len() > 2 && bytes[0] == sys::NFTNL_UDATA_RULE_COMMENT as u8 {
                    let end = (2 + bytes[1] as usize).min(bytes.len());
                    out = CStr::from_bytes_until_nul(&bytes[2..end])
                        .ok()
                        .map(|c| c.to_string_lossy().into_owned());
                }
            }
        }
        sys::nftnl_rule_free(rule);
        out
    }
}

/// A base chain on the forward hook of some table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardChain {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    pub drop_policy: bool,
}

/// Every base chain hooked on `forward`, in every table and family.
pub fn forward_chains() -> Result<Vec<ForwardChain>, NetError> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a header-only GETCHAIN dump request built into `buf`.
    let len = unsafe {
        let nlh = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast(),
            libc::NFT_MSG_GETCHAIN as u16,
            libc::NFPROTO_UNSPEC as u16,
            (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
            1,
        );
        (*nlh).nlmsg_len as usize
    };
    let sock = NfSocket::open()?;
    sock.send(&buf[..len])?;
    let mut chains = Vec::new();
    sock.recv_until(|r| {
        if is_done(r) || is_ack(r) {
            return true;
        }
        if let Some(c) = parse_chain(&r.bytes) {
            chains.push(c);
        }
        false
    })?;
    Ok(chains)
}

fn parse_chain(msg: &[u8]) -> Option<ForwardChain> {
    const NF_INET_FORWARD: u32 = 2;
    const NF_DROP: u32 = 0;
    // SAFETY: as in `parse_rule_comment`: one complete, aligned message; strings are copied
    // out before the chain object is freed.
    unsafe {
        let mut aligned = vec![0u32; msg.len().div_ceil(4)];
        std::ptr::copy_nonoverlapping(msg.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), msg.len());
        let chain = sys::nftnl_chain_alloc();
        if chain.is_null() {
            return None;
        }
        let nlh = aligned.as_ptr().cast::<libc::nlmsghdr>();
        let mut out = None;
        if sys::nftnl_chain_nlmsg_parse(nlh, chain) >= 0
            && sys::nftnl_chain_is_set(chain, sys::NFTNL_CHAIN_HOOKNUM as u16)
            && sys::nftnl_chain_get_u32(chain, sys::NFTNL_CHAIN_HOOKNUM as u16) == NF_INET_FORWARD
        {
            let s = |attr: u32| {
                let p = sys::nftnl_chain_get_str(chain, attr as u16);
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let family =
                match sys::nftnl_chain_get_u32(chain, sys::NFTNL_CHAIN_FAMILY as u16) as i32 {
                    libc::NFPROTO_IPV4 => "ip",
                    libc::NFPROTO_IPV6 => "ip6",
                    libc::NFPROTO_INET => "inet",
                    libc::NFPROTO_BRIDGE => "bridge",
                    _ => "other",
                };
            let drop_policy = sys::nftnl_chain_is_set(chain, sys::NFTNL_CHAIN_POLICY as u16)
                && sys::nftnl_chain_get_u32(chain, sys::NFTNL_CHAIN_POLICY as u16) == NF_DROP;
            out = Some(ForwardChain {
                family,
                table: s(sys::NFTNL_CHAIN_TABLE),
                chain: s(sys::NFTNL_CHAIN_NAME),
                drop_policy,
            });
        }
        sys::nftnl_chain_free(chain);
        out
    }
}
