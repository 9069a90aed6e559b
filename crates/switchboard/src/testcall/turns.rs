//! The per-call turn machine (sans-IO): which caller frame to send at each 20 ms tick, and when
//! each turn's answer started and ended, from the agent's received audio. Time is milliseconds
//! on the call's RTP clock (0 = the first frame we send after the answer); the shell feeds it.
//!
//! A turn: `wait_ms` of silence, the action (speech, digits, hang-up, or nothing), then it
//! listens. The agent's answer starts with the first energetic agent frame at or after the end of
//! the caller's action and ends once the agent has been quiet for `agent_quiet_ms`; no answer
//! within `listen_ms` ends the turn without one. `barge_in_after_ms` starts the next turn that
//! long after the answer started, while the agent still speaks. A BYE from the far end ends the
//! call (and the turn it arrives in).

use super::scenario::{Action, Expectations, Turn};

/// Frame length of every caller packet.
pub const FRAME_MS: u64 = 20;
/// RFC 4733 digits: the event lasts this long, then silence until the next digit.
pub const DTMF_TONE_MS: u64 = 100;
pub const DTMF_GAP_MS: u64 = 60;

/// What the caller sends in one 20 ms frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerFrame {
    Silence,
    /// The `frame`th 20 ms frame of turn `turn`'s audio.
    Speech {
        turn: usize,
        frame: usize,
    },
    /// Digit `digit` of turn `turn`'s DTMF string, `elapsed_ms` into its event (RFC 4733 §2.5:
    /// `end` on the last packet of the event).
    Dtmf {
        turn: usize,
        digit: usize,
        elapsed_ms: u64,
        end: bool,
    },
    /// Send BYE now.
    Hangup,
    /// All turns are done: hang up (unless the far end already did).
    Finished,
}

/// How a turn's caller action is sized (the audio is the shell's; the machine needs its length).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSpec {
    pub wait_ms: u64,
    pub kind: ActionKind,
    pub barge_in_after_ms: Option<u64>,
    pub listen_ms: u64,
    pub expect: Expectations,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Listen,
    Speech { frames: usize },
    Dtmf { digits: usize },
    Hangup,
}

impl TurnSpec {
    /// `speech_frames`: the length of the turn's audio in 20 ms frames (say/wav).
    pub fn from_turn(turn: &Turn, speech_frames: usize) -> TurnSpec {
        let kind = match &turn.action {
            Action::Listen => ActionKind::Listen,
            Action::Say(_) | Action::Wav(_) => ActionKind::Speech { frames: speech_frames },
            Action::Dtmf(digits) => ActionKind::Dtmf { digits: digits.chars().count() },
            Action::Hangup => ActionKind::Hangup,
        };
        TurnSpec {
            wait_ms: turn.wait_ms,
            kind,
            barge_in_after_ms: turn.barge_in_after_ms,
            listen_ms: turn.listen_ms,
            expect: turn.expect.clone(),
        }
    }
}

/// What happened in one turn, on the call's RTP clock (ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnTiming {
    /// The turn began (its wait started).
    pub reached: bool,
    pub caller_start_ms: Option<u64>,
    pub caller_end_ms: Option<u64>,
    pub agent_first_audio_ms: Option<u64>,
    /// End of the agent's answer; `None` when it did not answer, or was interrupted by a barge-in
    /// or the call's end before it went quiet.
    pub agent_end_ms: Option<u64>,
    /// The next turn barged in while the agent spoke.
    pub barged_in: bool,
    /// The far end hung up (BYE) in this turn.
    pub remote_hangup: bool,
    /// A REFER arrived in this turn (its Refer-To).
    pub transfer_to: Option<String>,
}

impl TurnTiming {
    /// End of the caller's speech to the agent's first audio.
    pub fn latency_ms(&self) -> Option<u64> {
        Some(self.agent_first_audio_ms?.saturating_sub(self.caller_end_ms?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sending silence until `until`, then the action.
    Waiting {
        until: u64,
    },
    Speaking {
        frame: usize,
    },
    Dtmf {
        digit: usize,
        started: u64,
    },
    /// Waiting for (or hearing) the agent's answer since `since`.
    Listening {
        since: u64,
    },
    Done,
}

/// One call's turns.
#[derive(Debug)]
pub struct TurnMachine {
    specs: Vec<TurnSpec>,
    timings: Vec<TurnTiming>,
    current: usize,
    phase: Phase,
    agent_quiet_ms: u64,
    /// End (ms) of the last energetic agent frame of the current turn's answer.
    last_agent_audio_end: Option<u64>,
    /// The far end ended the call.
    remote_ended: bool,
}

impl TurnMachine {
    pub fn new(specs: Vec<TurnSpec>, agent_quiet_ms: u64) -> TurnMachine {
        let timings = vec![TurnTiming::default(); specs.len()];
        let mut machine = TurnMachine {
            specs,
            timings,
            current: 0,
            phase: Phase::Done,
            agent_quiet_ms,
            last_agent_audio_end: None,
            remote_ended: false,
        };
        machine.begin_turn(0, 0);
        machine
    }

    fn begin_turn(&mut self, index: usize, now: u64) {
        self.current = index;
        self.last_agent_audio_end = None;
        match self.specs.get(index) {
            Some(spec) => {
                if let Some(t) = self.timings.get_mut(index) {
                    t.reached = true;
                }
                self.phase = Phase::Waiting { until: now + spec.wait_ms };
            }
            None => self.phase = Phase::Done,
        }
    }

    fn timing(&mut self) -> Option<&mut TurnTiming> {
        self.timings.get_mut(self.current)
    }

    /// The caller frame that starts at `now` (a multiple of [`FRAME_MS`], called once per frame).
    pub fn tick(&mut self, now: u64) -> CallerFrame {
        // Several phase changes may happen at one instant (a turn ends, the next begins with no wait).
        for _ in 0..4 {
            match self.phase {
                Phase::Done => return CallerFrame::Finished,
                Phase::Waiting { until } => {
                    if now < until {
                        return CallerFrame::Silence;
                    }
                    let Some(kind) = self.specs.get(self.current).map(|s| s.kind) else {
                        self.phase = Phase::Done;
                        continue;
                    };
                    if let Some(t) = self.timing() {
                        t.caller_start_ms = Some(now);
                    }
                    match kind {
                        ActionKind::Listen => self.start_listening(now),
                        ActionKind::Speech { frames: 0 } => self.start_listening(now),
                        ActionKind::Speech { .. } => self.phase = Phase::Speaking { frame: 0 },
                        ActionKind::Dtmf { digits: 0 } => self.start_listening(now),
                        ActionKind::Dtmf { .. } => self.phase = Phase::Dtmf { digit: 0, started: now },
                        ActionKind::Hangup => {
                            if let Some(t) = self.timing() {
                                t.caller_end_ms = Some(now);
                            }
                            self.phase = Phase::Done;
                            return CallerFrame::Hangup;
                        }
                    }
                }
                Phase::Speaking { frame } => {
                    let frames = match self.specs.get(self.current).map(|s| s.kind) {
                        Some(ActionKind::Speech { frames }) => frames,
                        _ => 0,
                    };
                    if frame < frames {
                        self.phase = Phase::Speaking { frame: frame + 1 };
                        return CallerFrame::Speech { turn: self.current, frame };
                    }
                    self.start_listening(now);
                }
                Phase::Dtmf { digit, started } => {
                    let digits = match self.specs.get(self.current).map(|s| s.kind) {
                        Some(ActionKind::Dtmf { digits }) => digits,
                        _ => 0,
                    };
                    let elapsed = now.saturating_sub(started);
                    if elapsed < DTMF_TONE_MS {
                        let end = elapsed + FRAME_MS >= DTMF_TONE_MS;
                        return CallerFrame::Dtmf { turn: self.current, digit, elapsed_ms: elapsed, end };
                    }
                    if elapsed < DTMF_TONE_MS + DTMF_GAP_MS {
                        return CallerFrame::Silence;
                    }
                    if digit + 1 < digits {
                        self.phase = Phase::Dtmf { digit: digit + 1, started: now };
                        continue;
                    }
                    self.start_listening(now);
                }
                Phase::Listening { since } => {
                    if self.listening_over(now, since) {
                        continue;
                    }
                    return CallerFrame::Silence;
                }
            }
        }
        CallerFrame::Silence
    }

    fn start_listening(&mut self, now: u64) {
        if let Some(t) = self.timing() {
            t.caller_end_ms = Some(now);
        }
        self.phase = Phase::Listening { since: now };
    }

    /// Ends the current turn when its answer is over (or never came, or is barged into);
    /// returns whether it did.
    fn listening_over(&mut self, now: u64, since: u64) -> bool {
        let Some(spec) = self.specs.get(self.current) else {
            self.phase = Phase::Done;
            return true;
        };
        let (listen_ms, barge_in) = (spec.listen_ms, spec.barge_in_after_ms);
        let first = self.timings.get(self.current).and_then(|t| t.agent_first_audio_ms);
        let over = match (first, self.last_agent_audio_end) {
            (Some(first), _) if barge_in.is_some_and(|b| now >= first + b) => {
                if let Some(t) = self.timing() {
                    t.barged_in = true;
                }
                true
            }
            (Some(_), Some(end)) if now >= end + self.agent_quiet_ms => {
                if let Some(t) = self.timing() {
                    t.agent_end_ms = Some(end);
                }
                true
            }
            (None, _) => now >= since + listen_ms,
            _ => false,
        };
        if over {
            self.begin_turn(self.current + 1, now);
        }
        over
    }

    /// An agent frame covering `[at, at + 20)` ms; `energetic` when it carries speech (not
    /// silence or comfort noise).
    pub fn agent_audio(&mut self, at: u64, energetic: bool) {
        if !energetic {
            return;
        }
        let Phase::Listening { since } = self.phase else { return };
        if at < since {
            return;
        }
        if let Some(t) = self.timing()
            && t.agent_first_audio_ms.is_none()
        {
            t.agent_first_audio_ms = Some(at);
        }
        let end = at + FRAME_MS;
        self.last_agent_audio_end = Some(self.last_agent_audio_end.map_or(end, |e| e.max(end)));
    }

    /// The far end hung up at `now`: the call and the current turn are over.
    pub fn remote_hangup(&mut self, now: u64) {
        if self.phase == Phase::Done {
            return;
        }
        let answered = self.last_agent_audio_end;
        if let Some(t) = self.timing() {
            t.remote_hangup = true;
            if t.caller_end_ms.is_none() && t.caller_start_ms.is_some() {
                t.caller_end_ms = Some(now);
            }
            if t.agent_first_audio_ms.is_some() {
                t.agent_end_ms = answered;
            }
        }
        self.remote_ended = true;
        self.phase = Phase::Done;
    }

    /// A REFER arrived (the agent transfers the call).
    pub fn transfer(&mut self, refer_to: String) {
        if let Some(t) = self.timing() {
            t.transfer_to = Some(refer_to);
        }
    }

    /// The call ended on our side (timeout, error) at `now`: the turn in progress stops.
    pub fn abort(&mut self) {
        self.phase = Phase::Done;
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn remote_ended(&self) -> bool {
        self.remote_ended
    }

    pub fn timings(&self) -> &[TurnTiming] {
        &self.timings
    }
}

/// One expectation's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `expect_within_ms`, `expect_says`, ...
    pub expectation: &'static str,
    pub passed: bool,
    /// What was seen (or why it failed).
    pub detail: String,
}

/// Judges a turn's expectations from its timing and (for `expect_says`) its transcript.
pub fn judge(expect: &Expectations, timing: &TurnTiming, transcript: Option<&str>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    let verdict = |expectation, passed, detail: String| Verdict { expectation, passed, detail };
    if !timing.reached {
        let any =
            expect.within_ms.is_some() || expect.says.is_some() || expect.silence || expect.hangup || expect.transfer;
        if any {
            verdicts.push(verdict("reached", false, "the call ended before this turn".into()));
        }
        return verdicts;
    }
    if let Some(limit) = expect.within_ms {
        verdicts.push(match timing.latency_ms() {
            Some(latency) if latency <= limit => verdict("expect_within_ms", true, format!("answered in {latency} ms")),
            Some(latency) => verdict("expect_within_ms", false, format!("answered in {latency} ms > {limit} ms")),
            None => verdict("expect_within_ms", false, format!("no answer within {limit} ms")),
        });
    }
    if let Some(pattern) = &expect.says {
        verdicts.push(match transcript {
            Some(text) => match pattern.check(text) {
                Ok(()) => verdict("expect_says", true, format!("said {}", pattern.describe())),
                Err(why) => verdict("expect_says", false, why),
            },
            None if timing.agent_first_audio_ms.is_none() => {
                verdict("expect_says", false, "the agent said nothing".into())
            }
            None => verdict("expect_says", false, "no transcript of the answer".into()),
        });
    }
    if expect.silence {
        verdicts.push(match timing.agent_first_audio_ms {
            None => verdict("expect_silence", true, "silent".into()),
            Some(at) => verdict("expect_silence", false, format!("the agent spoke at {at} ms")),
        });
    }
    if expect.hangup {
        verdicts.push(if timing.remote_hangup {
            verdict("expect_hangup", true, "the agent hung up".into())
        } else {
            verdict("expect_hangup", false, "the agent did not hang up".into())
        });
    }
    if expect.transfer {
        verdicts.push(match &timing.transfer_to {
            Some(to) => verdict("expect_transfer", true, format!("REFER to {to}")),
            None => verdict("expect_transfer", false, "no REFER received".into()),
        });
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testcall::scenario::SaysPattern;

    fn spec(kind: ActionKind) -> TurnSpec {
        TurnSpec { wait_ms: 0, kind, barge_in_after_ms: None, listen_ms: 5000, expect: Expectations::default() }
    }

    /// Runs the machine frame by frame to `until` ms; the agent is energetic in `agent` ranges.
    fn run(machine: &mut TurnMachine, until: u64, agent: &[(u64, u64)]) -> Vec<(u64, CallerFrame)> {
        let mut sent = Vec::new();
        let mut now = 0;
        while now < until && !machine.is_done() {
            sent.push((now, machine.tick(now)));
            let energetic = agent.iter().any(|(from, to)| now >= *from && now < *to);
            machine.agent_audio(now, energetic);
            now += FRAME_MS;
        }
        sent
    }

    #[test]
    fn latency_is_from_the_end_of_speech_to_the_first_agent_audio() {
        // 1 s of speech (50 frames) from 200 ms; the agent answers at 1800 ms for 1 s.
        let mut turn = spec(ActionKind::Speech { frames: 50 });
        turn.wait_ms = 200;
        let mut m = TurnMachine::new(vec![turn], 800);
        let sent = run(&mut m, 10_000, &[(1800, 2800)]);
        let t = &m.timings()[0];
        assert_eq!(t.caller_start_ms, Some(200));
        assert_eq!(t.caller_end_ms, Some(1200));
        assert_eq!(t.agent_first_audio_ms, Some(1800));
        assert_eq!(t.agent_end_ms, Some(2800));
        assert_eq!(t.latency_ms(), Some(600));
        assert!(m.is_done());
        // The turn ended after 800 ms of agent quiet, and the caller then finished the call.
        assert_eq!(sent.last(), Some(&(3600, CallerFrame::Finished)));
        let speech = sent.iter().filter(|(_, f)| matches!(f, CallerFrame::Speech { .. })).count();
        assert_eq!(speech, 50);
    }

    #[test]
    fn agent_audio_before_the_caller_finished_is_not_an_answer() {
        let mut m = TurnMachine::new(vec![spec(ActionKind::Speech { frames: 25 })], 400);
        run(&mut m, 10_000, &[(100, 300), (900, 1000)]);
        assert_eq!(m.timings()[0].agent_first_audio_ms, Some(900));
        assert_eq!(m.timings()[0].latency_ms(), Some(400));
    }

    #[test]
    fn no_answer_ends_the_turn_after_listen_ms_and_fails_within_but_passes_silence() {
        let mut first = spec(ActionKind::Listen);
        first.listen_ms = 1000;
        first.expect.within_ms = Some(500);
        let mut second = spec(ActionKind::Listen);
        second.listen_ms = 600;
        second.expect.silence = true;
        let mut m = TurnMachine::new(vec![first.clone(), second.clone()], 800);
        let sent = run(&mut m, 10_000, &[]);
        assert_eq!(sent.last(), Some(&(1600, CallerFrame::Finished)));
        let t = m.timings();
        assert_eq!((t[0].caller_end_ms, t[0].agent_first_audio_ms), (Some(0), None));
        assert_eq!(t[1].caller_end_ms, Some(1000));
        let v = judge(&first.expect, &t[0], None);
        assert_eq!(v.len(), 1);
        assert!(!v[0].passed);
        assert_eq!(v[0].detail, "no answer within 500 ms");
        let v = judge(&second.expect, &t[1], None);
        assert!(v[0].passed, "{v:?}");
    }

    #[test]
    fn a_slow_answer_fails_within_and_speech_breaks_silence() {
        let mut turn = spec(ActionKind::Listen);
        turn.expect.within_ms = Some(500);
        let mut m = TurnMachine::new(vec![turn.clone()], 800);
        run(&mut m, 10_000, &[(700, 900)]);
        let v = judge(&turn.expect, &m.timings()[0], Some("hello"));
        assert_eq!(v[0].detail, "answered in 700 ms > 500 ms");
        assert!(!v[0].passed);
        let silence = Expectations { silence: true, ..Expectations::default() };
        let v = judge(&silence, &m.timings()[0], None);
        assert!(!v[0].passed);
        assert_eq!(v[0].detail, "the agent spoke at 700 ms");
    }

    #[test]
    fn barge_in_starts_the_next_turn_while_the_agent_speaks() {
        let mut first = spec(ActionKind::Speech { frames: 10 });
        first.barge_in_after_ms = Some(300);
        let second = spec(ActionKind::Speech { frames: 10 });
        let mut m = TurnMachine::new(vec![first, second], 800);
        // The agent answers at 400 ms and would speak for 3 s; the second turn interrupts at 700.
        let sent = run(&mut m, 20_000, &[(400, 3400)]);
        let t = m.timings();
        assert_eq!(t[0].agent_first_audio_ms, Some(400));
        assert!(t[0].barged_in);
        assert_eq!(t[0].agent_end_ms, None);
        assert_eq!(t[1].caller_start_ms, Some(700));
        assert!(sent.contains(&(700, CallerFrame::Speech { turn: 1, frame: 0 })));
        // Agent audio still playing when the second turn's speech ends counts as its answer.
        assert_eq!(t[1].caller_end_ms, Some(900));
        assert_eq!(t[1].latency_ms(), Some(0));
    }

    #[test]
    fn a_remote_bye_ends_the_call_and_judges_hangup_and_unreached_turns() {
        let mut first = spec(ActionKind::Listen);
        first.expect.hangup = true;
        let mut second = spec(ActionKind::Speech { frames: 5 });
        second.expect.within_ms = Some(1000);
        let mut m = TurnMachine::new(vec![first.clone(), second.clone()], 800);
        run(&mut m, 400, &[(100, 300)]);
        m.remote_hangup(400);
        assert!(m.is_done() && m.remote_ended());
        assert_eq!(m.tick(420), CallerFrame::Finished);
        let t = m.timings();
        assert_eq!(t[0].agent_end_ms, Some(300));
        let v = judge(&first.expect, &t[0], None);
        assert!(v[0].passed, "{v:?}");
        let v = judge(&second.expect, &t[1], None);
        assert_eq!(v[0].expectation, "reached");
        assert!(!v[0].passed);
        // Without a BYE the same expectation fails.
        let v = judge(&first.expect, &TurnTiming { reached: true, ..TurnTiming::default() }, None);
        assert!(!v[0].passed);
    }

    #[test]
    fn dtmf_digits_are_paced_and_the_last_packet_of_each_event_is_marked_end() {
        let mut m = TurnMachine::new(vec![spec(ActionKind::Dtmf { digits: 2 })], 800);
        let sent = run(&mut m, 2000, &[]);
        let dtmf: Vec<_> = sent.iter().filter(|(_, f)| matches!(f, CallerFrame::Dtmf { .. })).collect();
        assert_eq!(dtmf.len(), 10);
        assert_eq!(dtmf[0], &(0, CallerFrame::Dtmf { turn: 0, digit: 0, elapsed_ms: 0, end: false }));
        assert_eq!(dtmf[4], &(80, CallerFrame::Dtmf { turn: 0, digit: 0, elapsed_ms: 80, end: true }));
        assert_eq!(dtmf[5], &(160, CallerFrame::Dtmf { turn: 0, digit: 1, elapsed_ms: 0, end: false }));
        assert_eq!(m.timings()[0].caller_end_ms, Some(320));
    }

    #[test]
    fn a_hangup_turn_asks_for_bye_and_transfer_is_judged_from_refer() {
        let mut first = spec(ActionKind::Listen);
        first.listen_ms = 100;
        first.expect.transfer = true;
        let mut hang = spec(ActionKind::Hangup);
        hang.wait_ms = 40;
        let mut m = TurnMachine::new(vec![first.clone(), hang], 800);
        m.transfer("sip:human@example.com".into());
        let sent = run(&mut m, 2000, &[]);
        assert_eq!(sent.last(), Some(&(140, CallerFrame::Hangup)));
        let v = judge(&first.expect, &m.timings()[0], None);
        assert_eq!(v[0].detail, "REFER to sip:human@example.com");
        assert!(v[0].passed);
    }

    #[test]
    fn says_is_judged_on_the_transcript() {
        let expect = Expectations { says: Some(SaysPattern::parse("refund").unwrap()), ..Expectations::default() };
        let answered = TurnTiming { reached: true, agent_first_audio_ms: Some(10), ..TurnTiming::default() };
        assert!(judge(&expect, &answered, Some("Your refund is on its way"))[0].passed);
        let v = judge(&expect, &answered, Some("You said something for 900 milliseconds."));
        assert_eq!(v[0].detail, "transcript lacks refund");
        let silent = TurnTiming { reached: true, ..TurnTiming::default() };
        assert_eq!(judge(&expect, &silent, None)[0].detail, "the agent said nothing");
    }
}
