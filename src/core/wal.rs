//! The change log under the datastore: what each acknowledged batch of changes did, appended as
//! one checksummed frame, so that a change is durable after one small write and one fdatasync
//! instead of a rewrite of the whole pool.
//!
//! A log file is a 32-byte header (magic, format version, the store it belongs to, its
//! generation) followed by frames, and zeros up to its preallocated size:
//!
//! ```text
//! frame := len: u32 LE | crc32c(len ‖ payload): u32 LE | payload: JSON array of records
//! ```
//!
//! One frame is one group commit, so a batch is replayed whole or not at all. Records are
//! effects, not requests: `Assign` names the address the pool chose and `Release` the end of its
//! cooldown, so replay does not depend on the clock or on which cooldowns had been expired.
//!
//! Scanning stops at the first frame that does not check out. If nothing but zeros follows, the
//! log simply ends there; if no valid frame follows anywhere, it is a torn tail — a crash in
//! the middle of the last append, which was never acknowledged — discarded and counted; if a
//! valid frame follows, a record before the tail is damaged and recovery stops.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::crc32c;
use super::datastore::{Allocation, Datastore, PodInfo};
use super::pool6::Allocation6;
use super::types::{EniId, PodKey, Prefix28, Prefix80, UnixMillis};

/// The first eight bytes of every log.
pub const MAGIC: [u8; 8] = *b"PFXDLOG\0";
/// The log format this build writes and reads.
pub const LOG_VERSION: u32 = 1;
/// Size of the log header.
pub const HEADER_LEN: usize = 32;
/// Size of a frame's length and checksum.
pub const FRAME_OVERHEAD: usize = 8;
/// Largest frame payload read back; a bigger batch is written as a snapshot instead.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Which snapshot a log continues: the store's random id and the snapshot's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    /// Random id of the store, the same in its snapshot.
    pub store: u64,
    /// The generation of the snapshot this log continues.
    pub generation: u64,
}

impl LogHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&self.store.to_le_bytes());
        b[20..28].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::checksum(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a header; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER_LEN {
            return Err(format!(
                "{} bytes, shorter than a log header ({HEADER_LEN})",
                b.len()
            ));
        }
        if b[..8] != MAGIC {
            return Err("not a prefixd log (bad magic)".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if crc32c::checksum(&b[..28]) != u32_at(28) {
            return Err("the header's checksum does not match".into());
        }
        let version = u32_at(8);
        if version != LOG_VERSION {
            return Err(format!(
                "log format version {version}; this prefixd reads version {LOG_VERSION}"
            ));
        }
        Ok(Self {
            store: u64_at(12),
            generation: u64_at(20),
        })
    }
}

/// What one change did to the pool, as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// `key` was given `address` (a stranded entry of the same key ends).
    Assign {
        /// The attachment.
        key: PodKey,
        /// The address chosen.
        address: Ipv4Addr,
        /// K8S_POD_NAMESPACE.
        namespace: String,
        /// K8S_POD_NAME.
        name: String,
        /// When.
        at: UnixMillis,
    },
    /// `key`'s address was taken back and cools until `until` (a stranded one just ends).
    Release {
        /// The attachment.
        key: PodKey,
        /// End of the cooldown.
        until: UnixMillis,
    },
    /// An empty ENI.
    AddEni {
        /// Its id.
        id: EniId,
        /// Its device index.
        device_index: u32,
        /// Whether it is the primary.
        primary: bool,
    },
    /// An ENI and its blocks dropped (allocations in them stranded).
    RemoveEni {
        /// Its id.
        id: EniId,
    },
    /// A prefix attached.
    AddPrefix {
        /// The ENI.
        eni: EniId,
        /// The prefix.
        prefix: Prefix28,
    },
    /// A prefix detached (allocations in it stranded).
    RemovePrefix {
        /// The prefix.
        prefix: Prefix28,
    },
    /// A secondary address attached.
    AddIp {
        /// The ENI.
        eni: EniId,
        /// The address.
        address: Ipv4Addr,
    },
    /// A secondary address detached.
    RemoveIp {
        /// The address.
        address: Ipv4Addr,
    },
    /// `key` was given the IPv6 `address`.
    Assign6 {
        /// The attachment.
        key: PodKey,
        /// The address chosen.
        address: Ipv6Addr,
        /// K8S_POD_NAMESPACE.
        namespace: String,
        /// K8S_POD_NAME.
        name: String,
        /// When.
        at: UnixMillis,
    },
    /// `key`'s IPv6 address was taken back and cools until `until`.
    Release6 {
        /// The attachment.
        key: PodKey,
        /// End of the cooldown.
        until: UnixMillis,
    },
    /// The node's /80 (another one's allocations stranded).
    SetPrefix6 {
        /// The prefix.
        prefix: Prefix80,
    },
}

impl Record {
    /// The record of `key` being given `alloc`.
    pub fn assign(key: &PodKey, alloc: &Allocation) -> Self {
        Self::Assign {
            key: key.clone(),
            address: alloc.address,
            namespace: alloc.pod.namespace.clone(),
            name: alloc.pod.name.clone(),
            at: alloc.allocated_at,
        }
    }

    /// The record of `key` being given the IPv6 `alloc`.
    pub fn assign6(key: &PodKey, alloc: &Allocation6) -> Self {
        Self::Assign6 {
            key: key.clone(),
            address: alloc.address,
            namespace: alloc.pod.namespace.clone(),
            name: alloc.pod.name.clone(),
            at: alloc.allocated_at,
        }
    }

    /// Applies the record to a datastore being recovered. An error means the log contradicts
    /// the state it continues.
    pub fn replay(&self, ds: &mut Datastore) -> Result<(), String> {
        match self {
            Self::Assign {
                key,
                address,
                namespace,
                name,
                at,
            } => ds.replay_assign(
                key.clone(),
                Allocation {
                    address: *address,
                    pod: PodInfo {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    },
                    allocated_at: *at,
                },
            ),
            Self::Release { key, until } => ds
                .release_until(key, *until)
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::AddEni {
                id,
                device_index,
                primary,
            } => ds
                .add_eni(id.clone(), *device_index, *primary)
                .map_err(|e| e.to_string()),
            // Removals replay forced: the live pool may have expired a cooldown the replayed
            // one still holds, and what a forced removal adds (stranding) the live one did too.
            Self::RemoveEni { id } => ds.remove_eni(id, true).map(drop).map_err(|e| e.to_string()),
            Self::AddPrefix { eni, prefix } => {
                ds.add_prefix(eni, *prefix).map_err(|e| e.to_string())
            }
            Self::RemovePrefix { prefix } => ds
                .remove_prefix(*prefix, true)
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::AddIp { eni, address } => ds
                .add_secondary_ip(eni, *address)
                .map_err(|e| e.to_string()),
            Self::RemoveIp { address } => ds
                .remove_secondary_ip(*address, true)
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Assign6 {
                key,
                address,
                namespace,
                name,
                at,
            } => ds.v6_mut().restore(
                key.clone(),
                Allocation6 {
                    address: *address,
                    pod: PodInfo {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    },
                    allocated_at: *at,
                },
            ),
            Self::Release6 { key, until } => ds
                .v6_mut()
                .release_until(key, *until)
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::SetPrefix6 { prefix } => ds
                .v6_mut()
                .set_prefix(*prefix, true)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Appends one frame holding `records` to `out`.
pub fn encode_frame(records: &[Record], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_OVERHEAD]);
    serde_json::to_writer(&mut *out, records).expect("records serialize");
    let len = u32::try_from(out.len() - start - FRAME_OVERHEAD).expect("a frame below 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::extend(crc32c::checksum(&len.to_le_bytes()), &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What scanning a log's frames found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The batches, in order.
    pub batches: Vec<Vec<Record>>,
    /// Offset (from the start of the frames) just past the last good frame.
    pub end: usize,
    /// Bytes of a torn last frame, discarded (0 when the log ended cleanly).
    pub torn_bytes: usize,
}

/// A frame before the tail that does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged record at byte {offset} of the log ({why}), with valid records after it")]
pub struct ScanError {
    /// Offset of the damaged frame in the file.
    pub offset: usize,
    /// What is wrong with it.
    pub why: String,
}

/// The frame at the start of `b`: its records and length, or why it is not one.
fn frame_at(b: &[u8]) -> Result<(Vec<Record>, usize), String> {
    if b.len() < FRAME_OVERHEAD {
        return Err("cut short".into());
    }
    let len = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Err(format!("length {len}"));
    }
    let Some(payload) = b.get(FRAME_OVERHEAD..FRAME_OVERHEAD + len) else {
        return Err(format!("length {len} runs past the end"));
    };
    if crc32c::extend(crc32c::checksum(&b[..4]), payload) != crc {
        return Err("checksum mismatch".into());
    }
    let records = serde_json::from_slice(payload).map_err(|e| format!("unreadable: {e}"))?;
    Ok((records, FRAME_OVERHEAD + len))
}

/// Reads the frames that follow a header. `base` is their offset in the file (for messages).
pub fn scan(frames: &[u8], base: usize) -> Result<Scan, ScanError> {
    let mut out = Scan::default();
    let mut at = 0;
    while at < frames.len() {
        match frame_at(&frames[at..]) {
            Ok((records, n)) => {
                out.batches.push(records);
                at += n;
            }
            Err(why) => {
                let rest = &frames[at..];
                let Some(last) = rest.iter().rposition(|b| *b != 0) else {
                    break; // zeros to the end: the log ends here
                };
                if let Some(next) = (1..=last).find(|&i| frame_at(&rest[i..]).is_ok()) {
                    return Err(ScanError {
                        offset: base + at,
                        why: format!(
                            "{why}; the next valid record is at byte {}",
                            base + at + next
                        ),
                    });
                }
                out.torn_bytes = last + 1;
                break;
            }
        }
    }
    out.end = at;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> PodKey {
        PodKey::new("net", c, "eth0").unwrap()
    }

    fn batch(c: &str) -> Vec<Record> {
        vec![
            Record::Assign {
                key: key(c),
                address: Ipv4Addr::new(10, 0, 0, 17),
                namespace: "ns".into(),
                name: "p".into(),
                at: UnixMillis(5),
            },
            Record::Release {
                key: key(c),
                until: UnixMillis(30_005),
            },
        ]
    }

    fn log(batches: &[Vec<Record>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in batches {
            encode_frame(b, &mut out);
        }
        out
    }

    #[test]
    fn header_round_trips_and_refuses_others() {
        let h = LogHeader {
            store: 0xdead_beef,
            generation: 7,
        };
        let b = h.encode();
        assert_eq!(LogHeader::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[0] = b'X';
        assert!(LogHeader::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = b;
        bad[21] ^= 1;
        assert!(LogHeader::decode(&bad).unwrap_err().contains("checksum"));
        assert!(LogHeader::decode(&b[..10]).is_err());
    }

    #[test]
    fn frames_round_trip_with_zero_padding() {
        let batches = vec![
            batch("a"),
            batch("b"),
            vec![Record::RemoveIp {
                address: Ipv4Addr::new(10, 0, 0, 9),
            }],
        ];
        let mut bytes = log(&batches);
        let end = bytes.len();
        bytes.resize(end + 4096, 0);
        let s = scan(&bytes, HEADER_LEN).unwrap();
        assert_eq!(s.batches, batches);
        assert_eq!(s.end, end);
        assert_eq!(s.torn_bytes, 0);
    }

    #[test]
    fn a_torn_last_frame_is_discarded_at_every_cut() {
        let batches = vec![batch("a"), batch("b")];
        let whole = log(&batches);
        let first = log(&batches[..1]).len();
        for cut in first..whole.len() {
            for pad in [0usize, 100] {
                let mut b = whole[..cut].to_vec();
                b.resize(cut + pad, 0);
                let s = scan(&b, 0).unwrap();
                assert_eq!(s.batches, batches[..1], "cut {cut}");
                assert_eq!(s.end, first);
                let nonzero = whole[first..cut].iter().rposition(|x| *x != 0);
                assert_eq!(s.torn_bytes, nonzero.map_or(0, |i| i + 1), "cut {cut}");
            }
        }
    }

    #[test]
    fn damage_before_the_tail_is_an_error_naming_the_offset() {
        let batches = vec![batch("a"), batch("b"), batch("c")];
        let mut b = log(&batches);
        let second = log(&batches[..1]).len();
        b[second + 20] ^= 0x40;
        let e = scan(&b, HEADER_LEN).unwrap_err();
        assert_eq!(e.offset, HEADER_LEN + second);
        assert!(e.to_string().contains("checksum"), "{e}");
        // The same damage in the last frame is a torn tail.
        let mut b = log(&batches);
        let last = log(&batches[..2]).len();
        b[last + 20] ^= 0x40;
        let s = scan(&b, 0).unwrap();
        assert_eq!(s.batches.len(), 2);
        assert!(s.torn_bytes > 0);
    }
}
