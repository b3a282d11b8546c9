//! Bodies that stream through: a request body that stops at its limit, and a
//! response body that counts what it passes and writes the audit line when done.
//!
//! Neither buffers: each frame is handed on as it arrives, so Bedrock's streaming
//! responses reach the workspace as the upstream produces them, and a body far
//! over the limit is cut off after `limit` bytes rather than read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests sent upstream and responses sent to the workspace.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// The request body went over its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub struct OverLimit;

/// What happened to a client body, for mapping the upstream call's failure.
pub mod body_state {
    pub const OK: u8 = 0;
    /// More than the limit was sent.
    pub const OVER_LIMIT: u8 = 1;
    /// The client's framing broke or the client went away.
    pub const CLIENT_FAILED: u8 = 2;
}

/// A client body that fails once more than `limit` bytes went through.
pub struct LimitedBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    counted: Arc<AtomicU64>,
    state: Arc<AtomicU8>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, counted: Arc<AtomicU64>, state: Arc<AtomicU8>) -> Self {
        Self {
            inner,
            seen: 0,
            limit,
            counted,
            state,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        this.state.store(body_state::OVER_LIMIT, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(OverLimit))));
                    }
                    this.counted.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state
                    .store(body_state::CLIENT_FAILED, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What one audit line says. Paths are logged without their query; secrets,
/// header values and query values never appear.
pub struct Audit {
    pub workspace_id: Arc<str>,
    pub route: String,
    pub method: String,
    pub upstream_host: String,
    pub path: String,
    pub status: u16,
    pub code: &'static str,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: u64,
    pub start: Instant,
    pub completed: bool,
}

/// When set (text logs), audit lines are formatted here and written to stderr
/// in one call, bypassing `tracing`'s formatter, which costs about 10 % of
/// throughput at one line per request. JSON logs keep going through `tracing`.
static DIRECT_TEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Switches audit lines to the direct text writer.
pub fn audit_direct_text(on: bool) {
    DIRECT_TEXT.store(on, Ordering::Relaxed);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `t` (UTC), without a date library.
fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

impl Audit {
    /// Writes the line (target `audit`).
    pub fn emit(&self) {
        if DIRECT_TEXT.load(Ordering::Relaxed) {
            if !tracing::enabled!(target: "audit", tracing::Level::INFO) {
                return;
            }
            use std::fmt::Write as _;
            use std::io::Write as _;
            let mut line = rfc3339(std::time::SystemTime::now());
            let _ = writeln!(
                line,
                "  INFO audit: request workspace_id={} route={} method={} upstream_host={} path={} status={} code={} bytes_in={} bytes_out={} latency_ms={:.3} completed={}",
                self.workspace_id,
                self.route,
                self.method,
                self.upstream_host,
                self.path,
                self.status,
                self.code,
                self.bytes_in.load(Ordering::Relaxed),
                self.bytes_out,
                self.start.elapsed().as_secs_f64() * 1000.0,
                self.completed,
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            return;
        }
        tracing::info!(
            target: "audit",
            workspace_id = %self.workspace_id,
            route = %self.route,
            method = %self.method,
            upstream_host = %self.upstream_host,
            path = %self.path,
            status = self.status,
            code = self.code,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            latency_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            completed = self.completed,
            "request"
        );
    }
}

/// A response body that counts bytes and emits its [`Audit`] at the end (or when
/// the client goes away mid-stream).
pub struct AuditedBody<B: Body> {
    inner: B,
    audit: Option<Audit>,
    total_out: Option<Arc<crate::metrics::Metrics>>,
}

impl<B: Body> AuditedBody<B> {
    pub fn new(inner: B, audit: Audit, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            inner,
            audit: Some(audit),
            total_out: Some(metrics),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(mut a) = self.audit.take() {
            a.completed = completed;
            if let Some(m) = self.total_out.take() {
                m.bytes_out.fetch_add(a.bytes_out, Ordering::Relaxed);
                m.bytes_in
                    .fetch_add(a.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            a.emit();
        }
    }
}

impl<B: Body> Drop for AuditedBody<B> {
    fn drop(&mut self) {
        let done = self.inner.is_end_stream();
        self.finish(done);
    }
}

impl<B> Body for AuditedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(a)) = (frame.data_ref(), this.audit.as_mut()) {
                    a.bytes_out += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body in which every occurrence of an injected credential is
/// overwritten with `*` (same length, so Content-Length stays true). Only a tail
/// that could be the start of a credential is held back between frames, so
/// event streams are not delayed unless their last bytes look like one.
pub struct RedactingBody<B> {
    inner: B,
    secrets: Vec<Vec<u8>>,
    carry: Vec<u8>,
    done: bool,
    /// Occurrences overwritten.
    pub hits: Arc<AtomicU64>,
}

impl<B> RedactingBody<B> {
    pub fn new(inner: B, secrets: Vec<Vec<u8>>, hits: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            secrets,
            carry: Vec::new(),
            done: false,
            hits,
        }
    }

    /// Redacts `buf` in place and returns how many bytes at its end must wait.
    fn redact(&self, buf: &mut [u8]) -> usize {
        for s in &self.secrets {
            let mut i = 0;
            while i + s.len() <= buf.len() {
                if buf[i..i + s.len()] == s[..] {
                    buf[i..i + s.len()].fill(b'*');
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    i += s.len();
                } else {
                    i += 1;
                }
            }
        }
        // The longest suffix of buf that is a proper prefix of some secret.
        let mut hold = 0;
        for s in &self.secrets {
            for k in (1..s.len().min(buf.len() + 1)).rev() {
                if k > hold && buf[buf.len() - k..] == s[..k] {
                    hold = k;
                    break;
                }
            }
        }
        hold
    }
}

impl<B> Body for RedactingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                if this.carry.is_empty() {
                    return Poll::Ready(None);
                }
                let rest = std::mem::take(&mut this.carry);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let mut buf = std::mem::take(&mut this.carry);
                            buf.extend_from_slice(&data);
                            let hold = this.redact(&mut buf);
                            this.carry = buf.split_off(buf.len() - hold);
                            if buf.is_empty() {
                                continue;
                            }
                            Frame::data(Bytes::from(buf))
                        }
                        Err(other) => other,
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.carry.is_empty() || (self.carry.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_795_446_543_915_235);
        assert_eq!(rfc3339(t), "2026-11-23T15:09:03.915235Z");
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[tokio::test]
    async fn credentials_are_redacted_across_frame_boundaries() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"echo: Bearer sec"))),
            Ok(Frame::data(Bytes::from_static(
                b"ret-token and secret-token; end",
            ))),
        ];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let hits = Arc::new(AtomicU64::new(0));
        let body = RedactingBody::new(inner, vec![b"secret-token".to_vec()], hits.clone());
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"echo: Bearer ************ and ************; end");
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
