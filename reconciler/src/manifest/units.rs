//! Small value parsers of the manifest format: sizes, names, modes, hashes, keys, MACs, and
//! byte offsets → line:column.

/// `"512MiB"`, `"4 GiB"`, `"1024"`, or bytes as an integer.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size `{s}`: expected a number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. \"512MiB\", or a number of bytes")
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let mult: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if bytes == 0 {
        return Err("size must be greater than 0".to_string());
    }
    Ok(bytes)
}

/// Human form of a byte count: the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (unit, m) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= m && bytes % m == 0 {
            return format!("{}{unit}", bytes / m);
        }
    }
    format!("{bytes}B")
}

/// A size for people: exact when it is a whole number of a binary unit (`256MiB`), else to
/// one decimal in the largest unit it reaches (`22.9GiB`).
pub fn human_size(bytes: u64) -> String {
    for (unit, m) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= m {
            if bytes % m == 0 {
                return format!("{}{unit}", bytes / m);
            }
            return format!("{:.1}{unit}", bytes as f64 / m as f64);
        }
    }
    format!("{bytes}B")
}

/// Names are `[a-z0-9][a-z0-9-]{0,30}`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 31
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name `{name}`: names are 1 to 31 characters of a-z, 0-9 and '-', starting with a letter or digit"
        ))
    }
}

/// Octal permission bits, `"0755"` or `"755"`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0o");
    match u32::from_str_radix(t, 8) {
        Ok(m) if !t.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(format!(
            "invalid mode `{s}`: expected octal permission bits such as \"0644\" or \"0755\""
        )),
    }
}

pub fn check_sha256(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "invalid sha256 `{s}`: expected 64 hexadecimal characters, got {}",
            s.chars().count()
        ))
    }
}

/// A minisign public key: base64 of "Ed" + 8-byte key id + 32-byte Ed25519 key.
pub fn check_minisign_key(s: &str) -> Result<(), String> {
    match base64_decode(s.trim()) {
        Some(b) if b.len() == 42 && &b[..2] == b"Ed" => Ok(()),
        _ => Err(format!(
            "invalid minisign public_key `{s}`: expected the base64 key from the second line of a minisign .pub file (56 characters starting with RW)"
        )),
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A unicast MAC like `02:00:00:00:00:01`, lowercased.
pub fn parse_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    let first = parts.first().and_then(|p| u8::from_str_radix(p, 16).ok());
    match (ok, first) {
        (true, Some(b)) if b & 1 == 0 => Ok(s.to_ascii_lowercase()),
        _ => Err(format!(
            "invalid mac `{s}`: expected a unicast address such as \"02:fc:00:00:00:01\""
        )),
    }
}

/// Byte offsets → 1-based line and column (in characters), in O(log lines) per lookup:
/// origins are computed for every resource, so scanning from the start each time would make
/// validation quadratic in the manifest's size.
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

/// 1-based line and column of a byte offset (one-off; see [`LineIndex`] for many).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(text, offset)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let bad = |s: &str| {
            Err(format!("invalid size `{s}`: expected a number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. \"512MiB\", or a number of bytes"))
        };
        let cases: Vec<(&str, Result<u64, String>)> = vec![
            ("512MiB", Ok(512 << 20)),
            ("4GiB", Ok(4 << 30)),
            ("4 GiB", Ok(4 << 30)),
            ("1TiB", Ok(1 << 40)),
            ("64KiB", Ok(64 << 10)),
            ("1024", Ok(1024)),
            ("10B", Ok(10)),
            ("0", Err("size must be greater than 0".to_string())),
            ("4GB", bad("4GB")),
            ("4G", bad("4G")),
            ("-1", bad("-1")),
            ("lots", bad("lots")),
            ("1.5GiB", bad("1.5GiB")),
            ("", bad("")),
            ("99999999999TiB", bad("99999999999TiB")),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), want, "{input}");
        }
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn names_modes_macs_keys() {
        for ok in ["a", "agent1", "worker-10", "0abc", &"a".repeat(31)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "Agent", "a_b", "a.b", &"a".repeat(32)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        assert_eq!(
            parse_mac("02:AB:00:00:00:01"),
            Ok("02:ab:00:00:00:01".into())
        );
        assert!(parse_mac("01:00:00:00:00:01").is_err(), "multicast");
        assert!(parse_mac("02:00:00:00:01").is_err());
        assert_eq!(
            check_minisign_key("RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"),
            Ok(())
        );
        assert!(check_minisign_key("RWQ").is_err());
        assert_eq!(line_col("ab\ncd\n", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }
}
