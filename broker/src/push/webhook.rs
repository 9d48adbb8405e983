//! The shipped notifier: an HTTP POST of the job as JSON to a webhook of an
//! internal service, which talks to APNs, FCM or Web Push itself.
//!
//! Plain `http://` only (hyper 1, HTTP/1.1, one connection per call): the
//! webhook is meant to be an internal service next to the broker. Any 2xx
//! answer is success; anything else, a connection error or no answer
//! within `push.timeout_ms` is a failure, retried by the dispatcher.
//!
//! The body:
//!
//! ```json
//! {"user":"bob","room":"crew","seq":42,"count":3,"sender":"alice",
//!  "content":"see you at 8","attempt":1,
//!  "targets":[{"device":"phone","provider":"fcm","token":"..."}]}
//! ```
//!
//! `sender` and `content` are `null` when the preview policy withholds them;
//! `content` is the payload's first `push.max_preview_bytes` bytes, decoded
//! as UTF-8 with invalid sequences replaced.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Notifier, NotifyError, NotifyFuture, PushJob};

/// Most bytes of a webhook's answer read (and discarded).
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// POSTs each job as JSON to a URL.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl WebhookNotifier {
    /// A notifier posting to `url` (`http://host[:port]/path`).
    ///
    /// # Errors
    /// If the URL does not parse, is not `http://` or has no host.
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("push.webhook_url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "push.webhook_url {url:?}: only http:// is supported (an internal service)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("push.webhook_url {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            host,
        })
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), NotifyError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| NotifyError(format!("{what}: {e}"));
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail("connect", &e))?;
        let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| fail("handshake", &e))?;
        let request = Request::post(self.path.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "confab-push/1")
            .header(CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail("request", &e))?;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| fail("send", &e))?;
            let status = response.status();
            // Read (a bounded amount of) the answer so the exchange ends
            // cleanly; its content is not used.
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await;
            Ok::<_, NotifyError>(status)
        };
        // The connection future ends once the exchange is done and the
        // sender is dropped; both run in this task.
        let (status, _) = tokio::join!(exchange, conn);
        let status = status?;
        if status.is_success() {
            Ok(())
        } else {
            Err(NotifyError(format!("webhook answered {status}")))
        }
    }
}

/// The JSON body of a job.
pub(crate) fn body(job: &PushJob) -> Vec<u8> {
    let targets: Vec<serde_json::Value> = job
        .targets
        .iter()
        .map(|t| {
            serde_json::json!({
                "device": t.device.as_str(),
                "provider": t.provider,
                "token": t.token,
            })
        })
        .collect();
    let value = serde_json::json!({
        "user": job.user.as_str(),
        "room": job.room.as_str(),
        "seq": job.seq.0,
        "count": job.count,
        "sender": job.sender.as_ref().map(|s| s.as_str()),
        "content": job.content.as_ref().map(|c| String::from_utf8_lossy(c).into_owned()),
        "attempt": job.attempt,
        "targets": targets,
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

impl Notifier for WebhookNotifier {
    fn notify(&self, job: &PushJob) -> NotifyFuture<'_> {
        let body = body(job);
        Box::pin(self.post(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let w = WebhookNotifier::new("http://127.0.0.1:8080/hooks/push?x=1").expect("url");
        assert_eq!((w.host.as_str(), w.port), ("127.0.0.1", 8080));
        assert_eq!(w.path, "/hooks/push?x=1");
        let w = WebhookNotifier::new("http://push.internal").expect("url");
        assert_eq!((w.port, w.path.as_str()), (80, "/"));
        assert!(WebhookNotifier::new("https://x/").is_err());
        assert!(WebhookNotifier::new("not a url").is_err());
        assert!(WebhookNotifier::new("").is_err());
    }
}
