#!/usr/bin/env python3
"""Writes the hand-made seed corpora into fuzz/corpus/<target>/ (run from the repo root:
`python3 fuzz/seeds/make_seeds.py`). Seeds from files already in the repository (SIP test
messages, SDP offers of the sdp crate's tests, Realtime events of the realtime crate's tests)
are extracted, the rest is built here. File names are content hashes, so rerunning is idempotent.
"""
import glob
import hashlib
import json
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


CALLER = "127.0.0.1:5061"
SDP_OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"


def invite(branch="z9hG4bKinv", call_id="call-1", transport="UDP", body=SDP_OFFER, extra=""):
    return (
        f"INVITE sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {CALLER};branch={branch}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n"
        f"To: <sip:15550001000@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@{CALLER}>\r\n"
        f"{extra}"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )


def in_dialog(method, branch, cseq, tag="@@tag@@", call_id="call-1"):
    return (
        f"{method} sip:switchboard@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n"
        f"To: <sip:15550001000@127.0.0.1>;tag={tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Content-Length: 0\r\n\r\n"
    )


def simple(method, branch="z9hG4bKopt", extra=""):
    return (
        f"{method} sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n"
        f"From: <sip:alice@127.0.0.1>;tag=caller\r\n"
        f"To: <sip:15550001000@127.0.0.1>\r\n"
        f"Call-ID: other-call\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    )


def cancel(branch="z9hG4bKinv"):
    return (
        f"CANCEL sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n"
        f"To: <sip:15550001000@127.0.0.1>\r\n"
        f"Call-ID: call-1\r\n"
        f"CSeq: 1 CANCEL\r\n"
        f"Content-Length: 0\r\n\r\n"
    )


def ack_non_2xx(branch="z9hG4bKinv"):
    return (
        f"ACK sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER};branch={branch}\r\n"
        f"From: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n"
        f"To: <sip:15550001000@127.0.0.1>;tag=@@tag@@\r\n"
        f"Call-ID: call-1\r\n"
        f"CSeq: 1 ACK\r\n"
        f"Content-Length: 0\r\n\r\n"
    )


def response(code, reason, method="BYE", cseq=1):
    return (
        f"SIP/2.0 {code} {reason}\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKours\r\n"
        f"From: <sip:15550001000@127.0.0.1>;tag=@@tag@@\r\n"
        f"To: \"Alice\" <sip:alice@127.0.0.1>;tag=caller\r\n"
        f"Call-ID: call-1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Content-Length: 0\r\n\r\n"
    )


# --- SIP messages -------------------------------------------------------------------------
sip_messages = []
for path in sorted(glob.glob(os.path.join(ROOT, "crates", "sip", "testdata", "**", "*.sip"), recursive=True)):
    with open(path, "rb") as f:
        sip_messages.append(f.read())
for text in [
    invite(),
    invite(transport="TCP"),
    invite(body="", extra=""),
    invite(extra="Record-Route: <sip:proxy1.example.com;lr>, <sip:proxy2.example.com;lr>\r\nSupported: timer\r\nSession-Expires: 1800;refresher=uac\r\n"),
    in_dialog("ACK", "z9hG4bKack", 1, tag="0123456789abcdef"),
    in_dialog("BYE", "z9hG4bKbye", 2, tag="0123456789abcdef"),
    simple("OPTIONS"),
    simple("REGISTER"),
    simple("INFO", extra="Content-Type: application/dtmf-relay\r\n"),
    cancel(),
    response(200, "OK"),
    response(486, "Busy Here", "INVITE"),
    # Compact forms, folding, no Content-Length (UDP), IPv6, multi-valued Via.
    "INVITE sip:bob@[2001:db8::1] SIP/2.0\r\nv: SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bK1,SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK2\r\n"
    "f: <sip:a@b>;tag=1\r\nt: <sip:bob@[2001:db8::1]>\r\ni: c1\r\nCSeq: 1\r\n INVITE\r\nm: <sip:a@[2001:db8::2]>\r\nc: application/sdp\r\n\r\nv=0\r\n",
    "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 5 INVITE\r\nl: 0\r\n\r\n",
    "INVITE \xc3\xa9 sip:x@host SIP/2.0\r\n\r\n",
    "\r\n\r\n",
]:
    sip_messages.append(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
for message in sip_messages:
    put("sip_message", message)

# --- TCP stream framing: 2-byte limit, split count, 2-byte split offsets, stream ----------
def stream_seed(limit, splits, stream):
    head = struct.pack(">HB", limit, len(splits)) + b"".join(struct.pack(">H", s) for s in splits)
    return head + stream

framed = [m for m in sip_messages if b"Content-Length" in m or b"\nl:" in m]
put("sip_stream", stream_seed(16384, [], b"".join(framed[:3])))
put("sip_stream", stream_seed(16384, [1, 2, 40, 41, 300], b"\r\n\r\n" + framed[0] + b"\r\n" + framed[1]))
put("sip_stream", stream_seed(200, [10, 100], framed[0] + framed[1]))
put("sip_stream", stream_seed(16384, [3], b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n" + framed[0]))
put("sip_stream", stream_seed(16384, [7, 8], invite(transport="TCP").encode() * 2))
put("sip_stream", stream_seed(64, [], b"INVITE sip:x SIP/2.0\r\nContent-Length: 100000\r\n\r\n"))

# --- SIP core: records of (control byte, message) ----------------------------------------
SEP = b"\n--next-record--\n"
def core_seed(records):
    return SEP.join(bytes([control]) + message.encode() for control, message in records)

accept, busy, unavail, ringing, later, hangup = 0x00, 0x40, 0x60, 0x80, 0xA0, 0xE0
put("sip_core", core_seed([(accept, invite()), (accept, in_dialog("ACK", "z9hG4bKack", 1)), (accept | 8, in_dialog("BYE", "z9hG4bKbye", 2))]))
put("sip_core", core_seed([(accept | 4, invite(transport="TCP")), (accept | 4, in_dialog("ACK", "z9hG4bKack", 1))]))
put("sip_core", core_seed([(accept, invite()), (accept | 0x18, in_dialog("ACK", "z9hG4bKack", 1))]))
put("sip_core", core_seed([(accept, invite()), (0x18, "")]))
put("sip_core", core_seed([(busy, invite()), (busy, ack_non_2xx())]))
put("sip_core", core_seed([(unavail, invite()), (unavail | 0x10, invite())]))
put("sip_core", core_seed([(later, invite()), (later, cancel())]))
put("sip_core", core_seed([(ringing, invite()), (ringing, cancel()), (ringing, ack_non_2xx())]))
put("sip_core", core_seed([(hangup, invite()), (hangup, in_dialog("ACK", "z9hG4bKack", 1)), (hangup, response(200, "OK"))]))
put("sip_core", core_seed([(accept, invite()), (accept, in_dialog("ACK", "z9hG4bKack", 1)), (hangup, ""), (accept, response(481, "Call/Transaction Does Not Exist"))]))
put("sip_core", core_seed([(0, simple("OPTIONS")), (1, simple("REGISTER")), (2, simple("SUBSCRIBE")), (3, simple("FOO"))]))
put("sip_core", core_seed([(accept, invite()), (accept, in_dialog("ACK", "z9hG4bKack", 1)), (accept, invite(branch="z9hG4bKre", extra="")), (accept, in_dialog("BYE", "z9hG4bKbye", 3))]))
for message in sip_messages[:14]:
    put("sip_core", bytes([accept]) + message)

# --- SDP offers: the sdp crate's test offers plus a few hand-written ones ----------------
sdp_tests = open(os.path.join(ROOT, "crates", "sdp", "src", "negotiate", "tests.rs")).read()
sdp_tests += open(os.path.join(ROOT, "crates", "sdp", "src", "model.rs")).read()
offers = set()
for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', sdp_tests, re.S):
    if not literal.startswith("v=0") and "\\nm=" not in literal and "m=audio" not in literal:
        continue
    text = re.sub(r"\\\n\s*", "", literal)  # Rust string continuation lines
    text = text.replace("\\r", "\r").replace("\\n", "\n").replace('\\"', '"').replace("\\t", "\t")
    if "m=" in text:
        offers.add(text)
offers.add(SDP_OFFER)
offers.add("v=0\r\no=- 2 2 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\nm=audio 7078 RTP/AVP 96 9 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 maxplaybackrate=16000;useinbandfec=1;maxaveragebitrate=20000\r\na=ptime:40\r\na=rtpmap:101 telephone-event/48000\r\na=fmtp:101 0-16\r\na=sendonly\r\n")
offers.add("v=0\r\no=- 3 3 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=video 9000 RTP/AVP 96\r\nm=audio 0 RTP/AVP 0\r\nm=audio 7000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\nm=audio 7002 RTP/AVPF 9\r\na=rtcp-fb:* nack\r\n")
for offer in offers:
    put("sdp_answer", offer)

# --- RTP / RTCP ----------------------------------------------------------------------------
def rtp(pt, seq, ts, ssrc, payload, marker=0, csrcs=(), ext=None, pad=0):
    first = 0x80 | (0x20 if pad else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    out = bytes([first, (marker << 7) | pt]) + struct.pack(">HII", seq, ts, ssrc)
    out += b"".join(struct.pack(">I", c) for c in csrcs)
    if ext is not None:
        out += struct.pack(">HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if pad:
        out += b"\0" * (pad - 1) + bytes([pad])
    return out

put("rtp", rtp(0, 1, 160, 0x1234, b"\xff" * 160))
put("rtp", rtp(8, 65535, 0xFFFFFFFF, 1, b"\xd5" * 20, marker=1))
put("rtp", rtp(101, 7, 8000, 9, b"\x05\x8a\x03\x20", marker=1))
put("rtp", rtp(96, 2, 960, 3, b"\x78\x01\x02", csrcs=(1, 2), ext=b"\x10\xaa\x00\x00", pad=4))
put("rtp", rtp(9, 3, 160, 4, b""))
put("rtp", bytes([0x81, 200]) + struct.pack(">HI", 6, 0x1234) + b"\0" * 20)  # RTCP SR
put("rtp", bytes([0x81, 201, 0, 1]) + struct.pack(">I", 0x1234))  # RTCP RR

def report_block(ssrc, fraction, lost, highest, jitter, lsr, dlsr):
    return struct.pack(">IIIIII", ssrc, (fraction << 24) | (lost & 0xFFFFFF), highest, jitter, lsr, dlsr)

def sdes(ssrc, cname):
    chunk = struct.pack(">I", ssrc) + bytes([1, len(cname)]) + cname + b"\0"
    chunk += b"\0" * (-len(chunk) % 4)
    return bytes([0x81, 202]) + struct.pack(">H", len(chunk) // 4) + chunk

block = report_block(0xBEEF, 10, -2, 0x10009, 40, 0x12345678, 0x8000)
put("rtcp", bytes([0x81, 200]) + struct.pack(">HI", 12, 0x1234) + struct.pack(">QIII", 0xE800000040000000, 160, 5, 800) + block + sdes(0x1234, b"peer@host"))
put("rtcp", bytes([0x81, 201]) + struct.pack(">HI", 7, 0x1234) + block + sdes(0x1234, b"x") + bytes([0x81, 203, 0, 1]) + struct.pack(">I", 0x1234))
put("rtcp", bytes([0x80, 201]) + struct.pack(">HI", 1, 0x1234))
put("rtcp", bytes([0x9F, 201]) + struct.pack(">HI", 1, 0x1234))  # 31 blocks claimed, none there

# --- Realtime events: the realtime crate's tests and the protocol reference --------------
events = set()
sources = [os.path.join(ROOT, "crates", "realtime", "src", "events.rs"), os.path.join(ROOT, "crates", "sim", "src", "core.rs")]
for path in sources:
    text = open(path).read()
    for raw in re.findall(r'r#"(\{.*?\})"#', text, re.S):
        try:
            events.add(json.dumps(json.loads(raw), separators=(",", ":")))
        except ValueError:
            pass
reference = "/work/shared/docs/realtime-protocol.md"
if os.path.exists(reference):
    for block in re.findall(r"```json\n(.*?)```", open(reference).read(), re.S):
        try:
            value = json.loads(block)
        except ValueError:
            continue
        if isinstance(value, dict) and "type" in value:
            events.add(json.dumps(value, separators=(",", ":")))
for event in events:
    put("realtime_event", event)
# One whole turn as a stream (JSON lines): created, delta, barge-in, done.
turn = [
    {"type": "response.created", "event_id": "e1", "response": {"object": "realtime.response", "id": "resp_1", "status": "in_progress", "output": []}},
    {"type": "response.output_audio.delta", "event_id": "e2", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
    {"type": "input_audio_buffer.speech_started", "event_id": "e3", "audio_start_ms": 1000, "item_id": "item_2"},
    {"type": "response.done", "event_id": "e4", "response": {"object": "realtime.response", "id": "resp_1", "status": "cancelled", "output": []}},
]
put("realtime_event", "\n".join(json.dumps(e) for e in turn))

# --- Media framing: config byte, then [op, len, bytes] records ----------------------------
def records(*items):
    out = b""
    for op, payload in items:
        out += bytes([op, len(payload)]) + payload
    return out

pcm = b"".join(struct.pack("<h", (i * 997) % 20000 - 10000) for i in range(120))
for codec in range(4):
    for model in (0, 4):
        for deferred in (0, 8):
            config = codec | model | deferred
            put("media_framing", bytes([config]) + records((0, b"\xff" * 160), (3, b"\x55" * 160), (0x80, pcm), (0x80, pcm[:101]), (0xE0, b""), (0xF0, b"")))
put("media_framing", bytes([3 | 0x10]) + records((0, b"\x78\x01\x02\x03"), (5, b"\x08" + b"\0" * 20), (0x80, pcm)))
put("media_framing", bytes([0 | 0x50]) + records((0x80, pcm), (0xE0, b"")))
