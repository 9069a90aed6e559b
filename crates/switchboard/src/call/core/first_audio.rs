//! Setup time to the agent's first audio: from the moment the caller started waiting (the INVITE
//! received, or for an outbound call the callee's 200 OK) to the first RTP packet of agent audio
//! sent to the caller. What a caller experiences as "how long until it speaks", beside the
//! INVITE-to-200 histogram (`switchboard_call_setup_seconds`). Measured once per call; the
//! filler and bridged audio do not count, the greeting and every answer do.

use std::time::{Duration, Instant, SystemTime};

use super::CallCore;
use crate::call::CallDirection;
use crate::call::facts::CallFacts;
use crate::telemetry;

/// Where the measurement starts, and what it found.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstAudio {
    /// The start and the `direction` label; `None` once measured, or never set (no metric).
    origin: Option<(Instant, &'static str)>,
    /// Origin to the first agent packet sent.
    measured: Option<Duration>,
}

impl FirstAudio {
    /// An agent audio packet is being sent to the caller at `now`.
    pub fn on_agent_packet_sent(&mut self, now: Instant) {
        let Some((origin, direction)) = self.origin.take() else { return };
        let took = now.saturating_duration_since(origin);
        self.measured = Some(took);
        metrics::histogram!(telemetry::CALL_FIRST_AUDIO_SECONDS, "direction" => direction).record(took.as_secs_f64());
    }

    /// Origin to the first agent packet, once sent.
    pub fn measured(&self) -> Option<Duration> {
        self.measured
    }
}

/// The monotonic instant of a wall-clock `time`, given one pair of readings of both clocks
/// taken together (`now`, `now_wall`). A time in the future maps to `now`.
pub fn instant_of(time: SystemTime, now: Instant, now_wall: SystemTime) -> Instant {
    let ago = now_wall.duration_since(time).unwrap_or(Duration::ZERO);
    now.checked_sub(ago).unwrap_or(now)
}

/// Where the measurement of a call starts: the INVITE received (inbound) or the 200 OK
/// received (outbound; the ringing before it is the callee's, not the gateway's).
pub fn origin_of(facts: &CallFacts) -> Instant {
    let origin = match facts.direction {
        CallDirection::Inbound => facts.started,
        CallDirection::Outbound => facts.answered,
    };
    instant_of(origin, Instant::now(), SystemTime::now())
}

impl CallCore {
    /// Starts the first-audio measurement from `origin` (see the module); `direction` is the
    /// metric's label (`inbound`, `outbound`).
    pub fn measure_first_audio_from(&mut self, origin: Instant, direction: &'static str) {
        self.first_audio = FirstAudio { origin: Some((origin, direction)), measured: None };
    }

    /// Origin to the agent's first packet sent, once it has been.
    pub fn first_audio(&self) -> Option<Duration> {
        self.first_audio.measured()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_once_from_the_origin() {
        let origin = Instant::now();
        let mut first = FirstAudio::default();
        first.on_agent_packet_sent(origin + Duration::from_millis(5));
        assert_eq!(first.measured(), None, "no origin set: nothing measured");
        first = FirstAudio { origin: Some((origin, "inbound")), measured: None };
        first.on_agent_packet_sent(origin + Duration::from_millis(740));
        first.on_agent_packet_sent(origin + Duration::from_millis(760));
        assert_eq!(first.measured(), Some(Duration::from_millis(740)), "the first packet only");
    }

    /// The core on a virtual clock: the greeting's first packet to the caller is the measurement.
    #[test]
    fn the_greetings_first_packet_ends_the_measurement() {
        use switchboard_realtime::events::{AudioDeltaEvent, ServerEvent};

        use super::super::DialogInput;
        use super::super::tests::{core_config, leg_config};

        let start = Instant::now();
        let mut core = CallCore::new(start, core_config(), leg_config());
        core.measure_first_audio_from(start - Duration::from_millis(300), "inbound");
        core.handle_dialog(start, DialogInput::Confirmed);
        while core.poll_output().is_some() {}
        let created =
            r#"{"type":"response.created","event_id":"e","response":{"id":"r1","status":"in_progress","output":[]}}"#;
        let answer_at = start + Duration::from_millis(450);
        core.handle_realtime(answer_at, ServerEvent::from_json(created).unwrap());
        let delta = AudioDeltaEvent {
            event_id: "e".into(),
            response_id: "r1".into(),
            item_id: "item_g".into(),
            output_index: 0,
            content_index: 0,
            delta: vec![0x10; 1600],
        };
        core.handle_realtime(answer_at, ServerEvent::OutputAudioDelta(delta));
        assert_eq!(core.first_audio(), None, "audio queued is not audio sent");

        let mut first_sent = None;
        let mut now = answer_at;
        while first_sent.is_none() && now < start + Duration::from_secs(2) {
            let Some(due) = core.poll_timeout() else { break };
            now = due.max(now);
            core.handle_timeout(now);
            if core.poll_transmit().is_some() {
                first_sent = Some(now);
            }
            while core.poll_output().is_some() {}
        }
        let first_sent = first_sent.expect("the greeting was sent");
        assert_eq!(core.first_audio(), Some(first_sent - (start - Duration::from_millis(300))));
    }

    #[test]
    fn a_wall_clock_time_maps_to_its_instant() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(instant_of(wall - Duration::from_millis(250), now, wall), now - Duration::from_millis(250));
        assert_eq!(instant_of(wall + Duration::from_secs(1), now, wall), now, "the future is now");
    }
}
