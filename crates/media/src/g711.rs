//! ITU-T G.711 mu-law and A-law companding (the classic bit-manipulation formulation, as in the
//! Sun reference `g711.c`). Decoding uses 256-entry tables computed at compile time.

/// Encoded mu-law silence (linear 0).
pub const ULAW_SILENCE: u8 = 0xFF;
/// Encoded A-law silence (linear +8, the smallest positive step).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Bias added before mu-law segment search (G.711 §3.2: 33 in 14-bit units, 132 in 16-bit).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude that still fits the top mu-law segment after biasing.
const ULAW_CLIP: i32 = 32635;

/// Encodes one 16-bit linear sample to mu-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0x00
    };
    magnitude = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // Segment = position of the highest set bit above bit 7 (0..=7).
    let highest_bit = 31 - magnitude.leading_zeros() as i32;
    let segment = (highest_bit - 7).clamp(0, 7);
    let mantissa = (magnitude >> (segment + 3)) & 0x0F;
    !((sign | (segment << 4) | mantissa) as u8)
}

const fn ulaw_decode_slow(code: u8) -> i16 {
    let code = !code;
    let segment = ((code >> 4) & 0x07) as i32;
    let mantissa = (code & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    if code & 0x80 != 0 { -magnitude as i16 } else { magnitude as i16 }
}

const fn alaw_decode_slow(code: u8) -> i16 {
    let code = code ^ 0x55;
    let segment = ((code & 0x70) >> 4) as i32;
    let mut magnitude = ((code & 0x0F) as i32) << 4;
    magnitude = match segment {
        0 => magnitude + 8,
        1 => magnitude + 0x108,
        _ => (magnitude + 0x108) << (segment - 1),
    };
    if code & 0x80 != 0 { magnitude as i16 } else { -magnitude as i16 }
}

// Evaluated at compile time: an out-of-bounds index here is a build error, never a runtime panic.
#[allow(clippy::indexing_slicing)]
const fn build_ulaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = ulaw_decode_slow(code as u8);
        code += 1;
    }
    table
}

// Evaluated at compile time: an out-of-bounds index here is a build error, never a runtime panic.
#[allow(clippy::indexing_slicing)]
const fn build_alaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = alaw_decode_slow(code as u8);
        code += 1;
    }
    table
}

static ULAW_TABLE: [i16; 256] = build_ulaw_table();
static ALAW_TABLE: [i16; 256] = build_alaw_table();

/// Decodes one mu-law byte to a 16-bit linear sample.
pub fn ulaw_decode(code: u8) -> i16 {
    // A u8 always indexes a 256-entry table; the fallback is unreachable and optimized out.
    ULAW_TABLE.get(usize::from(code)).copied().unwrap_or(0)
}

/// Encodes one 16-bit linear sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law works on 13-bit magnitudes.
    let mut value = i32::from(sample) >> 3;
    let mask = if value >= 0 {
        0xD5
    } else {
        value = -value - 1;
        0x55
    };
    // Segment end points for 13-bit input.
    const SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let Some(segment) = SEGMENT_END.iter().position(|&end| value <= end) else {
        return 0x7F ^ mask;
    };
    let mantissa = if segment < 2 { (value >> 1) & 0x0F } else { (value >> segment) & 0x0F };
    (((segment as i32) << 4) | mantissa) as u8 ^ mask
}

/// Decodes one A-law byte to a 16-bit linear sample.
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE.get(usize::from(code)).copied().unwrap_or(0)
}

/// Appends the mu-law encoding of `samples` to `out`.
pub fn ulaw_encode_slice(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| ulaw_encode(s)));
}

/// Appends the linear decoding of mu-law `codes` to `out`.
pub fn ulaw_decode_slice(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_decode(c)));
}

/// Appends the A-law encoding of `samples` to `out`.
pub fn alaw_encode_slice(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| alaw_encode(s)));
}

/// Appends the linear decoding of A-law `codes` to `out`.
pub fn alaw_decode_slice(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| alaw_decode(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        // Segment 0 step is 8 (in 16-bit units): code 0xFE is +8.
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0xF0), 120);
        assert_eq!(ulaw_decode(0xEF), 132);
        assert_eq!(ULAW_SILENCE, ulaw_encode(0));
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(ALAW_SILENCE, alaw_encode(0));
    }

    #[test]
    fn every_code_round_trips_through_linear() {
        for code in 0..=255u8 {
            // -0 (0x7F) re-encodes as +0 (0xFF); every other code is a fixed point.
            let expected_ulaw = if code == 0x7F { 0xFF } else { code };
            assert_eq!(ulaw_encode(ulaw_decode(code)), expected_ulaw, "ulaw {code:#04x}");
            assert_eq!(alaw_encode(alaw_decode(code)), code, "alaw {code:#04x}");
        }
    }

    #[test]
    fn quantization_error_is_bounded_and_monotonic() {
        let mut previous_u = i16::MIN;
        let mut previous_a = i16::MIN;
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_decode(ulaw_encode(sample));
            let a = alaw_decode(alaw_encode(sample));
            // Companding error is at most half the step of the top segment plus clipping.
            assert!((i32::from(u) - i32::from(sample)).abs() <= 1024, "{sample} -> {u}");
            assert!((i32::from(a) - i32::from(sample)).abs() <= 1024, "{sample} -> {a}");
            // Relative error stays small for mid-level signals (the point of companding).
            if sample.unsigned_abs() > 256 {
                let rel = (f64::from(u) - f64::from(sample)).abs() / f64::from(sample).abs();
                assert!(rel < 0.07, "ulaw {sample} -> {u}");
                let rel = (f64::from(a) - f64::from(sample)).abs() / f64::from(sample).abs();
                assert!(rel < 0.07, "alaw {sample} -> {a}");
            }
            assert!(u >= previous_u && a >= previous_a);
            previous_u = u;
            previous_a = a;
        }
    }

    #[test]
    fn slice_helpers_append() {
        let mut codes = vec![1];
        ulaw_encode_slice(&[0, 1000, -1000], &mut codes);
        assert_eq!(codes.len(), 4);
        let mut samples = Vec::new();
        ulaw_decode_slice(&codes[1..], &mut samples);
        assert_eq!(samples[0], 0);
        assert!((samples[1] - 1000).abs() < 40 && (samples[2] + 1000).abs() < 40);
        let mut codes = Vec::new();
        alaw_encode_slice(&[0, 1000], &mut codes);
        let mut samples = Vec::new();
        alaw_decode_slice(&codes, &mut samples);
        assert_eq!(samples.len(), 2);
        assert!((samples[1] - 1000).abs() < 40);
    }
}
