#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/seeds/<target>/). Deterministic; rerun after
changing an input layout. Realistic inputs: Falcon event lines shaped like the testbench
generator's (crates/testbench/src/falcon/generator.rs), the shipped configs, Azure responses."""
import json
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CID = "0123456789abcdef0123456789abcdef"


def out(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def event(offset, kind, with_offset=True, version=True):
    meta = {"customerIDString": CID}
    if with_offset:
        meta["offset"] = offset
    meta["eventType"] = kind
    meta["eventCreationTime"] = 1742584040000 + offset * 1000
    if version:
        meta["version"] = "1.0"
    if kind == "EppDetectionSummaryEvent":
        ev = {"ProcessId": 1719309930613520072, "Hostname": "HOST-0042",
              "UserName": "alice.smith@example.com", "Severity": 70, "SeverityName": "High",
              "FilePath": "\\Device\\HarddiskVolume4\\Windows\\System32\\choice.exe",
              "CommandLine": "choice  /m crowdstrike_sample_detection", "LocalIP": "10.1.2.3"}
    elif kind == "IncidentSummaryEvent":
        ev = {"IncidentStartTime": 1742580440, "FineScore": 3.4, "IncidentType": 2,
              "LMHostIDs": ["00ff00ff00ff00ff"], "State": "open"}
    else:
        ev = {"OperationName": "userAuthenticate", "UserId": "bob.jones@example.com",
              "UserIp": "10.9.8.7", "Success": True, "AuditKeyValues": [{"Key": "k", "ValueString": "v\u00e9"}]}
    line = json.dumps({"metadata": meta, "event": ev}, separators=(",", ":"), ensure_ascii=False)
    return line.encode()


def framing():
    kinds = ["EppDetectionSummaryEvent", "IncidentSummaryEvent", "AuthActivityAuditEvent"]
    lines = [event(100 + i, kinds[i % 3], version=i % 5 != 0) for i in range(4)]
    bad = [
        lines[0][: len(lines[0]) // 2],                       # invalid JSON (truncated)
        b'["metadata",{"offset":7}]',                          # not an object
        event(8, kinds[0], with_offset=False),                 # missing offset
        lines[1][:40] + b"\xff\xfe\xc3\x28" + lines[1][40:],   # invalid UTF-8
        b'{"event":{"a":1},"metadata":{"offset":"17","eventType":"A\\u00e9"}}',
        b'{"metadata":{"offset":-4}}',
        b'{"metadata":{"offset":1.5e3,"eventCreationTime":"12"}}',
    ]

    def seed(name, max_sel, cap, cuts, stream):
        header = bytes([max_sel, cap, len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts)
        out("framing", name, header + stream)

    lf = b"\n".join(lines) + b"\n"
    crlf = b"\r\n".join(lines) + b"\r\n"
    mixed = lines[0] + b"\r\n\n" + lines[1] + b"\n \r\n\t\n" + lines[2] + b"\r\n" + lines[3][:30]
    big = 0x80 | 5  # max_line 2048
    seed("lf", big, 200, [], lf)
    seed("crlf-split-at-cr", big, 200, [len(lines[0]) + 1, len(lines[0]) + 2], crlf)
    seed("keepalives-and-tail", big, 64, [3, 500, 501, 1000], mixed)
    seed("bad-lines", big, 32, [10, 20], b"\n".join(bad) + b"\n")
    seed("oversized-small-limit", 40, 8, [5, 41, 42, 43], lf)
    seed("oversized-crlf-boundary", 10, 4, [11], b"0123456789\r\n01234567890\r\nok\n")
    seed("zero-limit", 0, 0, [1], b"a\r\n\n\r\nb\n")


def config():
    base = os.path.join(ROOT, "config")
    for name in ["reference.yaml"] + sorted(os.listdir(os.path.join(base, "examples"))):
        path = os.path.join(base, name) if name == "reference.yaml" else os.path.join(base, "examples", name)
        with open(path, "rb") as f:
            out("config", name, f.read())
    out("config", "interpolation.yaml",
        b"falcon:\n  client_id: ${FALCON_CLIENT_ID}\n  cloud: ${FALCON_CLOUD:-us-1}\n"
        b"  app_id: ${UNSET_VAR}\n  x: ${MULTILINE}\n  y: $${LITERAL}\n  z: ${TRICKY}\n")
    out("config", "flow-mapping.yaml", b"falcon: { client_id: abc, typo: 2 }\nsentinel: [1, 2]\n")
    out("config", "anchors.yaml", b"a: &x [*x]\nb: &y {k: *y}\nfalcon: *missing\n")


def ingest():
    # Layout is `arbitrary`'s: status u16, now_secs u64, now_nanos u32, then the header list.
    # These are starting points; libFuzzer's mutations reshape them.
    def hdrs(pairs):
        b = b""
        for name_idx, value in pairs:
            v = value.encode()
            b += bytes([1, name_idx]) + struct.pack("<Q", len(v)) + v
        return b + b"\x00"
    now = struct.pack("<QI", 1_700_000_000, 0)
    for status, pairs, name in [
        (429, [(0, "7")], "429-seconds"),
        (503, [(0, "Wed, 21 Oct 2015 07:28:00 GMT")], "503-http-date"),
        (429, [(1, "1500"), (2, "250.5")], "429-ms-precedence"),
        (429, [(0, "soon")], "429-garbage"),
        (429, [(1, "1e308"), (2, "NaN"), (0, "-1")], "429-extreme"),
        (204, [], "204"),
        (400, [(3, "InvalidContent"), (4, "application/json")], "400"),
        (413, [], "413"),
        (401, [], "401"),
    ]:
        out("ingest_response", name, struct.pack("<H", status) + now + hdrs(pairs))


def buffer():
    # Tiny starting points (the enum tag picks Db or Mutate); the structure is learnt by mutation.
    out("buffer_recovery", "db-empty", b"\x00" + b"\x00" * 16)
    out("buffer_recovery", "db-records", b"\x00" + bytes(range(1, 200)))
    out("buffer_recovery", "mutate-none", b"\x01" + b"\x00" * 8)
    out("buffer_recovery", "mutate-flip", b"\x01\x01" + struct.pack("<IB", 4096, 0x40) + b"\x00")
    out("buffer_recovery", "mutate-truncate", b"\x01\x00\x01" + struct.pack("<I", 8192))


if __name__ == "__main__":
    for t in ["framing", "config", "ingest_response", "buffer_recovery"]:
        shutil.rmtree(os.path.join(HERE, t), ignore_errors=True)
    framing()
    config()
    ingest()
    buffer()
    sys.exit(0)
