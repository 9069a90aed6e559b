//! What the agent said, per turn: one Realtime transcription session per call (reference §1.1
//! `intent=transcription`, §2 `session.type: "transcription"`, §4.4), through the same
//! `switchboard_realtime` client the gateway uses. With `realtime.api_key` set it is OpenAI's;
//! without one, the simulator in-process serves the same session with scripted transcripts
//! (docs/simulator.md), so an offline run exercises this very code.
//!
//! Turn detection is off (`null`): each answer is appended, then committed
//! (`input_audio_buffer.commit`), and its `…input_audio_transcription.completed` is awaited.

use std::time::Duration;

use switchboard_realtime::events::ClientEvent;
use switchboard_realtime::events::{AudioConfig, AudioFormat, AudioInput, SessionConfig, Transcription};
use switchboard_realtime::{ConnectConfig, RealtimeReceiver, RealtimeSender, ServerEvent};

/// The API refuses to commit less than 100 ms (reference §3, `input_audio_buffer_commit_empty`).
pub const MIN_SEGMENT_MS: usize = 100;
/// Audio is appended in pieces of this many bytes (250 ms of G.711).
const APPEND_BYTES: usize = 2000;

/// Why a transcription was not obtained.
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error("transcription session could not be opened: {0}")]
    Connect(String),
    #[error("transcription service refused: {0}")]
    Refused(String),
    #[error("transcription session failed: {0}")]
    Session(String),
    #[error("no transcription within {0:?}")]
    Timeout(Duration),
}

/// Where the transcription session is and which model transcribes.
#[derive(Clone)]
pub struct TranscribeConfig {
    /// `wss://…/v1/realtime` (or the simulator's `ws://` URL); `?intent=transcription` is added.
    pub url: String,
    pub api_key: String,
    pub model: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for TranscribeConfig {
    /// The API key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscribeConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The URL of a transcription session: `intent=transcription` and no `model` (reference §1.1).
pub fn transcription_url(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}intent=transcription")
}

/// The `session.update` of a transcription session for G.711 audio (`format`), manual commits.
pub fn session_update(format: AudioFormat, model: &str) -> ClientEvent {
    let session = SessionConfig {
        session_type: "transcription".to_owned(),
        audio: Some(AudioConfig {
            input: Some(AudioInput {
                format: Some(format),
                noise_reduction: None,
                transcription: Some(Some(Transcription { model: Some(model.to_owned()), ..Transcription::default() })),
                turn_detection: Some(None),
            }),
            output: None,
        }),
        ..SessionConfig::default()
    };
    ClientEvent::SessionUpdate { event_id: None, session: Box::new(session) }
}

/// Transcribes each segment (encoded in `format`); `None` for a segment too short to commit.
pub async fn transcribe(
    cfg: &TranscribeConfig,
    format: AudioFormat,
    segments: &[Vec<u8>],
) -> Result<Vec<Option<String>>, TranscribeError> {
    let min_bytes = (format.bytes_per_ms() * MIN_SEGMENT_MS as f64) as usize;
    if segments.iter().all(|s| s.len() < min_bytes) {
        return Ok(vec![None; segments.len()]);
    }
    let connect =
        ConnectConfig { url: transcription_url(&cfg.url), model: String::new(), api_key: cfg.api_key.clone() };
    let (mut tx, mut rx) = tokio::time::timeout(cfg.timeout, switchboard_realtime::connect(&connect))
        .await
        .map_err(|_| TranscribeError::Timeout(cfg.timeout))?
        .map_err(|e| TranscribeError::Connect(e.to_string()))?;
    let result = tokio::time::timeout(cfg.timeout * (segments.len() as u32 + 1), async {
        send(&mut tx, &session_update(format, &cfg.model)).await?;
        wait_for(&mut rx, |event| matches!(event, ServerEvent::SessionUpdated(_)).then_some(())).await?;
        let mut transcripts = Vec::with_capacity(segments.len());
        for segment in segments {
            if segment.len() < min_bytes {
                transcripts.push(None);
                continue;
            }
            for chunk in segment.chunks(APPEND_BYTES) {
                send(&mut tx, &ClientEvent::InputAudioBufferAppend { event_id: None, audio: chunk.to_vec() }).await?;
            }
            send(&mut tx, &ClientEvent::InputAudioBufferCommit { event_id: None }).await?;
            let item = wait_for(&mut rx, |event| match event {
                ServerEvent::InputAudioBufferCommitted(c) => Some(c.item_id.clone()),
                _ => None,
            })
            .await?;
            let text = wait_for(&mut rx, |event| match event {
                ServerEvent::InputAudioTranscriptionCompleted(done) if done.item_id == item => {
                    Some(Ok(done.transcript.clone()))
                }
                ServerEvent::InputAudioTranscriptionFailed(failed) if failed.item_id == item => {
                    Some(Err(failed.error.message.clone()))
                }
                _ => None,
            })
            .await?
            .map_err(TranscribeError::Session)?;
            transcripts.push(Some(text));
        }
        Ok(transcripts)
    })
    .await;
    tx.close().await;
    result.map_err(|_| TranscribeError::Timeout(cfg.timeout))?
}

async fn send(tx: &mut RealtimeSender, event: &ClientEvent) -> Result<(), TranscribeError> {
    tx.send(event).await.map_err(|e| TranscribeError::Session(e.to_string()))
}

/// Reads events until `pick` takes one; an `error` event ends the wait.
async fn wait_for<T>(
    rx: &mut RealtimeReceiver,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> Result<T, TranscribeError> {
    loop {
        match rx.recv().await {
            None => return Err(TranscribeError::Session("the server closed the session".into())),
            Some(Err(switchboard_realtime::ClientError::Event(_))) => {} // an unknown event: ignored (§4.8)
            Some(Err(e)) => return Err(TranscribeError::Session(e.to_string())),
            Some(Ok(ServerEvent::Error(e))) => {
                let code = e.error.code.unwrap_or_default();
                return Err(TranscribeError::Refused(format!("{code}: {}", e.error.message)));
            }
            Some(Ok(event)) => {
                if let Some(value) = pick(&event) {
                    return Ok(value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_a_transcription_session_with_manual_commits() {
        assert_eq!(
            transcription_url("wss://api.openai.com/v1/realtime"),
            "wss://api.openai.com/v1/realtime?intent=transcription"
        );
        assert_eq!(transcription_url("ws://h/v1/realtime?x=1"), "ws://h/v1/realtime?x=1&intent=transcription");
        let json = serde_json::to_value(session_update(AudioFormat::Pcmu, "gpt-4o-mini-transcribe")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"session.update","session":{"type":"transcription","audio":{"input":{
                "format":{"type":"audio/pcmu"},
                "transcription":{"model":"gpt-4o-mini-transcribe"},
                "turn_detection":null}}}})
        );
        let cfg = TranscribeConfig {
            url: "wss://api.openai.com/v1/realtime".into(),
            api_key: "sk-secret".into(),
            model: "gpt-4o-mini-transcribe".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{cfg:?}").contains("sk-secret"));
    }
}
