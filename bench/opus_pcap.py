#!/usr/bin/env python3
"""Builds an Opus RTP pcap for SIPp's play_pcap_audio: speech and silence, 20 ms frames, PT 111.

Python standard library only: libopus (the system's libopus.so.0, which baresip's opus module
already needs) is called through ctypes, and the pcap is written by hand (Ethernet, IPv4, UDP,
RTP). SIPp rewrites addresses and ports when it replays, and keeps the capture's timing.

    python3 bench/opus_pcap.py OUT.pcap SECONDS [SPEECH.wav]
"""

import ctypes
import ctypes.util
import os
import struct
import subprocess
import sys
import tempfile

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
PAYLOAD_TYPE = 111
OPUS_APPLICATION_VOIP = 2048
OPUS_SET_BITRATE_REQUEST = 4002


def load_libopus():
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    lib = ctypes.CDLL(name)
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16), ctypes.c_int, ctypes.c_char_p, ctypes.c_int32]
    lib.opus_encoder_ctl.restype = ctypes.c_int
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    return lib


def speech_pcm(wav, workdir):
    """Speech then 2 s of silence as 48 kHz mono s16le samples."""
    if wav is None:
        wav = os.path.join(workdir, "speech.wav")
        subprocess.run(
            ["espeak-ng", "-w", wav, "hello world, this is a test of the telephony gateway. one two three four five."],
            check=True, timeout=60,
        )
    raw = os.path.join(workdir, "speech48k.raw")
    subprocess.run(
        ["sox", wav, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", raw,
         "pad", "0", "2"],
        check=True, timeout=60,
    )
    with open(raw, "rb") as f:
        return f.read()


def encode_frames(pcm, frame_count):
    """Encodes `frame_count` 20 ms frames, looping `pcm`."""
    lib = load_libopus()
    error = ctypes.c_int(0)
    encoder = lib.opus_encoder_create(SAMPLE_RATE, 1, OPUS_APPLICATION_VOIP, ctypes.byref(error))
    if error.value != 0 or not encoder:
        raise SystemExit(f"opus_encoder_create failed: {error.value}")
    lib.opus_encoder_ctl(ctypes.c_void_p(encoder), OPUS_SET_BITRATE_REQUEST, ctypes.c_int32(24000))
    frame_bytes = FRAME_SAMPLES * 2
    usable = len(pcm) - len(pcm) % frame_bytes
    out = ctypes.create_string_buffer(1500)
    frames = []
    try:
        for i in range(frame_count):
            start = (i * frame_bytes) % usable
            chunk = pcm[start : start + frame_bytes]
            samples = (ctypes.c_int16 * FRAME_SAMPLES).from_buffer_copy(chunk)
            n = lib.opus_encode(ctypes.c_void_p(encoder), samples, FRAME_SAMPLES, out, len(out))
            if n < 0:
                raise SystemExit(f"opus_encode failed: {n}")
            frames.append(out.raw[:n])
    finally:
        lib.opus_encoder_destroy(ctypes.c_void_p(encoder))
    return frames


def ipv4_checksum(header):
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def write_pcap(path, frames, src_port=6000, dst_port=6002):
    """Ethernet/IPv4/UDP/RTP, one packet per 20 ms (pcap timestamps carry the pacing SIPp replays)."""
    ssrc = 0x5B1E0B05
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # LINKTYPE_ETHERNET
        for seq, payload in enumerate(frames):
            rtp = struct.pack("!BBHII", 0x80, PAYLOAD_TYPE, seq & 0xFFFF, (seq * FRAME_SAMPLES) & 0xFFFFFFFF, ssrc)
            rtp += payload
            udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(rtp), 0) + rtp
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
                             bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
            ip = ip[:10] + struct.pack("!H", ipv4_checksum(ip)) + ip[12:]
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            usecs = seq * 20000
            f.write(struct.pack("<IIII", 1_700_000_000 + usecs // 1_000_000, usecs % 1_000_000, len(frame), len(frame)))
            f.write(frame)


def make(path, seconds, wav=None):
    with tempfile.TemporaryDirectory() as workdir:
        pcm = speech_pcm(wav, workdir)
    frames = encode_frames(pcm, int(seconds * 50))
    write_pcap(path, frames)
    return len(frames)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    count = make(sys.argv[1], float(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else None)
    print(f"{sys.argv[1]}: {count} Opus frames", file=sys.stderr)
