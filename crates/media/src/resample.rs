//! Streaming rational (L/M) resampler: a polyphase FIR with a Kaiser-windowed sinc lowpass.
//!
//! Conversions between the telephony rates and the model's 24 kHz are small integer ratios
//! (8k->24k is 3/1, 16k->24k is 3/2), so a polyphase filter is exact, cheap and has a short,
//! constant delay (about 3 ms), unlike FFT resamplers that work on large blocks.

use thiserror::Error;

/// Largest up- or down-sampling factor accepted after reducing the ratio.
const MAX_FACTOR: u32 = 12;
/// Prototype filter length per unit of `max(L, M)`: the filter spans 48 samples of the lower
/// of the two rates, enough for a ~700 Hz transition band at 8 kHz.
const TAPS_PER_FACTOR: usize = 48;
/// Kaiser window shape: beta 7 gives about 70 dB of stopband attenuation.
const KAISER_BETA: f64 = 7.0;
/// Cutoff as a fraction of the lower Nyquist frequency: the band edge sits just below Nyquist
/// so that 300-3400 Hz telephony audio passes flat and what would alias is removed.
const CUTOFF_FRACTION: f64 = 0.96;

/// Why a resampler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResampleError {
    /// A sample rate of zero.
    #[error("sample rate must be non-zero (from {from_hz} Hz to {to_hz} Hz)")]
    ZeroRate {
        /// Input rate.
        from_hz: u32,
        /// Output rate.
        to_hz: u32,
    },
    /// The reduced ratio L/M has a factor larger than we support.
    #[error("unsupported resampling ratio {from_hz} Hz -> {to_hz} Hz (reduced {up}/{down})")]
    UnsupportedRatio {
        /// Input rate.
        from_hz: u32,
        /// Output rate.
        to_hz: u32,
        /// Upsampling factor L.
        up: u32,
        /// Downsampling factor M.
        down: u32,
    },
}

/// A streaming resampler for mono i16 audio. State is kept between [`process`](Self::process)
/// calls, so 20 ms frames can be fed one at a time and the output is identical to processing
/// the whole signal at once.
#[derive(Debug, Clone)]
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    up: usize,
    down: usize,
    taps_per_phase: usize,
    /// `phases[p][j]` multiplies the j-th oldest sample of the window for output phase `p`.
    phases: Vec<Vec<f32>>,
    /// Input samples still needed, oldest first; starts with `taps_per_phase - 1` zeros.
    history: Vec<f32>,
    /// Position of the next output on the upsampled time axis, relative to `history[0]`.
    position: usize,
}

impl Resampler {
    /// A resampler from `from_hz` to `to_hz`. Equal rates pass samples through unchanged.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ResampleError> {
        if from_hz == 0 || to_hz == 0 {
            return Err(ResampleError::ZeroRate { from_hz, to_hz });
        }
        let divisor = gcd(from_hz, to_hz);
        let (up, down) = (to_hz / divisor, from_hz / divisor);
        if up > MAX_FACTOR || down > MAX_FACTOR {
            return Err(ResampleError::UnsupportedRatio { from_hz, to_hz, up, down });
        }
        if up == 1 && down == 1 {
            return Ok(Resampler { from_hz, to_hz, ..Resampler::identity() });
        }
        let (up, down) = (up as usize, down as usize);
        let (taps_per_phase, phases) = design_polyphase(from_hz, to_hz, up, down);
        let mut resampler =
            Resampler { from_hz, to_hz, up, down, taps_per_phase, phases, history: Vec::new(), position: 0 };
        resampler.reset();
        Ok(resampler)
    }

    /// A resampler that passes samples through unchanged (rates reported as 1 Hz).
    pub fn identity() -> Self {
        Resampler {
            from_hz: 1,
            to_hz: 1,
            up: 1,
            down: 1,
            taps_per_phase: 1,
            phases: vec![vec![1.0]],
            history: Vec::new(),
            position: 0,
        }
    }

    /// Input rate in Hz.
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// Output rate in Hz.
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Resamples `input`, appending every output sample that can be computed to `out`.
    /// Over a stream, `n` input samples yield `n * to / from` output samples (rounded down).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.up == 1 && self.down == 1 {
            out.extend_from_slice(input);
            return;
        }
        self.history.extend(input.iter().map(|&s| f32::from(s)));
        out.reserve(input.len() * self.up / self.down + 1);
        let taps = self.taps_per_phase;
        loop {
            let newest = self.position / self.up;
            if newest >= self.history.len() {
                break;
            }
            let phase = self.position % self.up;
            // `position` never drops below (taps - 1) * up, so the window is in bounds; `get`
            // makes a broken invariant end the loop instead of panicking the call.
            let window = (newest + 1).checked_sub(taps).and_then(|oldest| self.history.get(oldest..=newest));
            let (Some(window), Some(coefficients)) = (window, self.phases.get(phase)) else {
                break;
            };
            let acc = dot(coefficients, window);
            out.push(acc.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16);
            self.position += self.down;
        }
        let consumed = (self.position / self.up).saturating_sub(taps - 1).min(self.history.len());
        self.history.drain(..consumed);
        self.position -= consumed * self.up;
    }

    /// The filter's group delay in output samples (about 3 ms for 8k<->24k).
    pub fn delay_samples(&self) -> usize {
        let prototype_len = self.taps_per_phase * self.up;
        // Delay of a linear-phase FIR is (N - 1) / 2 samples at the upsampled rate.
        ((prototype_len - 1) as f64 / 2.0 / self.down as f64).round() as usize
    }

    /// How many input samples of silence push the last real input fully through the filter.
    pub fn flush_input_samples(&self) -> usize {
        (self.delay_samples() * self.down).div_ceil(self.up)
    }

    /// Forgets all history (e.g. at a barge-in) so the next input starts from silence.
    pub fn reset(&mut self) {
        self.history.clear();
        self.history.resize(self.taps_per_phase - 1, 0.0);
        self.position = (self.taps_per_phase - 1) * self.up;
    }
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it (a single
/// f32 accumulator forces strictly sequential adds).
fn dot(coefficients: &[f32], window: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (coefficient_chunks, coefficient_tail) = coefficients.as_chunks::<8>();
    let (window_chunks, window_tail) = window.as_chunks::<8>();
    for (c, x) in coefficient_chunks.iter().zip(window_chunks) {
        for ((lane, c), x) in lanes.iter_mut().zip(c).zip(x) {
            *lane += c * x;
        }
    }
    let tail: f32 = coefficient_tail.iter().zip(window_tail).map(|(c, x)| c * x).sum();
    lanes.iter().sum::<f32>() + tail
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Designs the prototype lowpass at the upsampled rate `from * up` and splits it into `up`
/// phases of `taps_per_phase` coefficients each (reversed so they apply oldest-first).
fn design_polyphase(from_hz: u32, to_hz: u32, up: usize, down: usize) -> (usize, Vec<Vec<f32>>) {
    let taps_per_phase = (TAPS_PER_FACTOR * up.max(down)).div_ceil(up);
    let len = taps_per_phase * up;
    let upsampled_rate = f64::from(from_hz) * up as f64;
    let cutoff_hz = CUTOFF_FRACTION * f64::from(from_hz.min(to_hz)) / 2.0;
    let normalized_cutoff = cutoff_hz / upsampled_rate; // cycles per sample, < 0.5
    let center = (len - 1) as f64 / 2.0;
    let i0_beta = bessel_i0(KAISER_BETA);
    let mut prototype: Vec<f64> = (0..len)
        .map(|n| {
            let t = n as f64 - center;
            let sinc = if t == 0.0 {
                2.0 * normalized_cutoff
            } else {
                (2.0 * std::f64::consts::PI * normalized_cutoff * t).sin() / (std::f64::consts::PI * t)
            };
            let ratio = t / (center + 0.5);
            let window = bessel_i0(KAISER_BETA * (1.0 - ratio * ratio).max(0.0).sqrt()) / i0_beta;
            sinc * window
        })
        .collect();
    // Unity gain at DC after zero-stuffing: the taps of each phase sum to ~1, all taps to `up`.
    let sum: f64 = prototype.iter().sum();
    for tap in &mut prototype {
        *tap *= up as f64 / sum;
    }
    // Phase `p` uses prototype taps p, p + up, p + 2 up, ..., reversed so they apply oldest-first.
    let phases = (0..up)
        .map(|phase| {
            let mut taps: Vec<f32> = prototype.iter().skip(phase).step_by(up).map(|&tap| tap as f32).collect();
            taps.reverse();
            taps
        })
        .collect();
    (taps_per_phase, phases)
}

/// Zeroth-order modified Bessel function of the first kind (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..50 {
        term *= (half / k as f64) * (half / k as f64);
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{dominant_frequency, goertzel_power, rms_dbfs, sine};

    fn resample_in_frames(from: u32, to: u32, input: &[i16], frame: usize) -> Vec<i16> {
        let mut resampler = Resampler::new(from, to).unwrap();
        let mut out = Vec::new();
        for chunk in input.chunks(frame) {
            resampler.process(chunk, &mut out);
        }
        out
    }

    /// Gain in dB of a steady tone, skipping the filter's start-up.
    fn tone_gain_db(from: u32, to: u32, freq: f64) -> f64 {
        let input = sine(freq, from, 400, 10000);
        let output = resample_in_frames(from, to, &input, (from / 50) as usize);
        let skip_in = (from / 20) as usize; // 50 ms
        let skip_out = (to / 20) as usize;
        let gain = rms_dbfs(&output[skip_out..]) - rms_dbfs(&input[skip_in..]);
        println!("{from}->{to} {freq} Hz: {gain:.2} dB");
        gain
    }

    #[test]
    fn ratios_and_errors() {
        assert!(Resampler::new(8000, 24000).is_ok());
        assert!(Resampler::new(24000, 16000).is_ok());
        assert!(Resampler::new(48000, 8000).is_ok());
        assert_eq!(
            Resampler::new(44100, 8000).unwrap_err(),
            ResampleError::UnsupportedRatio { from_hz: 44100, to_hz: 8000, up: 80, down: 441 }
        );
        assert!(matches!(Resampler::new(0, 8000), Err(ResampleError::ZeroRate { .. })));
    }

    #[test]
    fn output_length_follows_the_ratio() {
        for (from, to) in [(8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000)] {
            let input = vec![100i16; from as usize]; // one second
            let output = resample_in_frames(from, to, &input, (from / 50) as usize);
            assert_eq!(output.len(), to as usize, "{from}->{to}");
        }
    }

    #[test]
    fn streaming_matches_one_shot() {
        let input = sine(1234.0, 24000, 300, 12000);
        let whole = resample_in_frames(24000, 16000, &input, input.len());
        for frame in [1, 7, 480, 1000] {
            assert_eq!(resample_in_frames(24000, 16000, &input, frame), whole, "{frame}");
        }
        let input = sine(700.0, 8000, 300, 12000);
        let whole = resample_in_frames(8000, 24000, &input, input.len());
        assert_eq!(resample_in_frames(8000, 24000, &input, 3), whole);
    }

    #[test]
    fn telephony_passband_is_flat_upsampling() {
        for freq in [300.0, 500.0, 1000.0, 2000.0, 3000.0, 3400.0] {
            let gain = tone_gain_db(8000, 24000, freq);
            assert!(gain.abs() < 1.0, "{freq} Hz: {gain:.2} dB");
        }
    }

    #[test]
    fn telephony_passband_is_flat_downsampling() {
        for freq in [300.0, 1000.0, 3000.0, 3400.0] {
            let gain = tone_gain_db(24000, 8000, freq);
            assert!(gain.abs() < 1.0, "{freq} Hz: {gain:.2} dB");
        }
        for freq in [300.0, 1000.0, 5000.0, 7000.0] {
            let gain = tone_gain_db(24000, 16000, freq);
            assert!(gain.abs() < 1.0, "24k->16k {freq} Hz: {gain:.2} dB");
            let gain = tone_gain_db(16000, 24000, freq);
            assert!(gain.abs() < 1.0, "16k->24k {freq} Hz: {gain:.2} dB");
        }
    }

    #[test]
    fn downsampling_removes_what_would_alias() {
        // A 6 kHz tone cannot exist at 8 kHz; without filtering it would alias to 2 kHz.
        for freq in [4500.0, 6000.0, 9000.0] {
            let gain = tone_gain_db(24000, 8000, freq);
            assert!(gain < -40.0, "{freq} Hz only attenuated {gain:.1} dB");
        }
        let gain = tone_gain_db(24000, 16000, 10000.0);
        assert!(gain < -40.0, "24k->16k 10 kHz only attenuated {gain:.1} dB");
    }

    #[test]
    fn upsampling_suppresses_images() {
        let input = sine(1000.0, 8000, 400, 10000);
        let output = resample_in_frames(8000, 24000, &input, 160);
        let steady = &output[1200..];
        assert!((dominant_frequency(steady, 24000, 100.0, 11900.0, 50.0) - 1000.0).abs() < 1.0);
        let wanted = goertzel_power(steady, 24000, 1000.0);
        for image in [7000.0, 9000.0] {
            let ratio_db = 10.0 * (goertzel_power(steady, 24000, image) / wanted).log10();
            assert!(ratio_db < -40.0, "image at {image} Hz: {ratio_db:.1} dB");
        }
    }

    #[test]
    fn delay_is_a_few_milliseconds_and_matches_the_impulse_response() {
        let mut resampler = Resampler::new(8000, 24000).unwrap();
        let delay = resampler.delay_samples();
        assert!(delay * 1000 / 24000 <= 4, "{delay} samples");
        let mut impulse = vec![0i16; 80];
        impulse[0] = 10000;
        let mut out = Vec::new();
        resampler.process(&impulse, &mut out);
        let peak = out.iter().enumerate().max_by_key(|(_, s)| s.unsigned_abs()).map(|(i, _)| i).unwrap();
        assert!(peak.abs_diff(delay) <= 1, "peak {peak}, delay {delay}");
        let down = Resampler::new(24000, 8000).unwrap();
        assert!(down.delay_samples() * 1000 / 8000 <= 4);
    }

    #[test]
    fn reset_forgets_history() {
        let mut resampler = Resampler::new(24000, 8000).unwrap();
        let loud = sine(500.0, 24000, 20, 20000);
        let mut out = Vec::new();
        resampler.process(&loud, &mut out);
        resampler.reset();
        out.clear();
        resampler.process(&[0; 480], &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn same_rate_passes_through() {
        let mut resampler = Resampler::new(8000, 8000).unwrap();
        let mut out = Vec::new();
        resampler.process(&[1, 2, 3], &mut out);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(resampler.delay_samples(), 0);
    }

    #[test]
    fn full_scale_input_does_not_wrap() {
        let input = sine(3000.0, 8000, 100, i16::MAX);
        let output = resample_in_frames(8000, 24000, &input, 160);
        // Overshoot clips instead of wrapping around to the opposite sign.
        let max_jump = output.windows(2).map(|w| (i32::from(w[0]) - i32::from(w[1])).abs()).max().unwrap();
        assert!(max_jump < 40000);
    }
}
