//! `sip.tls*` and the trunks' `tls_*` keys: the TLS listener's certificate and key, mutual TLS,
//! and how each `transport = "tls"` trunk's server is verified. The PEM files are read here, at
//! load time, so that a missing, unreadable or mismatched file is a configuration problem that
//! names its key (`switchboard check` shows it), never a failure on the first call.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use switchboard_sip::tls::{self as sip_tls, ServerTrust, TlsConnect, TlsListener};

use super::{Config, Resolved, TrunkTransport, trunk_host};

/// The TLS listener (when `sip.tls` is set and its files are good) and the trunks' client
/// configurations, by trunk name.
pub(super) fn validate(
    cfg: &Config,
    bad: &mut impl FnMut(&str, String),
) -> (Option<TlsListener>, BTreeMap<String, TlsConnect>, BTreeMap<String, Arc<ServerConfig>>) {
    let listener = listener(cfg, bad);
    let mut trunks = BTreeMap::new();
    let mut clients = BTreeMap::new();
    for (name, trunk) in &cfg.trunks {
        let key = |field: &str| format!("trunks.{name}.{field}");
        if let Some(config) = client_certificates(name, trunk, listener.as_ref(), bad) {
            clients.insert(name.clone(), config);
        }
        if trunk.transport != TrunkTransport::Tls {
            // A key that would do nothing is a mistake worth saying.
            if !trunk.tls_ca.is_empty() {
                bad(&key("tls_ca"), "only used with transport = \"tls\"".into());
            }
            if !trunk.tls_server_name.is_empty() {
                bad(&key("tls_server_name"), "only used with transport = \"tls\"".into());
            }
            if !trunk.tls_verify {
                bad(&key("tls_verify"), "only used with transport = \"tls\"".into());
            }
            continue;
        }
        let trust = if !trunk.tls_verify {
            if !trunk.tls_ca.is_empty() {
                bad(&key("tls_ca"), "has no effect with tls_verify = false".into());
            }
            ServerTrust::Unverified
        } else if trunk.tls_ca.is_empty() {
            ServerTrust::Roots(sip_tls::system_roots())
        } else {
            match sip_tls::load_ca(Path::new(&trunk.tls_ca)) {
                Ok(roots) => ServerTrust::Roots(roots),
                Err(e) => {
                    bad(&key("tls_ca"), e.to_string());
                    continue;
                }
            }
        };
        let (name_key, host) = if trunk.tls_server_name.is_empty() {
            (key("address"), trunk_host(&trunk.address))
        } else {
            (key("tls_server_name"), trunk.tls_server_name.as_str())
        };
        let server_name = match sip_tls::server_name(host) {
            Ok(server_name) => server_name,
            Err(e) => {
                bad(&name_key, e.to_string());
                continue;
            }
        };
        match sip_tls::client_config(trust) {
            Ok(config) => {
                trunks.insert(name.clone(), TlsConnect { config: Arc::new(config), server_name });
            }
            Err(e) => bad(&key("transport"), e.to_string()),
        }
    }
    (listener, trunks, clients)
}

/// A trunk's `tls_client_ca`: the listener's configuration for connections from its `sources`,
/// asking for a client certificate issued by that CA. Applies to inbound connections, whatever
/// the trunk's `transport` (which is about the calls we place).
fn client_certificates(
    name: &str,
    trunk: &super::TrunkConfig,
    listener: Option<&TlsListener>,
    bad: &mut impl FnMut(&str, String),
) -> Option<Arc<ServerConfig>> {
    if trunk.tls_client_ca.is_empty() {
        return None;
    }
    let key = format!("trunks.{name}.tls_client_ca");
    if trunk.sources.0.is_empty() {
        bad(&key, "needs the trunk's `sources`: its TLS connections are known by their address".into());
        return None;
    }
    let Some(listener) = listener else {
        bad(&key, "needs sip.tls (the TLS listener that asks for the certificate)".into());
        return None;
    };
    let roots = sip_tls::load_ca(Path::new(&trunk.tls_client_ca)).map_err(|e| bad(&key, e.to_string())).ok()?;
    sip_tls::server_config(listener.certificate.clone(), Some(roots))
        .map(Arc::new)
        .map_err(|e| bad(&key, e.to_string()))
        .ok()
}

fn listener(cfg: &Config, bad: &mut impl FnMut(&str, String)) -> Option<TlsListener> {
    let sip = &cfg.sip;
    if sip.tls.is_empty() {
        for (key, value) in
            [("sip.tls_cert", &sip.tls_cert), ("sip.tls_key", &sip.tls_key), ("sip.tls_client_ca", &sip.tls_client_ca)]
        {
            if !value.is_empty() {
                bad(key, "set, but sip.tls (the TLS listen address) is empty".into());
            }
        }
        return None;
    }
    let addr = match sip.tls.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            bad("sip.tls", format!("`{}` is not an IP:port address", sip.tls));
            None
        }
    };
    let mut required = |key: &str, value: &str| {
        if value.is_empty() {
            bad(key, "must be set when sip.tls is set (a PEM file)".into());
            return None;
        }
        Some(Path::new(value).to_path_buf())
    };
    let (cert_path, key_path) = (required("sip.tls_cert", &sip.tls_cert), required("sip.tls_key", &sip.tls_key));
    let certs = cert_path
        .and_then(|path| sip_tls::load_certificates(&path).map_err(|e| bad("sip.tls_cert", e.to_string())).ok());
    let key =
        key_path.and_then(|path| sip_tls::load_private_key(&path).map_err(|e| bad("sip.tls_key", e.to_string())).ok());
    let client_ca = match sip.tls_client_ca.as_str() {
        "" => Some(None),
        path => sip_tls::load_ca(Path::new(path)).map(Some).map_err(|e| bad("sip.tls_client_ca", e.to_string())).ok(),
    };
    let (addr, certs, key, client_ca) = (addr?, certs?, key?, client_ca?);
    let listener = sip_tls::ServerCertificate::new(certs, key).and_then(|certificate| {
        TlsListener::new(addr, Arc::new(certificate), client_ca, sip_tls::DEFAULT_HANDSHAKE_TIMEOUT)
    });
    match listener {
        Ok(listener) => Some(listener),
        Err(e) => {
            bad("sip.tls_key", format!("does not fit sip.tls_cert: {e}"));
            None
        }
    }
}

/// On a reload: when the files of `sip.tls_cert` / `sip.tls_key` now hold another certificate,
/// the running listener presents it from the next handshake on (the listener itself, its
/// address and `sip.tls_client_ca` stay as started). Whether it changed.
pub fn rotate_tls_certificate(running: &Resolved, loaded: &Resolved) -> bool {
    match (&running.sip_tls, &loaded.sip_tls) {
        (Some(running), Some(loaded)) => running.certificate.replace_with(&loaded.certificate),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::super::{ConfigErrors, load_with_env};

    /// A directory with a CA-less self-signed certificate, its key and an unrelated key.
    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(tag: &str) -> Files {
            let dir = std::env::temp_dir().join(format!("sb-config-tls-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let one = rcgen::generate_simple_self_signed(vec!["sip.example.com".into()]).unwrap();
            let other = rcgen::generate_simple_self_signed(vec!["sip.example.com".into()]).unwrap();
            std::fs::write(dir.join("cert.pem"), one.cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), one.signing_key.serialize_pem()).unwrap();
            std::fs::write(dir.join("other-key.pem"), other.signing_key.serialize_pem()).unwrap();
            Files { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }

        fn load(&self, toml: &str) -> Result<super::super::Resolved, ConfigErrors> {
            let path = self.dir.join("switchboard.toml");
            let mut file = std::fs::File::create(&path).unwrap();
            file.write_all(toml.as_bytes()).unwrap();
            load_with_env(&path, &[]).map(|(_, resolved)| resolved)
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn keys(errors: ConfigErrors) -> Vec<(String, String)> {
        errors.0.into_iter().map(|p| (p.key, p.message)).collect()
    }

    #[test]
    fn the_listener_loads_its_files_and_names_the_key_at_fault() {
        let files = Files::new("listener");
        let (cert, key) = (files.path("cert.pem"), files.path("key.pem"));
        let resolved = files
            .load(&format!("[sip]\ntls = \"127.0.0.1:5061\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"))
            .unwrap();
        assert_eq!(resolved.sip_tls.unwrap().addr, "127.0.0.1:5061".parse().unwrap());

        let missing = files.path("nope.pem");
        let problems = keys(
            files
                .load(&format!("[sip]\ntls = \"127.0.0.1:5061\"\ntls_cert = \"{missing}\"\ntls_key = \"{key}\"\n"))
                .unwrap_err(),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "sip.tls_cert");
        assert!(problems[0].1.contains("nope.pem"), "{problems:?}");

        let other = files.path("other-key.pem");
        let problems = keys(
            files
                .load(&format!("[sip]\ntls = \"127.0.0.1:5061\"\ntls_cert = \"{cert}\"\ntls_key = \"{other}\"\n"))
                .unwrap_err(),
        );
        assert_eq!(problems[0].0, "sip.tls_key", "{problems:?}");

        // The key given as the certificate: no certificate in it.
        let problems = keys(
            files
                .load(&format!("[sip]\ntls = \"127.0.0.1:5061\"\ntls_cert = \"{key}\"\ntls_key = \"{key}\"\n"))
                .unwrap_err(),
        );
        assert_eq!(problems[0].0, "sip.tls_cert", "{problems:?}");

        let problems = keys(files.load("[sip]\ntls = \"127.0.0.1:5061\"\n").unwrap_err());
        let named: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(named, ["sip.tls_cert", "sip.tls_key"]);

        // Files without a listener would do nothing.
        let problems = keys(files.load(&format!("[sip]\ntls_cert = \"{cert}\"\n")).unwrap_err());
        assert_eq!(problems[0].0, "sip.tls_cert");
    }

    #[test]
    fn a_reload_with_a_renewed_certificate_rotates_the_running_one() {
        let files = Files::new("rotate");
        let (cert, key) = (files.path("cert.pem"), files.path("key.pem"));
        let toml = format!("[sip]\ntls = \"127.0.0.1:5061\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n");
        let running = files.load(&toml).unwrap();
        let first = running.sip_tls.as_ref().unwrap().certificate.leaf();
        assert!(!super::rotate_tls_certificate(&running, &files.load(&toml).unwrap()), "the same files: no change");

        let renewed = rcgen::generate_simple_self_signed(vec!["sip.example.com".into()]).unwrap();
        std::fs::write(&cert, renewed.cert.pem()).unwrap();
        std::fs::write(&key, renewed.signing_key.serialize_pem()).unwrap();
        assert!(super::rotate_tls_certificate(&running, &files.load(&toml).unwrap()));
        let now = running.sip_tls.as_ref().unwrap().certificate.leaf();
        assert_ne!(now, first);
        assert_eq!(now.unwrap().as_ref(), renewed.cert.der().as_ref());
    }

    #[test]
    fn a_trunks_client_ca_needs_its_sources_and_the_listener() {
        let files = Files::new("clients");
        let (cert, key) = (files.path("cert.pem"), files.path("key.pem"));
        let listener = format!("[sip]\ntls = \"127.0.0.1:5061\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n");
        let trunk = format!("[trunks.pbx]\naddress = \"127.0.0.1:5060\"\ntls_client_ca = \"{cert}\"\n");

        let resolved = files.load(&format!("{listener}{trunk}sources = [\"192.0.2.0/24\"]\n")).unwrap();
        assert!(resolved.trunk_tls_clients.contains_key("pbx"));
        assert_eq!(resolved.trunk_for_source("192.0.2.7".parse().unwrap()), Some("pbx"));

        let problems = keys(files.load(&format!("{listener}{trunk}")).unwrap_err());
        assert_eq!(problems[0].0, "trunks.pbx.tls_client_ca", "{problems:?}");
        assert!(problems[0].1.contains("sources"), "{problems:?}");
        let problems = keys(files.load(&format!("{trunk}sources = [\"192.0.2.0/24\"]\n")).unwrap_err());
        assert_eq!(problems[0].0, "trunks.pbx.tls_client_ca", "{problems:?}");
        assert!(problems[0].1.contains("sip.tls"), "{problems:?}");
    }

    #[test]
    fn tls_trunks_need_the_listener_and_take_their_ca_and_server_name() {
        let files = Files::new("trunks");
        let (cert, key) = (files.path("cert.pem"), files.path("key.pem"));
        let listener = format!("[sip]\ntls = \"127.0.0.1:5061\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n");
        let trunk = "[trunks.carrier]\naddress = \"127.0.0.1:5061\"\ntransport = \"tls\"\n";

        let problems = keys(files.load(trunk).unwrap_err());
        assert_eq!(problems[0].0, "trunks.carrier.transport", "{problems:?}");

        let resolved = files
            .load(&format!("{listener}{trunk}tls_ca = \"{cert}\"\ntls_server_name = \"sip.example.com\"\n"))
            .unwrap();
        let connect = &resolved.trunk_tls["carrier"];
        assert_eq!(connect.server_name, rustls::pki_types::ServerName::try_from("sip.example.com").unwrap());
        // Without tls_server_name: the host of `address`.
        let resolved = files.load(&format!("{listener}{trunk}")).unwrap();
        assert_eq!(
            resolved.trunk_tls["carrier"].server_name,
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap()
        );

        let missing = files.path("ca-missing.pem");
        let problems = keys(files.load(&format!("{listener}{trunk}tls_ca = \"{missing}\"\n")).unwrap_err());
        assert_eq!(problems[0].0, "trunks.carrier.tls_ca", "{problems:?}");

        let udp = "[trunks.carrier]\naddress = \"127.0.0.1:5060\"\ntls_verify = false\n";
        let problems = keys(files.load(udp).unwrap_err());
        assert_eq!(problems[0].0, "trunks.carrier.tls_verify", "{problems:?}");
    }
}
