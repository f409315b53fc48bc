//! A client for the metadata port: sends admin requests, following "not the controller"
//! answers to the controller, and retrying while an election is under way.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::types::MetadataError;
use super::wire::{read_frame, write_frame, AdminReply, AdminRequest, WireRequest, WireResponse};

/// How many redirects one request follows before backing off.
const REDIRECTS_MAX: usize = 8;
const RETRY_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct AdminClient {
    bootstrap: Vec<String>,
    timeout: Duration,
}

impl AdminClient {
    /// `bootstrap`: metadata addresses of one or more brokers.
    pub fn new(bootstrap: Vec<String>) -> AdminClient {
        AdminClient {
            bootstrap,
            timeout: Duration::from_secs(10),
        }
    }

    /// Gives up after this long without an answer from a controller.
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    /// Sends one request to one broker, without following redirects.
    pub async fn request_to(
        &self,
        address: &str,
        request: AdminRequest,
    ) -> Result<AdminReply, MetadataError> {
        let exchange = async {
            let mut stream = TcpStream::connect(address)
                .await
                .map_err(|e| MetadataError::Unavailable(format!("{address}: {e}")))?;
            stream
                .set_nodelay(true)
                .map_err(|e| MetadataError::Unavailable(e.to_string()))?;
            write_frame(&mut stream, &WireRequest::Admin(request))
                .await
                .map_err(|e| MetadataError::Unavailable(format!("{address}: {e}")))?;
            match read_frame::<_, WireResponse>(&mut stream).await {
                Ok(Some(WireResponse::Admin(result))) => result,
                Ok(Some(WireResponse::Error(message))) => Err(MetadataError::Malformed(message)),
                Ok(Some(other)) => Err(MetadataError::Unavailable(format!(
                    "unexpected reply {other:?}"
                ))),
                Ok(None) => Err(MetadataError::Unavailable(format!(
                    "{address} closed the connection"
                ))),
                Err(e) => Err(MetadataError::Unavailable(format!("{address}: {e}"))),
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(MetadataError::Unavailable(format!(
                "{address}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Sends a request to the controller, wherever it is.
    pub async fn request(&self, request: AdminRequest) -> Result<AdminReply, MetadataError> {
        if self.bootstrap.is_empty() {
            return Err(MetadataError::Unavailable("no bootstrap address".into()));
        }
        let deadline = Instant::now() + self.timeout;
        let mut hint: Option<String> = None;
        let mut next = 0usize;
        let mut redirects = 0usize;
        let mut last_error = MetadataError::Unavailable("no broker answered".into());
        while Instant::now() < deadline {
            let address = match hint.take() {
                Some(address) => address,
                None => {
                    next += 1;
                    self.bootstrap[(next - 1) % self.bootstrap.len()].clone()
                }
            };
            match self.request_to(&address, request.clone()).await {
                Err(MetadataError::NotController {
                    controller: Some((_, controller)),
                }) if redirects < REDIRECTS_MAX && !controller.is_empty() => {
                    redirects += 1;
                    hint = Some(controller);
                }
                Err(
                    error @ (MetadataError::NotController { .. } | MetadataError::Unavailable(_)),
                ) => {
                    last_error = error;
                    redirects = 0;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
        Err(last_error)
    }

    /// The blocking form, for tools and tests outside any runtime.
    pub fn request_blocking(&self, request: AdminRequest) -> Result<AdminReply, MetadataError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MetadataError::Unavailable(e.to_string()))?;
        runtime.block_on(self.request(request))
    }

    /// The blocking form of [`AdminClient::request_to`].
    pub fn request_to_blocking(
        &self,
        address: &str,
        request: AdminRequest,
    ) -> Result<AdminReply, MetadataError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MetadataError::Unavailable(e.to_string()))?;
        runtime.block_on(self.request_to(address, request))
    }
}
