//! The Prometheus exporter web-config file (`--web-config-file`), the same
//! YAML that node_exporter and the other exporters read: TLS for the HTTP
//! endpoints, optional client certificates, basic auth users with bcrypt
//! hashes, extra response headers. Keys connmon cannot honour are refused
//! by name rather than ignored, so nobody believes a setting is in force
//! when it is not.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// A validated web config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// User name -> bcrypt hash.
    pub basic_auth_users: BTreeMap<String, String>,
    /// Extra headers on every response.
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// How client certificates are treated (`client_auth_type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (the default).
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but one that is
    /// sent must chain to the CA.
    VerifyIfGiven { ca_file: PathBuf },
    /// `RequireAndVerifyClientCert`.
    Require { ca_file: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Response headers the exporter toolkit allows setting.
const ALLOWED_HEADERS: &[&str] = &[
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    // Known to the format, not implemented here: refused by name below.
    cert: Option<serde_yaml_ng::Value>,
    key: Option<serde_yaml_ng::Value>,
    client_ca: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    prefer_server_cipher_suites: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// connmon speaks HTTP/1.1 only; `http2: true` (the format's default)
    /// is accepted because HTTP/2 is an offer, never a requirement.
    #[allow(dead_code, reason = "accepted for compatibility, see above")]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

impl WebConfig {
    /// Reads and validates `path`. Certificates and keys are loaded later,
    /// by the TLS set-up, which reports their own errors.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let metadata = std::fs::metadata(path).map_err(|error| error.to_string())?;
        // The file names the users allowed in: nobody else may rewrite it.
        if std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o002 != 0 {
            return Err("is world-writable; refusing it (chmod o-w)".into());
        }
        let text = std::fs::read_to_string(path).map_err(|error| error.to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, base)
    }

    /// Parses the YAML; relative file names are taken from `base` (the
    /// config file's directory), as the exporter toolkit does.
    pub fn from_yaml(text: &str, base: &Path) -> Result<Self, String> {
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig {
                tls_server_config: None,
                http_server_config: None,
                basic_auth_users: None,
            }
        } else {
            serde_yaml_ng::from_str(text).map_err(|error| error.to_string().replace('\n', " "))?
        };
        let mut config = WebConfig::default();
        if let Some(tls) = raw.tls_server_config {
            config.tls = Some(tls_settings(tls, base)?);
        }
        if let Some(http) = raw.http_server_config {
            for (name, value) in http.headers.unwrap_or_default() {
                let Some(allowed) = ALLOWED_HEADERS
                    .iter()
                    .find(|allowed| allowed.eq_ignore_ascii_case(&name))
                else {
                    return Err(format!(
                        "http_server_config.headers: {name:?} cannot be set (allowed: {})",
                        ALLOWED_HEADERS.join(", ")
                    ));
                };
                if axum::http::HeaderValue::from_str(&value).is_err() {
                    return Err(format!(
                        "http_server_config.headers: {name}: not a valid header value"
                    ));
                }
                config.headers.insert((*allowed).to_string(), value);
            }
        }
        for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
            if user.is_empty() || user.contains(':') {
                return Err(format!(
                    "basic_auth_users: {user:?} is not a user name (non-empty, no ':')"
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(format!(
                    "basic_auth_users: {user}: the password must be a bcrypt hash \
                     (e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                ));
            }
            config.basic_auth_users.insert(user, hash);
        }
        Ok(config)
    }
}

fn tls_settings(raw: RawTls, base: &Path) -> Result<TlsSettings, String> {
    let unsupported = [
        ("cert", raw.cert.is_some()),
        ("key", raw.key.is_some()),
        ("client_ca", raw.client_ca.is_some()),
        ("client_allowed_sans", raw.client_allowed_sans.is_some()),
        ("cipher_suites", raw.cipher_suites.is_some()),
        ("curve_preferences", raw.curve_preferences.is_some()),
        (
            "prefer_server_cipher_suites",
            raw.prefer_server_cipher_suites.is_some(),
        ),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!(
            "tls_server_config.{key} is not supported by connmon \
             (use cert_file, key_file, client_ca_file, client_auth_type, min_version, max_version)"
        ));
    }
    let file = |value: Option<PathBuf>, key: &str| -> Result<PathBuf, String> {
        let path = value.ok_or_else(|| format!("tls_server_config.{key} is required"))?;
        Ok(if path.is_relative() {
            base.join(path)
        } else {
            path
        })
    };
    let cert_file = file(raw.cert_file, "cert_file")?;
    let key_file = file(raw.key_file, "key_file")?;
    let client_auth = match raw.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven {
            ca_file: file(raw.client_ca_file, "client_ca_file")?,
        },
        "RequireAndVerifyClientCert" => ClientAuth::Require {
            ca_file: file(raw.client_ca_file, "client_ca_file")?,
        },
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(format!(
                "tls_server_config.client_auth_type {:?} accepts unverified certificates; \
                 connmon supports NoClientCert, VerifyClientCertIfGiven and RequireAndVerifyClientCert",
                raw.client_auth_type.unwrap_or_default()
            ));
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?} is unknown \
                 (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            ));
        }
    };
    let version = |value: Option<String>, key: &str, default| match value.as_deref() {
        None => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(other @ ("TLS10" | "TLS11")) => Err(format!(
            "tls_server_config.{key} {other} is not offered (insecure); use TLS12 or TLS13"
        )),
        Some(other) => Err(format!(
            "tls_server_config.{key} {other:?} is unknown (TLS12, TLS13)"
        )),
    };
    let min_version = version(raw.min_version, "min_version", TlsVersion::Tls12)?;
    let max_version = version(raw.max_version, "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    Ok(TlsSettings {
        cert_file,
        key_file,
        client_auth,
        min_version,
        max_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // bcrypt of "secret", cost 4 (fast for tests).
    fn hash() -> String {
        bcrypt::hash("secret", 4).unwrap()
    }

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::from_yaml(text, Path::new("/etc/connmon"))
    }

    #[test]
    fn an_empty_file_changes_nothing() {
        assert_eq!(parse("").unwrap(), WebConfig::default());
    }

    #[test]
    fn the_exporter_toolkit_example_parses() {
        let text = format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: /keys/tls.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\nhttp_server_config:\n  http2: false\n  headers:\n    \
             strict-transport-security: max-age=31536000\nbasic_auth_users:\n  prometheus: {}\n",
            hash()
        );
        let config = parse(&text).unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/connmon/tls.crt"));
        assert_eq!(tls.key_file, Path::new("/keys/tls.key"));
        assert_eq!(
            tls.client_auth,
            ClientAuth::Require {
                ca_file: "/etc/connmon/ca.crt".into()
            }
        );
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.max_version, TlsVersion::Tls13);
        assert_eq!(
            config.headers["Strict-Transport-Security"],
            "max-age=31536000"
        );
        assert!(config.basic_auth_users.contains_key("prometheus"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                "tls_server_config:\n  key_file: k\n",
                "cert_file is required",
            ),
            ("tls_server_cofig: {}\n", "unknown field `tls_server_cofig`"),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_ca_file is required",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
                "unverified certificates",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n",
                "insecure",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n",
                "min_version is above max_version",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "cipher_suites is not supported",
            ),
            (
                "basic_auth_users:\n  alice: plaintext\n",
                "must be a bcrypt hash",
            ),
            (
                "http_server_config:\n  headers:\n    Server: connmon\n",
                "\"Server\" cannot be set",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn a_world_writable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("connmon-webconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.yml");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = WebConfig::from_file(&path).unwrap_err();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let fine = WebConfig::from_file(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("world-writable"), "{error}");
        assert_eq!(fine.unwrap(), WebConfig::default());
    }
}
