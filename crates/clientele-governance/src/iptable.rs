//! An IP-to-network-owner table: the autonomous system (ASN) and country of an address.
//!
//! Read from the tab-separated format iptoasn.com publishes (public domain, updated hourly, at
//! <https://iptoasn.com>: `ip2asn-combined.tsv` for IPv4 and IPv6, `ip2asn-v4.tsv` for IPv4
//! only), one range per line:
//!
//! ```text
//! range_start<TAB>range_end<TAB>AS_number<TAB>country_code<TAB>AS_description
//! 1.0.0.0<TAB>1.0.0.255<TAB>13335<TAB>US<TAB>CLOUDFLARENET
//! ```
//!
//! Ranges with AS number 0 are "not routed" and answer nothing. Lookups are a binary search
//! over sorted ranges: about 20 steps for the half million ranges of the full table, paid on
//! the pipeline's thread, only when a table is configured.

use std::net::IpAddr;

/// The owner of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub asn: u32,
    /// ISO 3166 alpha-2 country code, two ASCII uppercase letters packed (see [`country_code`]);
    /// 0 when the table has none (`None` or `ZZ`).
    pub country: u16,
}

/// Packs a two-letter country code; `None` for anything else.
pub fn country_code(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    if b.len() != 2 || !b.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let up = [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()];
    if &up == b"ZZ" {
        return None;
    }
    Some(u16::from_be_bytes(up))
}

/// The two letters of a packed country code.
pub fn country_str(code: u16) -> String {
    let [a, b] = code.to_be_bytes();
    if a.is_ascii_uppercase() && b.is_ascii_uppercase() {
        [char::from(a), char::from(b)].iter().collect()
    } else {
        "??".to_string()
    }
}

/// The table, IPv4 and IPv6 ranges apart, each sorted by start and non-overlapping.
#[derive(Debug, Default)]
pub struct IpTable {
    v4: Vec<(u32, u32, Owner)>,
    v6: Vec<(u128, u128, Owner)>,
}

impl IpTable {
    /// Reads a table file. The error names the file, the line and what is wrong with it.
    pub fn load(path: &std::path::Path) -> Result<IpTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "governance.ip_table: cannot read {}: {e}; download ip2asn-combined.tsv from https://iptoasn.com (gunzip it) or remove the setting",
                path.display()
            )
        })?;
        IpTable::parse(&text).map_err(|e| format!("governance.ip_table: {}: {e}", path.display()))
    }

    /// Parses the table's text (see the module's documentation for the format).
    pub fn parse(text: &str) -> Result<IpTable, String> {
        let mut table = IpTable::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: &str| {
                format!(
                    "line {}: {what} (expected range_start, range_end, AS number, country, description, separated by tabs)",
                    i + 1
                )
            };
            let mut cols = line.split('\t');
            let (Some(start), Some(end), Some(asn), country) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                return Err(at("fewer than three columns"));
            };
            let asn: u32 = asn
                .trim()
                .parse()
                .map_err(|_| at(&format!("AS number {asn:?} is not a number")))?;
            let start: IpAddr = start
                .trim()
                .parse()
                .map_err(|_| at(&format!("{start:?} is not an IP address")))?;
            let end: IpAddr = end
                .trim()
                .parse()
                .map_err(|_| at(&format!("{end:?} is not an IP address")))?;
            if asn == 0 {
                // "Not routed": no owner to count.
                continue;
            }
            let owner = Owner {
                asn,
                country: country.and_then(|c| country_code(c.trim())).unwrap_or(0),
            };
            match (start, end) {
                (IpAddr::V4(s), IpAddr::V4(e)) if u32::from(s) <= u32::from(e) => {
                    table.v4.push((u32::from(s), u32::from(e), owner));
                }
                (IpAddr::V6(s), IpAddr::V6(e)) if u128::from(s) <= u128::from(e) => {
                    table.v6.push((u128::from(s), u128::from(e), owner));
                }
                _ => {
                    return Err(at(
                        "the range's start is after its end, or they are of different families",
                    ));
                }
            }
        }
        table.v4.sort_unstable_by_key(|r| r.0);
        table.v6.sort_unstable_by_key(|r| r.0);
        if let Some(w) = table.v4.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(format!(
                "IPv4 ranges overlap: one ends at {} after the next starts at {}",
                std::net::Ipv4Addr::from(w[0].1),
                std::net::Ipv4Addr::from(w[1].0)
            ));
        }
        if let Some(w) = table.v6.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(format!(
                "IPv6 ranges overlap: one ends at {} after the next starts at {}",
                std::net::Ipv6Addr::from(w[0].1),
                std::net::Ipv6Addr::from(w[1].0)
            ));
        }
        Ok(table)
    }

    /// Ranges held (IPv4, IPv6).
    pub fn len(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The owner of an address, if the table has one.
    pub fn lookup(&self, ip: IpAddr) -> Option<Owner> {
        match ip {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(v6)),
            },
        }
    }
}

fn find<T: Ord + Copy>(ranges: &[(T, T, Owner)], ip: T) -> Option<Owner> {
    // The last range starting at or before the address, if it reaches it.
    let at = ranges.partition_point(|r| r.0 <= ip);
    let (_, end, owner) = ranges.get(at.checked_sub(1)?)?;
    (ip <= *end).then_some(*owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "192.0.2.0\t192.0.2.255\t64500\tUS\tEXAMPLE-US\n\
        198.51.100.0\t198.51.100.127\t64501\tDE\tEXAMPLE-DE\n\
        198.51.100.128\t198.51.100.255\t0\tNone\tNot routed\n\
        203.0.113.0\t203.0.113.255\t64502\tJP\tEXAMPLE-JP\n\
        2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64503\tBR\tEXAMPLE-BR\n";

    #[test]
    fn looks_up_both_families_and_skips_unrouted_ranges() {
        let t = IpTable::parse(SAMPLE).unwrap();
        assert_eq!(t.len(), (3, 1));
        let owner = |ip: &str| t.lookup(ip.parse().unwrap());
        assert_eq!(
            owner("192.0.2.77"),
            Some(Owner {
                asn: 64500,
                country: country_code("US").unwrap()
            })
        );
        assert_eq!(owner("198.51.100.127").map(|o| o.asn), Some(64501));
        assert_eq!(owner("198.51.100.128"), None, "not routed");
        assert_eq!(owner("10.0.0.1"), None, "not in the table");
        assert_eq!(owner("203.0.114.0"), None, "past the last range");
        assert_eq!(owner("::ffff:203.0.113.9").map(|o| o.asn), Some(64502));
        assert_eq!(owner("2001:db8::42").map(|o| o.asn), Some(64503));
        assert_eq!(country_str(owner("2001:db8::42").unwrap().country), "BR");
    }

    #[test]
    fn bad_lines_are_named() {
        let e = IpTable::parse("1.0.0.0\t1.0.0.255\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("columns"), "{e}");
        let e = IpTable::parse("# comment\n1.0.0.0\tnope\t13335\tUS\tX\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("\"nope\""), "{e}");
        let e = IpTable::parse("1.0.0.9\t1.0.0.0\t1\tUS\tX\n").unwrap_err();
        assert!(e.contains("start is after its end"), "{e}");
        let e = IpTable::parse("1.0.0.0\t1.0.0.9\t1\tUS\tX\n1.0.0.5\t1.0.0.20\t2\tUS\tY\n")
            .unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        assert!(IpTable::load(std::path::Path::new("/nonexistent/ip2asn.tsv")).is_err());
    }

    #[test]
    fn country_codes_pack_and_unpack() {
        assert_eq!(country_code("us"), country_code("US"));
        assert_eq!(country_code("ZZ"), None);
        assert_eq!(country_code("USA"), None);
        assert_eq!(country_str(country_code("jp").unwrap()), "JP");
    }
}
