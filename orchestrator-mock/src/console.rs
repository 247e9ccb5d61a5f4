//! The approval console: a web page on the admin listener where a person
//! reviews pending plans and approves (signing in the browser) or rejects
//! them, and follows running and finished ones.
//!
//! | Method | Path | Role | Does |
//! |---|---|---|---|
//! | GET | `/console` | none | the page (static HTML, no data) |
//! | GET | `/console/console.js`, `/console/console.css` | none | its script and style |
//! | GET | `/v1/console/plans` | read | pending plans and the newest others, each with its review digest and, once it ran, its audit verdict |
//!
//! The page is public because it holds nothing: a browser cannot add a
//! bearer header to a page load, so the page's script asks the person for
//! their admin token and sends it as `Authorization: Bearer` on every call
//! to the API (no cookie, so no CSRF surface; the guard's `Host` and
//! `Origin` checks pass for the page's own same-origin calls). The token
//! needs the `read` and `approve` roles.
//!
//! Approving signs in the browser: the person loads their approver key file
//! (`certs-tool approver-key`, PKCS#8 PEM) into the page, which imports it
//! as a non-extractable WebCrypto Ed25519 key kept in page memory, builds
//! each step's statement as [`private_worker_proto::approval::Statement`]
//! does, signs it and posts the approvals with `expect_digest`: the review
//! digest ([`crate::approvals::review_digest`]) of the plan as the page
//! showed it. The approve endpoint refuses with 409 `digest_mismatch` when
//! the plan it holds has another digest, so a plan changed after it was
//! shown cannot be approved by that click.
//!
//! What it does not do: hold or see the approver's private key (it never
//! leaves the browser), keep a session (reloading the page asks for the
//! token and key again), or serve anything but its three static files and
//! the list above. The script inserts every text from the server with
//! `textContent`, never as HTML, and the page's Content-Security-Policy
//! allows only its own script and style.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::admin::AdminState;
use crate::api::PlanView;

/// The page.
const INDEX_HTML: &str = include_str!("../console/index.html");
/// Its script.
const CONSOLE_JS: &str = include_str!("../console/console.js");
/// Its style.
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// How many plans other than pending ones `/v1/console/plans` lists (the
/// newest).
pub const RECENT_PLANS: usize = 20;

/// The page's Content-Security-Policy: its own script, style and API only;
/// no inline script, no images, no frames, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the console's static files, which the admin
/// guard serves without a token (they hold no data).
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/console" | "/console/" | "/console/console.js" | "/console/console.css"
    )
}

/// The console's routes, merged into the admin router.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/console", get(|| async { page(INDEX_HTML, "text/html") }))
        .route("/console/", get(|| async { page(INDEX_HTML, "text/html") }))
        .route(
            "/console/console.js",
            get(|| async { page(CONSOLE_JS, "text/javascript") }),
        )
        .route(
            "/console/console.css",
            get(|| async { page(CONSOLE_CSS, "text/css") }),
        )
        .route("/v1/console/plans", get(plans))
}

/// A static file with headers that keep it from being framed, sniffed,
/// cached or leaking its URL.
fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let utf8 = match content_type {
        "text/html" => "text/html; charset=utf-8",
        "text/css" => "text/css; charset=utf-8",
        _ => "text/javascript; charset=utf-8",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(utf8));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One plan as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConsolePlan {
    /// The plan, as `GET /v1/plans/{id}` gives it.
    #[serde(flatten)]
    pub plan: PlanView,
    /// Its review digest ([`crate::approvals::review_digest`]): what the
    /// page checks its own computation against and pins when approving.
    pub review_digest: String,
    /// Its audit records' verdict; `None` while pending.
    pub audit: Option<AuditSummary>,
}

/// What the audit records of a plan say, in short.
#[derive(Debug, Clone, Serialize)]
pub struct AuditSummary {
    /// How many records arrived.
    pub records: usize,
    /// `ok` (every record passed every check, chain included), `flagged`
    /// (at least one did not), `none` (no record yet) or `unchecked`.
    pub verdict: String,
    /// Why records are flagged, one reason per entry.
    pub problems: Vec<String>,
}

impl AuditSummary {
    fn of(records: &[crate::api::StoredAudit]) -> AuditSummary {
        let problems: Vec<String> = records
            .iter()
            .flat_map(|r| r.check.problems.iter().cloned())
            .collect();
        let verdict = if records.is_empty() {
            "none"
        } else if records.iter().any(|r| r.check.is_flagged()) {
            "flagged"
        } else if records.iter().all(|r| r.check.is_ok()) {
            "ok"
        } else {
            "unchecked"
        };
        AuditSummary {
            records: records.len(),
            verdict: verdict.into(),
            problems,
        }
    }
}

/// Every pending plan and the [`RECENT_PLANS`] newest others, newest
/// first.
async fn plans(State(app): State<AdminState>) -> Json<Vec<ConsolePlan>> {
    let all = app
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .plans();
    let mut others = 0;
    let mut shown = Vec::new();
    for plan in all {
        let pending = plan.status == crate::api::PlanStatus::PendingApproval;
        if !pending {
            if others == RECENT_PLANS {
                continue;
            }
            others += 1;
        }
        let audit = if pending {
            None
        } else {
            match app.store.audit(&plan.id) {
                Ok(records) => Some(AuditSummary::of(&records)),
                Err(e) => {
                    tracing::error!(plan_id = %plan.id, error = %e, "audit records unreadable for the console");
                    Some(AuditSummary {
                        records: 0,
                        verdict: "unreadable".into(),
                        problems: vec![format!("the audit store could not be read: {e}")],
                    })
                }
            }
        };
        shown.push(ConsolePlan {
            review_digest: crate::approvals::review_digest(&plan),
            plan,
            audit,
        });
    }
    Json(shown)
}

/// Takes `expect_digest` out of an approve request's JSON body: the
/// review digest the approver saw, and the rest of the body for
/// [`crate::api::ApproveRequest`].
///
/// # Errors
/// The body is not JSON, or `expect_digest` is not a string; the message
/// says which.
pub fn split_expected_digest(body: &Bytes) -> Result<(Option<String>, Bytes), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, body.clone()));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))?;
    let Some(object) = value.as_object_mut() else {
        return Ok((None, body.clone()));
    };
    let expected = match object.remove("expect_digest") {
        None => None,
        Some(serde_json::Value::String(d)) => Some(d),
        Some(_) => {
            return Err(
                "expect_digest must be the plan's review digest as a string of 64 hex digits"
                    .into(),
            );
        }
    };
    Ok((expected, Bytes::from(value.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_static_files_are_public() {
        for path in [
            "/console",
            "/console/",
            "/console/console.js",
            "/console/console.css",
        ] {
            assert!(is_public(path), "{path}");
        }
        for path in [
            "/v1/console/plans",
            "/console/x",
            "/console/../v1/plans",
            "/v1/plans",
            "/consoles",
        ] {
            assert!(!is_public(path), "{path}");
        }
    }

    #[test]
    fn the_expected_digest_is_taken_out_and_the_rest_kept() {
        let body = Bytes::from(r#"{"approvals":[],"expect_digest":"ab"}"#);
        let (digest, rest) = split_expected_digest(&body).unwrap();
        assert_eq!(digest.as_deref(), Some("ab"));
        let rest: crate::api::ApproveRequest = serde_json::from_slice(&rest).unwrap();
        assert!(rest.approvals.is_empty());

        let (digest, rest) = split_expected_digest(&Bytes::from("  ")).unwrap();
        assert!(digest.is_none() && rest.as_ref() == b"  ");

        let err = split_expected_digest(&Bytes::from(r#"{"expect_digest":1}"#)).unwrap_err();
        assert!(err.contains("expect_digest"), "{err}");
        let err = split_expected_digest(&Bytes::from("{")).unwrap_err();
        assert!(err.starts_with("bad JSON body"), "{err}");
    }

    #[test]
    fn the_pages_forbid_inline_script_and_framing() {
        let response = page(INDEX_HTML, "text/html");
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
        assert!(!CONSOLE_JS.contains("innerHTML"), "text only, never HTML");
    }
}
