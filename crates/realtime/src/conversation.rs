//! Sans-IO playout and barge-in bookkeeping for one Realtime conversation (reference §6).
//!
//! The bridge tells this state what arrived (`response.output_audio.delta`), what went out over
//! RTP, and when the caller started speaking; it answers which deltas to drop and which
//! `conversation.item.truncate` to send. No clocks: the playout count *is* the clock.

use std::collections::HashMap;

use crate::events::ClientEvent;

/// A small integer standing for an assistant item; the bridge's pacer carries it per frame so
/// that played milliseconds can be credited to the right item.
pub type ItemTag = u32;

/// A `conversation.item.truncate` to send after a barge-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub item_id: String,
    /// Whole milliseconds of this item the caller actually heard.
    pub audio_end_ms: u32,
}

impl Truncate {
    /// The client event (content index 0: the item's audio part).
    pub fn to_event(&self) -> ClientEvent {
        ClientEvent::ConversationItemTruncate {
            event_id: None,
            item_id: self.item_id.clone(),
            content_index: 0,
            audio_end_ms: self.audio_end_ms,
        }
    }
}

#[derive(Debug)]
struct ItemPlayout {
    item_id: String,
    response_id: String,
    received_ms: f64,
    played_ms: f64,
}

impl ItemPlayout {
    fn unplayed(&self) -> bool {
        self.played_ms < self.received_ms
    }
}

#[derive(Debug, Default)]
struct ResponseState {
    done: bool,
    /// Barge-in hit this response: its later deltas are discarded.
    interrupted: bool,
}

/// Playout state of the assistant's audio items in one conversation.
#[derive(Debug, Default)]
pub struct Conversation {
    items: HashMap<ItemTag, ItemPlayout>,
    tags_by_item_id: HashMap<String, ItemTag>,
    responses: HashMap<String, ResponseState>,
    next_tag: ItemTag,
}

impl Conversation {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `response.output_audio.delta` carrying `audio_ms` of audio arrived. Returns the tag to
    /// enqueue the audio under, or None when the delta belongs to a response interrupted by
    /// barge-in (discard it).
    pub fn on_audio_delta(&mut self, response_id: &str, item_id: &str, audio_ms: f64) -> Option<ItemTag> {
        let response = self.responses.entry(response_id.to_owned()).or_default();
        if response.interrupted {
            return None;
        }
        let tag = match self.tags_by_item_id.get(item_id) {
            Some(tag) => *tag,
            None => {
                let tag = self.allocate_tag();
                self.items.insert(
                    tag,
                    ItemPlayout {
                        item_id: item_id.to_owned(),
                        response_id: response_id.to_owned(),
                        received_ms: 0.0,
                        played_ms: 0.0,
                    },
                );
                self.tags_by_item_id.insert(item_id.to_owned(), tag);
                tag
            }
        };
        if let Some(item) = self.items.get_mut(&tag) {
            item.received_ms += audio_ms.max(0.0);
        }
        Some(tag)
    }

    /// One frame of this item's audio went out over RTP.
    pub fn on_audio_played(&mut self, tag: ItemTag, ms: f64) {
        if let Some(item) = self.items.get_mut(&tag) {
            item.played_ms = (item.played_ms + ms.max(0.0)).min(item.received_ms);
        }
        self.forget_finished(tag);
    }

    /// `input_audio_buffer.speech_started`: the caller barged in.
    ///
    /// Marks every response whose audio has not been fully played as interrupted (its later
    /// deltas are discarded) and returns the truncates, oldest item first: the assistant item
    /// being played at the whole ms actually played (clamped to the ms received for it), and
    /// every later item of which nothing was played yet at 0 (a multi-item response, e.g.
    /// `phase` commentary then final_answer: the unheard answer's transcript is deleted too,
    /// reference §3 `conversation.item.truncate`, so the model does not believe it said it).
    /// Empty when nothing was left unplayed (playback had finished: skip the truncate, §6
    /// step 2). The caller flushes its pacer / outbound queue itself.
    pub fn on_speech_started(&mut self) -> Vec<Truncate> {
        // Items with audio still owed to the caller: unplayed audio queued, or their response
        // still streaming more.
        let mut candidates: Vec<ItemTag> = self
            .items
            .iter()
            .filter(|(_, item)| {
                let streaming = self.responses.get(&item.response_id).is_some_and(|r| !r.done);
                item.unplayed() || streaming
            })
            .map(|(tag, _)| *tag)
            .collect();
        let oldest = self.oldest_tag();
        candidates.sort_by_key(|tag| tag.wrapping_sub(oldest));
        let mut truncates = Vec::new();
        for (index, tag) in candidates.iter().enumerate() {
            let Some(item) = self.items.get(tag) else { continue };
            // A fully played item followed by a later one of its response was heard in full:
            // its audio is done (the later item started framing), nothing to cut.
            let followed = candidates
                .get(index + 1..)
                .unwrap_or_default()
                .iter()
                .filter_map(|t| self.items.get(t))
                .any(|later| later.response_id == item.response_id);
            if followed && !item.unplayed() {
                continue;
            }
            let played = item.played_ms.min(item.received_ms).max(0.0).floor();
            truncates
                .push(Truncate { item_id: item.item_id.clone(), audio_end_ms: played.min(f64::from(u32::MAX)) as u32 });
        }

        // Interrupt every response still streaming or with audio left in the queue.
        let mut interrupted: Vec<String> =
            self.responses.iter().filter(|(_, r)| !r.done).map(|(id, _)| id.clone()).collect();
        interrupted.extend(self.items.values().filter(|item| item.unplayed()).map(|item| item.response_id.clone()));
        for response_id in interrupted {
            if let Some(response) = self.responses.get_mut(&response_id) {
                response.interrupted = true;
            }
        }
        // The queue is flushed: nothing more of these items will play.
        let tags: Vec<ItemTag> = self.items.keys().copied().collect();
        for tag in tags {
            if let Some(item) = self.items.get_mut(&tag) {
                item.received_ms = item.played_ms;
            }
            self.forget_finished(tag);
        }
        truncates
    }

    /// `response.created`.
    pub fn on_response_created(&mut self, response_id: &str) {
        self.responses.entry(response_id.to_owned()).or_default();
    }

    /// `response.done` (whatever the status).
    pub fn on_response_done(&mut self, response_id: &str) {
        let Some(response) = self.responses.get_mut(response_id) else {
            return;
        };
        response.done = true;
        let tags: Vec<ItemTag> =
            self.items.iter().filter(|(_, item)| item.response_id == response_id).map(|(tag, _)| *tag).collect();
        if tags.is_empty() {
            self.responses.remove(response_id);
        }
        for tag in tags {
            self.forget_finished(tag);
        }
    }

    /// Whether a response was created and has not had its `response.done` yet.
    pub fn has_active_response(&self) -> bool {
        self.responses.values().any(|r| !r.done)
    }

    /// The item id behind a tag, while the item is tracked.
    pub fn item_id(&self, tag: ItemTag) -> Option<&str> {
        self.items.get(&tag).map(|item| item.item_id.as_str())
    }

    /// Milliseconds of an item played so far, while the item is tracked.
    pub fn played_ms(&self, item_id: &str) -> Option<f64> {
        let tag = self.tags_by_item_id.get(item_id)?;
        self.items.get(tag).map(|item| item.played_ms)
    }

    /// Number of items still tracked (for tests and gauges: memory stays bounded).
    pub fn tracked_items(&self) -> usize {
        self.items.len()
    }

    fn allocate_tag(&mut self) -> ItemTag {
        loop {
            let tag = self.next_tag;
            self.next_tag = self.next_tag.wrapping_add(1);
            if !self.items.contains_key(&tag) {
                return tag;
            }
        }
    }

    /// The tag from which allocation order is measured (tags wrap around).
    fn oldest_tag(&self) -> ItemTag {
        let next = self.next_tag;
        self.items.keys().copied().max_by_key(|tag| next.wrapping_sub(*tag)).unwrap_or(next)
    }

    /// Drops an item once it is fully played and its response is done, and the response once
    /// it has no items left.
    fn forget_finished(&mut self, tag: ItemTag) {
        let Some(item) = self.items.get(&tag) else {
            return;
        };
        let response_done = self.responses.get(&item.response_id).is_none_or(|r| r.done);
        if item.unplayed() || !response_done {
            return;
        }
        let response_id = item.response_id.clone();
        let item_id = item.item_id.clone();
        self.items.remove(&tag);
        self.tags_by_item_id.remove(&item_id);
        if !self.items.values().any(|i| i.response_id == response_id) {
            self.responses.remove(&response_id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn first_of(truncates: Vec<Truncate>) -> Truncate {
        truncates.into_iter().next().expect("a truncate")
    }

    /// Plays `ms` of a tag in 20 ms frames, as the pacer would.
    fn play(conv: &mut Conversation, tag: ItemTag, ms: u32) {
        for _ in 0..ms / 20 {
            conv.on_audio_played(tag, 20.0);
        }
    }

    #[test]
    fn deltas_of_one_item_share_a_tag() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        assert!(conv.has_active_response());
        let a = conv.on_audio_delta("resp_1", "item_1", 100.0).unwrap();
        let b = conv.on_audio_delta("resp_1", "item_1", 100.0).unwrap();
        assert_eq!(a, b);
        let c = conv.on_audio_delta("resp_1", "item_2", 100.0).unwrap();
        assert_ne!(a, c);
        assert_eq!(conv.item_id(a), Some("item_1"));
        assert_eq!(conv.item_id(c), Some("item_2"));
    }

    #[test]
    fn barge_in_truncates_to_played_ms_and_drops_late_deltas() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let tag = conv.on_audio_delta("resp_1", "item_1", 3000.0).unwrap();
        play(&mut conv, tag, 1240);
        conv.on_audio_played(tag, 7.6);
        assert_eq!(conv.played_ms("item_1"), Some(1247.6));

        let truncate = first_of(conv.on_speech_started());
        assert_eq!(truncate, Truncate { item_id: "item_1".into(), audio_end_ms: 1247 });
        assert_eq!(conv.on_audio_delta("resp_1", "item_1", 200.0), None);
        assert_eq!(conv.on_audio_delta("resp_1", "item_2", 200.0), None);
        assert!(conv.has_active_response());
        conv.on_response_done("resp_1");
        assert!(!conv.has_active_response());
        assert_eq!(conv.tracked_items(), 0);
    }

    #[test]
    fn truncate_event_has_content_index_zero() {
        let truncate = Truncate { item_id: "item_1".into(), audio_end_ms: 500 };
        assert_eq!(
            truncate.to_event(),
            ClientEvent::ConversationItemTruncate {
                event_id: None,
                item_id: "item_1".into(),
                content_index: 0,
                audio_end_ms: 500,
            }
        );
    }

    #[test]
    fn played_ms_is_clamped_to_received() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let tag = conv.on_audio_delta("resp_1", "item_1", 50.0).unwrap();
        play(&mut conv, tag, 100);
        assert_eq!(conv.played_ms("item_1"), Some(50.0));
        // Still streaming: the caller heard 50 ms and more audio is owed, so truncate at 50.
        let truncate = first_of(conv.on_speech_started());
        assert_eq!(truncate.audio_end_ms, 50);
    }

    #[test]
    fn no_truncate_when_playback_had_finished() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let tag = conv.on_audio_delta("resp_1", "item_1", 400.0).unwrap();
        conv.on_response_done("resp_1");
        play(&mut conv, tag, 400);
        assert!(conv.on_speech_started().is_empty());
        // A fully played, done item is forgotten.
        assert_eq!(conv.tracked_items(), 0);
        assert_eq!(conv.played_ms("item_1"), None);
    }

    #[test]
    fn done_response_with_queued_audio_is_still_truncated() {
        // The model generates faster than real time: the response is already done while most
        // of its audio still waits in the pacer (§6 "why truncation exists").
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let tag = conv.on_audio_delta("resp_1", "item_1", 5000.0).unwrap();
        conv.on_response_done("resp_1");
        assert!(!conv.has_active_response());
        play(&mut conv, tag, 800);
        let truncate = first_of(conv.on_speech_started());
        assert_eq!(truncate.item_id, "item_1");
        assert_eq!(truncate.audio_end_ms, 800);
        assert_eq!(conv.tracked_items(), 0);
    }

    #[test]
    fn truncate_targets_the_oldest_unplayed_item() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let first = conv.on_audio_delta("resp_1", "item_1", 300.0).unwrap();
        let _second = conv.on_audio_delta("resp_1", "item_2", 300.0).unwrap();
        play(&mut conv, first, 100);
        assert_eq!(first_of(conv.on_speech_started()).item_id, "item_1");
    }

    #[test]
    fn responses_after_barge_in_play_normally() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let tag = conv.on_audio_delta("resp_1", "item_1", 1000.0).unwrap();
        play(&mut conv, tag, 200);
        assert!(!conv.on_speech_started().is_empty());
        conv.on_response_done("resp_1");

        conv.on_response_created("resp_2");
        let tag2 = conv.on_audio_delta("resp_2", "item_2", 600.0).unwrap();
        assert_eq!(conv.item_id(tag2), Some("item_2"));
        play(&mut conv, tag2, 300);
        assert_eq!(conv.played_ms("item_2"), Some(300.0));
        let truncate = first_of(conv.on_speech_started());
        assert_eq!(truncate.item_id, "item_2");
        assert_eq!(truncate.audio_end_ms, 300);
    }

    #[test]
    fn late_response_created_after_deltas_keeps_the_interrupt() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        conv.on_audio_delta("resp_1", "item_1", 100.0);
        conv.on_speech_started();
        conv.on_response_created("resp_1");
        assert_eq!(conv.on_audio_delta("resp_1", "item_1", 100.0), None);
    }

    #[test]
    fn memory_stays_bounded_over_a_long_call() {
        let mut conv = Conversation::new();
        // 70 minutes of 5-second answers, each fully played.
        for turn in 0..840 {
            let response_id = format!("resp_{turn}");
            let item_id = format!("item_{turn}");
            conv.on_response_created(&response_id);
            let mut tag = 0;
            for _ in 0..25 {
                tag = conv.on_audio_delta(&response_id, &item_id, 200.0).unwrap();
            }
            conv.on_response_done(&response_id);
            play(&mut conv, tag, 5000);
            if turn % 7 == 0 {
                // Occasional barge-in on an already finished answer.
                assert!(conv.on_speech_started().is_empty());
            }
        }
        assert_eq!(conv.tracked_items(), 0);
        assert!(!conv.has_active_response());
        assert!(conv.responses.is_empty());
        assert!(conv.tags_by_item_id.is_empty());
    }

    #[test]
    fn unknown_tags_are_ignored() {
        let mut conv = Conversation::new();
        conv.on_audio_played(42, 20.0);
        conv.on_response_done("resp_unknown");
        assert_eq!(conv.item_id(42), None);
        assert!(conv.on_speech_started().is_empty());
    }

    #[test]
    fn a_multi_item_response_truncates_the_playing_item_and_unstarted_ones_at_zero() {
        // gpt-realtime-2 `phase`: commentary then final_answer, in one response.
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let commentary = conv.on_audio_delta("resp_1", "item_commentary", 400.0).unwrap();
        let answer = conv.on_audio_delta("resp_1", "item_answer", 2000.0).unwrap();
        play(&mut conv, commentary, 200);
        let truncates = conv.on_speech_started();
        assert_eq!(
            truncates,
            vec![
                Truncate { item_id: "item_commentary".into(), audio_end_ms: 200 },
                Truncate { item_id: "item_answer".into(), audio_end_ms: 0 },
            ]
        );
        assert_eq!(conv.on_audio_delta("resp_1", "item_answer", 100.0), None, "late audio is dropped");
        let _ = answer;
    }

    #[test]
    fn a_commentary_heard_in_full_is_not_cut_the_answer_being_played_is() {
        let mut conv = Conversation::new();
        conv.on_response_created("resp_1");
        let commentary = conv.on_audio_delta("resp_1", "item_commentary", 400.0).unwrap();
        let answer = conv.on_audio_delta("resp_1", "item_answer", 2000.0).unwrap();
        play(&mut conv, commentary, 400);
        play(&mut conv, answer, 660);
        assert_eq!(conv.on_speech_started(), vec![Truncate { item_id: "item_answer".into(), audio_end_ms: 660 }]);
    }
}
