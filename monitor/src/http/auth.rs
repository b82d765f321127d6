//! HTTP basic auth against bcrypt hashes, as the exporter toolkit does it.
//! bcrypt is slow on purpose, so checks run off the async workers and a
//! verified user/password pair is remembered (scrapes repeat it every few
//! seconds). Unknown users cost the same as wrong passwords.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;

/// Endpoints a kubelet probe reaches without credentials: they tell
/// nothing but "alive" and "attached".
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Verified pairs kept; beyond this the memory is dropped and rebuilt.
const REMEMBERED_PAIRS: usize = 64;

/// What an unknown user's password is checked against, so that a lookup
/// miss takes as long as a wrong password.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    bcrypt::hash("connmon: no such user", bcrypt::DEFAULT_COST).unwrap_or_default()
});

#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<(String, String)>>,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users,
            verified: Mutex::default(),
        }
    }

    /// Whether the `Authorization` header holds a known user's password.
    pub async fn allows(self: &Arc<Self>, headers: &HeaderMap) -> bool {
        let Some((user, password)) = credentials(headers) else {
            return false;
        };
        let pair = (user, password);
        if self
            .verified
            .lock()
            .map(|verified| verified.contains(&pair))
            .unwrap_or(false)
        {
            return true;
        }
        let this = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let ok = match this.users.get(&pair.0) {
                Some(hash) => bcrypt::verify(&pair.1, hash).unwrap_or(false),
                None => {
                    let _ = bcrypt::verify(&pair.1, DUMMY_HASH.as_str());
                    false
                }
            };
            (ok, pair)
        })
        .await;
        match checked {
            Ok((true, pair)) => {
                if let Ok(mut verified) = self.verified.lock() {
                    if verified.len() >= REMEMBERED_PAIRS {
                        verified.clear();
                    }
                    verified.insert(pair);
                }
                true
            }
            _ => false,
        }
    }
}

/// `Basic base64(user:password)` from the request, if well formed.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Middleware: 401 with a challenge unless the request is authorised or
/// goes to an open path.
pub async fn require(State(auth): State<Arc<BasicAuth>>, request: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) || auth.allows(request.headers()).await {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"connmon\""),
        )],
        "Unauthorized\n",
    )
        .into_response()
}

/// Middleware: the configured extra headers on every response.
pub async fn add_headers(
    State(headers): State<Arc<HeaderMap>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    for (name, value) in headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes() {
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([(
            "prometheus".to_string(),
            bcrypt::hash("s3cret:with colon", 4).unwrap(),
        )])));
        assert!(
            auth.allows(&header("prometheus", "s3cret:with colon"))
                .await
        );
        // Remembered now; still right.
        assert!(
            auth.allows(&header("prometheus", "s3cret:with colon"))
                .await
        );
        assert!(!auth.allows(&header("prometheus", "s3cret")).await);
        assert!(!auth.allows(&header("alice", "s3cret:with colon")).await);
        assert!(!auth.allows(&HeaderMap::new()).await);
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(!auth.allows(&bearer).await);
    }

    #[test]
    fn the_dummy_hash_is_a_bcrypt_hash() {
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
    }
}
