//! Deterministic Falcon event lines.
//!
//! A line is a pure function of (seed, customer id, partition, offset), so nothing is stored:
//! the feed and [`crate::FalconEmulator::event_line`] regenerate the same bytes on demand.
//! The shapes follow the public samples of reference §2.4, including their quirks:
//! `ProcessId` above 2^53, `ProcessId` as a string in `CustomerIOCEvent`, `IncidentType` as
//! int or string, the `EPPDetectionSummaryEvent` casing variant and a missing `version`.

use std::io::Write as _;
use std::sync::OnceLock;

use crate::faults::MalformedKind;

/// 2026-01-01T00:00:00Z in epoch milliseconds: the creation time of offset 0.
const BASE_MS: u64 = 1_767_225_600_000;

/// SplitMix64 finalizer: a cheap, well-mixed hash.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Epp,
    Incident,
    Auth,
    User,
    RtrStart,
    RtrEnd,
    Ioc,
}

fn kind_of(h: u64) -> Kind {
    match h % 100 {
        0..30 => Kind::Epp,
        30..38 => Kind::Incident,
        38..50 => Kind::Auth,
        50..70 => Kind::User,
        70..75 => Kind::RtrStart,
        75..80 => Kind::RtrEnd,
        _ => Kind::Ioc,
    }
}

fn pad_source() -> &'static [u8] {
    static PAD: OnceLock<Vec<u8>> = OnceLock::new();
    PAD.get_or_init(|| {
        const ALPHABET: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.:/";
        let mut h = 0x1234_5678u64;
        (0..(1 << 17))
            .map(|_| {
                h = mix(h);
                ALPHABET[(h % ALPHABET.len() as u64) as usize]
            })
            .collect()
    })
}

/// Generates event lines for one customer.
#[derive(Debug, Clone)]
pub(crate) struct Generator {
    seed: u64,
    customer_id: String,
    event_size_bytes: usize,
}

/// The JSON-escaped field that carries padding, and where `InvalidUtf8` puts its bad bytes.
const PAD_FIELD: &[u8] = br#""Comment":""#;

impl Generator {
    pub(crate) fn new(seed: u64, customer_id: String, event_size_bytes: usize) -> Self {
        Self {
            seed,
            customer_id,
            event_size_bytes,
        }
    }

    fn hash(&self, partition: u32, offset: u64) -> u64 {
        mix(self.seed ^ mix(u64::from(partition) << 48 ^ offset))
    }

    /// `metadata.eventType` of the event at that position, without building the line.
    pub(crate) fn event_type(&self, partition: u32, offset: u64) -> &'static str {
        let h = self.hash(partition, offset);
        match kind_of(h) {
            // About one detection in sixteen uses the older casing (reference §2.1).
            Kind::Epp if (h >> 20).is_multiple_of(16) => "EPPDetectionSummaryEvent",
            Kind::Epp => "EppDetectionSummaryEvent",
            Kind::Incident => "IncidentSummaryEvent",
            Kind::Auth => "AuthActivityAuditEvent",
            Kind::User => "UserActivityAuditEvent",
            Kind::RtrStart => "RemoteResponseSessionStartEvent",
            Kind::RtrEnd => "RemoteResponseSessionEndEvent",
            Kind::Ioc => "CustomerIOCEvent",
        }
    }

    /// `metadata.eventCreationTime` of the event at that position.
    pub(crate) fn created_ms(partition: u32, offset: u64) -> u64 {
        BASE_MS + offset * 250 + u64::from(partition) * 7
    }

    /// Append the line (without line ending) to `out`.
    pub(crate) fn write_line(&self, partition: u32, offset: u64, out: &mut Vec<u8>) {
        self.write_event(partition, offset, true, self.event_size_bytes, out);
    }

    /// Append the replacement line for a `Malformed` fault.
    pub(crate) fn write_malformed(
        &self,
        partition: u32,
        offset: u64,
        kind: &MalformedKind,
        out: &mut Vec<u8>,
    ) {
        match kind {
            MalformedKind::InvalidJson => {
                let start = out.len();
                self.write_event(partition, offset, true, self.event_size_bytes, out);
                let half = start + (out.len() - start) / 2;
                out.truncate(half);
            }
            MalformedKind::Oversize { bytes } => {
                self.write_event(partition, offset, true, *bytes, out);
            }
            MalformedKind::MissingOffset => {
                self.write_event(partition, offset, false, self.event_size_bytes, out);
            }
            MalformedKind::InvalidUtf8 => {
                let start = out.len();
                self.write_event(partition, offset, true, self.event_size_bytes, out);
                let at = memfind(&out[start..], PAD_FIELD)
                    .map_or(out.len() - 2, |p| start + p + PAD_FIELD.len());
                out.splice(at..at, [0xff, 0xfe, 0xc3, 0x28]);
            }
            MalformedKind::NotAnObject => {
                let _ = write!(out, r#"["metadata",{{"offset":{offset}}}]"#);
            }
        }
    }

    #[allow(clippy::too_many_lines)] // one template per event type, kept side by side
    fn write_event(
        &self,
        partition: u32,
        offset: u64,
        with_offset: bool,
        size: usize,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        let h = self.hash(partition, offset);
        let h2 = mix(h);
        let h3 = mix(h2);
        let kind = kind_of(h);
        let cid = &self.customer_id;
        let created = Self::created_ms(partition, offset);
        let secs = created / 1000;
        let _ = write!(out, r#"{{"metadata":{{"customerIDString":"{cid}","#);
        if with_offset {
            let _ = write!(out, r#""offset":{offset},"#);
        }
        let _ = write!(
            out,
            r#""eventType":"{}","eventCreationTime":{created}"#,
            self.event_type(partition, offset)
        );
        // `version` is absent from some real events (reference §2.1).
        if !(h2 >> 8).is_multiple_of(20) {
            out.extend_from_slice(br#","version":"1.0""#);
        }
        out.extend_from_slice(br#"},"event":{"#);
        let host = h2 % 10_000;
        let user = [
            "Administrator",
            "alice.smith@example.com",
            "bob.jones@example.com",
            "svc-backup",
        ][(h3 % 4) as usize];
        let ip = format_args!(
            "10.{}.{}.{}",
            (h2 >> 8) & 0xff,
            (h2 >> 16) & 0xff,
            ((h2 >> 24) & 0xfe) + 1
        );
        match kind {
            Kind::Epp => {
                // Some ProcessIds exceed 2^53 (reference §2.3).
                let pid = if h3.is_multiple_of(8) {
                    1_719_309_930_613_520_072 + (h2 % 1_000_000)
                } else {
                    40_000_000_000 + (h2 % 9_000_000_000)
                };
                let sev = [10u8, 30, 50, 70, 90][(h3 >> 4) as usize % 5];
                let sev_name =
                    ["Informational", "Low", "Medium", "High", "Critical"][(h3 >> 4) as usize % 5];
                let pattern = 10_000 + h3 % 500;
                let _ = write!(
                    out,
                    r#""ProcessStartTime":{s0},"ProcessEndTime":{s1},"ProcessId":{pid},"ParentProcessId":{ppid},"Hostname":"HOST-{host:04}","UserName":"{user}","Name":"Suspicious Activity","Description":"A process exhibited behavior consistent with credential theft.","Severity":{sev},"SeverityName":"{sev_name}","FileName":"choice.exe","FilePath":"\\Device\\HarddiskVolume4\\Windows\\System32\\choice.exe","CommandLine":"choice  /m crowdstrike_sample_detection","SHA256String":"{h:016x}{h2:016x}{h3:016x}{h:016x}","MD5String":"{h2:016x}{h3:016x}","AgentId":"{h3:016x}{h:016x}","CompositeId":"{cid}:ind:{h3:016x}{h:016x}:{pid}-{pattern}-{offset}","LocalIP":"{ip}","Tactic":"Credential Access","Technique":"OS Credential Dumping","Objective":"Gain Access","PatternDispositionValue":0,"PatternId":{pattern},"Type":"ldt","DataDomains":"Endpoint","FalconHostLink":"https://falcon.crowdstrike.com/activity-v2/detections/{cid}:ind:{h3:016x}:{pid}?_cid={cid}","#,
                    s0 = secs - 60,
                    s1 = secs - 59,
                    ppid = pid - 1 - (h % 1000),
                );
            }
            Kind::Incident => {
                let _ = write!(
                    out,
                    r#""IncidentStartTime":{s0},"IncidentEndTime":{secs},"FalconHostLink":"https://falcon.crowdstrike.com/crowdscore/incidents/details/inc:{h:016x}?_cid={cid}","State":"open","FineScore":{score}.{frac},"LateralMovement":{lm},"#,
                    s0 = secs - 3600,
                    score = h3 % 10,
                    frac = h2 % 10,
                    lm = h3 % 2,
                );
                // IncidentType is an int or a string depending on the incident (reference §2.3).
                match (h3 >> 8) % 4 {
                    0 => out.extend_from_slice(br#""IncidentType":"DOMAIN_COMPROMISE","#),
                    1 => out.extend_from_slice(br#""IncidentType":"UNUSUAL_ACTIVITY","#),
                    n => {
                        let _ = write!(out, r#""IncidentType":{},"#, n - 1);
                    }
                }
                let _ = write!(
                    out,
                    r#""IncidentID":"inc:{h2:016x}:{h3:016x}","HostID":"{h:016x}{h2:016x}","LMHostIDs":["{h3:016x}{h:016x}"],"#
                );
            }
            Kind::Auth => {
                let op = [
                    "streamStarted",
                    "streamStopped",
                    "userAuthenticate",
                    "twoFactorAuthenticate",
                ][(h3 % 4) as usize];
                let _ = write!(
                    out,
                    r#""UserId":"api-client-id:{h2:016x}{h3:016x}","UserIp":"{ip}","OperationName":"{op}","ServiceName":"Crowdstrike Streaming API","Success":true,"UTCTimestamp":{secs},"AuditKeyValues":[{{"Key":"partition","ValueString":"{partition}"}},{{"Key":"offset","ValueString":"-1"}},{{"Key":"appId","ValueString":"testbench"}},{{"Key":"eventType","ValueString":"All event type(s)"}}],"#
                );
            }
            Kind::User => {
                let _ = write!(
                    out,
                    r#""UserId":"{user}","UserIp":"{ip}","OperationName":"detection_update","ServiceName":"detections","AuditKeyValues":[{{"Key":"detection_id","ValueString":"ldt:{h2:016x}:{h3}"}}],"UTCTimestamp":{secs},"Attributes":{{"detection_id":"ldt:{h2:016x}:{h3}"}},"#
                );
            }
            Kind::RtrStart | Kind::RtrEnd => {
                let field = if kind == Kind::RtrStart {
                    "StartTimestamp"
                } else {
                    "EndTimestamp"
                };
                let _ = write!(
                    out,
                    r#""SessionId":"{h2:016x}{h3:016x}","HostnameField":"host-{host:04}","UserName":"{user}","{field}":{secs},"#
                );
            }
            Kind::Ioc => {
                let _ = write!(out, r#""AgentIdString":"{h3:016x}{h:016x}","#);
                // ProcessId is a string here, sometimes empty (reference §2.3).
                if h3.is_multiple_of(10) {
                    out.extend_from_slice(br#""ProcessId":"","#);
                } else {
                    let _ = write!(
                        out,
                        r#""ProcessId":"{}","#,
                        10_000_000_000 + h2 % 1_000_000_000
                    );
                }
                let _ = write!(
                    out,
                    r#""ComputerName":"DESKTOP-{host:04}","MD5String":"{h2:016x}{h3:016x}","ParentProcessId":"{ppid}","ProcessStartTime":{secs},"FileName":"Notepad.exe","FilePath":"\\Device\\HarddiskVolume3\\Windows\\System32","CommandLine":"\"C:\\Windows\\system32\\Notepad.exe\"","DeviceId":"{h3:016x}{h:016x}","#,
                    ppid = 10_000_000_000 + h3 % 1_000_000_000,
                );
            }
        }
        out.extend_from_slice(PAD_FIELD);
        let written = out.len() - start + 3; // closing `"}}`
        if size > written {
            let want = size - written;
            let pad = pad_source();
            let from = (h3 as usize) % (pad.len() / 2);
            let mut left = want;
            while left > 0 {
                let take = left.min(pad.len() - from);
                out.extend_from_slice(&pad[from..from + take]);
                left -= take;
            }
        }
        out.extend_from_slice(br#""}}"#);
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> Generator {
        Generator::new(7, "0123456789abcdef0123456789abcdef".into(), 1500)
    }

    #[test]
    fn lines_are_deterministic_valid_json_of_about_the_target_size() {
        let g = generator();
        for offset in 1..2000 {
            let mut a = Vec::new();
            let mut b = Vec::new();
            g.write_line(0, offset, &mut a);
            g.write_line(0, offset, &mut b);
            assert_eq!(a, b);
            let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
            assert_eq!(v["metadata"]["offset"].as_u64(), Some(offset));
            assert_eq!(
                v["metadata"]["eventType"].as_str(),
                Some(g.event_type(0, offset))
            );
            assert!(v["event"].is_object());
            assert!(a.len() >= 1500 && a.len() < 1600, "len {}", a.len());
        }
    }

    #[test]
    fn quirks_appear() {
        let g = generator();
        let mut saw = (false, false, false, false, false);
        for offset in 1..5000 {
            let mut line = Vec::new();
            g.write_line(0, offset, &mut line);
            let text = String::from_utf8(line).unwrap();
            saw.0 |= text.contains("EPPDetectionSummaryEvent");
            saw.1 |= text.contains(r#""IncidentType":"DOMAIN_COMPROMISE""#);
            saw.2 |= text.contains("CustomerIOCEvent") && text.contains(r#""ProcessId":"1"#);
            saw.3 |= !text.contains(r#""version""#);
            saw.4 |= text.contains(r#""ProcessId":17193"#);
        }
        assert_eq!(saw, (true, true, true, true, true));
    }

    #[test]
    fn malformed_kinds_are_bad_in_the_intended_way() {
        let g = generator();
        let mut line = Vec::new();
        g.write_malformed(0, 5, &MalformedKind::InvalidJson, &mut line);
        assert!(serde_json::from_slice::<serde_json::Value>(&line).is_err());
        line.clear();
        g.write_malformed(0, 5, &MalformedKind::InvalidUtf8, &mut line);
        assert!(std::str::from_utf8(&line).is_err());
        line.clear();
        g.write_malformed(0, 5, &MalformedKind::MissingOffset, &mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(v["metadata"].get("offset").is_none());
        line.clear();
        g.write_malformed(0, 5, &MalformedKind::Oversize { bytes: 100_000 }, &mut line);
        assert_eq!(line.len(), 100_000);
        line.clear();
        g.write_malformed(0, 5, &MalformedKind::NotAnObject, &mut line);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&line)
                .unwrap()
                .is_array()
        );
    }
}
