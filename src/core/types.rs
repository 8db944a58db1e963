//! Validated identifiers and address types shared by every part of prefixd.
//!
//! Each type checks its input once, on construction (`FromStr`, `TryFrom<String>`, serde), so
//! that the rest of the code never sees a malformed ENI id or a misaligned prefix.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value could not become one of the types in this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// An EC2 id without its prefix (`eni-`, `i-`, `subnet-`) or with characters other than
    /// lowercase hex after it.
    #[error(
        "{value:?} is not a valid {kind}: expected {prefix} followed by 1 to 17 lowercase hex digits"
    )]
    BadId {
        /// What was being parsed ("ENI id", ...).
        kind: &'static str,
        /// The expected leading text.
        prefix: &'static str,
        /// The rejected input.
        value: String,
    },
    /// Not of the form `a.b.c.d/len`.
    #[error("{value:?} is not an IPv4 CIDR (expected a.b.c.d/28)")]
    BadCidr {
        /// The rejected input.
        value: String,
    },
    /// A CIDR whose length is not 28.
    #[error("{value:?} is a /{len}, not a /28: delegated IPv4 prefixes are always /28")]
    NotSlash28 {
        /// The rejected input.
        value: String,
        /// Its prefix length.
        len: u8,
    },
    /// A /28 whose address has host bits set.
    #[error("{value:?} is not aligned to 16 addresses: did you mean {aligned}/28?")]
    Misaligned {
        /// The rejected input.
        value: String,
        /// The aligned network that contains it.
        aligned: Ipv4Addr,
    },
    /// Not of the form `a:b::/len`.
    #[error("{value:?} is not an IPv6 CIDR (expected an a:b:c:d:e::/80)")]
    BadCidr6 {
        /// The rejected input.
        value: String,
    },
    /// An IPv6 CIDR whose length is not 80.
    #[error("{value:?} is a /{len}, not a /80: delegated IPv6 prefixes are always /80")]
    NotSlash80 {
        /// The rejected input.
        value: String,
        /// Its prefix length.
        len: u8,
    },
    /// A /80 whose address has host bits set.
    #[error("{value:?} has bits set below /80: did you mean {aligned}/80?")]
    Misaligned6 {
        /// The rejected input.
        value: String,
        /// The aligned network that contains it.
        aligned: Ipv6Addr,
    },
    /// One part of a pod key is empty or holds characters the CNI spec forbids.
    #[error("invalid {field} {value:?}: {why}")]
    BadPodKey {
        /// Which part: "network name", "container id" or "interface name".
        field: &'static str,
        /// The rejected input.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn valid_hex_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        (1..=17).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

macro_rules! ec2_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id as EC2 writes it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = TypeError;
            fn from_str(s: &str) -> Result<Self, TypeError> {
                Self::try_from(s.to_owned())
            }
        }

        impl TryFrom<String> for $name {
            type Error = TypeError;
            fn try_from(s: String) -> Result<Self, TypeError> {
                if valid_hex_id(&s, $prefix) {
                    Ok(Self(s))
                } else {
                    Err(TypeError::BadId { kind: $kind, prefix: $prefix, value: s })
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ec2_id!(
    /// An elastic network interface id, `eni-` and hex.
    EniId,
    "eni-",
    "ENI id"
);
ec2_id!(
    /// An EC2 instance id, `i-` and hex.
    InstanceId,
    "i-",
    "instance id"
);
ec2_id!(
    /// A VPC subnet id, `subnet-` and hex.
    SubnetId,
    "subnet-",
    "subnet id"
);

/// An aligned IPv4 /28: the unit EC2 delegates to an ENI.
///
/// All 16 addresses are usable by pods; unlike a subnet, a delegated prefix has no network or
/// broadcast address (so `ipnet`'s `hosts()`, which drops two, is not used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix28(u32);

impl Prefix28 {
    /// Addresses in a /28.
    pub const SIZE: u32 = 16;

    /// The prefix whose first address is `base`, which must be 16-aligned.
    pub fn new(base: Ipv4Addr) -> Result<Self, TypeError> {
        let raw = u32::from(base);
        if raw % Self::SIZE != 0 {
            return Err(TypeError::Misaligned {
                value: format!("{base}/28"),
                aligned: Ipv4Addr::from(raw & !(Self::SIZE - 1)),
            });
        }
        Ok(Self(raw))
    }

    /// The /28 that contains `addr`.
    pub fn containing(addr: Ipv4Addr) -> Self {
        Self(u32::from(addr) & !(Self::SIZE - 1))
    }

    /// First address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(self.0)
    }

    /// First address as an integer.
    pub fn base_u32(self) -> u32 {
        self.0
    }

    /// The address at `index` (0..16).
    pub fn addr(self, index: u8) -> Ipv4Addr {
        debug_assert!(u32::from(index) < Self::SIZE);
        Ipv4Addr::from(self.0 + u32::from(index))
    }

    /// All 16 addresses, in order.
    pub fn addresses(self) -> impl Iterator<Item = Ipv4Addr> {
        (0..Self::SIZE).map(move |i| Ipv4Addr::from(self.0 + i))
    }

    /// Whether `addr` lies in this prefix.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & !(Self::SIZE - 1) == self.0
    }

    /// The position of `addr` in this prefix, if it lies in it.
    pub fn index_of(self, addr: Ipv4Addr) -> Option<u8> {
        self.contains(addr)
            .then(|| (u32::from(addr) - self.0) as u8)
    }

    /// As an `ipnet` network.
    pub fn to_ipnet(self) -> ipnet::Ipv4Net {
        ipnet::Ipv4Net::new(self.network(), 28).expect("28 is a valid IPv4 prefix length")
    }
}

impl FromStr for Prefix28 {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, TypeError> {
        let net: ipnet::Ipv4Net = s.parse().map_err(|_| TypeError::BadCidr {
            value: s.to_owned(),
        })?;
        if net.prefix_len() != 28 {
            return Err(TypeError::NotSlash28 {
                value: s.to_owned(),
                len: net.prefix_len(),
            });
        }
        if net.addr() != net.network() {
            return Err(TypeError::Misaligned {
                value: s.to_owned(),
                aligned: net.network(),
            });
        }
        Ok(Self(u32::from(net.network())))
    }
}

impl TryFrom<String> for Prefix28 {
    type Error = TypeError;
    fn try_from(s: String) -> Result<Self, TypeError> {
        s.parse()
    }
}

impl From<Prefix28> for String {
    fn from(p: Prefix28) -> String {
        p.to_string()
    }
}

impl fmt::Display for Prefix28 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/28", self.network())
    }
}

/// An aligned IPv6 /80: the prefix EC2 delegates to a node's primary ENI in IPv6 mode.
///
/// Its 2^48 addresses are numbered by their low 48 bits (the *index*); index 0 is the prefix's
/// own address, which pods are never given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix80(u128);

impl Prefix80 {
    /// Bits of an address below the prefix.
    pub const HOST_BITS: u32 = 48;
    /// Largest index of an address in the prefix.
    pub const MAX_INDEX: u64 = (1 << Self::HOST_BITS) - 1;

    /// The prefix whose first address is `base`, which must have its low 48 bits clear.
    pub fn new(base: Ipv6Addr) -> Result<Self, TypeError> {
        let raw = u128::from(base);
        let aligned = raw & !u128::from(Self::MAX_INDEX);
        if raw != aligned {
            return Err(TypeError::Misaligned6 {
                value: format!("{base}/80"),
                aligned: Ipv6Addr::from(aligned),
            });
        }
        Ok(Self(raw))
    }

    /// The /80 that contains `addr`.
    pub fn containing(addr: Ipv6Addr) -> Self {
        Self(u128::from(addr) & !u128::from(Self::MAX_INDEX))
    }

    /// First address.
    pub fn network(self) -> Ipv6Addr {
        Ipv6Addr::from(self.0)
    }

    /// The address at `index` (at most [`Self::MAX_INDEX`]).
    pub fn addr(self, index: u64) -> Ipv6Addr {
        debug_assert!(index <= Self::MAX_INDEX);
        Ipv6Addr::from(self.0 | u128::from(index & Self::MAX_INDEX))
    }

    /// The index of `addr` in this prefix, if it lies in it.
    pub fn index_of(self, addr: Ipv6Addr) -> Option<u64> {
        (Self::containing(addr) == self).then(|| (u128::from(addr) as u64) & Self::MAX_INDEX)
    }

    /// As an `ipnet` network.
    pub fn to_ipnet(self) -> ipnet::Ipv6Net {
        ipnet::Ipv6Net::new(self.network(), 80).expect("80 is a valid IPv6 prefix length")
    }
}

impl FromStr for Prefix80 {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, TypeError> {
        let net: ipnet::Ipv6Net = s.parse().map_err(|_| TypeError::BadCidr6 {
            value: s.to_owned(),
        })?;
        if net.prefix_len() != 80 {
            return Err(TypeError::NotSlash80 {
                value: s.to_owned(),
                len: net.prefix_len(),
            });
        }
        if net.addr() != net.network() {
            return Err(TypeError::Misaligned6 {
                value: s.to_owned(),
                aligned: net.network(),
            });
        }
        Ok(Self(u128::from(net.network())))
    }
}

impl TryFrom<String> for Prefix80 {
    type Error = TypeError;
    fn try_from(s: String) -> Result<Self, TypeError> {
        s.parse()
    }
}

impl From<Prefix80> for String {
    fn from(p: Prefix80) -> String {
        p.to_string()
    }
}

impl fmt::Display for Prefix80 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/80", self.network())
    }
}

/// The CNI attachment key: network name, container id and interface name.
///
/// The CNI spec identifies an attachment by these three; a pod with two interfaces on the same
/// network holds two keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "PodKeyParts", into = "PodKeyParts")]
pub struct PodKey {
    network: String,
    container_id: String,
    ifname: String,
}

/// Serde form of a [`PodKey`], checked by [`PodKey::new`] on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodKeyParts {
    network: String,
    container_id: String,
    ifname: String,
}

impl PodKey {
    /// Builds a key, checking each part as the CNI spec does: the network name and container id
    /// are non-empty and made of letters, digits, `_`, `.` and `-`; the interface name is a valid
    /// Linux interface name (1 to 15 bytes, no `/`, `:` or white space, not `.` or `..`).
    pub fn new(
        network: impl Into<String>,
        container_id: impl Into<String>,
        ifname: impl Into<String>,
    ) -> Result<Self, TypeError> {
        let (network, container_id, ifname) = (network.into(), container_id.into(), ifname.into());
        check_name("network name", &network)?;
        check_name("container id", &container_id)?;
        check_ifname(&ifname)?;
        Ok(Self {
            network,
            container_id,
            ifname,
        })
    }

    /// The CNI network name.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The container (sandbox) id.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The interface name inside the container.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// Longest network name or container id (runtimes use 64-character ids): it bounds the
/// socket's largest request, a GC listing every attachment of a full node.
pub const MAX_NAME: usize = 256;

fn check_name(field: &'static str, value: &str) -> Result<(), TypeError> {
    let why = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_NAME {
        "is longer than 256 bytes"
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "may hold only letters, digits, '_', '.' and '-'"
    } else {
        return Ok(());
    };
    Err(TypeError::BadPodKey {
        field,
        value: value.to_owned(),
        why,
    })
}

fn check_ifname(value: &str) -> Result<(), TypeError> {
    let why = if value.is_empty() {
        "must not be empty"
    } else if value.len() > 15 {
        "is longer than 15 bytes (Linux IFNAMSIZ)"
    } else if value == "." || value == ".." {
        "must not be '.' or '..'"
    } else if value
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "must not hold '/', ':' or white space"
    } else {
        return Ok(());
    };
    Err(TypeError::BadPodKey {
        field: "interface name",
        value: value.to_owned(),
        why,
    })
}

impl TryFrom<PodKeyParts> for PodKey {
    type Error = TypeError;
    fn try_from(p: PodKeyParts) -> Result<Self, TypeError> {
        PodKey::new(p.network, p.container_id, p.ifname)
    }
}

impl From<PodKey> for PodKeyParts {
    fn from(k: PodKey) -> Self {
        PodKeyParts {
            network: k.network,
            container_id: k.container_id,
            ifname: k.ifname,
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// Milliseconds since the Unix epoch: wall-clock time as the checkpoint stores it.
///
/// The core never reads a clock; callers pass `now` in, which keeps it deterministic in tests.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(since.as_millis() as u64)
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(self.0.saturating_add(d.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_prefix_and_hex() {
        assert!("eni-0123456789abcdef0".parse::<EniId>().is_ok());
        assert!("eni-1".parse::<EniId>().is_ok());
        assert!("i-0abc".parse::<InstanceId>().is_ok());
        assert!("subnet-0a1b".parse::<SubnetId>().is_ok());
        for bad in [
            "eni-",
            "eni-XYZ",
            "i-0abc",
            "eni-0123456789abcdef01",
            " eni-1",
            "eni-1g",
        ] {
            let err = bad.parse::<EniId>().unwrap_err();
            assert!(err.to_string().contains("ENI id"), "{err}");
        }
        assert!("eni-1".parse::<SubnetId>().is_err());
    }

    #[test]
    fn prefix28_accepts_only_aligned_slash_28() {
        let p: Prefix28 = "10.0.0.16/28".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.16/28");
        assert_eq!(p.addresses().count(), 16);
        assert_eq!(p.addr(0), Ipv4Addr::new(10, 0, 0, 16));
        assert_eq!(p.addr(15), Ipv4Addr::new(10, 0, 0, 31));
        assert!(p.contains(Ipv4Addr::new(10, 0, 0, 31)));
        assert!(!p.contains(Ipv4Addr::new(10, 0, 0, 32)));
        assert_eq!(p.index_of(Ipv4Addr::new(10, 0, 0, 20)), Some(4));

        let e = "10.0.0.5/28".parse::<Prefix28>().unwrap_err();
        assert_eq!(
            e,
            TypeError::Misaligned {
                value: "10.0.0.5/28".into(),
                aligned: Ipv4Addr::new(10, 0, 0, 0)
            }
        );
        assert!(matches!(
            "10.0.0.0/27".parse::<Prefix28>(),
            Err(TypeError::NotSlash28 { len: 27, .. })
        ));
        assert!(matches!(
            "10.0.0.0".parse::<Prefix28>(),
            Err(TypeError::BadCidr { .. })
        ));
        assert!(Prefix28::new(Ipv4Addr::new(10, 0, 0, 8)).is_err());
    }

    #[test]
    fn all_sixteen_addresses_are_usable_unlike_hosts() {
        let p: Prefix28 = "192.168.1.240/28".parse().unwrap();
        assert_eq!(p.to_ipnet().hosts().count(), 14);
        let ours: Vec<_> = p.addresses().collect();
        assert_eq!(ours.len(), 16);
        assert_eq!(ours[0], Ipv4Addr::new(192, 168, 1, 240));
        assert_eq!(ours[15], Ipv4Addr::new(192, 168, 1, 255));
    }

    #[test]
    fn pod_key_checks_each_part() {
        assert!(PodKey::new("aws-cni", "abc123", "eth0").is_ok());
        assert!(PodKey::new("", "abc", "eth0").is_err());
        assert!(PodKey::new("net", "a b", "eth0").is_err());
        assert!(PodKey::new("net", "abc", "").is_err());
        assert!(PodKey::new("net", "abc", "0123456789abcdef").is_err());
        assert!(PodKey::new("net", "abc", "eth/0").is_err());
        assert!(PodKey::new("net", "abc", "..").is_err());
        let e = PodKey::new("net", "", "eth0").unwrap_err();
        assert!(e.to_string().contains("container id"), "{e}");
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let p: Prefix28 = serde_json::from_str("\"10.1.2.48/28\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"10.1.2.48/28\"");
        assert!(serde_json::from_str::<Prefix28>("\"10.1.2.49/28\"").is_err());
        let k = PodKey::new("n", "c", "eth0").unwrap();
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<PodKey>(&j).unwrap(), k);
        assert!(
            serde_json::from_str::<PodKey>(r#"{"network":"n","container_id":"","ifname":"e"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<EniId>("\"eni-zz\"").is_err());
    }
}
