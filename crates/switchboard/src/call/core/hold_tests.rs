//! Hold, resume and a media address change in the call core (hold.rs), on the virtual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

use switchboard_media::rtp::{self, RtpHeader};

use super::agent_control::ControlConfig;
use super::hold::{HOLD_NOTE, RESUME_NOTE};
use super::talk_tests::{Harness, created, delta, done, ms, talk};
use super::tests::caller_addr;
use super::*;
use crate::call::renegotiate::MediaUpdate;

fn update(remote: SocketAddr, may_send: bool) -> MediaUpdate {
    MediaUpdate { remote, may_send, telephone_event: Some(super::talk_tests::PT_DTMF) }
}

fn media(h: &mut Harness, at: Duration, update: MediaUpdate) {
    h.run_to(at);
    h.core.handle_media_update(h.now, update);
    h.drain();
}

/// One 20 ms PCMU packet from `source`.
fn caller_packet(h: &mut Harness, at: Duration, source: SocketAddr, sequence: u16) {
    h.run_to(at);
    let header = RtpHeader { payload_type: 0, marker: false, sequence, timestamp: u32::from(sequence) * 160, ssrc: 7 };
    let mut packet = Vec::new();
    rtp::write_rtp(&mut packet, &header, &[0x55; 160]);
    h.core.handle_rtp(h.now, CALLER, source, &packet);
    h.drain();
}

/// As `Harness::run_to`, keeping where each RTP packet went.
fn run_collecting(h: &mut Harness, until: Duration) -> Vec<SocketAddr> {
    let until = h.start + until;
    let mut destinations = Vec::new();
    while let Some(due) = h.core.poll_timeout() {
        if due > until {
            break;
        }
        h.now = due.max(h.now);
        h.core.handle_timeout(h.now);
        while let Some(t) = h.core.poll_transmit() {
            destinations.push(t.destination);
        }
        h.drain();
    }
    h.now = until.max(h.now);
    destinations
}

#[test]
fn on_hold_the_agent_stops_at_once_the_model_is_told_and_resume_brings_it_back() {
    let mut h = Harness::new(talk());
    h.at(ms(0), created("resp_1"));
    h.at(ms(0), delta("resp_1", "item_1", 0x11, 3000));
    h.run_to(ms(500));
    let before_hold = h.audio_packets(0x11).len();
    assert!(before_hold >= 20, "the agent was talking: {before_hold} packets");

    media(&mut h, ms(500), update(caller_addr(), false));
    assert!(h.core.is_held());
    assert_eq!(h.cancels(), 1, "the active response is cancelled");
    assert_eq!(h.truncates().len(), 1, "its item truncated at what the caller heard");
    assert_eq!(h.user_texts(), vec![HOLD_NOTE.to_string()]);
    let sent_at_hold = h.sent.len();
    // Late deltas of the cancelled response and silence: nothing at all goes out while held.
    h.at(ms(600), delta("resp_1", "item_1", 0x11, 1000));
    h.at(ms(700), done("resp_1"));
    h.run_to(ms(5_000));
    assert_eq!(h.sent.len(), sent_at_hold, "no RTP while on hold");

    let creates_before = h.creates().len();
    media(&mut h, ms(5_000), update(caller_addr(), true));
    assert!(!h.core.is_held());
    assert_eq!(h.user_texts(), vec![HOLD_NOTE.to_string(), RESUME_NOTE.to_string()]);
    assert_eq!(h.creates().len(), creates_before + 1, "the agent is asked to greet the caller back");
    h.at(ms(5_100), created("resp_2"));
    h.at(ms(5_100), delta("resp_2", "item_2", 0x22, 500));
    h.run_to(ms(6_000));
    assert!(h.audio_packets(0x22).len() >= 20, "the agent's audio flows again");
}

#[test]
fn on_hold_the_model_hears_nothing_and_neither_idle_prompts_nor_the_rtp_timeout_fire() {
    let mut talk = talk();
    talk.control = ControlConfig { idle_timeout: Some(Duration::from_secs(5)), ..talk.control };
    let config = CoreConfig { rtp_timeout: Duration::from_secs(10), ..super::talk_tests::config(talk) };
    let mut h = Harness::with_core(config, super::talk_tests::leg());
    caller_packet(&mut h, ms(10), caller_addr(), 1);
    h.run_to(ms(200));
    let appends = h.appends();
    assert!(appends > 0, "the caller is heard before the hold");

    media(&mut h, ms(200), update(caller_addr(), false));
    // Music on hold from the caller: not for the model.
    for n in 0..20 {
        caller_packet(&mut h, ms(300 + 20 * n), caller_addr(), 2 + n as u16);
    }
    // An inactive hold for a minute: no RTP, no idle prompt, no RTP timeout.
    h.run_to(Duration::from_secs(60));
    assert_eq!(h.appends(), appends, "no caller audio to the model while held");
    assert!(h.creates().is_empty(), "no idle prompt while held: {:?}", h.creates());
    assert!(h.ended().is_none(), "no RTP timeout while held: {:?}", h.ended());

    media(&mut h, Duration::from_secs(60), update(caller_addr(), true));
    // Resumed: the RTP timeout runs again from the resume.
    h.run_to(Duration::from_secs(69));
    assert!(h.ended().is_none());
    h.run_to(Duration::from_secs(71));
    assert_eq!(h.ended().map(|(_, end)| end), Some(CallEnd::RtpTimeout));
}

#[test]
fn a_new_address_is_where_we_send_and_the_old_one_is_no_longer_trusted() {
    let mut h = Harness::new(talk());
    let old = caller_addr();
    let new: SocketAddr = "192.0.2.20:41000".parse().unwrap();
    caller_packet(&mut h, ms(10), old, 1);
    h.at(ms(20), created("resp_1"));
    h.at(ms(20), delta("resp_1", "item_1", 0x11, 2000));
    h.run_to(ms(200));
    assert_eq!(h.core.stats().latch.learned, 1);

    media(&mut h, ms(200), update(new, true));
    let destinations = run_collecting(&mut h, ms(600));
    assert!(destinations.len() >= 15, "audio still flows: {}", destinations.len());
    assert!(destinations.iter().all(|d| *d == new), "{destinations:?}");
    // The old address's packets are now a stranger's.
    let ignored = h.core.stats().latch.ignored;
    caller_packet(&mut h, ms(620), old, 2);
    assert_eq!(h.core.stats().latch.ignored, ignored + 1, "the old address is not trusted any more");
}
