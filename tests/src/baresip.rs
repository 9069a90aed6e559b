//! baresip, the real softphone of the end-to-end tests: one config folder per phone, written
//! the same way for every test (loopback only, audio from a WAV file, no sound card), and what
//! it heard (its sndfile recording).

use std::path::{Path, PathBuf};

use crate::audio;

/// One baresip phone.
#[derive(Debug, Clone, Copy)]
pub struct Phone<'a> {
    /// The folder's and the account's name (`<dir>/<name>`, `sip:<name>@127.0.0.1:<sip_port>`).
    pub name: &'a str,
    pub sip_port: u16,
    /// Its RTP port range.
    pub media: (u16, u16),
    /// What it plays into a call (`aufile`).
    pub source: &'a Path,
    /// Answers calls by itself.
    pub auto_answer: bool,
    /// Records what it hears under `<dir>/<name>-rec` (see [`heard`]).
    pub record: bool,
    /// Codec modules besides G.711 (`g722`, `opus`).
    pub codecs: &'a [&'a str],
    /// More config lines, each ending in a newline (e.g. `ctrl_tcp`).
    pub extra: &'a str,
}

impl<'a> Phone<'a> {
    /// `alice` on the slot's peer ports (SIP, and 100 RTP ports), playing `source`, G.711 only,
    /// recording what it hears, answering nothing by itself: change fields with `..`.
    pub fn alice(ports: crate::Ports, source: &'a Path) -> Phone<'a> {
        Phone {
            name: "alice",
            sip_port: ports.peer_sip,
            media: (ports.peer_media, ports.peer_media + 99),
            source,
            auto_answer: false,
            record: true,
            codecs: &[],
            extra: "",
        }
    }
}

impl Phone<'_> {
    /// Writes the phone's config folder under `dir`; returns it (baresip's `-f`).
    pub fn folder(&self, dir: &Path) -> PathBuf {
        let conf = dir.join(self.name);
        std::fs::create_dir_all(&conf).expect("mkdir baresip");
        let codecs: String = self.codecs.iter().map(|codec| format!("module {codec}.so\n")).collect();
        let (sndfile, recording) = if self.record {
            let rec = dir.join(format!("{}-rec", self.name));
            std::fs::create_dir_all(&rec).expect("mkdir baresip rec");
            ("module sndfile.so\n", format!("snd_path {}\n", rec.display()))
        } else {
            ("", String::new())
        };
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip}\nnet_interface 127.0.0.1\n\
             audio_source aufile,{source}\naudio_player aubridge,nil\naudio_alert aubridge,nil\n\
             rtp_ports {m0}-{m1}\nmodule_path /usr/lib/baresip/modules\n\
             module g711.so\n{codecs}module aufile.so\nmodule aubridge.so\n{sndfile}\
             module_tmp uuid.so\nmodule_tmp account.so\nmodule_app menu.so\n{recording}{extra}\
             ausrc_srate 8000\nausrc_channels 1\nauplay_srate 8000\nauplay_channels 1\n",
            sip = self.sip_port,
            source = self.source.display(),
            m0 = self.media.0,
            m1 = self.media.1,
            extra = self.extra,
        );
        std::fs::write(conf.join("config"), config).expect("write baresip config");
        let answer = if self.auto_answer { ";answermode=auto" } else { "" };
        std::fs::write(
            conf.join("accounts"),
            format!("<sip:{}@127.0.0.1:{}>;regint=0{answer}\n", self.name, self.sip_port),
        )
        .expect("write baresip accounts");
        conf
    }
}

/// What the phone `name` under `dir` heard (its `*-dec.wav` recording): (rate, samples), if it
/// recorded a call. baresip records at the codec's rate (8 kHz G.711, 16 kHz G.722, 48 kHz Opus).
pub fn heard(dir: &Path, name: &str) -> Option<(u32, Vec<i16>)> {
    let rec = dir.join(format!("{name}-rec"));
    // sndfile names it `dump-<time>-dec.wav` (or without the extension, on some builds).
    let path = std::fs::read_dir(rec).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        let name = p.to_string_lossy();
        name.ends_with("-dec.wav") || name.ends_with("-dec")
    })?;
    Some(audio::read_wav(&path))
}
